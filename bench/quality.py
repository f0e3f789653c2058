"""Quality benchmark: does each step earn its place, and how close does the weak pipeline get
to full supervision on the same budget?

For each seed (dataset and models both follow `seed`), runs the whole pipeline (`run_pipeline`,
which scores every step on val and test) on `--preset`, then in the same Ray session trains
the same DeepLabV3+ (same step-3 config, epochs, augmentation and best-epoch rule, and the
same initial encoder: step 1's classifier where `step3.encoder_from` says so, as it needs only
image labels) on the ground-truth masks of the train images, which the synthetic set keeps in
`oracle/` apart from everything the weak pipeline reads, and scores it on val and test
without and with TTA: the fully supervised upper bound is the better of the two.

Reported per step: val and test mIoU (steps 1 and 2 drawn with the true and with the predicted
labels) and, for steps 1 and 2, train mIoU against the train split's true masks, each as mean
and standard deviation over seeds.
`weak_to_full` = segmentation_tta / full and `cam_to_full` = cam / full, both on val, with
full = `full_miou`.

Ablations (`--ablations`, each a row of val mIoU per step, on the first seed): balancing by
downsampling / upsampling / both, `person` kept with its missing labels vs excluded with the
binary classifier's CAMs merged, and IRNet's background threshold 0.5 instead of the preset's.

Run folders go to `--runs-dir` (default `runs/quality`); steps shared between rows come from the
step cache. Prints progress and a table, and as the last line one JSON object:
`{"steps": {step: {"train": ..., "val": {"mean", "std"}, "test": ...}}, "full_miou",
"weak_to_full", "cam_to_full", "seeds", "ablations": {row: {step: val mIoU}}}` (mIoU as
fractions).

Run: `python bench/quality.py [--preset demo] [--seeds 3] [--ablations all|none|NAME,...]
[--set KEY=VALUE ...]`; each `--set` changes the preset for every run, weak and fully supervised
(e.g. `--set step3.output_stride=8` compares both models at another output stride).
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from wsss.platform.config import ConfigError, WsssConfig, load_config
from wsss.platform.console import show_on_console
from wsss.platform.datasets.manifest import ORACLE_MASK_DIR, load_dataset
from wsss.platform.ray_cluster import ray_session
from wsss.platform.report import STEP_NAMES
from wsss.platform.run import prepare_dataset, run_pipeline
from wsss.platform.runners import segmentation
from wsss.platform.runners.outputs import Step1Output, Step3Output
from wsss.platform.store import StepStore

ABLATIONS: dict[str, list[str]] = {
    "balance_downsample": ["data.balance=downsample"],
    "balance_upsample": ["data.balance=upsample"],
    "balance_both": ["data.balance=both"],
    "person_kept": ["step1.exclude_classes=[]", "step1.merge_binary_cams=false"],
    "person_binary": ["step1.exclude_classes=[person]", "step1.merge_binary_cams=true"],
    "irnet_thres_0.5": ["step2.sem_seg_bg_thres=0.5"],
}


def _config(preset: str, seed: int, name: str, overrides: list[str]) -> WsssConfig:
    return load_config(preset, None, [*overrides, f"seed={seed}", f"name={name}"])


def planned_configs(
    preset: str, seeds: int, ablations: list[str], overrides: list[str]
) -> tuple[list[WsssConfig], dict[str, WsssConfig]]:
    """The weak runs: one per seed 0 .. `seeds` - 1, and one per ablation on seed 0. Every run
    takes `overrides`; an ablation's own settings win over them."""
    per_seed = [
        _config(preset, seed, f"quality-{preset}-s{seed}", overrides) for seed in range(seeds)
    ]
    per_ablation = {
        name: _config(preset, 0, f"quality-{preset}-{name}", [*overrides, *ABLATIONS[name]])
        for name in ablations
    }
    return per_seed, per_ablation


def full_supervision(config: WsssConfig, runs_dir: Path) -> dict[str, float]:
    """The step-3 model trained on the train images' true masks: val and test mIoU without TTA
    (`val`, `test`) and with it (`val_tta`, `test_tta`). A step of the store, `full-<key>`,
    reused when the same settings trained it before (its key leaves out step 2, the TTA and
    step 1's inference settings, none of which it reads); step 1 of `config`'s weak run must
    be finished (its classifier may be read)."""
    dataset_dir = prepare_dataset(config, runs_dir)
    info, rows = load_dataset(dataset_dir)
    oracle = dataset_dir / ORACLE_MASK_DIR
    if not oracle.is_dir():
        raise FileNotFoundError(f"{oracle}: full supervision needs the synthetic set's masks")
    made_from = {
        "seed": config.seed,
        "data": config.data.model_dump(mode="json"),
        "step1": config.step1.model_dump(mode="json", exclude=config.step1.inference_fields),
        "step3": config.step3.model_dump(mode="json", exclude={"tta"}),
        "masks": str(ORACLE_MASK_DIR),
    }
    # Only the classifier is read (step3.encoder_from), not the confident images.
    step1 = Step1Output(runs_dir / config.name / "step1", train_top_scores={})
    step_dir, _ = StepStore(runs_dir / "cache").run(
        "full",
        made_from,
        lambda folder: segmentation.train_segmenter(config, info, rows, oracle, step1, folder),
    )
    variants = {"": None, "_tta": config.step3.tta}
    scores = segmentation.evaluate_segmenter(config, info, rows, Step3Output(step_dir), variants)
    return {
        f"{split}{suffix}": metrics[suffix]["miou"]
        for split, metrics in scores.items()
        for suffix in variants
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(
    runs: dict[str, list[dict[str, float]]], full_runs: list[dict[str, float]]
) -> dict[str, Any]:
    """Mean and std over seeds per step and split (`runs`: {split: [{step: mIoU} per seed]},
    train holding the pseudo masks' rows where the data set has its true train masks);
    weak-to-full and CAM-to-full on val."""
    steps: dict[str, dict[str, dict[str, float]]] = {}
    for step in STEP_NAMES:
        drawn = {
            split: _mean_std([run[step] for run in split_runs])
            for split, split_runs in runs.items()
            if split_runs and step in split_runs[0]
        }
        if drawn:
            steps[step] = drawn
    for name, suffix in (("full", ""), ("full_tta", "_tta")):
        steps[name] = {
            split: _mean_std([run[f"{split}{suffix}"] for run in full_runs])
            for split in ("val", "test")
        }
    # The upper bound is the better of the two ways to evaluate it: TTA at scales tuned for
    # 512 px images can cost a small-image model more than it gives.
    full = max(steps["full"]["val"]["mean"], steps["full_tta"]["val"]["mean"])
    return {
        "steps": steps,
        "full_miou": full,
        "weak_to_full": steps["segmentation_tta"]["val"]["mean"] / full,
        "cam_to_full": steps["cam"]["val"]["mean"] / full,
    }


def format_table(summary: dict[str, Any]) -> str:
    splits = ("train", "val", "test")
    lines = [f"{'Method step':<36}" + "".join(f"  {f'{s} mIoU':>15}" for s in splits)]
    names = {
        **STEP_NAMES,
        "full": "Full supervision (true masks)",
        "full_tta": "Full supervision (true masks) + TTA",
    }
    for step, drawn in summary["steps"].items():
        cells = [
            f"{100 * drawn[s]['mean']:6.2f} ± {100 * drawn[s]['std']:5.2f}" if s in drawn else ""
            for s in splits
        ]
        lines.append(f"{names[step]:<36}" + "".join(f"  {cell:>15}" for cell in cells))
    lines.append(
        f"weak_to_full {summary['weak_to_full']:.3f}   cam_to_full {summary['cam_to_full']:.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument(
        "--ablations",
        default="none",
        help=f"'all', 'none' or a comma-separated list of: {', '.join(ABLATIONS)}",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="config override for every run, weak and fully supervised (as `wsss run --set`)",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    args.runs_dir = args.runs_dir.resolve()  # Ray workers do not run in this folder
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    ablations = {"all": list(ABLATIONS), "none": []}.get(args.ablations)
    if ablations is None:
        ablations = args.ablations.split(",")
        unknown = sorted(set(ablations) - set(ABLATIONS))
        if unknown:
            parser.error(f"unknown ablations {unknown}; available: {', '.join(ABLATIONS)}")

    try:
        seed_configs, ablation_configs = planned_configs(
            args.preset, args.seeds, ablations, args.overrides
        )
    except ConfigError as exc:
        parser.error(str(exc))
    show_on_console()
    runs: dict[str, list[dict[str, float]]] = {"train": [], "val": [], "test": []}
    full_runs = []
    ablation_rows: dict[str, dict[str, float]] = {}
    with ray_session(seed_configs[0].ray):
        for config in seed_configs:
            print(f"[quality] seed {config.seed}: weak pipeline", flush=True)
            report = run_pipeline(config, args.runs_dir)
            for split, key in (("train", "train_steps"), ("val", "steps"), ("test", "test_steps")):
                runs[split].append({step: m["miou"] for step, m in report[key].items()})
            print(f"[quality] seed {config.seed}: full supervision", flush=True)
            full_runs.append(full_supervision(config, args.runs_dir))
            print(
                f"[quality] seed {config.seed}: val {runs['val'][-1]} full {full_runs[-1]}",
                flush=True,
            )
        for name, config in ablation_configs.items():
            print(f"[quality] ablation {name}: {' '.join(ABLATIONS[name])}", flush=True)
            report = run_pipeline(config, args.runs_dir)
            ablation_rows[name] = {step: m["miou"] for step, m in report["steps"].items()}
    summary = summarize(runs, full_runs)
    print(format_table(summary))
    for name, row in ablation_rows.items():
        print(f"{name:<20} " + "  ".join(f"{step} {100 * v:.2f}" for step, v in row.items()))
    print(json.dumps({**summary, "seeds": args.seeds, "ablations": ablation_rows}))


if __name__ == "__main__":
    main()
