"""Step 3's training loss (paper 3.3): pixel-wise cross-entropy against the pseudo masks."""

import torch
import torch.nn.functional as F

from wsss.stages.labels import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of per-pixel logits [B, K, H, W] against label maps [B, H, W] (any
    integer dtype), over the pixels that are not `IGNORE_INDEX` (padding, unsure pixels).
    Computed in float32 whatever the logits' precision."""
    return F.cross_entropy(logits.float(), masks.long(), ignore_index=IGNORE_INDEX)
