"""bench/scale.py's own logic: the simulated LID labels, the layout the lid adapter reads back,
and the full-scale arithmetic of files and bytes per step."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from wsss.platform.config import SyntheticConfig
from wsss.platform.datasets.manifest import load_dataset

SPEC = importlib.util.spec_from_file_location(
    "scale_bench", Path(__file__).parents[1] / "bench" / "scale.py"
)
scale_bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scale_bench)


def test_the_class_list_is_lids_size_with_background_first_and_person_among_them():
    classes = scale_bench.lid_classes()
    assert len(classes) == 201 and classes[0] == "background"
    assert classes.count("person") == 1 and len(set(classes)) == 201


def test_simulated_labels_have_the_shares_of_the_built_in_sets_model():
    classes = scale_bench.lid_classes()
    person = classes.index("person")
    simulated = scale_bench.simulate_labels(
        20_000, classes, SyntheticConfig(), np.random.default_rng(0)
    )
    assert len(simulated.labels) == 20_000
    assert all(ids and ids == sorted(set(ids)) for ids in simulated.labels)
    assert {i for ids in simulated.labels for i in ids} <= set(range(1, 201))
    # SyntheticConfig's defaults: person in 45% of the images, its label missing from 40%.
    assert simulated.dominant_share() == pytest.approx(0.45, abs=0.015)
    assert simulated.missing_share(person) == pytest.approx(0.40, abs=0.02)
    # The other classes follow Zipf: the first of them (rank 1) is the most frequent.
    counts = np.bincount([i for ids in simulated.labels for i in ids if i != person])
    assert int(np.argmax(counts)) == 1


def test_every_image_showing_person_with_one_other_class_loses_its_label_at_the_rate():
    classes = ["background", "a", "b", "person"]
    # Person in every image, always with exactly one other class; half its labels dropped.
    config = SyntheticConfig(
        num_classes=3,
        accessory_classes=0,
        dominant_share=1.0,
        dominant_cooccurrence=1.0,
        missing_label_rate=0.5,
        min_objects=1,
        max_objects=2,
    )
    simulated = scale_bench.simulate_labels(4000, classes, config, np.random.default_rng(1))
    assert simulated.shows_dominant.all()
    sizes = np.array([len(ids) for ids in simulated.labels])
    assert set(sizes.tolist()) == {1, 2}
    assert all((len(ids) == 2) == (3 in ids) for ids in simulated.labels)
    assert (sizes == 1).mean() == pytest.approx(0.5, abs=0.03)
    assert simulated.missing_share(3) == pytest.approx(0.5, abs=0.03)


def test_without_person_every_image_has_between_min_and_max_distinct_classes():
    classes = ["background", "a", "b", "c", "d", "e", "person"]
    config = SyntheticConfig(num_classes=6, dominant_share=0.0, min_objects=2, max_objects=3)
    simulated = scale_bench.simulate_labels(500, classes, config, np.random.default_rng(2))
    assert not simulated.shows_dominant.any()
    assert all(1 <= len(ids) <= 3 and 6 not in ids for ids in simulated.labels)


def test_rows_have_ilsvrc_shaped_paths_in_folders_of_a_thousand():
    assert scale_bench.train_stem(0) == "ILSVRC2014_train_0000/ILSVRC2014_train_00000000"
    assert scale_bench.train_stem(1234) == "ILSVRC2014_train_0001/ILSVRC2014_train_00001234"
    assert scale_bench.eval_stem("val", 7) == "ILSVRC2012_val_00000007"


def test_the_lid_adapter_reads_the_simulated_layout_back_row_for_row(tmp_path):
    plan = scale_bench.Plan(rows=30, val=3, test=2, files=4, eval_files=2, file_size=32, seed=0)
    src = scale_bench.prepare_lid(tmp_path, plan)
    result = scale_bench.import_phase(tmp_path, workers=1)
    assert result["candidates"] == 35 and result["kept"] == 35 and result["rejected"] == 0
    assert result["classes"] == 201
    info, rows = load_dataset(tmp_path / "dataset")
    assert [sum(r.split == s for r in rows) for s in ("train", "val", "test")] == [30, 3, 2]
    entries = json.loads((src / scale_bench.TRAIN_LABELS).read_text())
    by_id = {r.id: r for r in rows}
    stem, ids = entries[17]
    row = by_id[stem.replace("/", "_")]
    assert row.image == f"ILSVRC/Data/DET/train/{stem}.JPEG"
    assert row.labels == tuple(info.classes[i] for i in ids)
    # Rows share the few drawn files: row 17 is a hard link to file 17 mod 4, as row 1 is.
    linked = (src / row.image).stat()
    assert linked.st_ino == (src / f"ILSVRC/Data/DET/train/{entries[1][0]}.JPEG").stat().st_ino
    assert all(r.mask is not None for r in rows if r.split != "train")


def test_full_scale_multiplies_each_outputs_bytes_per_image_by_its_splits_images():
    per_image = {("cams", "train"): 100.0, ("cams", "val"): 300.0, ("ir", "train"): 10.0}
    outputs = (("s1", "cams", ("train", "val")), ("s1", "ir", ("train",)))
    steps = scale_bench.full_scale(per_image, {"train": 1000, "val": 20}, outputs)
    # 1000 + 20 CAM files and 1000 IR label files; 100 kB + 6 kB + 10 kB.
    assert steps == {"s1": {"files": 2020, "bytes": 116_000.0}}


def test_each_step_writes_its_files_per_image_of_the_splits_it_covers():
    per_image = {
        (folder, split): 1.0
        for _, folder, splits in scale_bench.PER_IMAGE_OUTPUTS
        for split in splits
    }
    steps = scale_bench.full_scale(per_image, {"train": 10, "val": 2, "test": 3})
    # Step 1: a CAM file and IR labels per train image; a CAM file and two masks per val and
    # test image. Step 2: a pseudo mask per image. Prediction: a mask and an overlay per image.
    assert steps["step1"]["files"] == 10 * 2 + (2 + 3) * 3
    assert steps["step2"]["files"] == 10 + 2 + 3
    assert steps["predict"]["files"] == 3 * 2
    assert "step3" not in steps


def test_fixed_files_join_the_per_image_totals_of_every_step():
    per_image = {"step1": {"files": 2020, "bytes": 2.5e9}}
    steps = scale_bench.with_fixed_files(per_image, {"data": [5, 7], "step1": [1_000]})
    assert steps["data"] == {"files": 2, "bytes": 12, "gb": 0.0}
    assert steps["step1"] == {"files": 2021, "bytes": 2_500_001_000, "gb": 2.5}
    assert steps["step3"] == {"files": 0, "bytes": 0, "gb": 0.0}
    assert list(steps) == list(scale_bench.STEPS)


def test_the_summary_of_top_scores_is_sized_as_the_store_writes_it():
    score = np.random.default_rng(3).random(1, dtype=np.float32).tolist()[0]
    # '{\n  "train_top_scores": {\n    "a": <score>\n  }\n}\n': 42 characters and the score.
    assert scale_bench.top_scores_summary_bytes(["a"], 3) == 42 + len(json.dumps(score))
