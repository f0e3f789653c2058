"""Adapters on small fixtures written in the real layouts, and every bad-input case."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.platform.datasets.adapters import import_dataset
from wsss.platform.datasets.adapters.voc import VOC_CLASSES
from wsss.platform.datasets.images import write_palette_png
from wsss.platform.datasets.manifest import DatasetError, load_dataset, read_rejects

PERSON, DOG, CAT = VOC_CLASSES.index("person"), VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")


def _jpeg(path: Path, height: int = 12, width: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path)


def _xml(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(f"<object><name>{n}</name></object>" for n in names)
    path.write_text(f"<annotation>{objects}</annotation>")


def _mask(path: Path, values: list[int], height: int = 12, width: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((height, width), np.uint8)
    for k, value in enumerate(values):
        mask[k * 3 : k * 3 + 2, :] = value
    mask[-1, :] = 255
    write_palette_png(path, mask)


def _voc(root: Path) -> Path:
    """Two train images labelled by XML only, two val images with masks (VOC 2012 layout)."""
    sets = root / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000003\n2007_000004\n")
    for image_id in ("2007_000001", "2007_000002", "2007_000003", "2007_000004"):
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg")
    _xml(root / "Annotations/2007_000001.xml", ["dog", "person", "dog"])
    _xml(root / "Annotations/2007_000002.xml", ["cat"])
    _mask(root / "SegmentationClass/2007_000003.png", [PERSON, CAT])
    _xml(root / "Annotations/2007_000003.xml", ["person", "cat", "dog"])  # mask wins in auto
    _mask(root / "SegmentationClass/2007_000004.png", [DOG])
    _xml(root / "Annotations/2007_000004.xml", ["dog"])
    return root


def test_voc_labels_come_from_masks_where_they_exist_else_from_xml(tmp_path: Path):
    src = _voc(tmp_path / "VOC2012")
    info, rows, rejects = import_dataset("voc", src, tmp_path / "ds")
    assert rejects == []
    by_id = {r.id: r for r in rows}
    assert by_id["2007_000001"].labels == ("dog", "person")
    assert by_id["2007_000001"].mask is None and by_id["2007_000001"].split == "train"
    assert by_id["2007_000003"].labels == ("cat", "person")  # from the mask, not the XML's dog
    assert by_id["2007_000003"].mask == "SegmentationClass/2007_000003.png"
    assert by_id["2007_000004"].labels == ("dog",)
    assert info.classes == list(VOC_CLASSES) and info.counts == {"train": 2, "val": 2, "test": 0}
    loaded_info, loaded_rows = load_dataset(tmp_path / "ds")
    assert loaded_rows == rows and loaded_info.root == src.resolve()


def test_voc_labels_from_xml_when_asked(tmp_path: Path):
    src = _voc(tmp_path / "VOC2012")
    _, rows, _ = import_dataset("voc", src, tmp_path / "ds", labels_from="xml")
    assert {r.id: r.labels for r in rows}["2007_000003"] == ("cat", "dog", "person")


def test_cli_import_voc_prints_counts(tmp_path: Path, capsys):
    src = _voc(tmp_path / "VOC2012")
    assert main(["data", "import", "voc", str(src), "--out", str(tmp_path / "ds")]) == 0
    assert "imported 4 image(s)" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "ds"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images_per_class"]["val"]["person"] == 1
    assert stats["dominant_cooccurrence"] == 1.0  # both person images hold another class


def _lid(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "map_det.txt").write_text(
        "n02672831 1 accordion\nn02084071 2 dog\nn00007846 3 person\n"
    )
    data = root / "ILSVRC/Data/DET/train/ILSVRC2013_train/n02084071"
    annotations = root / "ILSVRC/Annotations/DET/train/ILSVRC2013_train/n02084071"
    for stem, names in (("a", ["n02084071", "n00007846"]), ("b", ["n02672831"])):
        _jpeg(data / f"{stem}.JPEG")
        _xml(annotations / f"{stem}.xml", names)
    _jpeg(root / "LID_track1/val/ILSVRC2012_val_00000001.JPEG")
    _mask(root / "LID_track1_annotations/val/ILSVRC2012_val_00000001.png", [2, 3])
    return root


def test_lid_train_labels_from_det_xml_synsets(tmp_path: Path):
    src = _lid(tmp_path / "LID")
    info, rows, rejects = import_dataset("lid", src, tmp_path / "ds")
    assert rejects == []
    assert info.classes == ["background", "accordion", "dog", "person"]
    by_id = {r.id: r for r in rows}
    assert by_id["ILSVRC2013_train_n02084071_a"].labels == ("dog", "person")
    assert by_id["ILSVRC2013_train_n02084071_b"].labels == ("accordion",)
    val = by_id["ILSVRC2012_val_00000001"]
    assert val.split == "val" and val.labels == ("dog", "person") and val.mask is not None


def test_lid_train_labels_from_the_authors_json_lists(tmp_path: Path):
    src = _lid(tmp_path / "LID")
    (src / "idx_to_name.json").write_text(json.dumps({"1": "accordion", "2": "dog", "3": "person"}))
    entries = [["ILSVRC2013_train/n02084071/a", [2]], ["ILSVRC2013_train/n02084071/b", [1, 9]]]
    (src / "train_labels.json").write_text(json.dumps(entries))
    _, rows, rejects = import_dataset("lid", src, tmp_path / "ds", train_labels="train_labels.json")
    assert {r.id: r.labels for r in rows}["ILSVRC2013_train_n02084071_a"] == ("dog",)
    assert [r.reason for r in rejects] == ["unknown class '#9'; not in the class list"]


def test_lid_without_a_synset_map_says_what_it_needs(tmp_path: Path):
    src = _lid(tmp_path / "LID")
    (src / "map_det.txt").unlink()
    with pytest.raises(DatasetError, match=r"map_det\.txt"):
        import_dataset("lid", src, tmp_path / "ds")


def _folder(root: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
        _jpeg(root / name)
    return root


def test_folder_with_csv_labels(tmp_path: Path):
    src = _folder(tmp_path / "photos")
    (src / "labels.csv").write_text(
        "image,labels,split\na.jpg,dog;person,train\nb.jpg,cat,val\nsub/c.jpg,dog|cat,\n"
    )
    info, rows, rejects = import_dataset("folder", src, tmp_path / "ds")
    assert rejects == []
    assert info.classes == ["background", "cat", "dog", "person"]
    assert [(r.id, r.split, r.labels) for r in rows] == [
        ("a", "train", ("dog", "person")),
        ("b", "val", ("cat",)),
        ("c", "train", ("cat", "dog")),
    ]


def test_folder_with_jsonl_labels_and_a_class_list(tmp_path: Path):
    src = _folder(tmp_path / "photos")
    (src / "classes.txt").write_text("dog\ncat\n")
    (src / "labels.jsonl").write_text(
        '{"id": "x", "image": "a.jpg", "labels": ["dog"]}\n'
        '{"image": "b.jpg", "labels": ["cat", "dog"], "split": "test"}\n'
    )
    info, rows, _ = import_dataset("folder", src, tmp_path / "ds")
    assert info.classes == ["background", "dog", "cat"]
    assert [(r.id, r.labels) for r in rows] == [("x", ("dog",)), ("b", ("dog", "cat"))]


def test_folder_csv_without_required_column(tmp_path: Path):
    src = _folder(tmp_path / "photos")
    (src / "labels.csv").write_text("image,tags\na.jpg,dog\n")
    with pytest.raises(DatasetError, match=r"labels.csv: missing column\(s\) \['labels'\]"):
        import_dataset("folder", src, tmp_path / "ds")


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """One good image and one of every kind of bad input."""
    src = _folder(tmp_path / "photos")
    (src / "empty.jpg").write_bytes(b"")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    full = (src / "a.jpg").read_bytes()
    big = src / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(big)
    (src / "truncated.jpg").write_bytes(big.read_bytes()[:300])
    (src / "outside.jpg").write_bytes(full)
    (tmp_path / "secret.jpg").write_bytes(full)
    _mask(src / "small_mask.png", [1], height=5, width=5)
    (src / "classes.txt").write_text("dog\ncat\n")
    (src / "labels.csv").write_text(
        "image,labels,split,mask,id\n"
        "a.jpg,dog,train,,good\n"
        "empty.jpg,dog,train,,zero_bytes\n"
        "corrupt.jpg,dog,train,,corrupt\n"
        "truncated.jpg,dog,train,,truncated\n"
        "missing.jpg,dog,train,,missing\n"
        "b.jpg,dog,val,small_mask.png,mask_size\n"
        "b.jpg,unicorn,train,,unknown_class\n"
        "b.jpg,,train,,no_labels\n"
        "sub/c.jpg,cat,train,,good\n"
        "../secret.jpg,dog,train,,escape\n"
        "b.jpg,cat,holdout,,bad_split\n"
    )
    return src


def test_every_bad_row_is_rejected_with_file_and_reason_and_the_rest_is_kept(
    messy_folder: Path, tmp_path: Path
):
    _, rows, rejects = import_dataset("folder", messy_folder, tmp_path / "ds", workers=2)
    assert [(r.id, r.image) for r in rows] == [("good", "a.jpg")]
    reasons = {r.id: r.reason for r in rejects}
    assert "empty (0 bytes)" in reasons["zero_bytes"] and "empty.jpg" in reasons["zero_bytes"]
    assert "not a readable image" in reasons["corrupt"]
    assert "truncated" in reasons["truncated"]
    assert "does not exist" in reasons["missing"] and "missing.jpg" in reasons["missing"]
    assert "is 5x5 but its image is 16x12" in reasons["mask_size"]
    assert reasons["unknown_class"] == "unknown class 'unicorn'; not in the class list"
    assert "empty label set" in reasons["no_labels"]
    assert "escapes the dataset root" in reasons["escape"]
    assert "unknown split 'holdout'" in reasons["bad_split"]
    assert "duplicate id 'good'" in reasons["good"]  # sub/c.jpg reused the id of a.jpg's row
    assert all("labels.csv:" in r.file for r in rejects)
    assert {r.id for r in read_rejects(tmp_path / "ds")} == set(reasons)
    assert len(read_rejects(tmp_path / "ds")) == 10


def test_strict_import_fails_but_still_writes_what_it_found(
    messy_folder: Path, tmp_path: Path, capsys
):
    code = main(["data", "import", "folder", str(messy_folder), "--out", str(tmp_path / "ds"),
                 "--strict"])  # fmt: skip
    assert code == 2
    assert "--strict: 10 row(s) rejected" in capsys.readouterr().err
    _, rows = load_dataset(tmp_path / "ds")
    assert [r.id for r in rows] == ["good"]


def test_bad_xml_and_missing_mask_in_voc_are_rejected(tmp_path: Path):
    src = _voc(tmp_path / "VOC2012")
    (src / "Annotations/2007_000002.xml").write_text("<annotation><object>")
    (src / "SegmentationClass/2007_000004.png").unlink()
    (src / "Annotations/2007_000004.xml").unlink()
    _, rows, rejects = import_dataset("voc", src, tmp_path / "ds")
    assert sorted(r.id for r in rows) == ["2007_000001", "2007_000003"]
    reasons = {r.id: r.reason for r in rejects}
    assert "not valid XML" in reasons["2007_000002"]
    assert "missing annotation" in reasons["2007_000004"]
    assert rejects[0].file.endswith("train.txt:2")


def test_mask_values_outside_the_class_list_are_rejected(tmp_path: Path):
    src = _voc(tmp_path / "VOC2012")
    _mask(src / "SegmentationClass/2007_000004.png", [DOG, 40])
    _, _, rejects = import_dataset("voc", src, tmp_path / "ds")
    assert "[40] outside 0..20" in rejects[0].reason


def test_unknown_format_lists_the_valid_ones(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"available: .*folder"):
        import_dataset("coco", tmp_path, tmp_path / "ds")
