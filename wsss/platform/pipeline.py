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
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsss.platform.config import ConfigError, WsssConfig, to_yaml
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
from wsss.platform.steps import classification, irnet, segmentation
from wsss.platform.steps.irnet import confident_ids
from wsss.platform.tracking import Tracker, metric_values
from wsss.stages.segmentation.render import colorize, side_by_side

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.json"
STEP_NAMES = {
    "cam": "Step 1. Classification (CAM)",
    "cam_crf": "Step 1. Classification + CRF",
    "irnet": "Step 2. IRNet",
    "segmentation": "Step 3. Segmentation",
    "segmentation_tta": "Step 3. Segmentation + TTA",
}
PANEL_IMAGES = 4
# Metrics a step's own summary holds, logged to its nested MLflow run as well.
STEP_METRICS = {"step1": ("cam", "cam_crf"), "step2": ("irnet",)}


def config_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (config sections and upstream keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
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
            print(f"[{step}] reusing {final}", flush=True)
            return final, json.loads((final / SUMMARY_FILE).read_text())
        partial = self.root / f"{step}-{key}.partial"
        resuming = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        print(f"[{step}] {'resuming' if resuming else 'starting'} in {partial}", flush=True)
        started = time.perf_counter()
        summary = build(partial)
        summary["duration_s"] = time.perf_counter() - started
        write_atomic(partial / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        partial.rename(final)
        print(f"[{step}] done in {summary['duration_s']:.1f}s -> {final}", flush=True)
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
        print(f"[data] reusing the synthetic set in {folder}", flush=True)
    else:
        print(f"[data] drawing the synthetic set into {folder}", flush=True)
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
        "irnet": metrics,
    }


def _panels(
    info: DatasetInfo,
    rows: list[ManifestRow],
    config: WsssConfig,
    folders: dict[str, Path],
) -> list[tuple[str, np.ndarray]]:
    """Figure-2 panels for the first val images: image | CAM | CAM+CRF | IRNet | DeepLab | GT."""
    segmenter = segmentation.Segmenter(
        str(folders["step3"] / segmentation.SEGMENTER_FILE), str(info.root), config.step3.tta
    )
    panels = []
    for row in [r for r in rows if r.split == "val" and r.mask is not None][:PANEL_IMAGES]:
        image = read_rgb(info.root / row.image)
        cam_dir = folders["step1"] / "cams"
        cam, cam_crf = classification.cam_masks(image, row.id, cam_dir, config.step1)
        irnet_mask = read_mask(folders["step2"] / irnet.PSEUDO_MASK_DIR / f"{row.id}.png")
        predicted = segmenter.labels(image)
        truth = read_mask(info.root / row.mask)
        masks = [cam, cam_crf, irnet_mask, predicted, truth]
        panels.append((row.id, side_by_side(image, *(colorize(m) for m in masks))))
    return panels


def run_pipeline(config: WsssConfig, runs_dir: Path) -> dict[str, Any]:
    """Run the whole method; returns the report (also written to runs/<name>/report.json)."""
    runs_dir = Path(runs_dir)
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
        print(
            f"[wsss] run {config.name} on {where}; MLflow run {run_id} at {tracker.uri}", flush=True
        )
        started = time.perf_counter()
        dataset_dir = prepare_dataset(config, runs_dir)
        info, rows = load_dataset(dataset_dir)
        timings["data"] = time.perf_counter() - started
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
            with tracker.step_run(step, sections[step].model_dump(mode="json")):
                folders[step], summaries[step] = cache.run(step, step_keys[step], build)
                timings[step] = summaries[step]["duration_s"]
                tracker.log_history(summaries[step].get("history", []))
                for name in STEP_METRICS.get(step, ()):
                    tracker.log_metrics(metric_values(summaries[step][name], name))
                link = run_dir / step
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(folders[step].resolve(), target_is_directory=True)

        started = time.perf_counter()
        metrics = {
            "cam": summaries["step1"]["cam"],
            "cam_crf": summaries["step1"]["cam_crf"],
            "irnet": summaries["step2"]["irnet"],
            "segmentation": segmentation.evaluate_segmenter(
                config, info, rows, folders["step3"], None
            ),
            "segmentation_tta": segmentation.evaluate_segmenter(
                config, info, rows, folders["step3"], config.step3.tta
            ),
        }
        timings["evaluation"] = time.perf_counter() - started
        for name, summary in metrics.items():
            tracker.log_metrics(metric_values(summary, name))
        for image_id, panel in _panels(info, rows, config, folders):
            tracker.log_image(panel, f"panels/{image_id}.png")
        segmenter = segmentation.Segmenter(
            str(folders["step3"] / segmentation.SEGMENTER_FILE), str(info.root), None
        )
        tracker.log_model(segmenter.model, "segmenter")

        top_scores = summaries["step1"]["train_top_scores"]
        report = {
            "dataset": dataset_stats(dataset_dir, config.data.synthetic.dominant_class),
            "classifier": {
                "f1_macro": summaries["step1"]["f1_macro"],
                "confident_share": len(confident_ids(top_scores, config.step2.min_confidence))
                / max(1, len(top_scores)),
            },
            "steps": metrics,
            "split": "val",
            "timings_s": timings,
            "mlflow": {"tracking_uri": tracker.uri, "run_id": run_id},
        }
        tracker.log_dict(report, "report.json")
        tracker.log_dict(table2(report), "table2.json")
    write_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def table2(report: dict[str, Any]) -> dict[str, float]:
    """The paper's Table 2 for this run: mIoU per step, in percent."""
    return {STEP_NAMES[k]: round(100 * v["miou"], 2) for k, v in report["steps"].items()}


def format_table2(report: dict[str, Any]) -> str:
    rows = table2(report)
    width = max(len(k) for k in rows)
    lines = [
        f"{'Method step':<{width}}  mean IoU",
        *(f"{k:<{width}}  {v:8.2f}" for k, v in rows.items()),
    ]
    return "\n".join(lines)
