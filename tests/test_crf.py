"""Dense CRF: it cleans a noisy label map exactly as IRNet's definition does, keeps the label
dtype, and names bad input."""

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_labels

from wsss.platform.config import CRFConfig
from wsss.stages.classification.crf import label_refiner, refine_labels

SIZE = 48
LEFT_COLOUR = np.array([200, 60, 40])
RIGHT_COLOUR = np.array([40, 80, 210])


def two_region_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A SIZE x SIZE image split into a red left and a blue right half, and its true labels
    (0 left, 1 right, int64 [H, W])."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((SIZE, SIZE), dtype=np.int64)
    truth[:, SIZE // 2 :] = 1
    colours = np.where(truth[..., None] == 0, LEFT_COLOUR, RIGHT_COLOUR)
    image = np.clip(colours + rng.normal(0, 8, colours.shape), 0, 255).astype(np.uint8)
    return image, truth


def reference_marginals(image: np.ndarray, unary: np.ndarray, n_labels: int) -> np.ndarray:
    """IRNet's CRF written straight from pydensecrf with IRNet's parameters
    (t=10, Gaussian sxy=3 compat=3, bilateral sxy=50 srgb=5 compat=10): [n_labels, H, W]."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    return np.array(crf.inference(10)).reshape((n_labels, height, width))


def test_label_crf_matches_irnet_definition() -> None:
    image, truth = two_region_scene(seed=1)
    rng = np.random.default_rng(1)
    noisy = truth.copy()
    flipped = rng.random(truth.shape) < 0.2
    noisy[flipped] = rng.integers(0, 3, size=int(flipped.sum()))
    n_labels = 3

    config = CRFConfig(iterations=10, gt_prob=0.7)
    refined = refine_labels(image, noisy, n_labels, config)

    unary = unary_from_labels(noisy, n_labels, gt_prob=0.7, zero_unsure=False)
    expected = np.argmax(reference_marginals(image, unary, n_labels), axis=0)
    np.testing.assert_array_equal(refined, expected)
    assert refined.dtype == noisy.dtype
    assert (noisy == truth).mean() < 0.9
    assert (refined == truth).mean() > 0.98


def test_read_only_inputs_are_accepted() -> None:
    image, truth = two_region_scene(seed=4)
    for array in (image, truth):
        array.flags.writeable = False
    assert refine_labels(image, truth, 2, CRFConfig(iterations=1)).shape == truth.shape


def test_small_label_dtype_is_kept() -> None:
    image, truth = two_region_scene(seed=3)
    refined = refine_labels(image, truth.astype(np.uint8), 2, CRFConfig())
    assert refined.dtype == np.uint8
    np.testing.assert_array_equal(refined, truth)


@pytest.mark.parametrize(
    ("labels", "n_labels", "message"),
    [
        (np.full((SIZE, SIZE), 3), 3, r"\[0, 3\)"),
        (np.full((SIZE, SIZE), -1), 3, r"\[0, 3\)"),
        (np.zeros((SIZE, SIZE - 1), dtype=np.int64), 3, "labels must be"),
        (np.zeros((SIZE, SIZE)), 3, "integer"),
        (np.zeros((SIZE, SIZE), dtype=np.uint8), 300, "cannot hold"),
        (np.zeros((SIZE, SIZE), dtype=np.int64), 1, ">= 2"),
    ],
)
def test_refine_labels_rejects_bad_labels(labels: np.ndarray, n_labels: int, message: str) -> None:
    image, _ = two_region_scene(seed=0)
    with pytest.raises(ValueError, match=message):
        refine_labels(image, labels, n_labels, CRFConfig())


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((SIZE, SIZE, 3), dtype=np.float32), "uint8"),
        (np.zeros((SIZE, SIZE, 2), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((0, SIZE, 3), dtype=np.uint8), r"\[H, W, 3\]"),
    ],
)
def test_refine_labels_rejects_bad_images(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        refine_labels(image, np.zeros((SIZE, SIZE), dtype=np.int64), 2, CRFConfig())


def test_label_refiner_leaves_a_map_of_one_label_as_it_is() -> None:
    image, truth = two_region_scene(seed=5)
    background_only = np.zeros_like(truth)
    refine = label_refiner(image, CRFConfig())
    assert refine(background_only, 1) is background_only
    np.testing.assert_array_equal(refine(truth, 2), refine_labels(image, truth, 2, CRFConfig()))
