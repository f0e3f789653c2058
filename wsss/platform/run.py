"""`wsss run`: data -> step 1 -> step 2 -> step 3 in one Ray job, over the step store.

Each step's output is a folder under `runs/cache/` (see `wsss.platform.store`), named by a hash
of what it is made from: the config it depends on and the keys of its inputs. A finished step
is reused by any later run with the same settings (sweep trials included), a step another
process is building is waited for, and a run killed mid-step resumes that step from its
`.partial` folder, a training step from its last Ray Train checkpoint there. Steps 1 and 2 keep
their training in folders of their own (`classifier-<key>`, `binary_<class>-<key>`,
`irnet-<key>`, linked as `<name>.pt` from the step's folder) whose keys leave out the settings
only inference reads, so a new CAM, CRF or confident-label setting redraws the CAMs with the
trained classifiers, and a new IRNet threshold or walk setting redraws the pseudo masks with
the trained IRNet. The run folder (`runs/<name>/`) holds the resolved config, links to the
step folders it used, and `report.json` (`wsss.platform.report`); MLflow holds the same.

Every step is scored on val (the paper's column; step 3 picks its epoch there) and, where the
data set has its masks, on test. A step that fails raises `StepFailedError`, which names the
step and the error that stopped it, whichever Ray worker it came from.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsss.platform.config import ConfigError, WsssConfig, to_yaml
from wsss.platform.console import describe_error, root_cause
from wsss.platform.datasets.manifest import (
    DATASET_FILE,
    DatasetInfo,
    ManifestRow,
    load_dataset,
    write_atomic,
)
from wsss.platform.datasets.stats import dataset_stats
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.ray_cluster import ray_session, require_shared_storage
from wsss.platform.report import REPORT_FILE, log_results, log_step
from wsss.platform.runners import (
    cams,
    classifier,
    irnet,
    require_split_sizes,
    scored_splits,
    segmentation,
)
from wsss.platform.runners.outputs import (
    IRNET_FILE,
    PIPELINE_STEPS,
    RunOutputs,
    Step1Output,
    Step2Output,
)
from wsss.platform.store import Lease, StepStore, config_key
from wsss.platform.tracking import Tracker

logger = logging.getLogger(__name__)

LOG_FILE = "run.log"
STEP_TITLES = {
    "data": "data preparation",
    "step1": "step 1 (classifier, CAMs, dense CRF)",
    "step2": "step 2 (IRNet, pseudo masks)",
    "step3": "step 3 (DeepLabV3+)",
    "evaluation": "evaluation",
}
# The errors of a write that found no room: the disk is full, or the user's quota is spent.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StepFailedError(RuntimeError):
    """A step of `run_pipeline` failed; `cause` is what stopped it (a worker's own error).
    Where a full disk stopped it, the message says which file system and what to do."""

    def __init__(self, step: str, cause: BaseException, runs_dir: Path | None = None) -> None:
        self.step, self.cause = step, cause
        message = f"{STEP_TITLES[step]} failed: {describe_error(cause)}"
        root = root_cause(cause)
        if runs_dir is not None and isinstance(root, OSError) and root.errno in DISK_FULL:
            free = shutil.disk_usage(runs_dir).free
            message += (
                f"\nthe file system holding {runs_dir} is full ({free / 2**20:.1f} MiB free): "
                "make room there (`wsss cache gc` removes step folders no run uses) and run the "
                "same command again; the steps already finished are reused"
            )
        super().__init__(message)


@contextmanager
def _step(step: str, runs_dir: Path | None = None) -> Iterator[None]:
    """Report any error inside the block as `StepFailedError(step)`, but a `ConfigError`,
    which already names the config key to change."""
    try:
        yield
    except (StepFailedError, ConfigError):
        raise
    except Exception as exc:
        raise StepFailedError(step, exc, runs_dir) from exc


def prepare_dataset(config: WsssConfig, runs_dir: Path) -> Path:
    """The dataset folder: the synthetic set (drawn once per settings, by one process however
    many want it, into `runs_dir/datasets`), or `data.root`."""
    if config.data.source != "synthetic":
        if config.data.root is None or not (config.data.root / DATASET_FILE).is_file():
            raise ConfigError(
                f"config key data.root: data.source {config.data.source!r} needs the folder of "
                f"an imported dataset (wsss data import ... --out DIR), got {config.data.root}"
            )
        return config.data.root
    made_from = {
        "seed": config.seed,
        "synthetic": config.data.synthetic.model_dump(mode="json", exclude={"workers"}),
    }

    def draw(folder: Path) -> dict[str, Any]:
        return build_synthetic_dataset(folder, config.data.synthetic, config.seed)

    folder, _ = StepStore(runs_dir / "datasets").run("synthetic", made_from, draw)
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
    output = classifier.train_classifier(config, info, rows, folder, binary_class)
    return {"f1_macro": output.metrics.get("f1_macro"), "history": output.history}


def _trained_classifier(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    store: StepStore,
    data_key: str,
    binary_class: str | None,
) -> tuple[Path, dict]:
    """Step 1's classifier (or the binary one for `binary_class`) from the store, trained
    there unless a run with the same training settings trained it before."""
    training = config.step1.model_dump(mode="json", exclude=config.step1.inference_fields)
    made_from: dict[str, Any] = {"data": data_key, "seed": config.seed, "step1": training}
    if binary_class is not None:
        # A binary classifier learns its one class on every train image, whatever is excluded.
        del training["exclude_classes"]
        made_from["binary_class"] = binary_class
    return store.run(
        classifier.classifier_name(binary_class),
        made_from,
        functools.partial(_train_classifier, config, info, rows, binary_class),
    )


def _data_key(config: WsssConfig, dataset_dir: Path, info: DatasetInfo) -> str:
    """The key of the data every step reads: the dataset folder, its counts and settings."""
    return config_key(
        {
            "dataset": str(dataset_dir.resolve()),
            "counts": info.counts,
            "data": config.data.model_dump(mode="json"),
        }
    )


def steps_made_from(config: WsssConfig, data_key: str) -> dict[str, dict[str, Any]]:
    """What each of `PIPELINE_STEPS` is keyed by in the store: its settings and the key of the
    step before it (step 1: the data's)."""
    made_from: dict[str, dict[str, Any]] = {
        "step1": {
            "data": data_key,
            "seed": config.seed,
            "step1": config.step1.model_dump(mode="json"),
        }
    }
    made_from["step2"] = {
        "step1": config_key(made_from["step1"]),
        "step2": config.step2.model_dump(mode="json"),
    }
    made_from["step3"] = {
        "step2": config_key(made_from["step2"]),
        # TTA is evaluation only: every TTA setting reads the same trained model.
        "step3": config.step3.model_dump(mode="json", exclude={"tta"}),
    }
    return made_from


def train_classifier_step(config: WsssConfig, runs_dir: Path) -> dict[str, Any]:
    """Step 1's multi-label classifier alone, through the store (a sweep's trial over step 1's
    training settings): its summary, with the store's events."""
    runs_dir = Path(runs_dir).resolve()
    with ray_session(config.ray):
        dataset_dir = prepare_dataset(config, runs_dir)
        info, rows = load_dataset(dataset_dir)
        store = StepStore(runs_dir / "cache")
        key = _data_key(config, dataset_dir, info)
        _, summary = _trained_classifier(config, info, rows, store, key, None)
    return {**summary, "store": _store_events(store)}


def _step1(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    folder: Path,
    store: StepStore,
    data_key: str,
) -> dict:
    """The classifier and, with `merge_binary_cams`, a binary one per excluded class, trained
    unless the store holds them with the same training settings (a new CAM, CRF or
    confident-label setting only redraws the CAMs), then this config's CAMs and IR labels."""
    classes = [None, *(config.step1.exclude_classes if config.step1.merge_binary_cams else [])]
    model_files, trained = [], {}
    for binary_class in classes:
        trained_folder, trained[binary_class] = _trained_classifier(
            config, info, rows, store, data_key, binary_class
        )
        name = classifier.classifier_name(binary_class)
        model_files.append(_link_trained_model(folder, trained_folder, f"{name}.pt"))
    scores = cams.extract_cams(config, info, rows, folder, model_files)
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
    step1: Step1Output,
    folder: Path,
    store: StepStore,
    step1_key: str,
) -> dict:
    """IRNet, trained unless the store holds one with the same training settings (a new
    threshold or walk setting only redraws the masks), then this config's pseudo masks."""
    training = config.step2.model_dump(mode="json", exclude=config.step2.inference_fields)
    trained_folder, trained = store.run(
        "irnet",
        {"step1": step1_key, "step2": training},
        lambda irnet_folder: irnet.train_irnet(config, info, rows, step1, irnet_folder),
    )
    model_link = _link_trained_model(folder, trained_folder, IRNET_FILE)
    metrics = irnet.make_pseudo_masks(config, info, rows, step1, model_link, folder)
    return {
        "history": trained["history"],
        "train_images": trained["train_images"],
        "metrics": metrics,
    }


def _step3(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step1: Step1Output,
    step2: Step2Output,
    folder: Path,
) -> dict:
    """DeepLabV3+ trained on step 2's pseudo masks, its encoder started from step 1's
    classifier where `step3.encoder_from` says so. Unlike steps 1 and 2 it has no inference
    setting to redraw, so its training is the step and is cached as the step."""
    return segmentation.train_segmenter(config, info, rows, step2.pseudo_mask_dir, step1, folder)


def _link_folder(link: Path, folder: Path) -> None:
    """`link` (in a run folder) pointing at `folder`, replacing an earlier run's link: what the
    run used, and what `wsss cache gc` keeps."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(folder, target_is_directory=True)


@contextmanager
def run_folder(runs_dir: Path, name: str) -> Iterator[Path]:
    """`runs_dir/<name>`, held for the block; while another live run holds it, the first free
    of `<name>-2`, `<name>-3`, ...: two runs started at once never share a folder, even with
    the same name. A run that died frees its folder when its lease runs out."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        folder = runs_dir / (name if number == 1 else f"{name}-{number}")
        lease = Lease(folder.with_name(folder.name + ".lock"))
        if lease.acquire():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if number > 1:
            logger.warning(f"another run holds {runs_dir / name}: this one writes to {folder}")
        yield folder
    finally:
        lease.release()


def run_pipeline(
    config: WsssConfig, runs_dir: Path, run_dir: Path | None = None, track: bool = True
) -> dict[str, Any]:
    """Run the whole method; returns the report (also written to the run folder's
    report.json).

    `runs_dir` may be relative: it is resolved here, once, as every path handed to a Ray
    worker must be absolute (workers do not run in this process's folder). `run_dir` is a
    folder held with `run_folder`, which is called here when it is None. With `track` off
    nothing goes to MLflow (a sweep's trial: its driver logs the trials).
    """
    runs_dir = Path(runs_dir).resolve()
    if run_dir is None:
        with run_folder(runs_dir, config.name) as claimed:
            return run_pipeline(config, runs_dir, claimed, track)
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    timings: dict[str, float] = {}
    tracker = Tracker(config.tracking, runs_dir, enabled=track, run_dir=run_dir)
    store = StepStore(runs_dir / "cache")
    with (
        ray_session(config.ray) as where,
        tracker.parent_run(config.name, config.model_dump(mode="json")) as run_id,
    ):
        tracked = f"MLflow run {run_id} at {tracker.uri}" if track else "not in MLflow"
        logger.info(f"[wsss] run {config.name} on {where}; {tracked}")
        require_shared_storage(runs_dir, config.data.root)
        started = time.perf_counter()
        with _step("data", runs_dir):
            dataset_dir = prepare_dataset(config, runs_dir)
            info, rows = load_dataset(dataset_dir)
            require_split_sizes(rows, config.ray)
        _link_folder(run_dir / "dataset", dataset_dir)
        timings["data"] = time.perf_counter() - started
        splits = scored_splits(rows)
        data_key = _data_key(config, dataset_dir, info)
        made_from = steps_made_from(config, data_key)

        folders: dict[str, Path] = {}
        summaries: dict[str, dict] = {}
        builders = {
            "step1": lambda folder: _step1(config, info, rows, folder, store, data_key),
            "step2": lambda folder: _step2(
                config,
                info,
                rows,
                Step1Output.of(folders["step1"], summaries["step1"]),
                folder,
                store,
                made_from["step2"]["step1"],
            ),
            "step3": lambda folder: _step3(
                config,
                info,
                rows,
                Step1Output.of(folders["step1"], summaries["step1"]),
                Step2Output.of(folders["step2"], summaries["step2"]),
                folder,
            ),
        }
        for step in PIPELINE_STEPS:
            with _step(step, runs_dir):
                folders[step], summaries[step] = store.run(step, made_from[step], builders[step])
                timings[step] = summaries[step]["duration_s"]
                _link_folder(run_dir / step, folders[step])
            log_step(tracker, config, step, summaries[step])
        outputs = RunOutputs.of(folders, summaries)

        started = time.perf_counter()
        with _step("evaluation", runs_dir):
            variants = segmentation.evaluation_variants(config.step3.tta)
            scores = segmentation.evaluate_segmenter(config, info, rows, outputs.step3, variants)
            steps = {
                split: {
                    **summaries["step1"]["metrics"][split],
                    **summaries["step2"]["metrics"][split],
                    **scores[split],
                }
                for split in splits
            }
            timings["evaluation"] = time.perf_counter() - started

        # Step 2 trains on the confident train images, so it counted them.
        train_images = len(outputs.step1.train_top_scores)
        report = {
            "dataset": dataset_stats(dataset_dir, config.data.synthetic.dominant_class),
            "classifier": {
                "f1_macro": summaries["step1"]["f1_macro"],
                "confident_share": outputs.step2.train_images / max(1, train_images),
            },
            "steps": steps["val"],
            "split": "val",
            "test_steps": steps.get("test", {}),
            "train_steps": {
                **summaries["step1"]["metrics"].get("train", {}),
                **summaries["step2"]["metrics"].get("train", {}),
            },
            "timings_s": timings,
            "store": _store_events(store),
            "run_dir": str(run_dir),
            "mlflow": {"tracking_uri": tracker.uri, "run_id": run_id},
        }
        log_results(tracker, config, info, rows, outputs, report)
    report["mlflow"]["unavailable"] = tracker.unavailable
    write_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def _store_events(store: StepStore) -> dict[str, dict[str, float]]:
    """{step: {"built" | "resumed" | "reused": count, "build_s": seconds}} of this run's
    steps (`build_s` where it built or resumed one)."""
    events: dict[str, dict[str, float]] = {}
    for (step, event), count in sorted(store.events.items()):
        events.setdefault(step, {})[event] = count
    for step, seconds in store.build_seconds.items():
        events[step]["build_s"] = seconds
    return events
