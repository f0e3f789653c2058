"""bench/quality.py's summary: means, standard deviations and the two ratios, by hand."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "quality_bench", Path(__file__).parents[1] / "bench" / "quality.py"
)
quality = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quality)


def test_summary_averages_seeds_and_divides_by_the_better_full_model():
    val_runs = [
        {"cam": 0.2, "cam_crf": 0.22, "irnet": 0.25, "segmentation": 0.3, "segmentation_tta": 0.32},
        {"cam": 0.3, "cam_crf": 0.32, "irnet": 0.35, "segmentation": 0.4, "segmentation_tta": 0.44},
    ]
    test_runs = [
        {"segmentation": 0.31, "segmentation_tta": 0.33},
        {"segmentation": 0.41, "segmentation_tta": 0.43},
    ]
    # Full supervision is better without TTA here: the ratios use 0.5, not 0.45.
    full_runs = [
        {"val": 0.4, "val_tta": 0.35, "test": 0.42, "test_tta": 0.36},
        {"val": 0.6, "val_tta": 0.55, "test": 0.62, "test_tta": 0.56},
    ]
    train_runs = [{"irnet": 0.36}, {"irnet": 0.46}]
    runs = {"train": train_runs, "val": val_runs, "test": test_runs}
    summary = quality.summarize(runs, full_runs)
    assert summary["steps"]["cam"]["val"]["mean"] == pytest.approx(0.25)
    # Sample standard deviation of (0.2, 0.3): sqrt(2 * 0.05**2 / 1).
    assert summary["steps"]["cam"]["val"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert "test" not in summary["steps"]["irnet"]
    assert summary["steps"]["irnet"]["train"]["mean"] == pytest.approx(0.41)
    assert "train" not in summary["steps"]["cam"]
    assert summary["steps"]["segmentation_tta"]["test"]["mean"] == pytest.approx(0.38)
    assert summary["steps"]["full_tta"]["val"]["mean"] == pytest.approx(0.45)
    assert summary["full_miou"] == pytest.approx(0.5)
    assert summary["weak_to_full"] == pytest.approx(0.38 / 0.5)
    assert summary["cam_to_full"] == pytest.approx(0.25 / 0.5)
    assert "weak_to_full 0.760" in quality.format_table(summary)


def test_every_ablation_is_a_valid_config_override():
    for name, overrides in quality.ABLATIONS.items():
        config = quality._config("smoke", 0, f"ablation-{name}", overrides)
        assert config.name == f"ablation-{name}"
    person = quality._config("smoke", 0, "x", quality.ABLATIONS["person_kept"])
    assert person.step1.exclude_classes == []


def test_set_overrides_reach_every_run_and_ablations_win_over_them():
    overrides = ["step3.output_stride=8", "step2.sem_seg_bg_thres=0.4"]
    per_seed, per_ablation = quality.planned_configs(
        "smoke", 2, ["irnet_thres_0.5", "person_kept"], overrides
    )
    assert [c.seed for c in per_seed] == [0, 1]
    assert [c.name for c in per_seed] == ["quality-smoke-s0", "quality-smoke-s1"]
    runs = [*per_seed, *per_ablation.values()]
    assert all(c.step3.output_stride == 8 for c in runs)
    assert [c.step2.sem_seg_bg_thres for c in per_seed] == [0.4, 0.4]
    assert per_ablation["irnet_thres_0.5"].step2.sem_seg_bg_thres == 0.5
    assert per_ablation["person_kept"].step2.sem_seg_bg_thres == 0.4
    assert {c.seed for c in per_ablation.values()} == {0}


def test_a_bad_set_is_refused_before_any_run_naming_the_key(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["quality.py", "--set", "step3.output_strid=8"])
    with pytest.raises(SystemExit):
        quality.main()
    assert "config key step3.output_strid: unknown key" in capsys.readouterr().err
