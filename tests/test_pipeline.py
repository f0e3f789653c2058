"""End to end: `wsss run --preset smoke` on a real local Ray cluster, tracked in MLflow."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from wsss.platform.datasets.images import read_mask
from wsss.platform.datasets.manifest import load_dataset
from wsss.platform.pipeline import REPORT_FILE, format_table2, run_pipeline, table2

STEPS = ("cam", "cam_crf", "irnet", "segmentation", "segmentation_tta")


def test_report_has_the_promised_shape_and_ranges(smoke_run):
    runs_dir, report = smoke_run
    assert set(report) == {"dataset", "classifier", "steps", "split", "timings_s", "mlflow"}
    assert report["split"] == "val"
    assert set(report["steps"]) == set(STEPS)
    for name in STEPS:
        metrics = report["steps"][name]
        assert set(metrics) == {"miou", "mean_accuracy", "pixel_accuracy", "per_class_iou"}
        for key in ("miou", "mean_accuracy", "pixel_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert "background" in metrics["per_class_iou"]
    assert 0.0 <= report["classifier"]["f1_macro"] <= 1.0
    assert 0.0 <= report["classifier"]["confident_share"] <= 1.0
    assert set(report["timings_s"]) >= {"data", "step1", "step2", "step3", "evaluation"}
    saved = json.loads((runs_dir / "smoke" / REPORT_FILE).read_text())
    assert saved == json.loads(json.dumps(report))


def test_the_run_folder_holds_config_and_every_steps_artifacts(smoke_run):
    runs_dir, _ = smoke_run
    run_dir = runs_dir / "smoke"
    assert (run_dir / "config.yaml").is_file()
    assert any((run_dir / "step1" / "cams").glob("*.npz"))
    assert any((run_dir / "step1" / "ir_labels").glob("*.png"))
    assert (run_dir / "step2" / "irnet.pt").is_file()
    assert any((run_dir / "step2" / "pseudo_masks").glob("train_*.png"))
    assert (run_dir / "step3" / "segmenter.pt").is_file()


def _chance_miou(runs_dir: Path, num_classes: int) -> float:
    """Expected mIoU of labelling each val pixel uniformly at random: with n_c pixels of class
    c out of N, the expected IoU of c is (n_c / K) / (n_c + N / K - n_c / K)."""
    dataset = next((runs_dir / "datasets").iterdir())
    info, rows = load_dataset(dataset)
    counts = np.zeros(num_classes)
    for row in (r for r in rows if r.split == "val"):
        mask = read_mask(info.root / row.mask)
        counts += np.bincount(mask[mask != 255], minlength=num_classes)[:num_classes]
    total = counts.sum()
    present = counts[counts > 0]
    return float(
        np.mean((present / num_classes) / (present + total / num_classes - present / num_classes))
    )


def test_segmentation_beats_chance(smoke_run):
    runs_dir, report = smoke_run
    num_classes = len(report["steps"]["segmentation"]["per_class_iou"])
    chance = _chance_miou(runs_dir, num_classes)
    assert 0.0 < chance < 0.1
    assert report["steps"]["segmentation"]["miou"] > 1.5 * chance
    assert report["steps"]["segmentation_tta"]["miou"] > 1.5 * chance


def test_table2_lists_each_step_in_percent(smoke_run):
    _, report = smoke_run
    rows = table2(report)
    assert rows["Step 3. Segmentation + TTA"] == pytest.approx(
        100 * report["steps"]["segmentation_tta"]["miou"], abs=0.01
    )
    assert "Step 2. IRNet" in format_table2(report)


def test_mlflow_holds_the_parent_and_step_runs_with_the_same_numbers(smoke_run):
    _, report = smoke_run
    client = MlflowClient(report["mlflow"]["tracking_uri"])
    parent = client.get_run(report["mlflow"]["run_id"])
    for name in STEPS:
        assert parent.data.metrics[f"{name}_miou"] == pytest.approx(report["steps"][name]["miou"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {run.info.run_name for run in children} == {"step1", "step2", "step3"}
    step1 = next(run for run in children if run.info.run_name == "step1")
    assert step1.data.params["backbone"] == "resnet18"
    assert "loss" in step1.data.metrics
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "panels")]
    assert len(artifacts) >= 1 and artifacts[0].endswith(".png")
    assert mlflow.get_tracking_uri() == report["mlflow"]["tracking_uri"]


def test_second_run_with_the_same_config_reuses_every_step(smoke_run, smoke_config, capsys):
    runs_dir, first = smoke_run
    capsys.readouterr()
    again = run_pipeline(smoke_config, runs_dir)
    out = capsys.readouterr().out
    for step in ("step1", "step2", "step3"):
        assert f"[{step}] reusing" in out
    assert "[data] reusing" in out
    assert again["steps"] == json.loads(json.dumps(first["steps"]))


def test_a_changed_step3_setting_reuses_steps_1_and_2(smoke_run, smoke_config, capsys):
    runs_dir, _ = smoke_run
    changed = smoke_config.model_copy(deep=True)
    changed.step3.tta.scales = [1.0]  # TTA is evaluation only: even step 3 is reused
    changed.name = "smoke-tta"
    capsys.readouterr()
    report = run_pipeline(changed, runs_dir)
    out = capsys.readouterr().out
    assert "[step1] reusing" in out and "[step2] reusing" in out and "[step3] reusing" in out
    assert 0.0 <= report["steps"]["segmentation_tta"]["miou"] <= 1.0
    assert Path(runs_dir / "smoke-tta" / REPORT_FILE).is_file()
