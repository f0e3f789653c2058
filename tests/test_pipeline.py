"""End to end: `wsss run --preset smoke` on a real local Ray cluster, tracked in MLflow.

The shared smoke run is the README's main command as a user types it (see conftest); the
tests that change a setting run the pipeline in this process, on the shared cluster, over the
same runs folder."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WSSS, free_port, mlflow_server, user_environment
from mlflow.tracking import MlflowClient
from PIL import Image

from wsss.platform import run as run_module
from wsss.platform.datasets.images import read_mask, read_rgb
from wsss.platform.datasets.manifest import ORACLE_MASK_DIR, load_dataset
from wsss.platform.datasets.synthetic.writing import AWKWARD_KINDS, EXIF_ORIENTATION, awkward_kind
from wsss.platform.report import REPORT_FILE, format_table2, log_step, table2
from wsss.platform.run import _data_key, _step1, run_pipeline, steps_made_from
from wsss.platform.runners.cams import CAM_METRICS, CamExtractor, cam_masks
from wsss.platform.runners.classifier import load_classifier
from wsss.platform.runners.outputs import CAM_MASK_DIRS, SEGMENTER_FILE
from wsss.platform.runners.segmentation import Segmenter
from wsss.platform.store import StepStore
from wsss.platform.training import EXIT_AFTER_CHECKPOINT_ENV
from wsss.stages.metrics import ConfusionMatrix
from wsss.stages.normalise import to_model_input

STEPS = (
    "cam", "cam_crf", "irnet", "cam_predicted", "cam_crf_predicted", "irnet_predicted",
    "segmentation", "segmentation_tta",
)  # fmt: skip


def test_report_has_the_promised_shape_and_ranges(smoke_run):
    runs_dir, report = smoke_run
    assert set(report) == {
        "dataset", "classifier", "steps", "split", "test_steps", "train_steps", "timings_s",
        "store", "run_dir", "mlflow",
    }  # fmt: skip
    assert set(report["train_steps"]) == {"cam", "cam_crf", "irnet"}
    assert report["run_dir"] == str(runs_dir / "smoke")
    # A first run builds every step (the classifier inside step 1, IRNet inside step 2).
    for step in ("classifier", "irnet", "step1", "step2", "step3"):
        assert report["store"][step]["built"] == 1 and report["store"][step]["build_s"] > 0
    assert report["split"] == "val"
    # Val is the paper's column; every step is scored on test too (the smoke set has its masks).
    for steps in (report["steps"], report["test_steps"]):
        assert set(steps) == set(STEPS)
        for name in STEPS:
            metrics = steps[name]
            assert set(metrics) == {"miou", "mean_accuracy", "pixel_accuracy", "per_class_iou"}
            for key in ("miou", "mean_accuracy", "pixel_accuracy"):
                assert 0.0 <= metrics[key] <= 1.0, (name, key)
            assert "background" in metrics["per_class_iou"]
    assert report["test_steps"] != report["steps"]
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


def test_awkward_image_files_go_through_every_step(smoke_run, smoke_config):
    """The smoke set stores its first train and val images as grey, RGBA, 16-bit, CMYK,
    EXIF-turned, 1x1 and (train) 10000x200 files: each is stored so, and the run gave each a CAM
    and a pseudo mask of the picture's displayed size, and scored the val ones."""
    runs_dir, report = smoke_run
    run_dir = runs_dir / "smoke"
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    stored = {
        "grey": lambda image: image.mode == "L",
        "rgba": lambda image: image.mode == "RGBA",
        "sixteen_bit": lambda image: image.mode == "I;16",
        "cmyk": lambda image: image.mode == "CMYK",
        "exif_turned": lambda image: image.getexif().get(EXIF_ORIENTATION) == 6,
        "one_pixel": lambda image: image.size == (1, 1),
        "wide": lambda image: image.size == (10000, 200),
    }
    met = []
    for row in rows:
        kind = awkward_kind(smoke_config.data.synthetic, row.split, int(row.id.split("_")[1]))
        if kind is None:
            continue
        met.append((row.split, kind))
        with Image.open(info.root / row.image) as image:
            assert stored[kind](image), (row.id, kind)
        assert (run_dir / "step1" / "cams" / f"{row.id}.npz").is_file()
        pseudo = read_mask(run_dir / "step2" / "pseudo_masks" / f"{row.id}.png")
        assert pseudo.shape == read_rgb(info.root / row.image).shape[:2], (row.id, kind)
    assert sorted(met) == sorted(
        [("train", kind) for kind in AWKWARD_KINDS] + [("val", kind) for kind in AWKWARD_KINDS[:-1]]
    )
    assert sum(report["dataset"]["images"].values()) == len(rows)


def test_train_rows_score_the_pseudo_masks_against_the_train_splits_true_masks(smoke_run):
    """The built-in set keeps its train masks apart; the train IRNet row is step 2's train
    pseudo masks against them (recomputed here from the files), drawn with the weak labels."""
    runs_dir, report = smoke_run
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    matrix = ConfusionMatrix(len(info.classes))
    for row in [r for r in rows if r.split == "train"]:
        pseudo = read_mask(runs_dir / "smoke" / "step2" / "pseudo_masks" / f"{row.id}.png")
        matrix.update(pseudo, read_mask(info.root / ORACLE_MASK_DIR / f"{row.id}.png"))
    train = report["train_steps"]
    assert train["irnet"]["miou"] == pytest.approx(matrix.summary(info.classes)["miou"])
    assert train["cam"]["miou"] != report["steps"]["cam"]["miou"]
    assert 0.0 < train["cam_crf"]["miou"] < 1.0


def test_predicted_label_rows_draw_steps_1_and_2_from_the_classes_the_classifier_predicts(
    smoke_run, smoke_config
):
    """On val, an image's predicted CAMs are those of the classes scoring above their saved
    thresholds, whatever its labels, and the predicted-label CAM and CAM+CRF rows are their
    masks against the true ones (recomputed here from the files)."""
    runs_dir, report = smoke_run
    step1 = runs_dir / "smoke" / "step1"
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    model, class_indices, thresholds = load_classifier(step1 / "classifier.pt")
    matrices = {name: ConfusionMatrix(len(info.classes)) for name in ("cam", "cam_crf")}
    differ = 0
    for row in [r for r in rows if r.split == "val"]:
        image = read_rgb(info.root / row.image)
        with torch.no_grad():
            scores = torch.sigmoid(model(to_model_input(torch.from_numpy(image)[None])))[0]
        expected = [c for c, s, t in zip(class_indices, scores, thresholds, strict=True) if s > t]
        with np.load(step1 / "cams" / f"{row.id}.npz") as saved:
            assert saved["predicted_classes"].tolist() == expected, row.id
            differ += saved["classes"].tolist() != expected
        masks = cam_masks(image, row.id, step1 / "cams", smoke_config.step1, "predicted")
        truth = read_mask(info.root / row.mask)
        for matrix, mask in zip(matrices.values(), masks, strict=True):
            matrix.update(mask, truth)
    assert differ > 0  # the classifier's labels are not the true ones everywhere
    for name, matrix in matrices.items():
        drawn = report["steps"][f"{name}_predicted"]["miou"]
        assert drawn == pytest.approx(matrix.summary(info.classes)["miou"])
        assert drawn != report["steps"][name]["miou"]
    assert report["steps"]["irnet_predicted"]["miou"] != report["steps"]["irnet"]["miou"]


def test_step1_keeps_the_val_and_test_masks_it_scored(smoke_run, smoke_config):
    """The CAM and CAM+CRF masks step 1 keeps of the val and test images (the panels read
    them) are those its CAM files give with the images' labels, and make the report's rows."""
    runs_dir, report = smoke_run
    step1 = runs_dir / "smoke" / "step1"
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    for split, scores in (("val", report["steps"]), ("test", report["test_steps"])):
        matrices = {name: ConfusionMatrix(len(info.classes)) for name in CAM_METRICS}
        for row in [r for r in rows if r.split == split and r.mask is not None]:
            truth = read_mask(info.root / row.mask)
            for name, matrix in matrices.items():
                matrix.update(read_mask(step1 / CAM_MASK_DIRS[name] / f"{row.id}.png"), truth)
        for name, matrix in matrices.items():
            assert scores[name]["miou"] == pytest.approx(matrix.summary(info.classes)["miou"])
    row = next(r for r in rows if r.split == "val")
    expected = cam_masks(
        read_rgb(info.root / row.image), row.id, step1 / "cams", smoke_config.step1
    )
    for name, mask in zip(CAM_METRICS, expected, strict=True):
        np.testing.assert_array_equal(
            read_mask(step1 / CAM_MASK_DIRS[name] / f"{row.id}.png"), mask
        )
    train_ids = {r.id for r in rows if r.split == "train"}
    assert not train_ids & {p.stem for p in (step1 / CAM_MASK_DIRS["cam"]).iterdir()}


def test_segmenter_learns_the_pseudo_masks_it_was_trained_on(smoke_run):
    """Step 3 fits its targets: on train images its labels agree with step 2's pseudo masks far
    more often than a uniformly random labelling (1/K of the pixels) would."""
    runs_dir, report = smoke_run
    run_dir = runs_dir / "smoke"
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    segmenter = Segmenter(str(run_dir / "step3" / SEGMENTER_FILE), str(info.root), None)
    agree = total = 0
    for row in [r for r in rows if r.split == "train"][:24]:
        pseudo = read_mask(run_dir / "step2" / "pseudo_masks" / f"{row.id}.png")
        predicted = segmenter.labels(read_rgb(info.root / row.image))
        agree += int((predicted == pseudo).sum())
        total += pseudo.size
    assert agree / total > 2.0 / len(info.classes)
    assert 0.0 < report["steps"]["segmentation"]["miou"] < 1.0


def test_segmenter_beats_chance_on_val(smoke_run):
    """Issue 6's floor: the trained DeepLabV3+ beats chance on the real val masks, with a margin.
    Chance is the expected mIoU of labelling each pixel uniformly at random: with n_c of the N
    counted pixels in class c and K classes, class c's expected IoU is
    (n_c / K) / (n_c + N / K - n_c / K). (Labelling everything background scores about 0.106
    here, and three smoke runs gave 0.106-0.136, too close to hold a test to.) TTA is not held
    to it: its 0.5 scale turns the 64 px images into 32 px ones."""
    runs_dir, report = smoke_run
    info, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    num_classes = len(info.classes)
    counts = np.zeros(num_classes)
    for row in [r for r in rows if r.split == "val"]:
        mask = read_mask(info.root / row.mask)
        counts += np.bincount(mask[mask != 255], minlength=num_classes)[:num_classes]
    total, present = counts.sum(), counts[counts > 0]
    chance = float(
        np.mean((present / num_classes) / (present + total / num_classes - present / num_classes))
    )
    assert 0.0 < chance < 0.1
    assert report["steps"]["segmentation"]["miou"] > 1.5 * chance


def test_table2_lists_each_step_in_percent_on_val_and_test(smoke_run):
    _, report = smoke_run
    rows = table2(report)
    for split, steps in (("val", report["steps"]), ("test", report["test_steps"])):
        assert rows["Step 3. Segmentation + TTA"][split] == pytest.approx(
            100 * steps["segmentation_tta"]["miou"], abs=0.01
        )
    text = format_table2(report)
    assert "val mIoU" in text and "test mIoU" in text
    for title in ("Step 2. IRNet", "Step 2. IRNet, predicted labels"):
        row = next(line for line in text.splitlines() if line.startswith(f"{title}  "))
        assert row.split()[-2:] == [f"{rows[title]['val']:.2f}", f"{rows[title]['test']:.2f}"]
        assert title == "Step 2. IRNet" or "train" not in rows[title]


def _parent_and_step_runs(client: MlflowClient, run_id: str, report: dict) -> tuple:
    """The parent run `run_id`, its every val and test mIoU checked against `report`, and its
    step runs by name (one each)."""
    parent = client.get_run(run_id)
    for name, metrics in report["train_steps"].items():
        assert parent.data.metrics[f"train_{name}_miou"] == pytest.approx(metrics["miou"])
    for name in STEPS:
        assert parent.data.metrics[f"{name}_miou"] == pytest.approx(report["steps"][name]["miou"])
        test_miou = report["test_steps"][name]["miou"]
        assert parent.data.metrics[f"test_{name}_miou"] == pytest.approx(test_miou)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    steps = {run.info.run_name: run for run in children}
    assert len(children) == 3 and set(steps) == {"step1", "step2", "step3"}
    return parent, steps


def test_mlflow_holds_the_parent_and_step_runs_with_the_same_numbers(smoke_run):
    runs_dir, report = smoke_run
    client = MlflowClient(report["mlflow"]["tracking_uri"])
    parent, steps = _parent_and_step_runs(client, report["mlflow"]["run_id"], report)
    step1 = steps["step1"]
    assert step1.data.params["backbone"] == "resnet18"
    assert "loss" in step1.data.metrics
    assert step1.data.metrics["cam_crf_miou"] == pytest.approx(report["steps"]["cam_crf"]["miou"])
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "panels")]
    assert len(artifacts) >= 1 and artifacts[0].endswith(".png")
    # Artifacts stay next to the database, not in ./mlruns of wherever the run was started.
    assert parent.info.artifact_uri.startswith((runs_dir / "mlartifacts").resolve().as_uri())
    assert (runs_dir / "mlartifacts").is_dir()


def test_a_tracking_server_that_goes_away_mid_run_loses_nothing(
    ray_cluster, smoke_run, smoke_config, user_folder, tmp_path, monkeypatch, caplog
):
    """The smoke settings (every step reused) logged to an MLflow server that is stopped once
    step 1 is logged: the run completes, says so once, and its report holds every number;
    `wsss log` then logs the run folder to another store as the run would have."""
    runs_dir, first = smoke_run
    config = smoke_config.model_copy(deep=True)
    config.name = "smoke-tracking"
    port = free_port()
    config.tracking.tracking_uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", port) as server:

        def log_step_then_stop_the_server(tracker, config, step, summary):
            log_step(tracker, config, step, summary)
            if step == "step1":
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

        monkeypatch.setattr(run_module, "log_step", log_step_then_stop_the_server)
        with caplog.at_level(logging.WARNING, logger="wsss"):
            report = run_pipeline(config, runs_dir)
    said = [r.getMessage() for r in caplog.records if "is unavailable" in r.getMessage()]
    assert len(said) == 1 and f"wsss log {runs_dir / config.name}" in said[0]
    written = json.loads((runs_dir / config.name / REPORT_FILE).read_text())
    assert written["mlflow"]["unavailable"] and written["mlflow"]["run_id"]
    assert written["steps"] == first["steps"] and written["test_steps"] == first["test_steps"]

    later = f"sqlite:///{tmp_path / 'later.db'}"
    logged = subprocess.run(
        [str(WSSS), "log", str(runs_dir / config.name), "--tracking-uri", later],
        cwd=user_folder, env=user_environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert logged.returncode == 0, logged.stdout[-3000:] + logged.stderr[-3000:]
    relogged = json.loads((runs_dir / config.name / REPORT_FILE).read_text())
    assert relogged["mlflow"] == {
        "tracking_uri": later, "run_id": relogged["mlflow"]["run_id"], "unavailable": None
    }  # fmt: skip
    client = MlflowClient(later)
    parent, steps = _parent_and_step_runs(client, relogged["mlflow"]["run_id"], report)
    assert parent.info.status == "FINISHED" and parent.data.params["name"] == config.name
    loss = client.get_metric_history(steps["step3"].info.run_id, "loss")
    assert len(loss) == config.step3.epochs
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "panels")]


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_second_run_with_the_same_config_reuses_every_step(
    ray_cluster, smoke_run, smoke_config, caplog
):
    runs_dir, first = smoke_run
    with caplog.at_level(logging.INFO, logger="wsss"):
        again = run_pipeline(smoke_config, runs_dir)
    out = _logged(caplog)
    for step in ("step1", "step2", "step3"):
        assert f"[{step}] reusing" in out
    assert "[synthetic] reusing" in out  # the data set too
    assert again["steps"] == json.loads(json.dumps(first["steps"]))


def test_a_changed_step3_setting_reuses_steps_1_and_2(ray_cluster, smoke_run, smoke_config, caplog):
    runs_dir, _ = smoke_run
    changed = smoke_config.model_copy(deep=True)
    changed.step3.tta.scales = [1.0]  # TTA is evaluation only: even step 3 is reused
    changed.name = "smoke-tta"
    with caplog.at_level(logging.INFO, logger="wsss"):
        report = run_pipeline(changed, runs_dir)
    out = _logged(caplog)
    assert "[step1] reusing" in out and "[step2] reusing" in out and "[step3] reusing" in out
    assert 0.0 <= report["steps"]["segmentation_tta"]["miou"] <= 1.0
    assert Path(runs_dir / "smoke-tta" / REPORT_FILE).is_file()


def test_two_runs_of_a_new_irnet_threshold_at_once_share_what_they_can(smoke_run):
    """Two `wsss run`s with a new IRNet threshold, one name for both, started together over
    the smoke run's folder: step 1 and the trained IRNet are reused (a threshold is read after
    training); the new pseudo masks and DeepLabV3+ are built by one of them while the other
    waits and then reuses them; both end with the same numbers, each in a folder of its own."""
    runs_dir, first = smoke_run
    command = [
        str(WSSS), "run", "--preset", "smoke", "--runs-dir", str(runs_dir),
        "--set", "name=smoke-threshold", "--set", "step2.sem_seg_bg_thres=0.7",  # smoke: 0.3
        "--set", "step3.epochs=1",
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    consoles = [process.communicate(timeout=900)[0] for process in processes]
    for process, console in zip(processes, consoles, strict=True):
        assert process.returncode == 0, console[-3000:]
    assert any("[step2] waiting: process" in console for console in consoles)
    reports = [
        json.loads((runs_dir / name / REPORT_FILE).read_text())
        for name in ("smoke-threshold", "smoke-threshold-2")
    ]
    for step in ("step2", "step3"):
        assert sum(r["store"][step].get("built", 0) for r in reports) == 1, step
        assert sum(r["store"][step].get("reused", 0) for r in reports) == 1, step
    assert all(report["store"]["step1"] == {"reused": 1} for report in reports)
    # Only the builder of the new masks reads IRNet; the other reuses the masks themselves.
    assert [report["store"].get("irnet") for report in reports].count({"reused": 1}) == 1
    model = (runs_dir / "smoke-threshold" / "step2" / "irnet.pt").resolve()
    assert model == (runs_dir / "smoke" / "step2" / "irnet.pt").resolve()
    assert reports[0]["steps"] == reports[1]["steps"]
    before = json.loads(json.dumps(first["steps"]))
    assert reports[0]["steps"]["irnet"] != before["irnet"]
    assert reports[0]["steps"]["cam"] == before["cam"]
    assert not list((runs_dir / "cache").glob("*.partial"))
    assert not list((runs_dir / "cache").glob("*.lock"))


def test_merging_binary_cams_reuses_the_trained_classifier_and_adds_the_excluded_class(
    ray_cluster, smoke_run, smoke_config, caplog
):
    """A step-1 inference setting (here the paper's binary classifier for the excluded class,
    its CAMs merged) keeps the trained multi-label classifier; the excluded class's CAM is then
    kept for every val image labelled with it, where the smoke run kept it for none. Step 1
    alone, as the pipeline runs it: steps 2 and 3 only read its CAMs."""
    runs_dir, first = smoke_run
    changed = smoke_config.model_copy(deep=True)
    changed.step1.merge_binary_cams = True
    dataset_dir = (runs_dir / "smoke" / "dataset").resolve()
    info, rows = load_dataset(dataset_dir)
    store = StepStore(runs_dir / "cache")
    data_key = _data_key(changed, dataset_dir, info)
    with caplog.at_level(logging.INFO, logger="wsss"):
        step1, summary = store.run(
            "step1",
            steps_made_from(changed, data_key)["step1"],
            lambda folder: _step1(changed, info, rows, folder, store, data_key),
        )
    out = _logged(caplog)
    assert "[classifier] reusing" in out and "[binary_person] starting" in out
    step1_before = runs_dir / "smoke" / "step1"
    assert (step1 / "classifier.pt").resolve() == (step1_before / "classifier.pt").resolve()
    assert (step1 / "binary_person.pt").resolve().is_file()
    assert summary["f1_macro"] == first["classifier"]["f1_macro"]
    person = info.classes.index("person")
    labelled = [r.id for r in rows if r.split == "val" and "person" in r.labels]
    assert labelled
    for image_id in labelled:
        assert person in np.load(step1 / "cams" / f"{image_id}.npz")["classes"]
        assert person not in np.load(step1_before / "cams" / f"{image_id}.npz")["classes"]


@contextlib.contextmanager
def small_file_system(folder: Path, size_bytes: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of `size_bytes` mounted on `folder` (root only: skips elsewhere); yields a
    function that grows it to a new size."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def grow(new_size: int) -> None:
        remount = ["mount", "-o", f"remount,size={new_size}", str(folder)]
        subprocess.run(remount, check=True)

    try:
        yield grow
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_runs_folder_that_fills_up_mid_step_says_so_and_loses_nothing_finished(
    ray_cluster, smoke_run, smoke_config, user_folder, tmp_path, caplog
):
    """`wsss run` over the smoke store on a file system that fills up while step 1 redraws its
    CAMs (every other step folder linked from the smoke run): the step fails naming the full
    file system and what to do; once there is room, the same run reuses what was finished and
    ends with the smoke run's numbers. (The failing run is a process of its own, as a user's
    is: a failed stage's actors live while its error is held.)"""
    smoke_runs, first = smoke_run
    cams = next((smoke_runs / "cache").glob("step1-*")) / "cams"
    cam_bytes = sum(f.stat().st_size for f in cams.iterdir())
    runs_dir = tmp_path / "runs"
    config = smoke_config.model_copy(deep=True)  # MLflow's database on another file system
    config.tracking.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with small_file_system(runs_dir, cam_bytes // 2) as grow:
        for folder in ("datasets", "cache"):
            (runs_dir / folder).mkdir()
            for entry in (smoke_runs / folder).iterdir():
                if not entry.name.startswith(("step1-", ".")) and entry.is_dir():
                    (runs_dir / folder / entry.name).symlink_to(entry)
        command = [str(WSSS), "run", "--preset", "smoke", "--runs-dir", str(runs_dir),
                   "--set", f"tracking.tracking_uri={config.tracking.tracking_uri}"]  # fmt: skip
        failed = subprocess.run(
            command, cwd=user_folder, env=user_environment(), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        console = failed.stdout + failed.stderr
        assert failed.returncode == 1, console[-4000:]
        assert "step 1 (classifier, CAMs, dense CRF) failed: OSError: " in console
        assert "No space left on device" in console
        assert f"the file system holding {runs_dir} is full" in console
        assert "run the same command again" in console

        grow(8 * cam_bytes + 2**26)
        with caplog.at_level(logging.INFO, logger="wsss"):
            report = run_pipeline(config, runs_dir)
    out = _logged(caplog)
    assert "[classifier] reusing" in out and "[step2] reusing" in out
    for name in STEPS:
        assert report["steps"][name]["miou"] == pytest.approx(
            first["steps"][name]["miou"], abs=1e-3
        )


def test_a_run_killed_during_step2_resumes_and_reports_like_an_uninterrupted_one(
    smoke_run, runs_without_step2
):
    """The driver of a run dies (SIGKILL, injected once Ray Train has registered step 2's
    checkpoint of epoch 1), and the run is started again: step 1 is reused, step 2 resumes in
    its .partial folder after epoch 1 (its killed owner's lease taken over at once, the run
    folder too) and does not redo that epoch, and the report holds the very numbers of the
    uninterrupted smoke run."""
    runs_dir = runs_without_step2
    command = [sys.executable, "-m", "wsss.cli", "run", "--preset", "smoke",
               "--runs-dir", str(runs_dir)]  # fmt: skip
    process = subprocess.Popen(
        command,
        env={**os.environ, EXIT_AFTER_CHECKPOINT_ENV: "step2:1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed, _ = process.communicate(timeout=900)
    with contextlib.suppress(ProcessLookupError):  # whatever outlived its driver
        os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, killed[-3000:]
    assert "[step2] epoch 2/4" not in killed, killed[-3000:]
    assert len(list((runs_dir / "cache").glob("step2-*.partial"))) == 1

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[step1] reusing" in again.stdout
    assert "[step2] resuming" in again.stdout and "[step2] waiting" not in again.stdout
    assert "[step2] resuming after epoch 1 from" in again.stdout
    assert "[step2] epoch 1/4" not in again.stdout and "[step2] epoch 4/4" in again.stdout
    assert "[step3] reusing" in again.stdout  # the very pseudo masks: the same step-3 key
    report = json.loads((runs_dir / "smoke" / REPORT_FILE).read_text())
    uninterrupted = smoke_run[1]
    assert report["classifier"] == uninterrupted["classifier"]
    for step in STEPS:
        assert report["steps"][step] == uninterrupted["steps"][step], step
    assert not list((runs_dir / "cache").glob("*.partial"))
    assert "Step 3. Segmentation + TTA" in again.stdout  # Table 2 printed at the end


def test_step1_classifier_learns_beyond_guessing(smoke_run):
    runs_dir, report = smoke_run
    summary = json.loads((runs_dir / "smoke" / "step1" / "summary.json").read_text())
    losses = [row["loss"] for row in summary["history"]]
    assert losses[-1] < losses[0]
    # Guessing each label with probability 1/2 scores F1 = 2p / (2p + 1) for a class of
    # prevalence p; the val prevalences are all below 1/2 here, so 0.5 is above every guess.
    assert report["classifier"]["f1_macro"] > 0.5


def test_cam_extraction_on_ray_matches_a_single_process_reference(smoke_run, smoke_config):
    runs_dir, _ = smoke_run
    step1 = runs_dir / "smoke" / "step1"
    dataset = next((runs_dir / "datasets").iterdir())
    info, rows = load_dataset(dataset)
    sample = [r for r in rows if r.split == "val"][:3]
    reference_dir = runs_dir / "reference_cams"
    reference_dir.mkdir(exist_ok=True)
    extractor = CamExtractor(
        str(info.root), info.classes, [str(step1 / "classifier.pt")], smoke_config.step1,
        str(reference_dir),
    )  # fmt: skip
    extractor(
        {
            "id": np.array([r.id for r in sample], dtype=object),
            "image": np.array([r.image for r in sample], dtype=object),
            "labels": [list(r.labels) for r in sample],
            "split": np.array([r.split for r in sample], dtype=object),
        }
    )
    for row in sample:
        on_ray = np.load(step1 / "cams" / f"{row.id}.npz")
        local = np.load(reference_dir / f"{row.id}.npz")
        for prefix in ("", "predicted_"):
            assert on_ray[f"{prefix}classes"].tolist() == local[f"{prefix}classes"].tolist()
            np.testing.assert_allclose(
                on_ray[f"{prefix}cams"].astype(np.float32),
                local[f"{prefix}cams"].astype(np.float32),
                atol=2e-3,
            )
