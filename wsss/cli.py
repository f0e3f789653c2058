"""The `wsss` command: run the pipeline, sweep it, show configs, make and import datasets.

The commands that run on Ray import the pipeline (Ray, torch, MLflow: seconds) when they run,
so `wsss --help`, `wsss config` and `wsss data` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from wsss.platform.config import ConfigError, WsssConfig, load_config, preset_names, to_yaml
from wsss.platform.console import capture_console
from wsss.platform.datasets.adapters import import_dataset
from wsss.platform.datasets.adapters.common import ADAPTERS
from wsss.platform.datasets.manifest import DatasetError
from wsss.platform.datasets.stats import dataset_stats, format_stats
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.local_cluster import ClusterError
from wsss.platform.store import (
    StoreEntry,
    collect_garbage,
    store_entries,
    writable_runs_folder,
)
from wsss.tune_spaces import space_modules

logger = logging.getLogger("wsss.cli")
# The exit status of a command stopped by Ctrl-C, as shells report one killed by SIGINT.
INTERRUPTED = 130
# Where `wsss cluster` keeps a local cluster's nodes and logs, inside the runs folder.
CLUSTER_FOLDER = "cluster"


def _add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None) -> None:
    parser.add_argument(
        "--preset",
        default=default_preset,
        help=f"shipped preset: {', '.join(preset_names())} (default: {default_preset})",
    )
    parser.add_argument("--config", type=Path, help="YAML file merged over the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set step2.sem_seg_bg_thres=0.5 (repeatable)",
    )


def _config(args: argparse.Namespace) -> WsssConfig:
    return load_config(args.preset, args.config, args.overrides)


def _config_show(args: argparse.Namespace) -> int:
    print(to_yaml(_config(args)), end="")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (
        ("image_size", args.size),
        ("num_classes", args.classes),
        ("train_images", args.train),
        ("val_images", args.val),
        ("test_images", args.test),
        ("workers", args.workers),
    ):
        if value is not None:
            overrides.append(f"data.synthetic.{key}={value}")
    config = load_config(args.preset, args.config, overrides)
    seed = config.seed if args.seed is None else args.seed
    synthetic = config.data.synthetic
    print(
        f"drawing {synthetic.train_images + synthetic.val_images + synthetic.test_images} "
        f"images ({synthetic.image_size}px, {synthetic.num_classes} classes, seed {seed}) "
        f"into {args.out} with {synthetic.workers} worker(s)",
        flush=True,
    )
    started = time.perf_counter()
    build_synthetic_dataset(args.out, synthetic, seed)
    print(f"done in {time.perf_counter() - started:.1f}s\n")
    print(format_stats(dataset_stats(args.out, synthetic.dominant_class)))
    return 0


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DatasetError(f"--option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def _data_import(args: argparse.Namespace) -> int:
    info, rows, rejects = import_dataset(
        args.format,
        args.src,
        args.out,
        name=args.name,
        workers=args.workers,
        strict=args.strict,
        **_parse_options(args.option),
    )
    print(f"imported {len(rows)} image(s) from {args.src} ({args.format}) into {args.out}")
    print("per split: " + ", ".join(f"{split} {n}" for split, n in info.counts.items()))
    if rejects:
        print(f"rejected {len(rejects)} (reasons in {Path(args.out) / 'rejected.jsonl'}):")
        for reject in rejects[:20]:
            print(f"  {reject.file}: {reject.reason}")
        if len(rejects) > 20:
            print(f"  ... and {len(rejects) - 20} more")
    return 0


def _data_stats(args: argparse.Namespace) -> int:
    stats = dataset_stats(args.dir, args.dominant_class)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _run(args: argparse.Namespace) -> int:
    from wsss.platform.ray_cluster import refuse_for_the_local_cluster
    from wsss.platform.report import REPORT_FILE, format_table2
    from wsss.platform.run import LOG_FILE, StepFailedError, run_folder, run_pipeline

    config = _config(args)
    refuse_for_the_local_cluster(config.ray)  # before the runs folder and its MLflow store
    # Resolved here, where the command starts: Ray workers do not run in this folder.
    runs_dir = writable_runs_folder(args.runs_dir)
    with (
        run_folder(runs_dir, config.name) as run_dir,
        capture_console(run_dir / LOG_FILE) as console,
    ):
        try:
            report = run_pipeline(config, runs_dir, run_dir)
        except StepFailedError as exc:
            traceback.print_exc()  # into the log: the console gets one line of it
            logger.error(f"{exc}\nthe full log is in {run_dir / LOG_FILE}")
            return 1
        except KeyboardInterrupt:
            traceback.print_exc()
            logger.warning(
                f"interrupted: the steps and training epochs that finished are kept, and the "
                f"same command goes on from them\nthe full log is in {run_dir / LOG_FILE}"
            )
            return INTERRUPTED
        print(f"\nTable 2 for run {config.name} (mIoU, %):", file=console)
        print(format_table2(report), file=console)
        print(f"\nreport: {run_dir / REPORT_FILE}\nlog: {run_dir / LOG_FILE}", file=console)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from wsss.platform.ray_cluster import refuse_for_the_local_cluster
    from wsss.platform.sweep import plan_sweep, read_plan, run_sweep

    if args.resume:
        folder = args.resume.resolve()
        read_plan(folder)  # a folder that is no sweep's fails here, before any work
    else:
        config = _config(args)
        refuse_for_the_local_cluster(config.ray)
        folder = plan_sweep(
            args.space,
            config,
            writable_runs_folder(args.runs_dir),
            args.num_samples,
            args.max_concurrent,
        )
    with capture_console(folder / "tune.log") as console:
        result = run_sweep(folder)
        failed = f", {result.failed} failed" if result.failed else ""
        print(f"\n{result.trials} trial(s){failed}; best first:\n{result.table}", file=console)
        print("\nsteps built / reused:", file=console)
        for step, events in sorted(result.builds.items()):
            counts = ", ".join(f"{k} {v:g}" for k, v in events.items() if k != "build_s")
            print(f"  {step}: {counts}", file=console)
        print(f"\nsweep folder: {result.folder} (wsss tune --resume {result.folder})", file=console)
    return 0


def _ui(args: argparse.Namespace) -> int:
    from wsss.platform.tracking import tracking_uri

    uri = tracking_uri(_config(args).tracking, args.runs_dir)
    # The MLflow of this environment, whether or not its folder is on PATH.
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    return subprocess.call(command)


def _predict(args: argparse.Namespace) -> int:
    from wsss.platform.predict import predict_images

    config = load_config(None, args.run_dir / "config.yaml")
    log_file = args.out.resolve() / "predict.log"
    with capture_console(log_file) as console:
        summary = predict_images(args.run_dir, args.inputs, args.out, config)
        print(
            f"wrote {summary['written']} mask(s) and overlay(s) to {args.out}; "
            f"{len(summary['unreadable'])} unreadable (log: {log_file})",
            file=console,
        )
        for path, reason in summary["unreadable"]:
            print(f"  unreadable {path}: {reason}", file=console)
    return 0


def _log(args: argparse.Namespace) -> int:
    from wsss.platform.report import log_run
    from wsss.platform.tracking import TrackingUnavailableError

    try:
        report = log_run(args.run_dir, args.tracking_uri)
    except TrackingUnavailableError as exc:
        print(f"wsss: error: {exc}; nothing in {args.run_dir} changed", file=sys.stderr)
        return 1
    mlflow = report["mlflow"]
    print(f"logged {args.run_dir} as MLflow run {mlflow['run_id']} at {mlflow['tracking_uri']}")
    return 0


def _made_from_text(made_from: dict | None) -> str:
    """`data 1a2b3c4d5e6f, seed 0, step1 (20 settings)`: upstream keys and values as they
    are, config sections by their size."""
    if made_from is None:
        return "(no key.json: written by an older wsss)"
    parts = []
    for name, value in made_from.items():
        shown = f"({len(value)} settings)" if isinstance(value, dict) else str(value)
        parts.append(f"{name} {shown}")
    return ", ".join(parts)


def _entry_rows(entries: list[StoreEntry]) -> list[str]:
    header = f"{'folder':<32} {'state':<9} {'size':>9}  {'used by':<20} made from"
    rows = [header]
    for e in entries:
        size = f"{e.size_bytes / 1e6:.1f} MB"
        used = ", ".join(e.used_by) or "-"
        rows.append(
            f"{e.folder.parent.name + '/' + e.folder.name:<32} {e.state:<9} {size:>9}  "
            f"{used:<20} {_made_from_text(e.made_from)}"
        )
    return rows


def _cache_ls(args: argparse.Namespace) -> int:
    entries = store_entries(args.runs_dir)
    if args.json:
        print(json.dumps([{**vars(e), "folder": str(e.folder)} for e in entries], indent=2))
    else:
        print("\n".join(_entry_rows(entries)))
    return 0


def _cache_gc(args: argparse.Namespace) -> int:
    removed = collect_garbage(args.runs_dir, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    freed = sum(e.size_bytes for e in removed) / 1e6
    print(f"{verb} {len(removed)} folder(s) no run folder uses ({freed:.1f} MB)")
    if removed:
        print("\n".join(_entry_rows(removed)))
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from wsss.platform.local_cluster import cluster_up, node_environment

    folder = args.runs_dir.resolve() / CLUSTER_FOLDER
    print(f"starting {args.nodes} node(s), or those of its running cluster that stopped")
    cluster, started = cluster_up(
        folder, args.nodes, args.cpus, args.memory_gb, args.object_store_gb
    )
    started_groups = {node.process_group for node in started}
    for node in cluster.nodes:
        role = "head" if node.index == 0 else "worker"
        state = "started" if node.process_group in started_groups else "already running"
        print(
            f"  {role} {node.address}: {state}; {node.num_cpus} CPUs, {node.memory_gb:g} GiB, "
            f"{node.object_store_gb:g} GiB object store, resource {node.resource}"
        )
    print(f"their logs go to {folder}")
    token = node_environment()["RAY_AUTH_TOKEN_PATH"]
    print(
        f"token authentication on; the token file is {token}\n"
        f"run on it from this machine:  RAY_ADDRESS={cluster.gcs_address} wsss run ...\n"
        f"submit jobs to it:            ray job submit --address {cluster.dashboard_url} ...\n"
        f"dashboard:                    {cluster.dashboard_url}\n"
        f"stop it:                      wsss cluster down --runs-dir {args.runs_dir}"
    )
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    from wsss.platform.local_cluster import LocalCluster, cluster_status

    folder = args.runs_dir.resolve() / CLUSTER_FOLDER
    cluster = LocalCluster.load(folder)
    print(f"cluster {cluster.gcs_address}, dashboard {cluster.dashboard_url}")
    nodes = cluster_status(folder)
    for node, alive in nodes:
        state = "running" if alive else "stopped"
        print(f"  node {node.index} {node.address}: {state} ({node.num_cpus} CPUs)")
    return 0 if all(alive for _, alive in nodes) else 1


def _cluster_down(args: argparse.Namespace) -> int:
    from wsss.platform.local_cluster import cluster_down

    stopped = cluster_down(args.runs_dir.resolve() / CLUSTER_FOLDER)
    print(f"stopped {len(stopped)} node(s): {', '.join(n.address for n in stopped) or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly supervised semantic segmentation from image-level labels, on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the three-step pipeline")
    _add_config_arguments(run, "demo")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    run.set_defaults(handler=_run)

    ui = commands.add_parser("ui", help="serve the MLflow UI for the runs on 127.0.0.1")
    _add_config_arguments(ui, "demo")
    ui.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)

    predict = commands.add_parser("predict", help="segment images with a finished run's model")
    predict.add_argument("run_dir", type=Path, help="runs/<name> of a finished run")
    predict.add_argument("inputs", type=Path, nargs="+", help="images or folders of images")
    predict.add_argument("--out", type=Path, required=True, help="folder for masks and overlays")
    predict.set_defaults(handler=_predict)

    log = commands.add_parser(
        "log", help="log a finished run to MLflow from its folder (when tracking was down)"
    )
    log.add_argument("run_dir", type=Path, help="runs/<name> of a finished run")
    log.add_argument(
        "--tracking-uri", help="the MLflow store to log to (default: the run's own store)"
    )
    log.set_defaults(handler=_log)

    sweep = commands.add_parser("tune", help="sweep a search space with Ray Tune")
    sweep.add_argument(
        "--space", default="table3", help=f"search space: {', '.join(space_modules())}"
    )
    _add_config_arguments(sweep, "demo")
    sweep.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    sweep.add_argument("--num-samples", type=int, help="draws of the space (default: its own)")
    sweep.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as many as fit the cluster)"
    )
    sweep.add_argument("--resume", type=Path, help="a sweep folder to carry on")
    sweep.set_defaults(handler=_tune)

    cache = commands.add_parser("cache", help="list and clean the step store")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    ls = cache_commands.add_parser("ls", help="each step folder: what it is and who uses it")
    ls.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    ls.add_argument("--json", action="store_true", help="print JSON, keys' recipes in full")
    ls.set_defaults(handler=_cache_ls)
    gc = cache_commands.add_parser(
        "gc", help="remove step folders no run folder uses, and dead builders' work folders"
    )
    gc.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    gc.add_argument("--dry-run", action="store_true", help="only list what would go")
    gc.set_defaults(handler=_cache_gc)

    cluster = commands.add_parser("cluster", help="a Ray cluster of several nodes on this machine")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_commands.add_parser("up", help="start a head and worker nodes")
    up.add_argument("--nodes", type=int, default=2, help="nodes, the head included (default 2)")
    up.add_argument("--cpus", type=int, help="CPUs per node (default: the machine's, shared)")
    up.add_argument("--memory-gb", type=float, help="memory per node (default: half, shared)")
    up.add_argument("--object-store-gb", type=float, help="object store per node")
    status = cluster_commands.add_parser("status", help="the nodes and whether they run")
    down = cluster_commands.add_parser("down", help="stop the nodes `up` started")
    for command, handler in ((up, _cluster_up), (status, _cluster_status), (down, _cluster_down)):
        command.add_argument(
            "--runs-dir", type=Path, default=Path("runs"), help="default: ./runs (its cluster/)"
        )
        command.set_defaults(handler=handler)

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config as YAML")
    _add_config_arguments(show, "demo")
    show.set_defaults(handler=_config_show)

    data = commands.add_parser("data", help="make, import and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="draw the built-in synthetic dataset")
    synth.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    _add_config_arguments(synth, "demo")
    synth.add_argument("--seed", type=int, help="dataset seed (default: the config's seed)")
    synth.add_argument("--size", type=int, help="image side in pixels")
    synth.add_argument("--classes", type=int, help="number of object classes")
    synth.add_argument("--train", type=int, help="number of train images")
    synth.add_argument("--val", type=int, help="number of val images")
    synth.add_argument("--test", type=int, help="number of test images")
    synth.add_argument("--workers", type=int, help="drawing processes")
    synth.set_defaults(handler=_data_synth)

    imp = data_commands.add_parser("import", help="import a dataset layout into a manifest")
    imp.add_argument("format", choices=ADAPTERS.names(), help="source layout")
    imp.add_argument("src", type=Path, help="the layout's root folder")
    imp.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    imp.add_argument("--name", help="dataset name (default: the source folder's name)")
    imp.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    imp.add_argument("--strict", action="store_true", help="fail if any row is rejected")
    imp.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, e.g. labels_from=xml (voc), synset_map=FILE (lid), "
        "labels=FILE (folder)",
    )
    imp.set_defaults(handler=_data_import)

    stats = data_commands.add_parser("stats", help="summarise a dataset folder")
    stats.add_argument("dir", type=Path)
    stats.add_argument("--dominant-class", default="person")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(handler=_data_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, DatasetError, FileNotFoundError, ClusterError) as exc:
        print(f"wsss: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
