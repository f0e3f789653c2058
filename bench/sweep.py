"""Sweep benchmark: what a sweep costs against one run, and what it shares.

Runs, in one local Ray session on this machine: `wsss run --preset smoke` from an empty runs
folder, then the `table3` space on the same preset (16 trials) from another empty runs
folder. With perfect sharing the sweep builds the classifier, the binary `person` classifier,
2 CAM sets, 2 IRNets, 4 sets of pseudo masks and 8 DeepLabV3+ models, and evaluates 16 times.

Last line JSON: `trials`, `failed`, `builds` ({step: {built, reused, resumed, build_s}}),
`builds_as_expected`, `sweep_s`, `single_run_s`, `ratio` = sweep_s / single_run_s, `work_s`
(the summed durations of the builds and evaluations the sweep did) and `overhead` =
sweep_s / work_s (what Tune, trial start-up and waiting add).

Run: `python bench/sweep.py [--preset smoke] [--work DIR]` (DIR is emptied first).
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
import shutil
import time
from pathlib import Path

from wsss.platform.config import load_config
from wsss.platform.console import show_on_console
from wsss.platform.ray_cluster import ray_session
from wsss.platform.run import run_pipeline
from wsss.platform.sweep import plan_sweep, run_sweep

# Builds of `table3` when every step is shared where its settings allow (item 4 of the issue).
EXPECTED_BUILDS = {
    "classifier": 1,
    "binary_person": 1,
    "step1": 2,
    "irnet": 2,
    "step2": 4,
    "step3": 8,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsss-bench-sweep"))
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    show_on_console()
    config = load_config(args.preset)
    with ray_session(config.ray):
        started = time.perf_counter()
        run_pipeline(config, work / "single")
        single_run_s = time.perf_counter() - started
        result = run_sweep(plan_sweep("table3", config, work / "sweep"))
    print(result.table)
    built = {step: int(events.get("built", 0)) for step, events in result.builds.items()}
    summary = {
        "trials": result.trials,
        "failed": result.failed,
        "builds": result.builds,
        "builds_as_expected": all(built.get(s, 0) == n for s, n in EXPECTED_BUILDS.items()),
        "sweep_s": result.seconds,
        "single_run_s": single_run_s,
        "ratio": result.seconds / single_run_s,
        "work_s": result.work_s,
        "overhead": result.seconds / result.work_s if result.work_s else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
