"""Pictures of masks: VOC colours, colour over image, and panels side by side.

All functions take and return uint8 arrays: images RGB [H, W, 3], masks class indices [H, W]
with 0 = background and 255 = ignore.
"""

import numpy as np

from wsss.platform.datasets.images import IGNORE_INDEX, voc_palette

BACKGROUND_INDEX = 0

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(mask: np.ndarray) -> np.ndarray:
    """VOC-palette colours of a uint8 class-index mask [H, W], as uint8 RGB [H, W, 3]."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.shape} {mask.dtype}")
    return _PALETTE[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image` [H, W, 3] uint8 with each class pixel of `mask` [H, W] uint8 blended to its colour.

    A class pixel becomes `round((1 - alpha) * image + alpha * colour)`; background (0) and
    ignore (255) pixels keep the image, so only predicted objects are tinted. `alpha` in [0, 1].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    tinted = (mask != BACKGROUND_INDEX) & (mask != IGNORE_INDEX)
    blended = (1.0 - alpha) * image[tinted] + alpha * colorize(mask)[tinted]
    result = image.copy()
    result[tinted] = np.rint(blended).astype(np.uint8)
    return result


def side_by_side(*panels: np.ndarray, separator: int = 2) -> np.ndarray:
    """Panels uint8 [H, W_i, 3] in a row, `separator` white columns between neighbours.

    The result is uint8 [H, sum(W_i) + separator * (n - 1), 3]; all panels share one height.
    """
    if not panels:
        raise ValueError("needs at least one panel")
    if separator < 0:
        raise ValueError(f"separator must be >= 0, got {separator}")
    height = panels[0].shape[0]
    for panel in panels:
        if panel.ndim != 3 or panel.shape[2] != 3 or panel.dtype != np.uint8:
            raise ValueError(f"panels must be uint8 [H, W, 3], got {panel.shape} {panel.dtype}")
        if panel.shape[0] != height:
            raise ValueError(f"panel heights differ: {height} and {panel.shape[0]}")
    gap = np.full((height, separator, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row.extend((gap, panel))
    return np.concatenate(row, axis=1)
