"""What every step shares: its inputs checked in the driver, the splits it is scored on, where
its models run, and step 1's CAM files read back."""

import math
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray.data
import ray.util.state
import torch

from wsss.platform.config import ConfigError, RayConfig, SyntheticConfig, TTAConfig, load_config
from wsss.platform.datasets.manifest import ORACLE_MASK_DIR, ManifestRow, load_dataset
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.runners import (
    TASKS_PER_CPU,
    CamFileError,
    StepInputError,
    cpu_tasks,
    map_through_model,
    read_cams,
    require_inputs,
    require_split_sizes,
    scored_columns,
    scored_splits,
    summaries_by_split,
)
from wsss.platform.runners.cams import cam_rows
from wsss.platform.runners.classifier import classifier_task
from wsss.platform.runners.irnet import irnet_task
from wsss.platform.runners.outputs import Step1Output
from wsss.platform.runners.segmentation import (
    evaluation_rows,
    evaluation_variants,
    segmenter_task,
)
from wsss.platform.training import make_optimizer, train_step
from wsss.stages.metrics import ConfusionMatrix


def test_present_inputs_pass(tmp_path: Path):
    torch.save({"state_dict": {}}, tmp_path / "classifier.pt")
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


def test_a_damaged_saved_model_is_named_with_the_step_and_the_folder_to_remove(tmp_path: Path):
    model = tmp_path / "step1-abc" / "classifier.pt"
    model.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, model)
    require_inputs("step 3", {"the classifier": model})
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(StepInputError) as error:
        require_inputs("step 3", {"the classifier": model})
    assert str(error.value).startswith(f"step 3 needs the classifier: {model} cannot be read")
    assert f"remove the folder that holds it ({model.parent})" in str(error.value)


def test_only_splits_with_masks_are_scored():
    rows = [
        ManifestRow("a", "a.jpg", "train", ("dog",), None),
        ManifestRow("b", "b.jpg", "val", ("dog",), "b.png"),
        ManifestRow("c", "c.jpg", "test", ("dog",), None),  # VOC's test: no public masks
    ]
    assert scored_splits(rows) == ["val"]
    rows.append(ManifestRow("d", "d.jpg", "test", ("cat",), "d.png"))
    assert scored_splits(rows) == ["val", "test"]


def test_cams_are_made_for_train_and_scored_splits_and_evaluation_reads_masked_ones(tmp_path):
    rows = [
        ManifestRow("a", "a.jpg", "train", ("dog",), None),
        ManifestRow("b", "b.jpg", "val", ("dog",), "b.png"),
        ManifestRow("c", "c.jpg", "test", ("dog",), None),  # VOC's test: no public masks
        ManifestRow("d", "d.jpg", "val", ("cat",), None),  # a val image without its mask
    ]
    (tmp_path / ORACLE_MASK_DIR).mkdir(parents=True)
    (tmp_path / ORACLE_MASK_DIR / "a.png").touch()
    cams = cam_rows(rows, tmp_path)
    assert [r.id for r in cams] == ["a", "b", "d"]
    assert cams[0].mask == str(ORACLE_MASK_DIR / "a.png")  # train scored on its true mask
    assert [r.id for r in evaluation_rows(rows)] == ["b"]


def test_the_evaluation_scores_the_plain_model_and_its_tta_where_enabled():
    tta = TTAConfig(scales=[1.0, 1.5])
    assert evaluation_variants(tta) == {"segmentation": None, "segmentation_tta": tta}
    assert evaluation_variants(TTAConfig(enabled=False)) == {"segmentation": None}


def test_train_is_scored_with_the_given_labels_val_and_test_also_with_the_predicted():
    columns = scored_columns(["cam", "cam_crf"], ["train", "val"])
    assert columns == [
        "cam_train", "cam_crf_train",
        "cam_val", "cam_crf_val", "cam_predicted_val", "cam_crf_predicted_val",
    ]  # fmt: skip
    totals = {column: ConfusionMatrix(2) for column in columns}
    # One image of 2 pixels, background and class 1, where the predicted CAM draws only class 1.
    for column, matrix in totals.items():
        drawn = np.array([1, 1]) if "predicted" in column else np.array([0, 1])
        matrix.update(drawn, np.array([0, 1]))
    summaries = summaries_by_split(totals, ["train", "val"], ["background", "dog"])
    assert list(summaries) == ["train", "val"]
    assert list(summaries["train"]) == ["cam", "cam_crf"]
    assert summaries["val"]["cam"]["miou"] == 1.0
    # IoU background 0/1, dog 1/2.
    assert summaries["val"]["cam_crf_predicted"]["miou"] == pytest.approx(0.25)


def _model_witness() -> type:
    """A class that stands for a step's model, saying which process made it and which instance
    it is; made here, so that Ray ships it by value (workers cannot import the tests)."""

    class ModelWitness:
        def __init__(self, name: str) -> None:
            self.name, self.instance = name, uuid.uuid4().hex

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            n = len(batch["id"])
            return {"pid": np.full(n, os.getpid()), "instance": np.array([self.instance] * n),
                    "name": np.array([self.name] * n)}  # fmt: skip

    return ModelWitness


def _through_witness(name: str, ray_config: RayConfig) -> list[dict[str, object]]:
    items = ray.data.from_items([{"id": i} for i in range(24)])
    mapped = map_through_model(items, _model_witness(), {"name": name}, 4, ray_config)
    return list(mapped.iter_rows())


def test_on_cpus_each_worker_makes_a_model_once_and_keeps_it_for_the_next_pass(ray_cluster):
    """Batch inference on CPUs: single-CPU tasks, each process making the model the first
    time it is asked for and reusing it in the next pass; other arguments make another."""
    ray_config = load_config("smoke").ray
    first = _through_witness("a", ray_config)
    second = _through_witness("a", ray_config)
    assert len(first) == len(second) == 24 and {row["name"] for row in first} == {"a"}
    by_process: dict[int, set[str]] = {}
    for row in first + second:
        by_process.setdefault(row["pid"], set()).add(row["instance"])
    assert all(len(instances) == 1 for instances in by_process.values()), by_process
    # The second pass ran (at least partly) in the first one's processes: no actor pool.
    assert {row["pid"] for row in second} & {row["pid"] for row in first}
    other = _through_witness("b", ray_config)
    assert {row["name"] for row in other} == {"b"}
    assert not {row["instance"] for row in other} & {row["instance"] for row in first}


def test_the_inference_workers_outlive_the_task_workers_a_fit_starts(ray_cluster):
    """Task workers started while the inference workers sit idle (as a fit's data tasks start
    them), idle once they end: Ray must not end the inference workers, idle the longest, to
    keep to its limit of idle workers, so the pass after them reuses their models."""
    ray_config = load_config("smoke").ray
    first = {row["instance"] for row in _through_witness("a", ray_config)}

    # Another runtime environment: new processes, not the idle inference workers.
    @ray.remote(num_cpus=1, runtime_env={"env_vars": {"WSSS_TEST_FIT_TASKS": "1"}})
    def fit_task() -> int:
        time.sleep(1)  # long enough for the tasks to need a process each
        return os.getpid()

    fit_workers = set(ray.get([fit_task.remote() for _ in range(ray_config.num_cpus * 2)]))
    assert len(fit_workers) >= 2
    # Ray ends an idle worker above its limit once it has been idle for a second
    # (`idle_worker_killing_time_threshold_ms`), the oldest first.
    time.sleep(3)
    second = {row["instance"] for row in _through_witness("a", ray_config)}
    assert second <= first


def test_a_cpu_pass_keeps_the_next_task_queued_behind_each_running_one(ray_cluster, tmp_path: Path):
    """While every CPU of the cluster runs a task of a pass, the pass has its next tasks
    submitted already, so a worker gets the next one as its task returns (Ray Data's budget
    had submitted a task only once one ended); counted on the cluster's CPUs, not on the
    `ray.num_cpus` the config asks a local cluster for. The first tasks hold their CPUs until
    the test has seen the rest."""
    ray_config = RayConfig(num_cpus=1)
    gate = tmp_path / "gate"

    def gated_batch(batch: dict[str, np.ndarray], gate: str) -> dict[str, np.ndarray]:
        deadline = time.monotonic() + 120
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return batch

    in_flight = TASKS_PER_CPU * int(ray.cluster_resources()["CPU"])
    assert in_flight > TASKS_PER_CPU * ray_config.num_cpus
    rows = ray.data.from_items([{"id": i} for i in range(2 * in_flight)])
    mapped = cpu_tasks(rows, gated_batch, {"gate": str(gate)}, 1, ray_config)
    out: list[dict] = []
    consumer = threading.Thread(target=lambda: out.extend(mapped.iter_rows()))
    consumer.start()
    try:
        deadline, submitted = time.monotonic() + 60, []
        while len(submitted) < in_flight and time.monotonic() < deadline:
            time.sleep(0.5)
            submitted = ray.util.state.list_tasks(
                filters=[("name", "=", "MapBatches(gated_batch)")], raise_on_missing_output=False
            )
    finally:
        gate.touch()
        consumer.join(timeout=120)
    assert len(submitted) == in_flight, [task.state for task in submitted]
    assert sorted(row["id"] for row in out) == list(range(2 * in_flight))


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


def _saved_cams(step_dir: Path, cams: np.ndarray) -> Path:
    (step_dir / "cams").mkdir(parents=True)
    path = step_dir / "cams" / "img1.npz"
    np.savez(path, cams=cams.astype(np.float16), classes=np.array([3], np.int32), top_score=0.9)
    return path


def test_cams_read_back_as_float32_with_their_classes(tmp_path: Path):
    _saved_cams(tmp_path / "step1-abc", np.full((1, 2, 3), 0.5))
    cams, classes = read_cams(tmp_path / "step1-abc" / "cams", "img1")
    assert cams.dtype == np.float32 and cams.shape == (1, 2, 3) and (cams == 0.5).all()
    assert classes.tolist() == [3]


def test_the_predicted_classes_cams_are_read_apart_from_the_given_ones(tmp_path: Path):
    path = _saved_cams(tmp_path / "step1-abc", np.full((1, 2, 3), 0.5))
    saved = dict(np.load(path))
    predicted = np.stack([np.full((2, 3), 0.25), np.full((2, 3), 1.0)]).astype(np.float16)
    np.savez(path, **saved, predicted_cams=predicted, predicted_classes=np.array([1, 3], np.int32))
    cams, classes = read_cams(tmp_path / "step1-abc" / "cams", "img1", "predicted")
    assert cams.dtype == np.float32 and classes.tolist() == [1, 3]
    assert (cams[0] == 0.25).all() and (cams[1] == 1.0).all()
    assert read_cams(tmp_path / "step1-abc" / "cams", "img1")[1].tolist() == [3]


def test_a_cam_file_without_the_predicted_classes_cams_is_named(tmp_path: Path):
    """A train image's file, or one written before predicted CAMs were saved."""
    path = _saved_cams(tmp_path / "step1-abc", np.zeros((1, 2, 2)))
    with pytest.raises(CamFileError, match=f"^{re.escape(str(path))} cannot be read .*KeyError"):
        read_cams(tmp_path / "step1-abc" / "cams", "img1", "predicted")


def test_a_cam_file_with_nan_or_infinite_values_is_named_with_its_step_folder(tmp_path: Path):
    for value in (np.nan, np.inf):
        step_dir = tmp_path / f"step1-{value}"
        path = _saved_cams(step_dir, np.array([[[0.5, value]]]))
        with pytest.raises(CamFileError) as raised:
            read_cams(step_dir / "cams", "img1")
        assert str(raised.value).startswith(f"{path} holds NaN or infinite values: ")
        assert f"remove the step folder that holds it ({step_dir})" in str(raised.value)


def test_a_cut_short_cam_file_is_named(tmp_path: Path):
    path = _saved_cams(tmp_path / "step1-abc", np.zeros((1, 8, 8)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CamFileError, match=f"^{re.escape(str(path))} cannot be read "):
        read_cams(tmp_path / "step1-abc" / "cams", "img1")


def test_each_step_trains_in_the_precision_its_config_names(ray_cluster, tmp_path: Path):
    """Each step's task carries its `precision`, and each step's model and loss take a
    training step in bf16 on a batch of its own data."""
    overrides = ["step2.backbone_from=weights", "step3.encoder_from=weights"]
    synthetic = SyntheticConfig(num_classes=4, image_size=32, train_images=4, val_images=2,
                                test_images=2, workers=1)  # fmt: skip
    build_synthetic_dataset(tmp_path / "data", synthetic, seed=0)
    info, rows = load_dataset(tmp_path / "data")
    step1 = Step1Output(tmp_path / "step1", {r.id: 1.0 for r in rows if r.split == "train"})
    true_masks = info.root / ORACLE_MASK_DIR
    shutil.copytree(true_masks, step1.ir_label_dir)
    for precision in ("fp32", "bf16"):
        precisions = [f"step{n}.precision={precision}" for n in (1, 2, 3)]
        config = load_config("smoke", overrides=[*overrides, *precisions])
        tasks = [
            classifier_task(config, info, rows)[0],
            irnet_task(config, info, rows, step1),
            segmenter_task(config, info, rows, true_masks, step1),
        ]
        assert [task.precision for task in tasks] == [precision] * 3
    for task in tasks:
        batch = next(iter(task.train_data.worker_dataset(0, 0, 1).iter_torch_batches(batch_size=2)))
        model = task.build_model()
        loss = train_step(task, model, batch, make_optimizer(task, model), None, 1)
        assert math.isfinite(loss), task.name
