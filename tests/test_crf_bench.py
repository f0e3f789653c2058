"""bench/crf.py's inputs and its plain loop: CAMs pooled from the true masks by hand, CAM files
step 1 can read, and a loop over step 1's own CRF function whose halves add up to the whole."""

import importlib.util
from pathlib import Path

import numpy as np

from wsss.platform.runners import read_cams
from wsss.platform.runners.outputs import CAM_DIR, IR_LABEL_DIR

SPEC = importlib.util.spec_from_file_location(
    "crf_bench", Path(__file__).parents[1] / "bench" / "crf.py"
)
crf_bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(crf_bench)


def test_noisy_cams_pool_each_class_mask_to_the_stride_and_peak_at_one(monkeypatch):
    monkeypatch.setattr(crf_bench, "CAM_NOISE", 0.0)
    truth = np.zeros((6, 5), np.uint8)
    truth[:2, :2] = 3  # the whole first 2x2 block
    truth[2, 4] = 3  # one of the two pixels of block (1, 2) inside the 6x5 image
    cams = crf_bench.noisy_cams(truth, [3, 7], 2, np.random.default_rng(0))
    assert cams.shape == (2, 3, 3) and cams.dtype == np.float16
    expected = np.zeros((3, 3))
    expected[0, 0], expected[1, 2] = 1.0, 0.25  # padded to 6x6: 1 of its 4 pixels is class 3
    np.testing.assert_allclose(cams[0], expected)
    np.testing.assert_array_equal(cams[1], 0.0)  # a class absent from the mask has no CAM


def test_the_loop_refines_every_row_and_its_halves_add_up(tmp_path):
    inputs = crf_bench.prepare_inputs(tmp_path, images=12, size=48, seed=0)
    train = [r for r in inputs.rows if r.split == "train"]
    assert {r.split for r in inputs.rows} == {"train", "val", "test"}
    for row in inputs.rows:
        cams, classes = read_cams(inputs.step_dir / CAM_DIR, row.id)
        assert cams.shape == (len(row.labels), 12, 12)
        assert classes.tolist() == [inputs.info.classes.index(label) for label in row.labels]

    whole = crf_bench.loop_totals(inputs, inputs.rows)
    assert sorted(p.stem for p in (inputs.step_dir / IR_LABEL_DIR).iterdir()) == sorted(
        r.id for r in train
    )
    first = crf_bench.loop_totals(inputs, inputs.rows[:8])
    second = crf_bench.loop_totals(inputs, inputs.rows[8:])
    assert set(whole) == set(inputs.columns)
    for column, matrix in whole.items():
        np.testing.assert_array_equal(matrix.counts, first[column].counts + second[column].counts)
    assert whole["cam_crf_train"].counts.sum() > 0
