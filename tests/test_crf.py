"""Dense CRF: it cleans a noisy unary, matches IRNet's and PSA's definitions, and a Ray Data run
survives corrupt rows."""

import logging
from collections.abc import Callable

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import ray.data
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from wsss.platform.config import CRFConfig
from wsss.platform.crf import refine_batch, refine_dataset
from wsss.platform.metrics import ConfusionMatrix
from wsss.stages.classification.crf import refine_labels, refine_probabilities

SIZE = 48
LEFT_COLOUR = np.array([200, 60, 40])
RIGHT_COLOUR = np.array([40, 80, 210])


def two_region_scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SIZE x SIZE image split into a red left and a blue right half, its true labels
    (0 left, 1 right, int64 [H, W]) and a noisy two-class probability map (float32 [2, H, W])
    whose argmax gets about half the pixels wrong."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((SIZE, SIZE), dtype=np.int64)
    truth[:, SIZE // 2 :] = 1
    colours = np.where(truth[..., None] == 0, LEFT_COLOUR, RIGHT_COLOUR)
    image = np.clip(colours + rng.normal(0, 8, colours.shape), 0, 255).astype(np.uint8)
    right = np.where(truth == 1, 0.6, 0.4) + rng.normal(0, 0.25, truth.shape)
    right = np.clip(right, 0.01, 0.99)
    probs = np.stack([1 - right, right]).astype(np.float32)
    return image, truth, probs


def miou(labels: np.ndarray, truth: np.ndarray) -> float:
    matrix = ConfusionMatrix(num_classes=2)
    matrix.update(labels, truth)
    return matrix.miou()


def reference_marginals(image: np.ndarray, unary: np.ndarray, n_labels: int) -> np.ndarray:
    """IRNet's / PSA's CRF written straight from pydensecrf with IRNet's parameters
    (t=10, Gaussian sxy=3 compat=3, bilateral sxy=50 srgb=5 compat=10): [n_labels, H, W]."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    return np.array(crf.inference(10)).reshape((n_labels, height, width))


def test_crf_improves_noisy_unary_on_two_regions() -> None:
    image, truth, probs = two_region_scene(seed=0)
    refined = refine_probabilities(image, probs, CRFConfig())

    before, after = miou(probs.argmax(axis=0), truth), miou(refined.argmax(axis=0), truth)
    assert before < 0.55
    assert after > 0.98
    assert refined.dtype == np.float32
    assert refined.shape == probs.shape
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)


def test_label_crf_matches_irnet_definition() -> None:
    image, truth, _ = two_region_scene(seed=1)
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


def test_probability_crf_matches_psa_definition() -> None:
    image, _, probs = two_region_scene(seed=2)
    unary = np.ascontiguousarray(unary_from_softmax(probs))
    expected = reference_marginals(image, unary, n_labels=2)
    np.testing.assert_array_equal(refine_probabilities(image, probs, CRFConfig()), expected)


def test_read_only_inputs_are_accepted() -> None:
    image, truth, probs = two_region_scene(seed=4)
    for array in (image, truth, probs):
        array.flags.writeable = False
    assert refine_probabilities(image, probs, CRFConfig(iterations=1)).shape == probs.shape
    assert refine_labels(image, truth, 2, CRFConfig(iterations=1)).shape == truth.shape


def test_small_label_dtype_is_kept() -> None:
    image, truth, _ = two_region_scene(seed=3)
    refined = refine_labels(image, truth.astype(np.uint8), 2, CRFConfig())
    assert refined.dtype == np.uint8
    np.testing.assert_array_equal(refined, truth)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda image, probs: (image, probs[:, :-1]), "probs must be"),
        (lambda image, probs: (image, np.where(probs > 0.9, np.nan, probs)), "NaN"),
        (lambda image, probs: (image, -probs), ">= 0"),
        (lambda image, probs: (image.astype(np.float32), probs), "uint8"),
        (lambda image, probs: (image[..., :2], probs), r"\[H, W, 3\]"),
    ],
)
def test_refine_probabilities_rejects_bad_input(
    change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], message: str
) -> None:
    image, _, probs = two_region_scene(seed=0)
    with pytest.raises(ValueError, match=message):
        refine_probabilities(*change(image, probs), CRFConfig())


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
def test_refine_labels_rejects_bad_input(labels: np.ndarray, n_labels: int, message: str) -> None:
    image, _, _ = two_region_scene(seed=0)
    with pytest.raises(ValueError, match=message):
        refine_labels(image, labels, n_labels, CRFConfig())


def test_refine_batch_passes_failed_rows_through(caplog: pytest.LogCaptureFixture) -> None:
    scenes = [two_region_scene(seed) for seed in range(3)]
    probs = np.stack([p for _, _, p in scenes])
    probs[1, 0, 5, 5] = np.nan
    batch = {
        "id": np.array(["a", "b", "c"]),
        "image": np.stack([image for image, _, _ in scenes]),
        "probs": probs,
    }

    with caplog.at_level(logging.WARNING, logger="wsss.platform.crf"):
        out = refine_batch(batch, CRFConfig(iterations=2), output_column="refined")

    np.testing.assert_array_equal(out["crf_failed"], [False, True, False])
    assert out["crf_error"][0] == out["crf_error"][2] == ""
    assert out["crf_error"][1] == "ValueError: probs hold NaN or infinite values"
    assert "id b" in caplog.text
    np.testing.assert_array_equal(out["refined"][1], probs[1])
    np.testing.assert_array_equal(out["probs"], probs)
    assert out["refined"].dtype == np.float32
    assert out["refined"].shape == (3, 2, SIZE, SIZE)


def test_refine_batch_argmax_returns_the_labels_of_the_marginals() -> None:
    scenes = [two_region_scene(seed) for seed in range(2)]
    probs = np.stack([p for _, _, p in scenes])
    probs[1, 0], probs[1, 1] = 0.1, 0.9
    probs[1, 0, 0, 0] = np.nan  # fails the row
    images = np.stack([image for image, _, _ in scenes])
    config = CRFConfig(iterations=2)

    out = refine_batch({"image": images, "probs": probs}, config, argmax=True)

    assert out["probs"].dtype == np.uint8
    assert out["probs"].shape == (2, SIZE, SIZE)
    expected = refine_probabilities(images[0], probs[0], config).argmax(axis=0)
    np.testing.assert_array_equal(out["probs"][0], expected)
    np.testing.assert_array_equal(out["crf_failed"], [False, True])
    # The failed row passes through as the argmax of its input: 0 at the NaN, 1 elsewhere.
    assert out["probs"][1, 0, 0] == 0
    assert (out["probs"][1].ravel()[1:] == 1).all()


def test_refine_batch_survives_pydensecrf_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_crf(*args: object) -> None:
        raise MemoryError("lattice too large")

    monkeypatch.setattr(dcrf, "DenseCRF2D", broken_crf)
    image, truth, _ = two_region_scene(seed=0)
    out = refine_batch(
        {"image": image[None], "labels": truth[None]}, CRFConfig(), mode="labels", n_labels=2
    )
    np.testing.assert_array_equal(out["crf_failed"], [True])
    assert out["crf_error"][0] == "MemoryError: lattice too large"
    np.testing.assert_array_equal(out["labels"][0], truth)


def test_refine_batch_needs_its_columns() -> None:
    image, _, probs = two_region_scene(seed=0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['probs'\]"):
        refine_batch({"image": image[None], "scores": probs[None]}, CRFConfig())
    with pytest.raises(ValueError, match="needs n_labels"):
        refine_batch({"image": image[None], "labels": probs[None]}, CRFConfig(), mode="labels")
    with pytest.raises(ValueError, match="unknown mode 'soft'"):
        refine_batch({"image": image[None], "probs": probs[None]}, CRFConfig(), mode="soft")


@pytest.mark.ray
def test_ray_stage_reports_corrupt_rows_and_finishes(ray_cluster: None) -> None:
    rows = []
    for row_id in range(6):
        image, truth, probs = two_region_scene(seed=row_id)
        rows.append({"id": row_id, "image": image, "truth": truth, "probs": probs})
    rows[2]["probs"] = rows[2]["probs"][:, :-8]
    rows[4]["probs"] = np.full_like(rows[4]["probs"], np.nan)

    refined = refine_dataset(ray.data.from_items(rows), CRFConfig(), batch_size=2)
    results = sorted(refined.take_all(), key=lambda row: row["id"])

    assert [row["id"] for row in results] == list(range(6))
    assert [row["id"] for row in results if row["crf_failed"]] == [2, 4]
    assert results[2]["crf_error"].startswith("ValueError: probs must be [C, H, W]")
    assert results[4]["crf_error"] == "ValueError: probs hold NaN or infinite values"
    np.testing.assert_array_equal(results[2]["probs"], rows[2]["probs"])
    assert np.isnan(results[4]["probs"]).all()
    for row in results:
        if not row["crf_failed"]:
            assert row["crf_error"] == ""
            assert miou(row["probs"].argmax(axis=0), row["truth"]) > 0.97

    as_labels = refine_dataset(ray.data.from_items(rows[:2]), CRFConfig(), argmax=True)
    labels = sorted(as_labels.take_all(), key=lambda row: row["id"])
    for row, marginals in zip(labels, results, strict=False):
        np.testing.assert_array_equal(row["probs"], marginals["probs"].argmax(axis=0))


@pytest.mark.ray
def test_ray_stage_refines_label_maps(ray_cluster: None) -> None:
    rows = []
    for row_id in range(3):
        image, truth, probs = two_region_scene(seed=row_id)
        rows.append({"id": row_id, "image": image, "labels": probs.argmax(axis=0), "truth": truth})
    rows[1]["labels"] = rows[1]["labels"] + 5

    refined = refine_dataset(
        ray.data.from_items(rows),
        CRFConfig(),
        mode="labels",
        n_labels=2,
        output_column="refined",
        batch_size=3,
    )
    results = sorted(refined.take_all(), key=lambda row: row["id"])

    assert [bool(row["crf_failed"]) for row in results] == [False, True, False]
    np.testing.assert_array_equal(results[1]["refined"], rows[1]["labels"])
    for row in (results[0], results[2]):
        assert miou(row["refined"], row["truth"]) > 0.97
