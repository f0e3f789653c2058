"""IRNet's training losses: pair affinities from the boundary map and the displacement field.

The terms and their weights follow IRNet's ``train_irn.py``; the paper's loss is the sum of the
affinity loss and the displacement loss.
"""

import functools
from typing import NamedTuple

import numpy as np
import torch

from wsss.stages.irnet.affinity_labels import AffinityLabels, affinity_labels
from wsss.stages.irnet.model import FEATURE_STRIDE
from wsss.stages.irnet.path_index import PathIndex, boundary_to_affinity

# IRNet's guard against log(0) and empty label sets; part of the loss values it reports.
EPS = 1e-5


class IRNetLoss(NamedTuple):
    """Scalar tensors; ``total = affinity + displacement``."""

    total: torch.Tensor
    affinity: torch.Tensor
    displacement: torch.Tensor


def _as_tensor(mask: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=like.dtype, device=like.device)


def affinity_loss(affinity: torch.Tensor, labels: AffinityLabels) -> torch.Tensor:
    """Cross-entropy of the pair affinities against the pair labels.

    Positive background and positive foreground pairs are averaged separately, so a few object
    pairs weigh as much as the many background ones: ``((bg + fg) / 2 + neg) / 2``.

    Args:
        affinity: float ``[B, D, S]`` in [0, 1], from :func:`boundary_to_affinity`.
        labels: masks ``[B, D, S]`` (NumPy or tensors) from :func:`affinity_labels`.

    Returns:
        Scalar tensor, >= 0.
    """
    background = _as_tensor(labels.background_positive, affinity)
    foreground = _as_tensor(labels.foreground_positive, affinity)
    negative = _as_tensor(labels.negative, affinity)
    positive_log = -torch.log(affinity + EPS)
    background_loss = (background * positive_log).sum() / (background.sum() + EPS)
    foreground_loss = (foreground * positive_log).sum() / (foreground.sum() + EPS)
    negative_log = -torch.log(1 + EPS - affinity)
    negative_loss = (negative * negative_log).sum() / (negative.sum() + EPS)
    return ((background_loss + foreground_loss) / 2 + negative_loss) / 2


def pair_displacement(displacement: torch.Tensor, path_index: PathIndex) -> torch.Tensor:
    """Displacement of each pair's source minus that of its destination.

    Args:
        displacement: float ``[B, 2, height, width]``, channel 0 = rows (y), 1 = columns (x),
            in feature-map pixels.
        path_index: pairs for a map of the same size.

    Returns:
        float ``[B, 2, D, S]``.
    """
    flat = displacement.flatten(2)
    src = torch.as_tensor(path_index.src_indices, device=flat.device)
    dst = torch.as_tensor(path_index.dst_indices, device=flat.device)
    return flat[:, :, None, src] - flat[:, :, dst]


def displacement_loss(
    displacement: torch.Tensor, labels: AffinityLabels, path_index: PathIndex
) -> torch.Tensor:
    """L1 loss of the displacement field on positive pairs.

    Two pixels of one object point at the same centroid, so their displacements differ by their
    offset ``(dy, dx)``; two background pixels are given equal displacements. Each term is the
    mean over its pairs of the L1 norm halved (the per-coordinate mean); the loss is their mean.

    Args:
        displacement: float ``[B, 2, height, width]`` as for :func:`pair_displacement`.
        labels: masks ``[B, D, S]`` from :func:`affinity_labels`.
        path_index: the pairs the labels refer to.

    Returns:
        Scalar tensor, >= 0.
    """
    pairs = pair_displacement(displacement, path_index)
    offsets = _as_tensor(path_index.directions, pairs).T[None, :, :, None]
    background = _as_tensor(labels.background_positive, pairs)
    foreground = _as_tensor(labels.foreground_positive, pairs)
    foreground_error = (pairs - offsets).abs() * foreground[:, None]
    foreground_loss = foreground_error.sum() / (2 * foreground.sum() + EPS)
    background_error = pairs.abs() * background[:, None]
    background_loss = background_error.sum() / (2 * background.sum() + EPS)
    return (foreground_loss + background_loss) / 2


def irnet_loss(
    affinity: torch.Tensor,
    displacement: torch.Tensor,
    labels: AffinityLabels,
    path_index: PathIndex,
) -> IRNetLoss:
    """The paper's loss: affinity loss plus displacement loss (shapes as in those functions)."""
    affinity_term = affinity_loss(affinity, labels)
    displacement_term = displacement_loss(displacement, labels, path_index)
    return IRNetLoss(affinity_term + displacement_term, affinity_term, displacement_term)


@functools.cache
def _path_index(radius: int, height: int, width: int) -> PathIndex:
    return PathIndex(radius, (height, width))


def loss_on_ir_labels(
    boundary_logits: torch.Tensor,
    displacement: torch.Tensor,
    ir_labels: np.ndarray | torch.Tensor,
    radius: int,
) -> IRNetLoss:
    """The loss of IRNet's outputs for a batch against its image-resolution IR labels.

    Args:
        boundary_logits: float ``[B, 1, h, w]`` and displacement ``[B, 2, h, w]``, IRNet's
            outputs at ``FEATURE_STRIDE``.
        ir_labels: ``[B, H, W]`` with ``h, w = ceil(H / 4), ceil(W / 4)``: 0 background, a
            class index, 255 unsure (step 1's confident labels).
        radius: pairs with squared distance below ``radius²``.

    The labels are read at the feature stride, at the centre of each 4×4 cell (IRNet's
    sampling); the boundary goes through a sigmoid before the pair affinities. Computed in
    float32 whatever the outputs' precision: in bfloat16, ``1 + EPS`` is 1 and a pair of
    affinity 1 would cost log(0).
    """
    boundary_logits, displacement = boundary_logits.float(), displacement.float()
    height, width = boundary_logits.shape[-2:]
    offset = FEATURE_STRIDE // 2
    sampled = ir_labels[:, offset::FEATURE_STRIDE, offset::FEATURE_STRIDE][:, :height, :width]
    if isinstance(sampled, torch.Tensor):
        sampled = sampled.cpu().numpy()
    path_index = _path_index(radius, height, width)
    affinity = boundary_to_affinity(torch.sigmoid(boundary_logits[:, 0]), path_index)
    return irnet_loss(affinity, displacement, affinity_labels(sampled, path_index), path_index)
