"""Albumentations pipelines for training (the paper's strong augmentation, 3.1) and evaluation.

Every pipeline takes the same keyword targets and moves them through the same geometry:

- `image`: uint8 [H, W, 3], RGB. The only target the photometric transforms touch.
- `mask`: uint8 [H, W], class indices, 255 = ignore. Optional.
- `cams`: float32 [H, W, C], class activation maps, usually in [0, 1]. Optional.

`mask` and `cams` are both albumentations "mask" targets: they are warped with nearest
interpolation, so every output pixel holds a value copied from one input pixel and a CAM stays
pixel-aligned with the mask, and pixels that come from outside the image (shift, rotation,
padding) are filled with `IGNORE_INDEX` (255) in both. A CAM value of 255 therefore means
"no evidence" rather than an activation; replace `cams == IGNORE_INDEX` before using it as one.

Outputs are `size`×`size`: the image is resized so its longer side is `size` (aspect kept) and
padded at the bottom and right, so a prediction on the first `h`×`w` pixels maps straight back.

Determinism: a pipeline carries its own random generator; `seed` seeds it and the global
`random`/`np.random` state has no effect. Two pipelines built with the same seed produce the same
sequence of outputs; `pipeline.set_random_seed(seed)` restarts an existing one (e.g. per worker or
per epoch, with a seed derived from the worker rank).
"""

from __future__ import annotations

import math

import albumentations as A
import cv2

from wsss.platform.config import AugmentationConfig
from wsss.stages.labels import IGNORE_INDEX

DENSE_TARGETS = {"cams": "mask"}


def _pad_to(size: int) -> A.PadIfNeeded:
    """Pad bottom/right up to `size`×`size`: image 0, mask/cams 255 (ignore)."""
    return A.PadIfNeeded(
        min_height=size,
        min_width=size,
        position="top_left",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=IGNORE_INDEX,
    )


def _fit_to_square(size: int) -> list[A.BasicTransform]:
    """Longer side to `size`, then pad to `size`×`size`."""
    longest = A.LongestMaxSize(
        max_size=size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
    )
    return [longest, _pad_to(size)]


def _crop_to_square(size: int) -> list[A.BasicTransform]:
    """Pad up to `size`, then a random `size`×`size` crop: the image keeps its scale, as
    multi-scale training needs (IRNet crops, it does not resize)."""
    return [_pad_to(size), A.RandomCrop(height=size, width=size)]


def strong_augmentation(
    config: AugmentationConfig,
    size: int,
    seed: int | None = None,
    rescale: float = 1.0,
    crop: bool = False,
) -> A.Compose:
    """The paper's strong augmentation followed by the fit to `size`×`size`.

    Geometric (image, mask, cams): horizontal flip; shift/scale/rotate as `A.Affine`, because
    `A.ShiftScaleRotate` is deprecated in albumentations 2 (it warns and forwards to `Affine`).
    Translation is up to ±`shift_limit` of the width/height per axis, scale is isotropic in
    [1 - `scale_limit`, 1 + `scale_limit`] (as the old ShiftScaleRotate), rotation in
    ±`rotate_limit` degrees about the centre, no shear.
    Photometric (image only): Gaussian noise (albumentations' default strength), brightness and
    contrast, median blur with an odd kernel in [3, `median_blur_limit`], RGB shift of up to
    ±`rgb_shift_limit` per channel. Each transform fires with its own `*_p` probability.

    `rescale` first scales the image by that exact factor (the paper's IRNet inputs at 0.5, 1,
    1.5 and 2); `crop` ends with a random `size`×`size` crop instead of the fit to `size`.
    """
    shift = (-config.shift_limit, config.shift_limit)
    rgb_shift = (-config.rgb_shift_limit, config.rgb_shift_limit)
    rescaling = [
        # A side shorter than 1 / rescale pixels (a 1x1 image at 0.5) would scale to nothing.
        _pad_to(math.ceil(1.0 / rescale)),
        A.RandomScale(
            scale_limit=(rescale - 1.0, rescale - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
    ]
    transforms = [
        *(rescaling if rescale != 1.0 else []),
        A.HorizontalFlip(p=config.hflip_p),
        A.Affine(
            translate_percent={"x": shift, "y": shift},
            scale=(1.0 - config.scale_limit, 1.0 + config.scale_limit),
            keep_ratio=True,
            rotate=(-config.rotate_limit, config.rotate_limit),
            shear=0.0,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
            p=config.shift_scale_rotate_p,
        ),
        A.GaussNoise(p=config.gauss_noise_p),
        A.RandomBrightnessContrast(
            brightness_limit=config.brightness_limit,
            contrast_limit=config.contrast_limit,
            p=config.brightness_contrast_p,
        ),
        A.MedianBlur(blur_limit=(3, config.median_blur_limit), p=config.median_blur_p),
        A.RGBShift(
            r_shift_limit=rgb_shift,
            g_shift_limit=rgb_shift,
            b_shift_limit=rgb_shift,
            p=config.rgb_shift_p,
        ),
        *(_crop_to_square(size) if crop else _fit_to_square(size)),
    ]
    return A.Compose(transforms, additional_targets=DENSE_TARGETS, seed=seed)


def weak_augmentation(size: int, seed: int | None = None) -> A.Compose:
    """Evaluation pipeline: only the fit to `size`×`size`, with the same targets and fills."""
    return A.Compose(_fit_to_square(size), additional_targets=DENSE_TARGETS, seed=seed)
