"""`wsss run`: data -> step 1 -> step 2 -> step 3 in one Ray job, with a step cache.

Each step's output is a folder under `runs/cache/`, named by a hash of the config it depends on
and the keys of its inputs. A step works in `<folder>.partial/` and renames it when complete,
so a finished step is reused by any later run with the same settings (Tune trials included),
and a run killed mid-step starts that step again from its `.partial` folder — a training
step from its last Ray Train checkpoint there. Steps 1 and 2 keep their training in folders of
their own (`classifier-<key>`, `binary_<class>-<key>`, `irnet-<key>`, linked as `<name>.pt`
from the step's folder) whose keys leave out the settings only inference reads, so a new CAM,
CRF or confident-label setting redraws the CAMs with the trained classifiers, and a new IRNet
threshold or walk setting redraws the pseudo masks with the trained IRNet. The run folder
(`runs/<name>/`) holds the resolved config, links to the step folders it used, and
`report.json`; MLflow holds the same.

Every step is scored on val (the paper's column; step 3 picks its epoch there) and, where the
data set has its masks, on test. A step that fails raises `StepFailedError`, which names the
step and the error that stopped it, whichever Ray worker it came from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray

from wsss.platform.config import ConfigError, WsssConfig, to_yaml
from wsss.platform.console import describe_error, format_duration
from wsss.platform.datasets.images import read_mask, read_rgb
from wsss.platform.datasets.manifest import (
    DATASET_FILE,
    DatasetInfo,
    ManifestRow,
    load_dataset,
    write_atomic,
)
from wsss.platform.datasets.stats import dataset_stats
from wsss.platform.datasets.synthetic import build_synthetic_dataset
from wsss.platform.ray_cluster import ray_session
from wsss.platform.steps import classification, irnet, scored_splits, segmentation
from wsss.platform.steps.irnet import confident_ids
from wsss.platform.tracking import Tracker, metric_values
from wsss.stages.segmentation.render import colorize, side_by_side

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.json"
LOG_FILE = "run.log"
# Part of every cache key: raised whenever the code makes different outputs (or summaries) from
# the same config, so that no folder written by older code is reused.
CACHE_VERSION = 2
STEP_TITLES = {
    "data": "data preparation",
    "step1": "step 1 (classifier, CAMs, dense CRF)",
    "step2": "step 2 (IRNet, pseudo masks)",
    "step3": "step 3 (DeepLabV3+)",
    "evaluation": "evaluation",
}
STEP_NAMES = {
    "cam": "Step 1. Classification (CAM)",
    "cam_crf": "Step 1. Classification + CRF",
    "irnet": "Step 2. IRNet",
    "segmentation": "Step 3. Segmentation",
    "segmentation_tta": "Step 3. Segmentation + TTA",
}
PANEL_IMAGES = 4


class StepFailedError(RuntimeError):
    """A step of `run_pipeline` failed; `cause` is what stopped it (a worker's own error)."""

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step, self.cause = step, cause
        super().__init__(f"{STEP_TITLES[step]} failed: {describe_error(cause)}")


@contextmanager
def _step(step: str) -> Iterator[None]:
    """Report any error inside the block as `StepFailedError(step)`, but a `ConfigError`,
    which already names the config key to change."""
    try:
        yield
    except (StepFailedError, ConfigError):
        raise
    except Exception as exc:
        raise StepFailedError(step, exc) from exc


def config_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (config sections and upstream keys)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class StepCache:
    """Finished step folders under `root`, each named `<step>-<key>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def run(
        self, step: str, key: str, build: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict]:
        """The step's folder and summary: reused if complete, else built (resuming a partial)."""
        final = self.root / f"{step}-{key}"
        if (final / SUMMARY_FILE).is_file():
            logger.info(f"[{step}] reusing {final}")
            return final, json.loads((final / SUMMARY_FILE).read_text())
        partial = self.root / f"{step}-{key}.partial"
        resuming = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        logger.info(f"[{step}] {'resuming' if resuming else 'starting'} in {partial}")
        started = time.perf_counter()
        summary = build(partial)
        summary["duration_s"] = time.perf_counter() - started
        write_atomic(partial / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        partial.rename(final)
        logger.info(f"[{step}] done in {format_duration(summary['duration_s'])} -> {final}")
        return final, summary


def prepare_dataset(config: WsssConfig, runs_dir: Path) -> Path:
    """The dataset folder: the synthetic set (drawn once per settings), or `data.root`."""
    if config.data.source != "synthetic":
        if config.data.root is None or not (config.data.root / DATASET_FILE).is_file():
            raise ConfigError(
                f"config key data.root: data.source {config.data.source!r} needs the folder of "
                f"an imported dataset (wsss data import ... --out DIR), got {config.data.root}"
            )
        return config.data.root
    key = config_key(config.seed, config.data.synthetic.model_dump(exclude={"workers"}))
    folder = runs_dir / "datasets" / f"synthetic-{key}"
    if (folder / DATASET_FILE).is_file():
        logger.info(f"[data] reusing the synthetic set in {folder}")
    else:
        logger.info(f"[data] drawing the synthetic set into {folder}")
        build_synthetic_dataset(folder, config.data.synthetic, config.seed)
    return folder


def _link_trained_model(folder: Path, trained_folder: Path, file_name: str) -> Path:
    """`folder/file_name` as a link to the model a cached training step saved; relative, so
    it survives the rename of the .partial folder next to the trained one."""
    link = folder / file_name
    if not link.is_symlink():
        link.symlink_to(Path("..") / trained_folder.name / file_name)
    return link


def _train_classifier(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    binary_class: str | None,
    folder: Path,
) -> dict:
    _, output = classification.train_classifier(config, info, rows, folder, binary_class)
    return {"f1_macro": output.metrics.get("f1_macro"), "history": output.history}


def _step1(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    folder: Path,
    cache: StepCache,
    data_key: str,
) -> dict:
    """The classifier and, with `merge_binary_cams`, a binary one per excluded class, trained
    unless the cache holds them with the same training settings (a new CAM, CRF or
    confident-label setting only redraws the CAMs), then this config's CAMs and IR labels."""
    training = config.step1.model_dump(mode="json", exclude=config.step1.inference_fields)
    # A binary classifier learns its one class on every train image, whatever is excluded.
    binary_training = {k: v for k, v in training.items() if k != "exclude_classes"}
    classifiers: dict[str | None, str] = {None: config_key(data_key, config.seed, training)}
    if config.step1.merge_binary_cams:
        for name in config.step1.exclude_classes:
            classifiers[name] = config_key(data_key, config.seed, binary_training, name)
    model_files, trained = [], {}
    for binary_class, key in classifiers.items():
        name = classification.classifier_name(binary_class)
        trained_folder, trained[binary_class] = cache.run(
            name, key, functools.partial(_train_classifier, config, info, rows, binary_class)
        )
        model_files.append(_link_trained_model(folder, trained_folder, f"{name}.pt"))
    scores = classification.extract_cams(config, info, rows, folder, model_files)
    return {
        **scores,
        "f1_macro": trained[None]["f1_macro"],
        "history": trained[None]["history"],
        "binary_histories": {
            name: summary["history"] for name, summary in trained.items() if name is not None
        },
    }


def _step2(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step1: tuple[Path, dict],
    folder: Path,
    cache: StepCache,
    training_key: str,
) -> dict:
    """IRNet, trained unless the cache holds one with the same training settings (a new
    threshold or walk setting only redraws the masks), then this config's pseudo masks."""
    step1_folder, step1_summary = step1
    trained_folder, trained = cache.run(
        "irnet",
        training_key,
        lambda irnet_folder: irnet.train_step2(
            config, info, rows, step1_folder, step1_summary, irnet_folder
        ),
    )
    model_link = _link_trained_model(folder, trained_folder, irnet.IRNET_FILE)
    metrics = irnet.make_pseudo_masks(config, info, rows, step1_folder / "cams", model_link, folder)
    return {
        "history": trained["history"],
        "train_images": trained["train_images"],
        "metrics": {split: {"irnet": summary} for split, summary in metrics.items()},
    }


def _panels(
    info: DatasetInfo,
    rows: list[ManifestRow],
    config: WsssConfig,
    folders: dict[str, Path],
    segmenter: segmentation.Segmenter,
) -> list[tuple[str, np.ndarray]]:
    """Figure-2 panels for the first val images: image | CAM | CAM+CRF | IRNet | DeepLab | GT;
    the segmenter predicts with the run's TTA."""
    panels = []
    for row in [r for r in rows if r.split == "val" and r.mask is not None][:PANEL_IMAGES]:
        image = read_rgb(info.root / row.image)
        cam_dir = folders["step1"] / "cams"
        cam, cam_crf = classification.cam_masks(image, row.id, cam_dir, config.step1)
        irnet_mask = read_mask(folders["step2"] / irnet.PSEUDO_MASK_DIR / f"{row.id}.png")
        predicted = segmenter.labels(image, config.step3.tta)
        truth = read_mask(info.root / row.mask)
        masks = [cam, cam_crf, irnet_mask, predicted, truth]
        panels.append((row.id, side_by_side(image, *(colorize(m) for m in masks))))
    return panels


def _require_gpus(config: WsssConfig) -> None:
    if config.ray.use_gpu and not ray.cluster_resources().get("GPU"):
        raise ConfigError(
            "config key ray.use_gpu: true, but the Ray cluster has no GPU "
            "(set ray.use_gpu=false, or join a cluster with GPUs through RAY_ADDRESS)"
        )


def run_pipeline(config: WsssConfig, runs_dir: Path) -> dict[str, Any]:
    """Run the whole method; returns the report (also written to runs/<name>/report.json).

    `runs_dir` may be relative: it is resolved here, once, as every path handed to a Ray
    worker must be absolute (workers do not run in this process's folder).
    """
    runs_dir = Path(runs_dir).resolve()
    run_dir = runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    timings: dict[str, float] = {}
    tracker = Tracker(config.tracking, runs_dir)
    cache = StepCache(runs_dir / "cache")
    with (
        ray_session(config.ray) as where,
        tracker.parent_run(config.name, config.model_dump(mode="json")) as run_id,
    ):
        logger.info(f"[wsss] run {config.name} on {where}; MLflow run {run_id} at {tracker.uri}")
        _require_gpus(config)
        started = time.perf_counter()
        with _step("data"):
            dataset_dir = prepare_dataset(config, runs_dir)
            info, rows = load_dataset(dataset_dir)
        timings["data"] = time.perf_counter() - started
        splits = scored_splits(rows)
        data_key = config_key(
            str(dataset_dir.resolve()), info.counts, config.data.model_dump(mode="json")
        )

        step_keys = {
            "step1": config_key(data_key, config.seed, config.step1.model_dump(mode="json"))
        }
        step2_settings = config.step2.model_dump(mode="json")
        irnet_training = config.step2.model_dump(mode="json", exclude=config.step2.inference_fields)
        step_keys["irnet"] = config_key(step_keys["step1"], irnet_training)
        step_keys["step2"] = config_key(step_keys["step1"], step2_settings)
        step3_settings = config.step3.model_dump(mode="json", exclude={"tta"})
        step_keys["step3"] = config_key(step_keys["step2"], step3_settings)

        folders: dict[str, Path] = {}
        summaries: dict[str, dict] = {}
        builders = {
            "step1": lambda folder: _step1(config, info, rows, folder, cache, data_key),
            "step2": lambda folder: _step2(
                config,
                info,
                rows,
                (folders["step1"], summaries["step1"]),
                folder,
                cache,
                step_keys["irnet"],
            ),
            "step3": lambda folder: segmentation.train_segmenter(
                config,
                info,
                rows,
                folders["step2"] / irnet.PSEUDO_MASK_DIR,
                folders["step1"] / classification.CLASSIFIER_FILE,
                folder,
            ),
        }
        sections = {"step1": config.step1, "step2": config.step2, "step3": config.step3}
        for step, build in builders.items():
            with (
                _step(step),
                tracker.step_run(step, sections[step].model_dump(mode="json")),
            ):
                folders[step], summaries[step] = cache.run(step, step_keys[step], build)
                timings[step] = summaries[step]["duration_s"]
                tracker.log_history(summaries[step].get("history", []))
                for split, metrics in summaries[step].get("metrics", {}).items():
                    for name, summary in metrics.items():
                        tracker.log_metrics(metric_values(summary, _metric_prefix(name, split)))
                link = run_dir / step
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(folders[step], target_is_directory=True)

        started = time.perf_counter()
        with _step("evaluation"):
            scores = segmentation.evaluate_segmenter(
                config,
                info,
                rows,
                folders["step3"],
                {"segmentation": None, "segmentation_tta": config.step3.tta},
            )
            steps = {
                split: {
                    **summaries["step1"]["metrics"][split],
                    **summaries["step2"]["metrics"][split],
                    **scores[split],
                }
                for split in splits
            }
            timings["evaluation"] = time.perf_counter() - started
            for split, metrics in steps.items():
                for name, summary in metrics.items():
                    tracker.log_metrics(metric_values(summary, _metric_prefix(name, split)))
            segmenter = segmentation.Segmenter(
                str(folders["step3"] / segmentation.SEGMENTER_FILE), str(info.root), None
            )
            for image_id, panel in _panels(info, rows, config, folders, segmenter):
                tracker.log_image(panel, f"panels/{image_id}.png")
            tracker.log_model(segmenter.model, "segmenter")

        top_scores = summaries["step1"]["train_top_scores"]
        report = {
            "dataset": dataset_stats(dataset_dir, config.data.synthetic.dominant_class),
            "classifier": {
                "f1_macro": summaries["step1"]["f1_macro"],
                "confident_share": len(confident_ids(top_scores, config.step2.min_confidence))
                / max(1, len(top_scores)),
            },
            "steps": steps["val"],
            "split": "val",
            "test_steps": steps.get("test", {}),
            "timings_s": timings,
            "mlflow": {"tracking_uri": tracker.uri, "run_id": run_id},
        }
        tracker.log_dict(report, "report.json")
        tracker.log_dict(table2(report), "table2.json")
    write_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def _metric_prefix(name: str, split: str) -> str:
    """MLflow metric prefix: val, the paper's column, unprefixed (`cam_miou`); other splits
    prefixed (`test_cam_miou`)."""
    return name if split == "val" else f"{split}_{name}"


def table2(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The paper's Table 2 for this run: mIoU per step and scored split, in percent."""
    columns = {"val": report["steps"], "test": report.get("test_steps", {})}
    return {
        title: {
            split: round(100 * metrics[name]["miou"], 2)
            for split, metrics in columns.items()
            if name in metrics
        }
        for name, title in STEP_NAMES.items()
    }


def format_table2(report: dict[str, Any]) -> str:
    """Table 2 as text: a row per step, a column per scored split (val is the paper's)."""
    rows = table2(report)
    splits = [s for s in ("val", "test") if any(s in row for row in rows.values())]
    width = max(len(k) for k in rows)
    lines = [f"{'Method step':<{width}}" + "".join(f"  {s + ' mIoU':>9}" for s in splits)]
    for title, row in rows.items():
        cells = "".join(f"  {row[s]:9.2f}" if s in row else f"  {'':>9}" for s in splits)
        lines.append(f"{title:<{width}}{cells}")
    return "\n".join(lines)
