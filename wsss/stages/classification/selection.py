"""Image-level classifier evaluation and thresholds (paper 4.1: models are selected by F1).

Scores are per-class sigmoid probabilities, float [N, K] in [0, 1]; targets are the image-level
labels, {0, 1} [N, K]. A class is predicted for an image when its score is strictly above the
class's threshold.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_CANDIDATES = np.linspace(0.05, 0.95, 19)


def _check_scores(scores: np.ndarray, targets: np.ndarray | None = None) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, K], got shape {scores.shape}")
    if targets is not None and targets.shape != scores.shape:
        raise ValueError(f"targets shape {targets.shape} differs from scores {scores.shape}")


def f1_scores(
    scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float = 0.5
) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN) at per-class (or one shared) thresholds.

    thresholds: float [K] or a scalar. Returns float64 [K] in [0, 1]; NaN for a class with
    no positive targets and no positive predictions, where F1 is undefined (0/0).
    """
    _check_scores(scores, targets)
    predicted = scores > np.broadcast_to(np.asarray(thresholds, dtype=np.float64), scores.shape[1:])
    actual = targets.astype(bool)
    true_pos = np.sum(predicted & actual, axis=0)
    errors = np.sum(predicted != actual, axis=0)
    denominator = 2 * true_pos + errors
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_pos / denominator, np.nan)


def macro_f1(
    scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float = 0.5
) -> float:
    """Mean of `f1_scores` over the classes where F1 is defined; NaN if it is defined nowhere."""
    per_class = f1_scores(scores, targets, thresholds)
    defined = per_class[~np.isnan(per_class)]
    return float(defined.mean()) if defined.size else float("nan")


def best_thresholds(
    scores: np.ndarray, targets: np.ndarray, candidates: np.ndarray = DEFAULT_CANDIDATES
) -> np.ndarray:
    """Per-class threshold from `candidates` that maximises that class's F1 on (scores, targets).

    Ties go to the middle of the tied candidates (the lower of the two middle ones for an even
    count): ties usually come from a gap in the scores that several candidates fall into, and
    its middle is the cut farthest from both sides. A class with no positive targets gets the
    highest candidate, since the only thing validation can measure for it is false positives.
    Returns float64 [K].
    """
    _check_scores(scores, targets)
    candidates = np.sort(np.asarray(candidates, dtype=np.float64).reshape(-1))
    if candidates.size == 0:
        raise ValueError("candidates must not be empty")
    f1_by_candidate = np.stack([f1_scores(scores, targets, c) for c in candidates])
    has_positives = targets.astype(bool).any(axis=0)
    thresholds = np.full(scores.shape[1], candidates[-1])
    for k in np.flatnonzero(has_positives):
        # With a positive target F1 is defined at every candidate (FN or TP is non-zero).
        f1 = f1_by_candidate[:, k]
        tied = np.flatnonzero(f1 == f1.max())
        thresholds[k] = candidates[tied[(tied.size - 1) // 2]]
    return thresholds


def confident_images(top_scores: Mapping[str, float], threshold: float = 0.8) -> list[str]:
    """The images (ids of {id: the classifier's highest class score}) whose top score exceeds
    `threshold`: those IRNet learns from (paper 3.2)."""
    return [image_id for image_id, score in top_scores.items() if score > threshold]


class CamSource(NamedTuple):
    """Where the CAM of one class of an image comes from: its dataset class index, the
    classifier (0 the multi-label one, then the binary ones) and that classifier's output."""

    class_index: int
    classifier: int
    output: int


def cam_classes(
    scores: Sequence[np.ndarray],
    class_indices: Sequence[Sequence[int]],
    thresholds: Sequence[np.ndarray],
    labelled: Collection[int],
) -> tuple[list[CamSource], list[CamSource]]:
    """(kept, predicted): the classes of one image that get a CAM, from each classifier's
    `scores` [K_i] over its `class_indices` with its per-class `thresholds`.

    Kept: the image's `labelled` classes (dataset class indices) among the classifiers'; for an
    unlabelled image, the classes scoring above their thresholds; and whatever a binary
    classifier (for a class excluded from the multi-label one) predicts, the only way to
    recover that class where its label is missing. Predicted: every class above its threshold,
    labels or not, as step 3 sees an image.
    """
    kept: list[CamSource] = []
    predicted: list[CamSource] = []
    for classifier, (own_scores, own_classes, own_thresholds) in enumerate(
        zip(scores, class_indices, thresholds, strict=True)
    ):
        for output, class_index in enumerate(own_classes):
            source = CamSource(class_index, classifier, output)
            above = own_scores[output] > own_thresholds[output]
            if class_index in labelled or ((not labelled or classifier > 0) and above):
                kept.append(source)
            if above:
                predicted.append(source)
    return kept, predicted
