"""`wsss tune`: a Ray Tune sweep over the pipeline, its trials sharing the step store, compared
in MLflow.

Each trial is a function trainable that runs the pipeline (or step 1's classifier alone) for
its parameters on the cluster the sweep runs on; the training steps inside it report every
epoch to Tune (`wsss.platform.training.fit`), so a scheduler can stop weak trials. Trials
share every step whose settings agree through the step store, waiting for one another rather
than building a step twice. The sweep's driver, and only it, writes MLflow: one parent run
per sweep, a child run per trial with the trial's parameters and Table 2's metrics.

A sweep's folder, `runs/sweeps/<name>/`, holds its plan (`sweep.json`), Tune's experiment
state and the trials' run folders (`trials/<trial>/`); `wsss tune --resume <folder>` carries
on from there: finished trials are not run again and MLflow gets no second child run.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from wsss.platform.config import ConfigError, WsssConfig, merge, validate
from wsss.platform.console import format_duration
from wsss.platform.datasets.manifest import write_atomic
from wsss.platform.ray_cluster import ray_session
from wsss.platform.report import REPORT_FILE
from wsss.platform.run import run_pipeline, train_classifier_step
from wsss.platform.runners.outputs import PIPELINE_STEPS
from wsss.platform.tracking import Tracker, flatten, tracking_uri, unavailable_reason
from wsss.tune_spaces import SearchSpace, get_space

logger = logging.getLogger(__name__)
T = TypeVar("T")

SWEEPS_DIR = "sweeps"
PLAN_FILE = "sweep.json"
TRIALS_DIR = "trials"
TRIAL_TAG = "wsss.tune_trial_id"
TRIAL_MEMORY = 64 * 1024**2
# Tune's saved state in a sweep's folder: the experiment's (JSON) and its search algorithm's
# (cloudpickle, whatever the file name says); a resume reads the newest of each.
TUNE_STATE_PATTERNS = {"experiment_state-*.json": json.loads, "basic-variant-state-*.json": None}
# Fault injection for the resume test: the driver dies, as if killed, once this many trials
# have finished and Tune has saved the experiment.
EXIT_AFTER_TRIALS_ENV = "WSSS_SWEEP_EXIT_AFTER_TRIALS"


@dataclass
class SweepPlan:
    """What `wsss tune` was asked, kept in the sweep's folder for `--resume`: the space, the
    resolved base config every trial starts from, and how the trials run."""

    name: str
    space: str
    config: dict[str, Any]
    num_samples: int
    max_concurrent: int
    parent_run_id: str | None = None
    started: float = field(default_factory=time.time)


def nested(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dotted keys (`step2.beta`, or a section with a dict of its keys) as the nested
    mapping a config merges, later keys merged into earlier ones."""
    result: dict[str, Any] = {}
    for key, value in params.items():
        node: Any = value
        for part in reversed(key.split(".")):
            node = {part: node}
        result = merge(result, node)
    return result


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> WsssConfig:
    """The validated config of a trial: `base` (a raw config mapping) with `params`."""
    return validate(merge(dict(base), nested(params)))


def _candidates(value: Any) -> list[Any]:
    """Values a space entry can take, enough to check each against the config: every grid or
    choice value, the bounds of a range."""
    if isinstance(value, Mapping) and set(value) == {"grid_search"}:
        return list(value["grid_search"])
    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, Float):
        return [value.lower, value.upper]
    if isinstance(value, Integer):
        return [value.lower, value.upper - 1]
    if isinstance(value, Domain):
        return [value.sample()]
    return [value]


def check_space(space: SearchSpace, base: Mapping[str, Any]) -> None:
    """Every key and value of `space` against the config, before any trial: a key that does
    not exist or a value out of range raises ConfigError naming it."""
    for key, value in space.params.items():
        for candidate in _candidates(value):
            try:
                trial_config(base, {key: candidate})
            except ConfigError as exc:
                raise ConfigError(
                    f"search space {space.name}, {key}={candidate!r}: {exc}"
                ) from None


def trial_capacity(config: WsssConfig, resources: Mapping[str, float]) -> int:
    """How many trials fit the cluster at once: each needs its training workers' CPUs plus one
    for Ray Data's decoding, or its inference tasks' CPUs (`ray.num_cpus`), whichever is more,
    and with GPUs one per training worker. Fewer would leave trials waiting on each other's
    placement groups, or Ray Data without a CPU, which hangs."""
    ray_config = config.ray
    trial_cpus = max(ray_config.num_workers * ray_config.cpus_per_worker + 1, ray_config.num_cpus)
    fits = math.floor(resources.get("CPU", 0) / trial_cpus)
    if ray_config.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / ray_config.num_workers))
    if fits < 1:
        raise ConfigError(
            f"config keys ray.*: one trial needs {trial_cpus:g} CPUs"
            + (f" and {ray_config.num_workers} GPUs" if ray_config.use_gpu else "")
            + f"; the cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs"
        )
    return fits


def final_row(config: WsssConfig) -> str:
    """The Table 2 row of the run's final model: with TTA where TTA is on."""
    return "segmentation_tta" if config.step3.tta.enabled else "segmentation"


def trial_metrics(report: Mapping[str, Any], config: WsssConfig) -> dict[str, Any]:
    """What a pipeline trial reports to Tune: Table 2's rows as MLflow names them in a run
    (`<row>_miou` on val, `test_<row>_miou`), the final model's `final_miou` and
    `final_test_miou`, the classifier's F1 and the store's events."""
    metrics: dict[str, Any] = {"classifier_f1": report["classifier"]["f1_macro"]}
    for prefix, steps in (("", report["steps"]), ("test_", report["test_steps"])):
        for name, summary in steps.items():
            metrics[f"{prefix}{name}_miou"] = summary["miou"]
    metrics["final_miou"] = report["steps"][final_row(config)]["miou"]
    if report["test_steps"]:
        metrics["final_test_miou"] = report["test_steps"][final_row(config)]["miou"]
    metrics["store"] = report["store"]
    metrics["evaluation_s"] = report["timings_s"]["evaluation"]
    return metrics


def run_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    runs_dir: str,
    trials_dir: str,
    kind: str,
) -> None:
    """The trainable: one trial's pipeline (or classifier) with its parameters, on the
    sweep's cluster and store; reports to Tune as it goes and once at the end."""
    trial = tune.get_context().get_trial_name()
    config = trial_config({**base, "name": trial}, params)
    if kind == "classifier":
        summary = train_classifier_step(config, Path(runs_dir))
        tune.report({"f1_macro": summary["f1_macro"], "store": summary["store"]})
        return
    # Tune runs one instance of a trial at a time: its folder needs no lease.
    run_dir = Path(trials_dir) / trial
    finished = run_dir / REPORT_FILE
    if finished.is_file():
        # A resumed sweep whose saved state predates this trial's end (Tune saves it now
        # and then): the trial is done, its report stands.
        report = json.loads(finished.read_text())
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        report = run_pipeline(config, Path(runs_dir), run_dir, track=False)
    tune.report(trial_metrics(report, config))


def value_text(value: Any) -> str:
    """A parameter as a person reads it: floats to 6 significant digits (Tune's quantized
    draws carry binary noise, 0.30000000000000004)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _param_text(params: Mapping[str, Any]) -> dict[str, str]:
    return {key: value_text(value) for key, value in flatten(params).items()}


class SweepTracker(tune.Callback):
    """Driver-side MLflow logging: a child run of the sweep's parent run per finished or
    failed trial, its parameters flat (for MLflow's compare and parallel-coordinates views)
    and its numbers as metrics; a trial logged before (a resumed sweep) is not logged again.
    Without a parent run (the store did not answer when the sweep started) nothing is logged;
    a store that stops answering mid-sweep is said once, and the sweep goes on without it.
    Also where the resume test's fault is injected (`EXIT_AFTER_TRIALS_ENV`)."""

    # Tune pickles its callbacks with the experiment (a resumed sweep gets this one back), so
    # everything here is plain data; MLflow's client is made where it is used.
    def __init__(
        self, uri: str, experiment_id: str | None, parent_run_id: str | None, folder: Path
    ) -> None:
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.folder = folder
        self.enabled = False
        self.logged: set[str] = set()
        self.finished = 0
        self.exit_after: int | None = None

    def setup(self, **info: Any) -> None:
        # Tried again by a resumed sweep (Tune restores this object as it was saved).
        self.enabled = bool(self.experiment_id and self.parent_run_id)
        children = self._tracked(
            lambda client: client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            )
        )
        self.logged = {run.data.tags.get(TRIAL_TAG) for run in children or []}
        self.finished = len(self.logged)
        exit_after = os.environ.get(EXIT_AFTER_TRIALS_ENV)
        self.exit_after = int(exit_after) if exit_after else None

    def _tracked(self, call: Callable[[MlflowClient], T]) -> T | None:
        """`call(client)` while the store answers; None, said once, after it stops."""
        if not self.enabled:
            return None
        try:
            return call(MlflowClient(self.uri))
        # Whatever the store raises: as for a run, tracking never stops the sweep.
        except Exception as exc:
            self.enabled = False
            logger.warning(
                f"[mlflow] tracking at {self.uri} is unavailable ({unavailable_reason(exc)}); "
                f"the sweep goes on without logging its trials, whose numbers stay in "
                f"{self.folder}"
            )
            return None

    def _log(self, trial: Any, status: str, error: str | None = None) -> None:
        if trial.trial_id not in self.logged and self._tracked(
            lambda client: self._log_trial(client, trial, status, error)
        ):
            self.logged.add(trial.trial_id)

    def _log_trial(self, client: MlflowClient, trial: Any, status: str, error: str | None) -> str:
        """The trial's child run, logged whole; returns its id."""
        tags = {"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id}
        if error:
            tags["wsss.error"] = error[:5000]
        run_id = client.create_run(self.experiment_id, run_name=str(trial), tags=tags).info.run_id
        for key, value in _param_text(trial.config).items():
            client.log_param(run_id, key, value[:500])
        for key, value in flatten(trial.last_result or {}).items():
            if key.endswith("_miou") or key in ("f1_macro", "classifier_f1"):
                client.log_metric(run_id, key, float(value))
        client.set_terminated(run_id, status)
        return run_id

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial, "FINISHED")
        self.finished += 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.error_file and Path(trial.error_file).read_text()
        self._log(trial, "FAILED", error or "failed")
        logger.warning(f"[tune] trial {trial} failed with {_param_text(trial.config)}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.exit_after is not None and self.finished >= self.exit_after:
            # Tune saves the experiment at most every few seconds and copies it into the
            # sweep's folder on a background thread of the controller's syncer (each trial
            # holds a deep copy of the storage context, whose syncer copies nothing); dying
            # during that copy leaves empty state files, which no resume reads. A callback is
            # not handed the controller, hence the search for it.
            (controller,) = [o for o in gc.get_objects() if isinstance(o, TuneController)]
            controller.checkpoint(force=True, wait=True)
            unreadable = unreadable_tune_state(Path(trials[0].storage.experiment_fs_path))
            if unreadable:
                raise RuntimeError(f"{EXIT_AFTER_TRIALS_ENV}: {unreadable} did not read back")
            logger.warning(f"[tune] {EXIT_AFTER_TRIALS_ENV}={self.exit_after}: the driver dies")
            os._exit(9)


def table_rows(
    space: SearchSpace, results: list[tuple[Mapping[str, Any], Mapping[str, Any], str | None]]
) -> tuple[list[str], list[list[str]]]:
    """The sweep's table: a column per `space.columns` (or parameter), then val and test mIoU
    of the final model, one row per trial sorted by val mIoU (failed trials last)."""
    columns = space.columns or tuple(
        (key, lambda p, k=key: value_text(p[k])) for key in space.params
    )
    metric, test_metric = (
        ("f1_macro", None) if space.trial == "classifier" else ("final_miou", "final_test_miou")
    )
    header = [name for name, _ in columns] + (
        ["val F1"] if test_metric is None else ["val mIoU", "test mIoU"]
    )

    def number(metrics: Mapping[str, Any], key: str | None) -> str:
        value = metrics.get(key) if key else None
        return f"{100 * value:.2f}" if isinstance(value, int | float) else ""

    ordered = sorted(results, key=lambda r: (r[2] is not None, -(r[1].get(metric) or -math.inf)))
    rows = []
    for params, metrics, error in ordered:
        cells = [cell(params) for _, cell in columns]
        if error is not None:
            rows.append([*cells, "failed", ""][: len(header)])
        else:
            rows.append(
                [*cells, number(metrics, metric)]
                + ([] if test_metric is None else [number(metrics, test_metric)])
            )
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)) for row in [header, *rows]
    )


def _build_counts(metrics: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Summed store events of every trial: how often each step was built, resumed, reused and
    how long its builds took."""
    totals: dict[str, dict[str, float]] = {}
    for result in metrics:
        for step, events in (result.get("store") or {}).items():
            for event, count in events.items():
                totals.setdefault(step, {}).setdefault(event, 0)
                totals[step][event] += count
    return totals


@dataclass
class SweepResult:
    folder: Path
    table: str
    header: list[str]
    rows: list[list[str]]
    builds: dict[str, dict[str, float]]
    trials: int
    failed: int
    seconds: float
    work_s: float
    parent_run_id: str | None


def unreadable_tune_state(folder: Path) -> str | None:
    """The name of the newest of Tune's saved state files in `folder` that does not read back
    (empty or cut short), if any."""
    for pattern, load in TUNE_STATE_PATTERNS.items():
        states = sorted(Path(folder).glob(pattern))
        if not states:
            continue  # not saved yet: Tune starts from nothing, and loses nothing
        try:
            (load or ray.cloudpickle.loads)(states[-1].read_bytes())
        except (ValueError, EOFError, pickle.UnpicklingError):
            return states[-1].name
    return None


def check_tune_state(folder: Path) -> None:
    """Tune's newest saved state in a sweep's folder must read back: where it does not (the
    driver killed while Tune copied it there), Tune would start the sweep over under new trial
    names, running and logging every trial again."""
    unreadable = unreadable_tune_state(folder)
    if unreadable:
        raise ConfigError(
            f"--resume {folder}: Tune's saved state {unreadable} is incomplete (the sweep's "
            "driver died while Tune wrote it), so the sweep cannot be resumed; start it again "
            "with `wsss tune`: the steps its trials finished come from the store"
        )


def read_plan(folder: Path) -> SweepPlan:
    """The plan of the sweep in `folder` (for `--resume`)."""
    if not (Path(folder) / PLAN_FILE).is_file():
        raise ConfigError(f"--resume {folder}: no {PLAN_FILE} there (not a sweep folder)")
    return SweepPlan(**json.loads((Path(folder) / PLAN_FILE).read_text()))


def plan_sweep(
    space_name: str,
    base: WsssConfig,
    runs_dir: Path,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
) -> Path:
    """Check the space against `base` and write a new sweep's folder and plan (nothing runs
    yet); returns the folder, `runs_dir/sweeps/<space>-<name>-<time>`. `max_concurrent`
    None runs as many trials at once as the cluster fits."""
    space = get_space(space_name, base)
    check_space(space, base.model_dump(mode="json"))
    stem = f"{space.name}-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweeps = Path(runs_dir).resolve() / SWEEPS_DIR
    sweeps.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        name = stem if number == 1 else f"{stem}-{number}"
        try:
            (sweeps / name).mkdir()  # exclusive: two sweeps started at once get two folders
            break
        except FileExistsError:
            continue
    plan = SweepPlan(
        name, space.name, base.model_dump(mode="json"), num_samples or space.num_samples,
        max_concurrent or 0,
    )  # fmt: skip
    write_atomic(sweeps / name / PLAN_FILE, json.dumps(asdict(plan), indent=2) + "\n")
    return sweeps / name


def run_sweep(folder: Path) -> SweepResult:
    """Run the sweep planned in `folder`, or carry it on where it was cut off; see the module
    docstring."""
    folder = Path(folder).resolve()
    plan = read_plan(folder)
    runs_dir = folder.parent.parent
    resuming = tune.Tuner.can_restore(str(folder))
    if resuming:
        check_tune_state(folder)
    base_raw = plan.config
    base = validate(base_raw)
    space = get_space(plan.space, base)
    check_space(space, base_raw)
    started = time.perf_counter()
    with ray_session(base.ray) as where:
        capacity = trial_capacity(base, ray.cluster_resources())
        concurrent = min(plan.max_concurrent or capacity, capacity)
        if plan.max_concurrent > capacity:
            logger.warning(
                f"[tune] --max-concurrent {plan.max_concurrent}: the cluster fits {capacity} "
                "trial(s) at once; running that many"
            )
        tracker = Tracker(base.tracking, runs_dir)
        with tracker.parent_run(
            f"sweep {plan.name}", {"space": plan.space, **plan.config}, plan.parent_run_id
        ) as parent_run_id:
            plan.parent_run_id = parent_run_id
            write_atomic(folder / PLAN_FILE, json.dumps(asdict(plan), indent=2) + "\n")
            logger.info(
                f"[tune] sweep {plan.name} ({space.name}: {space.description}) on {where}; "
                f"{concurrent} trial(s) at once; MLflow run {parent_run_id}"
            )
            uri = tracking_uri(base.tracking, runs_dir)
            callback = SweepTracker(uri, tracker.experiment_id, parent_run_id, folder)
            grid = _run_tune(
                space, base_raw, runs_dir, folder, plan, concurrent, callback, resuming
            )
            results = [(r.config, r.metrics or {}, str(r.error) if r.error else None) for r in grid]
            header, rows = table_rows(space, results)
            table = format_table(header, rows)
            buffer = io.StringIO()
            csv.writer(buffer).writerows([header, *rows])
            tracker.log_text(buffer.getvalue(), f"{space.name}.csv")
            builds = _build_counts([m for _, m, _ in results])
            # The trained models' builds run inside their step's build: only the steps count.
            work_s = sum(builds.get(step, {}).get("build_s", 0.0) for step in PIPELINE_STEPS)
            work_s += sum(m.get("evaluation_s", 0.0) for _, m, _ in results)
            tracker.log_dict(builds, "builds.json")
    seconds = time.perf_counter() - started
    logger.info(f"[tune] {len(results)} trial(s) in {format_duration(seconds)}")
    return SweepResult(
        folder, table, header, rows, builds, len(results),
        sum(error is not None for _, _, error in results), seconds, work_s, parent_run_id,
    )  # fmt: skip


def _trial_folder_name(trial: Any) -> str:
    """Tune's folder of a trial: its name (Tune's default adds every parameter)."""
    return str(trial)


def _run_tune(
    space: SearchSpace,
    base_raw: dict[str, Any],
    runs_dir: Path,
    folder: Path,
    plan: SweepPlan,
    concurrent: int,
    callback: SweepTracker,
    resuming: bool,
) -> tune.ResultGrid:
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base_raw,
            runs_dir=str(runs_dir),
            trials_dir=str(folder / TRIALS_DIR),
            kind=space.trial,
        ),
        # The trial itself only waits on its steps, which ask for their own resources: no CPU
        # (which Ray Data would miss), only a little of Ray's logical memory, as Tune needs
        # something to place.
        {"CPU": 0, "memory": TRIAL_MEMORY},
    )
    # Saved after every step of Tune's loop: a sweep killed at any point loses no finished trial.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    if resuming:
        tuner = tune.Tuner.restore(
            str(folder), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        scheduler = space.scheduler(validate(base_raw)) if space.scheduler else None
        tuner = tune.Tuner(
            trainable,
            param_space=dict(space.params),
            tune_config=tune.TuneConfig(
                num_samples=plan.num_samples,
                max_concurrent_trials=concurrent,
                scheduler=scheduler,
                metric=space.metric if scheduler else None,
                mode=space.mode if scheduler else None,
                trial_dirname_creator=_trial_folder_name,
                # One trial process for one trial after another: no start-up and imports each.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=plan.name,
                storage_path=str(folder.parent),
                callbacks=[callback],
                verbose=0,
            ),
        )
    return tuner.fit()
