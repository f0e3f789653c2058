"""What every step shares: its inputs checked in the driver, the splits it is scored on, and
where its models run."""

from pathlib import Path

import pytest
import ray.data

from wsss.platform.config import ConfigError, RayConfig
from wsss.platform.datasets.manifest import ManifestRow
from wsss.platform.steps import (
    StepInputError,
    actor_pool_options,
    require_inputs,
    require_split_sizes,
    scored_splits,
)


def test_present_inputs_pass(tmp_path: Path):
    (tmp_path / "classifier.pt").write_bytes(b"x")
    require_inputs("step 2", {"the classifier": tmp_path / "classifier.pt", "a folder": tmp_path})


def test_a_missing_input_is_named_with_the_step_and_what_it_is(tmp_path: Path):
    missing = tmp_path / "cams"
    with pytest.raises(StepInputError) as error:
        require_inputs("step 2's pseudo masks", {"step 1's CAMs": missing})
    assert (
        str(error.value) == f"step 2's pseudo masks needs step 1's CAMs: {missing} does not exist"
    )


def test_a_link_to_a_deleted_file_is_called_broken(tmp_path: Path):
    link = tmp_path / "classifier.pt"
    link.symlink_to(tmp_path / "gone.pt")
    with pytest.raises(StepInputError, match=r"classifier\.pt is a broken link"):
        require_inputs("step 3", {"the classifier": link})
    assert isinstance(StepInputError("x"), FileNotFoundError)


def test_only_splits_with_masks_are_scored():
    rows = [
        ManifestRow("a", "a.jpg", "train", ("dog",), None),
        ManifestRow("b", "b.jpg", "val", ("dog",), "b.png"),
        ManifestRow("c", "c.jpg", "test", ("dog",), None),  # VOC's test: no public masks
    ]
    assert scored_splits(rows) == ["val"]
    rows.append(ManifestRow("d", "d.jpg", "test", ("cat",), "d.png"))
    assert scored_splits(rows) == ["val", "test"]


def test_models_run_on_one_single_threaded_actor_per_configured_cpu():
    options = actor_pool_options(RayConfig(num_cpus=3))
    assert isinstance(options["compute"], ray.data.ActorPoolStrategy)
    assert options["compute"].min_size == options["compute"].max_size == 3
    assert options["num_cpus"] == 1 and "num_gpus" not in options


def _rows(train: int, val: int) -> list[ManifestRow]:
    splits = ["train"] * train + ["val"] * val
    return [
        ManifestRow(str(i), f"{i}.jpg", split, ("dog",), None) for i, split in enumerate(splits)
    ]


def test_a_train_split_too_small_for_the_workers_is_named_with_its_size_and_settings():
    require_split_sizes(_rows(train=4, val=1), RayConfig(num_workers=2))  # 2 images each
    with pytest.raises(ConfigError) as error:
        require_split_sizes(_rows(train=3, val=1), RayConfig(num_workers=2))
    assert str(error.value).startswith(
        "the train split has 3 images; ray.num_workers=2 Ray Train workers need at least 2 each (4)"
    )
    with pytest.raises(ConfigError, match="the val split has no image"):
        require_split_sizes(_rows(train=4, val=0), RayConfig(num_workers=2))
