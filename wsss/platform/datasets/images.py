"""Reading images as RGB and masks as class indices, whatever the file holds.

Every reader raises `ImageError` naming the file and the reason, so callers can report a bad
file and carry on with the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsss.stages.labels import voc_palette

# Truncated files must fail loudly instead of decoding as grey padding.
Image.LOAD_TRUNCATED_IMAGES = False

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageError(ValueError):
    """A file is missing, empty, corrupt, truncated or not an image of the expected kind."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"corrupt or truncated image: {exc}") from None
    return image


def read_rgb(path: Path | str) -> np.ndarray:
    """Decode any image (RGB, grey, RGBA, palette, CMYK, 16-bit) as uint8 RGB [H, W, 3].

    EXIF orientation is applied, so the array is the picture as a viewer shows it.
    """
    path = Path(path)
    image = ImageOps.exif_transpose(_open(path))
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> RGB conversion clips at 255 instead of rescaling.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are shown on white, as viewers and browsers do.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def image_size(path: Path | str) -> tuple[int, int]:
    """(height, width) of a fully decodable image as displayed (EXIF orientation applied)."""
    path = Path(path)
    image = ImageOps.exif_transpose(_open(path))
    return image.height, image.width


def read_mask(path: Path | str) -> np.ndarray:
    """Class-index mask [H, W] uint8 from a palette or greyscale PNG (255 = ignore)."""
    path = Path(path)
    image = _open(path)
    if image.mode not in ("P", "L"):
        raise ImageError(
            path,
            f"mask must be a palette (P) or greyscale (L) image of class indices, got mode "
            f"{image.mode}",
        )
    return np.array(image, dtype=np.uint8)


def write_palette_png(path: Path | str, mask: np.ndarray) -> None:
    """Write a [H, W] uint8 class-index mask as a VOC-palette PNG."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.shape} {mask.dtype}")
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask).tobytes())
    image.putpalette(voc_palette())
    image.save(path)
