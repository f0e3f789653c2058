"""The input every network of the method takes: RGB normalised with ImageNet's statistics."""

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] normalised with ImageNet statistics, in
    contiguous (NCHW) memory, on the images' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    # The permuted view has channels-last strides, which convolutions pass on to 1x1 weights'
    # gradients; DDP's buckets are contiguous and warned on every mismatched gradient.
    return ((images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous()
