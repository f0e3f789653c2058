"""bench/robustness.py: every setting is a valid config, and a setting's verdict by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the bench imports bench/quality.py as a script would
SPEC = importlib.util.spec_from_file_location("robustness_bench", BENCH / "robustness.py")
robustness = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(robustness)


def test_every_setting_is_a_valid_change_of_the_preset():
    configs = robustness.planned_configs("smoke", list(robustness.SETTINGS))
    assert configs["preset"].data.synthetic.num_classes == 6
    assert configs["classes_40"].data.synthetic.num_classes == 40
    assert configs["seed_1"].seed == 1
    missing = configs["missing_labels_0.7"]
    assert missing.data.synthetic.missing_label_rate == 0.7
    # The class whose labels go missing is one the recipe learns.
    assert missing.data.synthetic.dominant_class not in missing.step1.exclude_classes
    assert configs["size_64"].data.image_size == configs["size_64"].data.synthetic.image_size
    assert len({c.name for c in configs.values()}) == len(configs)


def _metrics(miou: float, per_class: dict) -> dict:
    return {"miou": miou, "per_class_iou": {"background": 0.8, **per_class}}


def test_a_setting_holds_only_near_its_masks_and_with_every_carried_class():
    report = {
        "classifier": {"f1_macro": 0.6},
        "train_steps": {"irnet": _metrics(0.40, {"dog": 0.5, "cat": 0.25, "boat": 0.1})},
        "steps": {"segmentation_tta": _metrics(0.38, {"dog": 0.6, "cat": 0.0, "boat": 0.0})},
        "test_steps": {},
    }
    full = {"val": 0.5, "val_tta": 0.4, "test": 0.5, "test_tta": 0.4}
    row = robustness.judge(report, full)
    assert row["gap"] == pytest.approx(-0.02)
    assert row["weak_to_full"] == pytest.approx(0.38 / 0.5)
    # cat (0.25 in the masks) is lost; boat (0.1) was never carried.
    assert row["lost_classes"] == ["cat"] and not row["holds"]
    report["steps"]["segmentation_tta"]["per_class_iou"]["cat"] = 0.01
    assert robustness.judge(report, full)["holds"]
    report["steps"]["segmentation_tta"]["miou"] = 0.36
    assert not robustness.judge(report, full)["holds"]  # 4 points below its masks
