"""bench/inference_overhead.py's own parts: outputs compared up to float rounding, the plain
loop's batches as Ray Data hands them to an actor, and the plain loop's threads."""

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from wsss.platform.datasets.manifest import ManifestRow
from wsss.platform.loaders.batches import rows_dataset

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the bench imports bench/crf.py and train_overhead.py
SPEC = importlib.util.spec_from_file_location("inference_bench", BENCH / "inference_overhead.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_outputs_agree_up_to_float_rounding_and_nothing_more():
    summary = {"miou": 0.25, "per_class_iou": {"background": 0.5, "dog": None}, "n": 3}
    rounded = {"miou": 0.25 + 1e-6, "per_class_iou": {"background": 0.5, "dog": None}, "n": 3}
    assert bench.agree(summary, rounded)
    # 0.25 against 0.2504: 1.6e-3 relative, above SCORE_TOLERANCE (1e-3).
    assert not bench.agree(summary, {**summary, "miou": 0.2504})
    assert not bench.agree(summary, {**summary, "per_class_iou": {"background": 0.5}})
    assert not bench.agree(summary, {**summary, "n": 4})
    assert not bench.agree([0.1, 0.2], [0.1])
    assert not bench.agree({"dog": None}, {"dog": 0.0})


def test_cam_files_agree_within_the_cam_tolerance_and_on_their_classes(tmp_path):
    cams = np.array([[[0.5, 1.0]]], np.float16)
    for name, shift, classes in (("a", 0, [3]), ("b", 0.001, [3]), ("c", 0.01, [3]), ("d", 0, [4])):
        (tmp_path / name / "cams").mkdir(parents=True)
        np.savez(tmp_path / name / "cams" / "x.npz", cams=cams + shift, classes=classes)
    assert bench.cam_files_agree(["x"], tmp_path / "a", tmp_path / "b")
    assert not bench.cam_files_agree(["x"], tmp_path / "a", tmp_path / "c")
    assert not bench.cam_files_agree(["x"], tmp_path / "a", tmp_path / "d")


def test_the_plain_batches_are_the_ones_ray_data_hands_an_actor(ray_cluster):
    rows = [
        ManifestRow("a", "images/a.png", "train", ("dog", "cat"), None),
        ManifestRow("b", "images/b.png", "val", ("cat",), "masks/b.png"),
        ManifestRow("c", "images/c.png", "test", (), "masks/c.png"),
    ]
    plain = list(bench.manifest_batches(rows, batch_size=2))
    from_ray = list(rows_dataset(rows).iter_batches(batch_size=2, batch_format="numpy"))
    assert [len(b["id"]) for b in plain] == [2, 1]
    for ours, theirs in zip(plain, from_ray, strict=True):
        assert ours.keys() == theirs.keys() == asdict(rows[0]).keys()
        for column in ours:
            assert [_plain(v) for v in ours[column]] == [_plain(v) for v in theirs[column]]


def _plain(value):
    return list(value) if isinstance(value, list | np.ndarray) else value


class _ThreadCounter:
    """An actor that pins one thread when made, as the step actors do, and records the
    threads each call runs with."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.threads: list[int] = []

    def __call__(self, batch: dict) -> dict:
        self.threads.append(torch.get_num_threads())
        return {"id": batch["id"]}


def test_the_plain_loop_calls_the_actor_per_batch_with_the_threads_asked():
    rows = [ManifestRow(str(i), f"images/{i}.png", "train", ("dog",), None) for i in range(5)]
    before = torch.get_num_threads()
    made = []

    def make_actor():
        made.append(_ThreadCounter())
        return made[-1]

    outputs = bench.plain_outputs(make_actor, rows, batch_size=2, threads=2)
    assert [o["id"].tolist() for o in outputs] == [["0", "1"], ["2", "3"], ["4"]]
    assert len(made) == 1 and made[0].threads == [2, 2, 2]
    assert torch.get_num_threads() == before
