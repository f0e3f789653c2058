"""The `wsss` command as a user types it (a real subprocess through the console script)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

WSSS = [sys.executable, "-m", "wsss.cli"]


def _wsss(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*WSSS, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_the_commands():
    result = _wsss("--help")
    assert result.returncode == 0
    for command in ("run", "config", "data"):
        assert command in result.stdout


def test_config_show_prints_the_resolved_yaml():
    result = _wsss("config", "show", "--preset", "demo", "--set", "step2.sem_seg_bg_thres=0.5")
    assert result.returncode == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["name"] == "demo" and shown["step2"]["sem_seg_bg_thres"] == 0.5


def test_bad_config_fails_before_any_work_with_the_key_named(tmp_path: Path):
    result = _wsss(
        "run", "--preset", "smoke", "--set", "step1.epochs=0", "--runs-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "config key step1.epochs: Input should be greater than or equal to 1" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_synth_then_stats_show_imbalance_cooccurrence_and_missing_labels(tmp_path: Path):
    out = tmp_path / "d"
    result = _wsss("data", "synth", "--out", str(out), "--preset", "smoke", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "train 160, val 24, test 24" in result.stdout
    stats = _wsss("data", "stats", str(out))
    assert stats.returncode == 0
    assert "top-3 classes carry" in stats.stdout
    assert "co-occurs with another class in" in stats.stdout
    assert "its label is missing from" in stats.stdout
    as_json = json.loads(_wsss("data", "stats", str(out), "--json").stdout)
    assert as_json["images"] == {"train": 160, "val": 24, "test": 24}


def test_synth_size_flags_override_the_preset(tmp_path: Path):
    out = tmp_path / "d"
    result = _wsss("data", "synth", "--out", str(out), "--preset", "smoke", "--size", "40",
                   "--classes", "5", "--train", "12", "--val", "4", "--test", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = json.loads(_wsss("data", "stats", str(out), "--json").stdout)
    assert stats["classes"] == 5 and stats["images"] == {"train": 12, "val": 4, "test": 4}


def test_stats_on_a_folder_that_is_not_a_dataset(tmp_path: Path):
    result = _wsss("data", "stats", str(tmp_path))
    assert result.returncode == 2 and "dataset.json is missing" in result.stderr
