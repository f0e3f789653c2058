"""What a run reports: `report.json`, the paper's Table 2 (printed and in MLflow), the Figure-2
panels, and each step's scores and history in MLflow; `log_run` logs a finished run's folder
again as the run itself did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from wsss.platform.config import ConfigError, WsssConfig, load_config
from wsss.platform.datasets.images import read_mask, read_rgb
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow, load_dataset, write_atomic
from wsss.platform.runners import cams, segmentation
from wsss.platform.runners.outputs import PIPELINE_STEPS, RunOutputs
from wsss.platform.store import SUMMARY_FILE
from wsss.platform.tracking import Tracker, TrackingUnavailableError, metric_values
from wsss.stages.segmentation.render import colorize, side_by_side

REPORT_FILE = "report.json"


STEP_NAMES = {
    "cam": "Step 1. Classification (CAM)",
    "cam_crf": "Step 1. Classification + CRF",
    "irnet": "Step 2. IRNet",
    "cam_predicted": "Step 1. CAM, predicted labels",
    "cam_crf_predicted": "Step 1. CAM + CRF, predicted labels",
    "irnet_predicted": "Step 2. IRNet, predicted labels",
    "segmentation": "Step 3. Segmentation",
    "segmentation_tta": "Step 3. Segmentation + TTA",
}


PANEL_IMAGES = 4


def _metric_prefix(name: str, split: str) -> str:
    """MLflow metric prefix: val, the paper's column, unprefixed (`cam_miou`); other splits
    prefixed (`test_cam_miou`)."""
    return name if split == "val" else f"{split}_{name}"


def _report_splits(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{split: {row: metrics}} of a report: train (steps 1 and 2's masks against the train
    split's true masks, where the data set has them), val and test."""
    return {
        "train": report.get("train_steps", {}),
        "val": report["steps"],
        "test": report.get("test_steps", {}),
    }


def table2(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The paper's Table 2 for this run: mIoU per step and scored split, in percent."""
    columns = _report_splits(report)
    return {
        title: {
            split: round(100 * metrics[name]["miou"], 2)
            for split, metrics in columns.items()
            if name in metrics
        }
        for name, title in STEP_NAMES.items()
    }


def format_table2(report: dict[str, Any]) -> str:
    """Table 2 as text: a row per step, a column per scored split (val is the paper's), and
    what the columns measure."""
    rows = table2(report)
    splits = [s for s in ("train", "val", "test") if any(s in row for row in rows.values())]
    width = max(len(k) for k in rows)
    heads = {s: f"{s} mIoU" for s in splits}
    widths = {s: max(9, len(head)) for s, head in heads.items()}
    lines = [f"{'Method step':<{width}}" + "".join(f"  {heads[s]:>{widths[s]}}" for s in splits)]
    for title, row in rows.items():
        if row:  # a row the run did not make (TTA off) is left out
            cells = "".join(
                f"  {row[s]:{widths[s]}.2f}" if s in row else "  " + " " * widths[s] for s in splits
            )
            lines.append(f"{title:<{width}}{cells}")
    if "train" in splits:
        lines.append(
            "train: the pseudo masks step 3 learns from, against the train split's true masks"
        )
    if "val" in rows[STEP_NAMES["cam_predicted"]]:
        lines.append(
            "val, test: steps 1 and 2 get each image's true labels or (predicted labels) the "
            "classifier's; step 3 none"
        )
    elif "train" in splits:
        lines.append("val, test: steps 1 and 2 are given each image's true labels, step 3 none")
    return "\n".join(lines)


def panels(
    info: DatasetInfo,
    rows: list[ManifestRow],
    config: WsssConfig,
    outputs: RunOutputs,
    segmenter: segmentation.Segmenter,
) -> list[tuple[str, np.ndarray]]:
    """Figure-2 panels for the first val images: image | CAM | CAM+CRF | IRNet | DeepLab | GT;
    the segmenter predicts with the run's TTA."""
    panels = []
    for row in [r for r in rows if r.split == "val" and r.mask is not None][:PANEL_IMAGES]:
        image = read_rgb(info.root / row.image)
        saved = [
            *(outputs.step1.mask_dir(name) for name in cams.CAM_METRICS),
            outputs.step2.pseudo_mask_dir,
        ]
        predicted = segmenter.labels(image, config.step3.test_time_augmentation)
        truth = read_mask(info.root / row.mask)
        masks = [*(read_mask(folder / f"{row.id}.png") for folder in saved), predicted, truth]
        panels.append((row.id, side_by_side(image, *(colorize(m) for m in masks))))
    return panels


def log_step(tracker: Tracker, config: WsssConfig, step: str, summary: dict[str, Any]) -> None:
    """A step's nested run: its settings, per-epoch history and scores."""
    with tracker.step_run(step, getattr(config, step).model_dump(mode="json")):
        tracker.log_history(summary.get("history", []))
        for split, metrics in summary.get("metrics", {}).items():
            for name, scores in metrics.items():
                tracker.log_metrics(metric_values(scores, _metric_prefix(name, split)))


def log_results(
    tracker: Tracker,
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    outputs: RunOutputs,
    report: dict[str, Any],
) -> None:
    """The parent run's scores of every step, Figure-2 panels, the final model and the
    report."""
    for split, metrics in _report_splits(report).items():
        for name, scores in metrics.items():
            tracker.log_metrics(metric_values(scores, _metric_prefix(name, split)))
    if tracker.enabled:  # what only MLflow shows: not drawn for a sweep's trial
        segmenter = segmentation.Segmenter(str(outputs.step3.segmenter_file), str(info.root), None)
        for image_id, panel in panels(info, rows, config, outputs, segmenter):
            tracker.log_image(panel, f"panels/{image_id}.png")
        tracker.log_model(segmenter.model, "segmenter")
    tracker.log_dict(report, REPORT_FILE)
    tracker.log_dict(table2(report), "table2.json")


def log_run(run_dir: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Log a finished run from its folder to MLflow (`tracking_uri`, else the run's store) as
    the run itself would have: a parent run with the step runs, scores, panels, model and
    report. Returns the report with its new `mlflow` entry, written back to the folder."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / REPORT_FILE).is_file():
        raise ConfigError(f"{run_dir}: no {REPORT_FILE} (not a finished run's folder)")
    config = load_config(None, run_dir / "config.yaml")
    if tracking_uri:
        config.tracking.tracking_uri = tracking_uri
    report = json.loads((run_dir / REPORT_FILE).read_text())
    folders = {step: (run_dir / step).resolve() for step in PIPELINE_STEPS}
    summaries = {step: json.loads((folders[step] / SUMMARY_FILE).read_text()) for step in folders}
    info, rows = load_dataset(run_dir / "dataset")
    tracker = Tracker(config.tracking, run_dir.parent, run_dir=run_dir)
    with tracker.parent_run(config.name, config.model_dump(mode="json")) as run_id:
        for step in PIPELINE_STEPS:
            log_step(tracker, config, step, summaries[step])
        report["mlflow"] = {"tracking_uri": tracker.uri, "run_id": run_id}
        log_results(tracker, config, info, rows, RunOutputs.of(folders, summaries), report)
    if tracker.unavailable:
        raise TrackingUnavailableError(f"MLflow at {tracker.uri}: {tracker.unavailable}")
    report["mlflow"]["unavailable"] = None
    write_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report
