"""Robustness benchmark: does the demo recipe hold on built-in data that differs from the demo's
the way users' data does?

Runs `--preset` (the demo) on a small grid of built-in data settings (`SETTINGS`): the demo
itself, four times as many classes, another seed (data and models), a larger share of missing
`person` labels with `person` learnt (not excluded from step 1), smaller images; the recipe is
the preset's in each but for that one key.
Each setting is one weak run (`run_pipeline`) and the same DeepLabV3+ and budget trained on
the train images' true masks (`bench/quality.py`'s `full_supervision`), in one Ray session;
steps whose settings two runs share come from the step store.

Per setting: the Table-2 rows (train: steps 1 and 2's masks against the true train masks; val
and test: steps 1 and 2 with the true and with the predicted labels, and step 3), the
classifier's macro-F1, `weak_to_full` (val mIoU with TTA over the fully supervised model's),
the final model's per-class val IoU beside the train IoU of the IRNet masks it learned from,
and the checks of the issue: `gap` = final val mIoU with TTA minus the IRNet masks' train mIoU
(at least -0.03 holds), `lost_classes` (classes the masks carry with IoU above 0.2 that the
final model scores 0 on: none holds).

Prints a line per setting and, as the last line, one JSON object:
`{"settings": {name: {"overrides", "table2", "f1_macro", "full_miou", "weak_to_full",
"per_class": {class: {"pseudo_train", "final_val"}}, "gap", "lost_classes", "holds"}},
"holds_everywhere"}` (mIoU and IoU as fractions).

Run: `python bench/robustness.py [--preset demo] [--settings NAME,...] [--runs-dir DIR]`.
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
from pathlib import Path
from typing import Any

from quality import full_supervision

from wsss.platform.config import ConfigError, WsssConfig, load_config
from wsss.platform.console import show_on_console
from wsss.platform.ray_cluster import ray_session
from wsss.platform.report import table2
from wsss.platform.run import run_pipeline

SETTINGS: dict[str, list[str]] = {
    "preset": [],
    "classes_40": ["data.synthetic.num_classes=40"],
    "seed_1": ["seed=1"],
    # The built-in set drops labels of its dominant class only, which the demo leaves out of
    # step 1 (`step1.exclude_classes`): kept, its missing labels reach what the recipe learns.
    "missing_labels_0.7": ["data.synthetic.missing_label_rate=0.7", "step1.exclude_classes=[]"],
    "size_64": ["data.image_size=64", "data.synthetic.image_size=64"],
}
# Issue 22's bar: the final model (with TTA) within this much of its masks' train mIoU ...
MAX_DROP = 0.03
# ... and no class the masks carry above this IoU lost to 0.
CARRIED_IOU = 0.2


def planned_configs(preset: str, names: list[str]) -> dict[str, WsssConfig]:
    """One config per setting: the preset with the setting's overrides, named for both."""
    return {
        name: load_config(preset, None, [*SETTINGS[name], f"name=robustness-{preset}-{name}"])
        for name in names
    }


def judge(report: dict[str, Any], full: dict[str, float]) -> dict[str, Any]:
    """A setting's row of the benchmark from its weak run's report and its fully supervised
    model's scores."""
    pseudo = report["train_steps"]["irnet"]
    final = report["steps"]["segmentation_tta"]
    per_class = {
        name: {"pseudo_train": iou, "final_val": final["per_class_iou"].get(name)}
        for name, iou in pseudo["per_class_iou"].items()
        if name != "background"
    }
    lost = sorted(
        name
        for name, ious in per_class.items()
        if ious["pseudo_train"] is not None
        and ious["pseudo_train"] > CARRIED_IOU
        and ious["final_val"] == 0.0
    )
    full_miou = max(full["val"], full["val_tta"])
    gap = final["miou"] - pseudo["miou"]
    return {
        "table2": table2(report),
        "f1_macro": report["classifier"]["f1_macro"],
        "full_miou": full_miou,
        "weak_to_full": final["miou"] / full_miou,
        "per_class": per_class,
        "gap": gap,
        "lost_classes": lost,
        "holds": gap >= -MAX_DROP and not lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"a comma-separated list of: {', '.join(SETTINGS)}",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/robustness"))
    args = parser.parse_args()
    args.runs_dir = args.runs_dir.resolve()  # Ray workers do not run in this folder
    names = args.settings.split(",")
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; available: {', '.join(SETTINGS)}")
    try:
        configs = planned_configs(args.preset, names)
    except ConfigError as exc:
        parser.error(str(exc))
    show_on_console()
    rows: dict[str, dict[str, Any]] = {}
    with ray_session(next(iter(configs.values())).ray):
        for name, config in configs.items():
            print(f"[robustness] {name}: weak pipeline", flush=True)
            report = run_pipeline(config, args.runs_dir)
            print(f"[robustness] {name}: full supervision", flush=True)
            full = full_supervision(config, args.runs_dir)
            rows[name] = {"overrides": SETTINGS[name], **judge(report, full)}
            row = rows[name]
            print(
                f"[robustness] {name}: gap {100 * row['gap']:+.2f}, lost {row['lost_classes']}, "
                f"weak_to_full {row['weak_to_full']:.3f}, F1 {row['f1_macro']:.3f}",
                flush=True,
            )
    holds = all(row["holds"] for row in rows.values())
    print(json.dumps({"settings": rows, "holds_everywhere": holds}))


if __name__ == "__main__":
    main()
