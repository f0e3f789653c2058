"""Test-time augmentation (paper 3.4): softmax averaged over horizontal flip × scales.

Each pass resizes the batch (bilinear), runs the model, takes the softmax, undoes the flip and
resizes the probabilities back to the input size. Resizing probabilities rather than logits
keeps every pass a distribution per pixel, since bilinear weights are convex.

DeepLabV3+ only accepts sides divisible by its output stride, which the scaled sizes rarely
are (a 100-px image at scale 0.5 is 50 px). Every pass therefore pads its input at the bottom
and right to a multiple of `size_multiple` with zeros, which after ImageNet normalisation is
the mean colour (DeepLab's own convention), and crops the logits back before the softmax.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAPER_SCALES = (0.5, 1.0, 2.0)


def _padded_forward(model: nn.Module, images: Tensor, size_multiple: int) -> Tensor:
    """Logits [B, K, h, w] of `images` [B, 3, h, w], padded for the model and cropped back."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, -width % size_multiple, 0, -height % size_multiple))
    return model(padded)[..., :height, :width]


@torch.no_grad()
def tta_probabilities(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = PAPER_SCALES,
    flip: bool = True,
    size_multiple: int = 16,
) -> Tensor:
    """Mean class probabilities over `scales` × (identity, horizontal flip if `flip`).

    `images` are ImageNet-normalised float [B, 3, H, W]; the result is float [B, K, H, W],
    each pixel summing to 1. `model` maps [B, 3, h, w] to logits [B, K, h, w] and must be in
    eval mode. `size_multiple` must be a multiple of the model's output stride; 16 serves
    DeepLabV3+ at output stride 8 and 16. With `scales=(1.0,)` and `flip=False` on sides
    already divisible by `size_multiple`, this is the softmax of one forward pass.
    """
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before TTA")
    if not scales:
        raise ValueError("needs at least one scale")
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    height, width = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            probabilities = _padded_forward(model, view, size_multiple).softmax(dim=1)
            if flipped:
                probabilities = probabilities.flip(-1)
            if size != (height, width):
                probabilities = F.interpolate(
                    probabilities, size=(height, width), mode="bilinear", align_corners=False
                )
            total = probabilities if total is None else total + probabilities
    passes = len(scales) * (2 if flip else 1)
    return total / passes


def predict_labels(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = PAPER_SCALES,
    flip: bool = True,
    size_multiple: int = 16,
) -> Tensor:
    """Class index per pixel, int64 [B, H, W]: the argmax of `tta_probabilities`."""
    return tta_probabilities(model, images, scales, flip, size_multiple).argmax(dim=1)
