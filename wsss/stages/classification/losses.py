"""Step 1's training loss (paper 3.1): the multi-label classifier's binary cross-entropy."""

import torch
import torch.nn.functional as F


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of class logits [B, K] against multi-hot targets [B, K]: each
    class is its own yes/no question, as an image holds any number of them. Computed in
    float32 whatever the logits' precision."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
