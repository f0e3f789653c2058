"""ConfusionMatrix: a hand-worked example, agreement with scikit-learn, and merging."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    jaccard_score,
)

from wsss.stages.metrics import ConfusionMatrix

# Four classes: class 2 is predicted but absent from the ground truth, class 3 appears nowhere.
# The last two pixels are ignored, so their predictions (3 and the out-of-range 9) do not count.
HAND_TARGET = np.array([[0, 0, 0, 1], [1, 1, 255, 255]])
HAND_PRED = np.array([[0, 0, 1, 1], [1, 2, 3, 9]])
HAND_COUNTS = np.array(
    [
        [2, 1, 0, 0],
        [0, 2, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


@pytest.fixture
def hand_matrix() -> ConfusionMatrix:
    matrix = ConfusionMatrix(num_classes=4)
    matrix.update(HAND_PRED, HAND_TARGET)
    return matrix


def test_hand_worked_counts(hand_matrix: ConfusionMatrix) -> None:
    np.testing.assert_array_equal(hand_matrix.counts, HAND_COUNTS)
    assert hand_matrix.counts.dtype == np.int64
    assert hand_matrix.total == 6


def test_hand_worked_metrics(hand_matrix: ConfusionMatrix) -> None:
    # IoU: class 0 = 2 / (3 + 2 - 2), class 1 = 2 / (3 + 3 - 2), class 2 = 0 / 1, class 3 absent.
    np.testing.assert_allclose(hand_matrix.iou_per_class(), [2 / 3, 1 / 2, 0.0, np.nan])
    assert hand_matrix.miou() == pytest.approx((2 / 3 + 1 / 2 + 0.0) / 3)
    # Recall: classes 0 and 1 are 2/3 each; classes 2 and 3 have no ground-truth pixels.
    np.testing.assert_allclose(hand_matrix.recall_per_class(), [2 / 3, 2 / 3, np.nan, np.nan])
    assert hand_matrix.mean_accuracy() == pytest.approx(2 / 3)
    assert hand_matrix.pixel_accuracy() == pytest.approx(4 / 6)


def test_summary_names_classes_and_marks_absent(hand_matrix: ConfusionMatrix) -> None:
    summary = hand_matrix.summary(["background", "dog", "bird", "person"])
    assert summary["miou"] == pytest.approx(7 / 18)
    assert summary["mean_accuracy"] == pytest.approx(2 / 3)
    assert summary["pixel_accuracy"] == pytest.approx(2 / 3)
    assert summary["per_class_iou"] == {
        "background": pytest.approx(2 / 3),
        "dog": pytest.approx(1 / 2),
        "bird": 0.0,
        "person": None,
    }


def test_summary_rejects_wrong_names_and_empty_matrix(hand_matrix: ConfusionMatrix) -> None:
    with pytest.raises(ValueError, match="expected 4 class names"):
        hand_matrix.summary(["a", "b"])
    with pytest.raises(ValueError, match="no pixels counted"):
        ConfusionMatrix(4).summary(["a", "b", "c", "d"])


def test_empty_matrix_metrics_are_nan() -> None:
    empty = ConfusionMatrix(3)
    empty.update(np.array([1, 2]), np.array([255, 255]))
    assert empty.total == 0
    assert np.isnan(empty.miou())
    assert np.isnan(empty.mean_accuracy())
    assert np.isnan(empty.pixel_accuracy())


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (np.array([0, 5]), np.array([0, 1]), r"pred holds class ids outside \[0, 3\): 5"),
        (np.array([0, -1]), np.array([0, 1]), r"pred holds class ids outside \[0, 3\): -1"),
        (np.array([0, 1]), np.array([0, 7]), r"target holds class ids outside \[0, 3\): 7"),
        (np.array([0, 1, 2]), np.array([0, 1]), "shape"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
    ],
)
def test_update_rejects_bad_input(pred: np.ndarray, target: np.ndarray, message: str) -> None:
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=message):
        matrix.update(pred, target)
    np.testing.assert_array_equal(matrix.counts, 0)


def test_ignore_index_none_counts_every_pixel() -> None:
    matrix = ConfusionMatrix(2, ignore_index=None)
    matrix.update(np.array([0, 1, 1]), np.array([0, 0, 1]))
    np.testing.assert_array_equal(matrix.counts, [[1, 1], [0, 1]])


def test_ignore_index_must_not_be_a_class() -> None:
    with pytest.raises(ValueError, match="ignore_index 2"):
        ConfusionMatrix(3, ignore_index=2)


def random_label_maps(
    seed: int, num_classes: int, count: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (pred, target) pairs of 24x32 maps, about 10% of target pixels ignored."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        target = rng.integers(0, num_classes, size=(24, 32))
        target[rng.random(target.shape) < 0.1] = 255
        pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, num_classes))
        pred[target == 255] = rng.integers(0, 300)
        pairs.append((pred, target))
    return pairs


def test_agrees_with_scikit_learn() -> None:
    num_classes = 6
    pairs = random_label_maps(seed=0, num_classes=num_classes, count=5)
    matrix = ConfusionMatrix(num_classes)
    for pred, target in pairs:
        matrix.update(pred, target)

    target = np.concatenate([t.ravel() for _, t in pairs])
    pred = np.concatenate([p.ravel() for p, _ in pairs])
    counted = target != 255
    target, pred = target[counted], pred[counted]
    labels = list(range(num_classes))

    np.testing.assert_array_equal(matrix.counts, confusion_matrix(target, pred, labels=labels))
    np.testing.assert_allclose(
        matrix.iou_per_class(), jaccard_score(target, pred, labels=labels, average=None)
    )
    assert matrix.miou() == pytest.approx(jaccard_score(target, pred, average="macro"))
    assert matrix.mean_accuracy() == pytest.approx(balanced_accuracy_score(target, pred))
    assert matrix.pixel_accuracy() == pytest.approx(accuracy_score(target, pred))
