"""Segmentation metrics of Table 1 (mIoU, mean accuracy, pixel accuracy) from one confusion matrix.

Every step that is scored against pixel ground truth (CAM + CRF, IRNet pseudo masks, DeepLab
predictions) accumulates a `ConfusionMatrix` over its images and reads the metrics from it, so
all steps are measured the same way.

Conventions:
- `counts[t, p]` is the number of pixels of ground-truth class `t` predicted as class `p`
  (rows = ground truth, columns = prediction, as in scikit-learn's `confusion_matrix`).
- Pixels whose ground truth equals `ignore_index` (255, VOC/LID's "void") are not counted, and
  their predictions are not checked.
- IoU of class c = TP / (TP + FP + FN). A class absent from both the ground truth and the
  predictions has no IoU (NaN) and is left out of the mean IoU; a class predicted but absent
  from the ground truth has IoU 0 and does count.
- Mean accuracy is the mean over classes of recall TP / (TP + FN); classes absent from the
  ground truth have no recall (NaN) and are left out of the mean.
- Pixel accuracy is the share of counted pixels predicted correctly.
All metrics are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from wsss.stages.labels import IGNORE_INDEX


class MetricsSummary(TypedDict):
    """Table-1 metrics, fractions in [0, 1]; `None` marks a class absent from GT and prediction."""

    miou: float
    mean_accuracy: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]


class ConfusionMatrix:
    """Pixel confusion matrix over `num_classes` classes, accumulated batch by batch.

    `counts` is an int64 array [num_classes, num_classes], rows = ground truth, columns =
    prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a valid class id (num_classes={num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one prediction/ground-truth pair (or a batch of them) to the counts.

        Args:
            pred: integer class ids, any shape, values in [0, num_classes) wherever `target`
                is not `ignore_index`.
            target: integer class ids, same shape as `pred`, values in [0, num_classes) or
                `ignore_index`.

        Raises:
            ValueError: shapes differ, a dtype is not integer, or a counted value lies outside
                [0, num_classes) (the message names the bad values).
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
        for name, array in (("pred", pred), ("target", target)):
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
        pred = pred.ravel().astype(np.int64)
        target = target.ravel().astype(np.int64)
        if self.ignore_index is not None:
            counted = target != self.ignore_index
            pred = pred[counted]
            target = target[counted]
        self._check_range("target", target)
        self._check_range("pred", pred)
        flat = np.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.counts += flat.reshape(self.num_classes, self.num_classes)

    def _check_range(self, name: str, values: np.ndarray) -> None:
        outside = (values < 0) | (values >= self.num_classes)
        if outside.any():
            bad = np.unique(values[outside])
            shown = ", ".join(str(v) for v in bad[:10])
            raise ValueError(
                f"{name} holds class ids outside [0, {self.num_classes}): {shown}"
                + (f" (and {bad.size - 10} more)" if bad.size > 10 else "")
            )

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.counts.sum())

    def iou_per_class(self) -> np.ndarray:
        """IoU per class, float64 [num_classes] in [0, 1]; NaN for classes absent from both."""
        true_positive = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(axis=0) + self.counts.sum(axis=1) - true_positive
        return _safe_divide(true_positive, union)

    def recall_per_class(self) -> np.ndarray:
        """Recall per class, float64 [num_classes] in [0, 1]; NaN for classes absent from GT."""
        true_positive = np.diag(self.counts).astype(np.float64)
        return _safe_divide(true_positive, self.counts.sum(axis=1))

    def miou(self) -> float:
        """Mean IoU over classes present in GT or prediction, in [0, 1]; NaN if nothing counted."""
        return _nanmean(self.iou_per_class())

    def mean_accuracy(self) -> float:
        """Mean recall over classes present in GT, in [0, 1]; NaN if nothing counted."""
        return _nanmean(self.recall_per_class())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels, in [0, 1]; NaN if nothing counted."""
        total = self.total
        return float(np.trace(self.counts)) / total if total else float("nan")

    def summary(self, class_names: Sequence[str]) -> MetricsSummary:
        """The Table-1 metrics and per-class IoU keyed by `class_names` (one per class id).

        Raises:
            ValueError: `class_names` has the wrong length, or no pixel has been counted.
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} class names, got {len(class_names)}")
        if self.total == 0:
            raise ValueError("no pixels counted: call update() with non-ignored pixels first")
        ious = self.iou_per_class()
        return {
            "miou": self.miou(),
            "mean_accuracy": self.mean_accuracy(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {
                name: None if np.isnan(iou) else float(iou)
                for name, iou in zip(class_names, ious, strict=True)
            },
        }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    result = np.full(numerator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean warns on an all-NaN input; an empty matrix simply has no mean.
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
