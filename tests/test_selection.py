"""Classifier F1 and threshold selection on scores small enough to count by hand."""

import numpy as np
import pytest

from wsss.stages.classification.selection import (
    CamSource,
    best_thresholds,
    cam_classes,
    confident_images,
    f1_scores,
    macro_f1,
)

# Four images, five classes (columns). Class 2 has no positive image.
SCORES = np.array(
    [
        [0.9, 0.3, 0.1, 0.95, 0.95],
        [0.6, 0.7, 0.2, 0.20, 0.20],
        [0.4, 0.8, 0.3, 0.85, 0.65],
        [0.2, 0.1, 0.4, 0.10, 0.10],
    ]
)
TARGETS = np.array(
    [
        [1, 0, 0, 1, 1],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 1, 1],
        [1, 0, 0, 0, 0],
    ]
)


def test_f1_at_a_shared_threshold():
    f1 = f1_scores(SCORES[:, :3], TARGETS[:, :3], 0.5)
    # class 0: TP 2, FN 1 -> 4/5; class 1: TP 1, FP 1 -> 2/3;
    # class 2: no positives, nothing predicted -> undefined.
    np.testing.assert_allclose(f1[:2], [4 / 5, 2 / 3])
    assert np.isnan(f1[2])


def test_f1_at_per_class_thresholds():
    f1 = f1_scores(SCORES[:, :3], TARGETS[:, :3], np.array([0.1, 0.75, 0.35]))
    # class 0: all predicted, TP 3, FP 1 -> 6/7; class 1: exact -> 1; class 2: one FP -> 0.
    np.testing.assert_allclose(f1, [6 / 7, 1.0, 0.0])


def test_a_score_equal_to_the_threshold_is_not_a_prediction():
    f1 = f1_scores(SCORES[:, :1], TARGETS[:, :1], 0.6)
    np.testing.assert_allclose(f1, [2 / 4])  # only 0.9 predicted: TP 1, FN 2


def test_macro_f1_skips_undefined_classes():
    assert macro_f1(SCORES[:, :3], TARGETS[:, :3], 0.5) == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert np.isnan(macro_f1(np.zeros((2, 1)), np.zeros((2, 1)), 0.5))


def test_f1_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differs"):
        f1_scores(SCORES, TARGETS[:, :3])


def test_best_thresholds_per_class_with_ties_and_empty_classes():
    candidates = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    # class 0: F1 6/7, 4/6, 4/5, 2/4, 0 -> 0.1. class 1: 2/4, 2/3, 2/3, 1, 0 -> 0.7.
    # class 2: no positives -> highest candidate. class 3: 4/5, 1, 1, 1, 2/3 -> middle tie 0.5.
    # class 4: 4/5, 1, 1, 2/3, 2/3 -> lower of the two middle ties, 0.3.
    expected = [0.1, 0.7, 0.9, 0.5, 0.3]
    np.testing.assert_allclose(best_thresholds(SCORES, TARGETS, candidates), expected)
    np.testing.assert_allclose(best_thresholds(SCORES, TARGETS, candidates[::-1]), expected)


def test_default_candidates_are_the_19_step_grid():
    thresholds = best_thresholds(SCORES, TARGETS)
    assert thresholds.shape == (5,)
    assert thresholds[2] == pytest.approx(0.95)
    assert np.all(np.isclose(thresholds[:, None], np.linspace(0.05, 0.95, 19)).any(axis=1))


def test_cam_classes_keep_labels_and_what_a_binary_classifier_finds():
    # The multi-label classifier (classes 1, 2) scores 0.9 and 0.2, the binary one (class 3)
    # 0.7, all against 0.5: class 1 is predicted but not labelled, class 2 labelled but not
    # predicted, class 3 found by the binary classifier.
    scores = [np.array([0.9, 0.2]), np.array([0.7])]
    classes = [[1, 2], [3]]
    thresholds = [np.array([0.5, 0.5]), np.array([0.5])]
    kept, predicted = cam_classes(scores, classes, thresholds, {2})
    assert kept == [CamSource(2, 0, 1), CamSource(3, 1, 0)]
    assert predicted == [(1, 0, 0), (3, 1, 0)]
    unlabelled, _ = cam_classes(scores, classes, thresholds, set())
    assert unlabelled == [(1, 0, 0), (3, 1, 0)]


def test_confident_images_are_those_whose_top_score_is_strictly_above_the_threshold():
    assert confident_images({"a": 0.9, "b": 0.8, "c": 0.3}, 0.8) == ["a"]
    assert confident_images({"a": 0.9, "b": 0.8, "c": 0.3}, 0.25) == ["a", "b", "c"]
