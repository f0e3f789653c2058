"""The commands as the README gives them, typed in a fresh folder through the installed console
script: what the console shows, the run's log, a step that cannot start, predictions with a
legend, and the MLflow UI serving the run."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import WSSS, free_port, serving, user_environment

from wsss.platform.datasets.images import read_mask, read_rgb
from wsss.platform.training import CHECKPOINT_STAGING_DIR
from wsss.stages.labels import voc_palette
from wsss.stages.segmentation.render import LEGEND_ROW

# What Ray, torch and Ray Data print that a user reads as failures; none of it may reach the
# console (it goes to the run's log).
NOISE = (
    "core_worker.cc",
    "Grad strides do not match",
    "Progress bars disabled",
    "repeated",
    "RAY_DEDUP_LOGS",
    "Traceback",
    "RayTrainWorker",
    "TrainController",
    "INFO",
    "WARNING",
)
PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def test_the_console_shows_progress_and_table2_and_nothing_of_rays_noise(smoke_console):
    for noise in NOISE:
        assert noise not in smoke_console, noise
    lines = smoke_console.splitlines()
    epochs = [line for line in lines if line.startswith("[step3] epoch ")]
    assert len(epochs) == 6  # once each, from one worker
    assert "elapsed, ~" in epochs[0] and " left)" in epochs[0]
    for stage in (
        "[step1] CAMs 208/208 images in",
        "[step1] dense CRF 208/208 images in",
        "[step2] pseudo masks 208/208 images in",
        "[evaluation] DeepLabV3+ on val and test 48/48 images in",
    ):
        assert any(line.startswith(stage) for line in lines), stage
    assert any(line.startswith("Method step") and "test mIoU" in line for line in lines)
    assert any(line.startswith("log: ") and line.endswith("runs/smoke/run.log") for line in lines)


def test_the_run_log_keeps_everything(smoke_run):
    runs_dir, _ = smoke_run
    log = (runs_dir / "smoke" / "run.log").read_text()
    assert "Started a local Ray instance" in log  # Ray's own lines
    assert "wsss:INFO [step1] epoch 8/8" in log  # a worker's line, as forwarded by Ray
    assert "[step3] done in" in log


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("deleted", "classifier.pt is a broken link"),
        ("cut short", "cannot be read as a saved model"),
    ],
)
def test_a_missing_or_damaged_input_stops_the_step_at_once_with_one_line_and_the_log(
    smoke_run, runs_without_step2, damage: str, problem: str
):
    """Step 1 is finished in the cache, but the classifier it links to is gone or cut short:
    step 2 says so before Ray Train starts (no worker tries and retries it), in one line that
    names the step and the file, and points at the log, which holds the traceback."""
    # The classifier the smoke run's step 1 uses, in the copy.
    step1 = runs_without_step2 / "cache" / (smoke_run[0] / "smoke" / "step1").resolve().name
    classifier = (step1 / "classifier.pt").resolve()
    if damage == "deleted":
        classifier.unlink()
    else:
        classifier.write_bytes(classifier.read_bytes()[:-4096])

    result = subprocess.run(
        [str(WSSS), "run", "--preset", "smoke", "--runs-dir", "runs"],
        cwd=runs_without_step2.parent,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert "[step1] reusing" in result.stdout
    errors = result.stdout.splitlines()[-2:]
    assert errors[0].startswith("error: step 2 (IRNet, pseudo masks) failed: StepInputError: ")
    assert "(step2.backbone_from)" in errors[0] and problem in errors[0]
    log_file = runs_without_step2 / "smoke" / "run.log"
    assert errors[1] == f"the full log is in {log_file}"
    log = log_file.read_text()
    assert "Traceback" in log and "RayTrainWorker" not in log
    assert result.stderr == ""


def test_predict_writes_masks_and_overlays_with_a_legend(smoke_run, user_folder: Path):
    runs_dir, _ = smoke_run
    dataset = next((runs_dir / "datasets").iterdir())
    photos = user_folder / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(dataset / "JPEGImages" / "val_000000.jpg", photos / "a.jpg")
    shutil.copy(dataset / "JPEGImages" / "val_000001.jpg", photos / "nested" / "b.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")

    result = subprocess.run(
        [str(WSSS), "predict", "runs/smoke", "photos", "--out", "predictions"],
        cwd=user_folder,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wrote 2 mask(s) and overlay(s) to predictions; 1 unreadable" in result.stdout
    assert "unreadable" in result.stdout and "broken.jpg" in result.stdout
    out = user_folder / "predictions"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "a_overlay.png", "nested__b.png", "nested__b_overlay.png", "predict.log",
    ]  # fmt: skip
    mask = read_mask(out / "a.png")
    assert mask.shape == (64, 64) and mask.max() < 7
    overlay = read_rgb(out / "a_overlay.png")
    drawn = [int(c) for c in np.unique(mask) if c not in (0, 255)]
    # image | overlay on top, then one legend line per class drawn, each with its colour.
    assert overlay.shape[0] == 64 + LEGEND_ROW * max(1, len(drawn))
    assert overlay.shape[1] >= 2 * 64
    legend = overlay[64:]
    for row, class_id in enumerate(drawn):
        line = legend[row * LEGEND_ROW : (row + 1) * LEGEND_ROW]
        assert (line == PALETTE[class_id]).all(axis=-1).sum() >= 25, class_id


def _get(base: str, endpoint: str, **query: str) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(base: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{endpoint}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_ui(smoke_run, user_folder: Path):
    """`wsss ui` as the README says, venv not activated; yields the UI's base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(WSSS), "ui", "--port", str(port)]
    with serving(command, base, cwd=user_folder, env=user_environment()):
        yield base


def test_the_ui_serves_the_run_its_steps_metrics_panels_and_model(smoke_run, mlflow_ui):
    _, report = smoke_run
    experiment = _get(mlflow_ui, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="wsss")
    experiment = experiment["experiment"]
    tags = {tag["key"]: tag["value"] for tag in experiment.get("tags", [])}
    # Opens on the training runs, not on MLflow 3's GenAI views.
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    run_id = report["mlflow"]["run_id"]
    parent = _get(mlflow_ui, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["segmentation_tta_miou"] == pytest.approx(
        report["steps"]["segmentation_tta"]["miou"]
    )
    assert "test_irnet_miou" in metrics
    children = _post(
        mlflow_ui,
        "/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{run_id}'",
        },
    )["runs"]
    names = {run["info"]["run_name"]: run["info"]["run_id"] for run in children}
    assert set(names) == {"step1", "step2", "step3"}
    history = _get(
        mlflow_ui, "/api/2.0/mlflow/metrics/get-history", run_id=names["step3"], metric_key="loss"
    )["metrics"]
    assert len(history) == 6  # one point per epoch
    panels = _get(mlflow_ui, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="panels")
    assert len(panels["files"]) == 4
    assert all(f["path"].endswith(".png") for f in panels["files"])
    models = _post(
        mlflow_ui,
        "/api/2.0/mlflow/logged-models/search",
        {"experiment_ids": [experiment["experiment_id"]]},
    )["models"]
    assert any(
        model["info"]["name"] == "segmenter" and model["info"]["source_run_id"] == run_id
        for model in models
    )


@pytest.mark.parametrize("command", [["run"], ["tune", "--space", "tta"]])
def test_a_config_the_cluster_cannot_meet_is_refused_before_any_work(
    command: list[str], tmp_path: Path
):
    """8 Train workers of half a CPU on the local cluster's 2 CPUs: Ray would wait forever for
    them; the command stops before it writes anything (no runs folder, no MLflow store),
    naming the keys, what they ask and what there is."""
    result = subprocess.run(
        [str(WSSS), *command, "--preset", "smoke", "--set", "ray.num_workers=8"],
        cwd=tmp_path,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert (
        "wsss: error: the Ray cluster cannot run this config: ray.num_workers=8 x "
        "ray.cpus_per_worker=0.5 do not fit on the cluster's nodes (2 CPUs) with "
        "ray.placement_strategy=PACK (lower these settings, or join a larger cluster through "
        "RAY_ADDRESS)"
    ) in result.stderr
    assert not list(tmp_path.iterdir())


def test_ctrl_c_mid_training_stops_the_run_with_one_line_and_marks_it_killed(tmp_path: Path):
    """Ctrl-C, sent as a terminal sends it (to the command's whole process group) once step 1
    has trained an epoch: Ray Train aborts its run, and the command ends at once with status
    130, one line on what is kept and where the log is, and the MLflow run marked killed. No
    checkpoint whose copy the abort cut short is left behind, in the runs folder or in /tmp."""
    staged_in_tmp = set(Path(tempfile.gettempdir()).glob("wsss-*-checkpoint-*"))
    process = subprocess.Popen(
        [str(WSSS), "run", "--preset", "smoke"],
        cwd=tmp_path,
        env=user_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    console = []
    for line in process.stdout:
        console.append(line.rstrip("\n"))
        if line.startswith("[step1] epoch 1/"):
            os.killpg(process.pid, signal.SIGINT)
            break
    console += process.communicate(timeout=300)[0].splitlines()
    assert process.returncode == 130, "\n".join(console[-40:])
    log_file = tmp_path / "runs" / "smoke" / "run.log"
    assert console[-2:] == [
        "warning: interrupted: the steps and training epochs that finished are kept, and the "
        "same command goes on from them",
        f"the full log is in {log_file}",
    ]
    assert "Traceback" not in "\n".join(console) and "KeyboardInterrupt" in log_file.read_text()
    run_id = re.search(r"MLflow run (\w+) at (\S+)", "\n".join(console))
    assert run_id, console[:5]
    client = mlflow.MlflowClient(run_id[2])
    assert client.get_run(run_id[1]).info.status == "KILLED"
    assert not list((tmp_path / "runs").rglob(CHECKPOINT_STAGING_DIR))
    assert set(Path(tempfile.gettempdir()).glob("wsss-*-checkpoint-*")) <= staged_in_tmp
