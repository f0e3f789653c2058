"""Augmentation pipelines: masks and CAMs follow the image's geometry, photometry spares them."""

import warnings

import numpy as np
import pytest

import wsss  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
from wsss.platform.config import AugmentationConfig
from wsss.platform.loaders.augment import strong_augmentation, weak_augmentation
from wsss.stages.labels import IGNORE_INDEX

PHOTOMETRIC_OFF = {
    "gauss_noise_p": 0.0,
    "brightness_contrast_p": 0.0,
    "median_blur_p": 0.0,
    "rgb_shift_p": 0.0,
}
GEOMETRIC_OFF = {"hflip_p": 0.0, "shift_scale_rotate_p": 0.0}


def _blocky_labels(rng: np.random.Generator, size: int, classes: int) -> np.ndarray:
    """uint8 [size, size] label map of 8×8 blocks, so most pixels are far from a label edge."""
    blocks = rng.integers(0, classes, size=(size // 8, size // 8), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8), dtype=np.uint8))


def _one_hot(mask: np.ndarray, classes: int) -> np.ndarray:
    return (mask[..., None] == np.arange(classes)).astype(np.float32)


def _shifted(array: np.ndarray, dx: int, dy: int, fill: float) -> np.ndarray:
    """`array` moved right by dx and down by dy (negative: left/up), uncovered pixels = fill."""
    out = np.full_like(array, fill)
    height, width = array.shape[:2]
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = array[
        max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def test_building_the_pipeline_raises_no_deprecation_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strong_augmentation(AugmentationConfig(), 32)
        weak_augmentation(32)


def test_flip_moves_mask_and_cams_to_the_mirrored_columns() -> None:
    config = AugmentationConfig(**PHOTOMETRIC_OFF, hflip_p=1.0, shift_scale_rotate_p=0.0)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1, 0:3] = 1
    mask[5, 6] = 2
    cams = np.zeros((8, 8, 2), dtype=np.float32)
    cams[2, 1, 1] = 0.7
    expected_mask = np.zeros((8, 8), dtype=np.uint8)
    expected_mask[1, 5:8] = 1
    expected_mask[5, 1] = 2
    expected_cams = np.zeros((8, 8, 2), dtype=np.float32)
    expected_cams[2, 6, 1] = 0.7

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    out = strong_augmentation(config, 8, seed=0)(image=image, mask=mask, cams=cams)

    np.testing.assert_array_equal(out["mask"], expected_mask)
    np.testing.assert_array_equal(out["cams"], expected_cams)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shift_moves_image_mask_and_cams_by_the_applied_pixels(seed: int) -> None:
    config = AugmentationConfig(
        **PHOTOMETRIC_OFF,
        hflip_p=0.0,
        shift_scale_rotate_p=1.0,
        shift_limit=0.25,
        scale_limit=0.0,
        rotate_limit=0,
    )
    rng = np.random.default_rng(seed)
    mask = _blocky_labels(rng, 32, 4)
    cams = rng.random((32, 32, 3), dtype=np.float32)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pipeline = strong_augmentation(config, 32, seed=seed)
    pipeline.save_applied_params = True

    out = pipeline(image=image, mask=mask, cams=cams)

    (matrix,) = [p["matrix"] for name, p in out["applied_transforms"] if name == "Affine"]
    dx, dy = int(matrix[0, 2]), int(matrix[1, 2])
    assert (dx, dy) != (0, 0), "this seed drew no shift; the test would prove nothing"
    np.testing.assert_array_equal(out["mask"], _shifted(mask, dx, dy, IGNORE_INDEX))
    np.testing.assert_array_equal(out["cams"], _shifted(cams, dx, dy, IGNORE_INDEX))
    np.testing.assert_array_equal(out["image"], _shifted(image, dx, dy, 0))


def test_image_mask_and_cams_stay_consistent_under_strong_geometry() -> None:
    config = AugmentationConfig(
        **PHOTOMETRIC_OFF,
        hflip_p=0.5,
        shift_scale_rotate_p=1.0,
        shift_limit=0.2,
        scale_limit=0.2,
        rotate_limit=30,
    )
    pipeline = strong_augmentation(config, 64, seed=7)
    rng = np.random.default_rng(7)
    for _ in range(5):
        mask = _blocky_labels(rng, 64, 4)
        # Colour 60 * label, so the image says which class each pixel belongs to.
        image = np.repeat(mask[..., None] * 60, 3, axis=2).astype(np.uint8)
        out = pipeline(image=image, mask=mask, cams=_one_hot(mask, 4))

        covered = out["mask"] != IGNORE_INDEX
        assert 0.3 < covered.mean() < 1.0, "expected a warp that uncovers part of the image"
        np.testing.assert_array_equal(out["cams"].argmax(axis=2)[covered], out["mask"][covered])
        assert np.all(out["cams"][~covered] == IGNORE_INDEX)
        # Away from label edges and the image border, bilinear image sampling sees one label only.
        padded = np.pad(out["mask"], 1, constant_values=IGNORE_INDEX)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        interior = np.all(windows == out["mask"][..., None, None], axis=(2, 3)) & covered
        assert interior.sum() > 1000
        colour = out["image"][..., 0].astype(int)
        np.testing.assert_array_equal(colour[interior], out["mask"][interior].astype(int) * 60)


def test_photometric_transforms_change_the_image_only() -> None:
    config = AugmentationConfig(
        **GEOMETRIC_OFF,
        gauss_noise_p=1.0,
        brightness_contrast_p=1.0,
        median_blur_p=1.0,
        rgb_shift_p=1.0,
    )
    rng = np.random.default_rng(0)
    mask = _blocky_labels(rng, 32, 5)
    cams = rng.random((32, 32, 5), dtype=np.float32)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)

    out = strong_augmentation(config, 32, seed=0)(image=image, mask=mask, cams=cams)

    assert not np.array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(out["cams"], cams)


def test_weak_augmentation_resizes_the_long_side_and_pads_bottom_right_with_ignore() -> None:
    mask = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20) % 7
    cams = _one_hot(mask, 7)
    image = np.repeat(mask[..., None] * 30, 3, axis=2).astype(np.uint8)
    expected_mask = np.full((40, 40), IGNORE_INDEX, dtype=np.uint8)
    expected_mask[:32, :] = np.kron(mask, np.ones((2, 2), dtype=np.uint8))

    out = weak_augmentation(40)(image=image, mask=mask, cams=cams)

    assert out["image"].shape == (40, 40, 3)
    np.testing.assert_array_equal(out["mask"], expected_mask)
    np.testing.assert_array_equal(out["cams"][:32].argmax(axis=2), expected_mask[:32])
    assert np.all(out["cams"][32:] == IGNORE_INDEX)
    assert np.all(out["image"][32:] == 0)


def test_same_seed_same_outputs_different_seed_different_outputs() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    mask = _blocky_labels(rng, 32, 4)

    def run(seed: int) -> list[np.ndarray]:
        pipeline = strong_augmentation(AugmentationConfig(), 32, seed=seed)
        outputs = [pipeline(image=image, mask=mask) for _ in range(4)]
        return [np.concatenate([o["image"].ravel(), o["mask"].ravel()]) for o in outputs]

    first, again, other = run(11), run(11), run(12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("height, width", [(1, 1), (1, 3), (200, 10000)])
@pytest.mark.parametrize("rescale, crop", [(1.0, False), (0.5, True), (0.3, True), (2.0, True)])
def test_every_transform_takes_a_one_pixel_or_a_very_wide_image(height, width, rescale, crop):
    """Every transform firing: the output is the training size whatever the image's shape,
    and a 1x1 image scaled by 0.5 keeps its pixel (padded to 2x2 with ignore first)."""
    every_transform = AugmentationConfig(
        hflip_p=1.0, shift_scale_rotate_p=1.0, gauss_noise_p=1.0, brightness_contrast_p=1.0,
        median_blur_p=1.0, rgb_shift_p=1.0,
    )  # fmt: skip
    pipeline = strong_augmentation(every_transform, 16, seed=0, rescale=rescale, crop=crop)
    image = np.full((height, width, 3), 200, np.uint8)
    mask = np.full((height, width), 1, np.uint8)
    out = pipeline(image=image, mask=mask, cams=np.ones((height, width, 2), np.float32))
    assert out["image"].shape == (16, 16, 3) and out["mask"].shape == (16, 16)
    assert out["cams"].shape == (16, 16, 2)
    assert set(np.unique(out["mask"])) <= {1, IGNORE_INDEX}


def test_a_one_pixel_image_scaled_by_half_keeps_its_pixel() -> None:
    off = AugmentationConfig(**PHOTOMETRIC_OFF, **GEOMETRIC_OFF)
    pipeline = strong_augmentation(off, 4, seed=0, rescale=0.5, crop=True)
    out = pipeline(image=np.full((1, 1, 3), 200, np.uint8), mask=np.ones((1, 1), np.uint8))
    # Padded to 2x2 (the pixel at the top left, ignore elsewhere), scaled to 1x1 by nearest,
    # padded to the crop.
    assert out["mask"][0, 0] == 1 and (out["mask"] == 1).sum() == 1
