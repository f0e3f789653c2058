"""Sweeps: the search spaces and their checks, how many trials fit the cluster, the table they
end with, and `wsss tune` as a user runs it, its driver killed mid-way and resumed, its trials
read back from an MLflow server."""

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
import ray.cloudpickle
from conftest import WSSS, free_port, mlflow_server, user_environment
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from wsss.platform.config import ConfigError, load_config
from wsss.platform.sweep import (
    EXIT_AFTER_TRIALS_ENV,
    PLAN_FILE,
    SWEEPS_DIR,
    check_space,
    check_tune_state,
    nested,
    table_rows,
    trial_capacity,
    trial_config,
)
from wsss.tune_spaces import SearchSpace, get_space, space_names


def test_dotted_keys_and_sections_nest_into_one_override():
    assert nested({"step3": {"encoder": "resnet34"}, "step3.tta.enabled": False, "seed": 1}) == {
        "step3": {"encoder": "resnet34", "tta": {"enabled": False}},
        "seed": 1,
    }


def test_a_trial_config_is_the_base_with_the_trials_parameters():
    base = load_config("smoke").model_dump(mode="json")
    config = trial_config(base, {"step2.sem_seg_bg_thres": 0.5, "step3": {"lr": 0.1}})
    assert config.step2.sem_seg_bg_thres == 0.5 and config.step3.lr == 0.1
    assert config.step3.epochs == load_config("smoke").step3.epochs


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"step2.bta": tune.choice([5.0, 10.0])}, "config key step2.bta: unknown key"),
        ({"step2.sem_seg_bg_thres": tune.uniform(0.2, 1.5)}, "config key step2.sem_seg_bg_thres"),
        ({"step3": tune.grid_search([{"encoder": "resnet34"}])}, "step3.encoder"),
    ],
)
def test_a_space_with_a_bad_key_or_value_is_refused_naming_it(params, named):
    space = SearchSpace(name="broken", description="", params=params)
    with pytest.raises(ConfigError, match="search space broken") as error:
        check_space(space, load_config("smoke").model_dump(mode="json"))
    assert named in str(error.value)


@pytest.mark.parametrize("preset", ["smoke", "demo", "paper"])
def test_every_shipped_space_fits_every_preset(preset):
    base = load_config(preset)
    assert space_names() == ["irnet", "step1", "table3", "tta"]
    for name in space_names():
        check_space(get_space(name, base), base.model_dump(mode="json"))


def test_an_unknown_space_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown search space 'tabel3'; available: irnet"):
        get_space("tabel3", load_config("smoke"))


def test_table3_is_the_papers_grid_with_encoders_the_preset_can_train():
    smoke = get_space("table3", load_config("smoke"))
    grids = [value["grid_search"] for value in smoke.params.values()]
    assert [len(grid) for grid in grids] == [2, 2, 2, 2]  # 16 trials
    assert grids[0] == [
        {"encoder": "resnet18", "encoder_from": "step1_classifier"},
        {"encoder": "resnet34", "encoder_from": "weights"},  # step 1 is a ResNet18
    ]
    paper = get_space("table3", load_config("paper")).params["step3"]["grid_search"]
    assert [e["encoder"] for e in paper] == ["resnet50", "resnet101"]


def test_tta_draws_a_scale_set_and_runs_it_with_and_without_flips():
    space = get_space("tta", load_config("smoke"))
    assert space.params["step3.tta.flip"] == {"grid_search": [False, True]}
    assert [0.5, 1.0, 2.0] in space.params["step3.tta.scales"].categories  # the paper's
    assert space.num_samples == len(space.params["step3.tta.scales"].categories)
    params = {
        "step3.tta.enabled": True,
        "step3.tta.scales": [0.5, 1.0, 2.0],
        "step3.tta.flip": True,
    }
    header, rows = table_rows(space, [(params, {"final_miou": 0.3, "final_test_miou": 0.2}, None)])
    assert header == ["Scales", "Flip", "val mIoU", "test mIoU"]
    assert rows == [["0.5 1 2", "Yes", "30.00", "20.00"]]


def test_step1_trials_are_stopped_early_by_asha_on_val_f1():
    base = load_config("smoke")
    space = get_space("step1", base)
    assert space.trial == "classifier" and space.metric == "f1_macro"
    scheduler = space.scheduler(base)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._max_t == base.step1.epochs + 1  # the epochs and the closing report


@pytest.mark.parametrize(
    ("cpus", "gpus", "sets", "fits"),
    [
        (2, 0, [], 1),  # smoke: 2 workers x 0.5 CPU + 1 for Ray Data, or 2 inference tasks
        (8, 0, [], 4),
        (16, 2, ["ray.use_gpu=true", "ray.num_workers=1"], 2),  # one GPU per trial
    ],
)
def test_trials_at_once_are_what_the_cluster_fits(cpus, gpus, sets, fits):
    config = load_config("smoke", None, sets)
    assert trial_capacity(config, {"CPU": cpus, "GPU": gpus}) == fits


def test_a_cluster_too_small_for_one_trial_is_refused():
    with pytest.raises(ConfigError, match="one trial needs 2 CPUs; the cluster has 1 CPUs"):
        trial_capacity(load_config("smoke"), {"CPU": 1})


def test_a_resume_refuses_tune_state_that_does_not_read_back(tmp_path: Path):
    check_tune_state(tmp_path)  # nothing saved yet: Tune starts the sweep, nothing is lost
    (tmp_path / "experiment_state-2026-12-01_10-00-00.json").write_text('{"trial_data": []}')
    check_tune_state(tmp_path)
    (tmp_path / "experiment_state-2026-12-01_11-00-00.json").write_text("")  # killed mid-copy
    with pytest.raises(ConfigError, match=r"11-00-00\.json is incomplete"):
        check_tune_state(tmp_path)
    (tmp_path / "experiment_state-2026-12-01_11-00-00.json").write_text('{"trial_data": []}')
    # The search algorithm's state is a cloudpickle, named .json.
    search_state = tmp_path / "basic-variant-state-2026-12-01_11-00-00.json"
    search_state.write_bytes(ray.cloudpickle.dumps({"iterators": []}))
    check_tune_state(tmp_path)
    search_state.write_bytes(ray.cloudpickle.dumps({"iterators": []})[:5])  # cut short
    with pytest.raises(ConfigError, match=r"basic-variant-state-2026-12-01_11-00-00\.json is"):
        check_tune_state(tmp_path)


def test_the_table_puts_the_best_first_and_failures_last():
    space = get_space("table3", load_config("smoke"))
    params = {
        "step3": {"encoder": "resnet18", "encoder_from": "step1_classifier"},
        "step2.sem_seg_bg_thres": 0.3,
        "step3.tta.enabled": True,
        "step1.merge_binary_cams": False,
    }
    results = [
        (
            {**params, "step2.sem_seg_bg_thres": 0.5},
            {"final_miou": 0.2, "final_test_miou": 0.3},
            None,
        ),
        (params, {}, "ValueError: boom"),
        (params, {"final_miou": 0.25, "final_test_miou": 0.21}, None),
    ]
    header, rows = table_rows(space, results)
    assert header == ["Encoder", "IRNet thr.", "TTA", "Person", "val mIoU", "test mIoU"]
    assert rows == [
        ["resnet18 (step-1 start)", "0.3", "Yes", "No", "25.00", "21.00"],
        ["resnet18 (step-1 start)", "0.5", "Yes", "No", "20.00", "30.00"],
        ["resnet18 (step-1 start)", "0.3", "Yes", "No", "failed", ""],
    ]


def _search_children(base: str, parent_run_id: str) -> list[dict]:
    experiment = json.loads(
        urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=wsss", timeout=30
        ).read()
    )["experiment"]
    body = json.dumps(
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
        }
    ).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    return json.loads(urllib.request.urlopen(request, timeout=30).read()).get("runs", [])


def test_a_sweep_killed_mid_way_resumes_without_rerunning_or_logging_twice(
    smoke_run, user_folder: Path
):
    """`wsss tune --space tta` (one draw: two trials, flips off and on) over the smoke run's
    store: the driver dies once the first trial is done (injected), `--resume` runs the second
    only, and an MLflow server over the store shows each trial once with its params and
    metrics."""
    runs_dir, _ = smoke_run
    command = [str(WSSS), "tune", "--space", "tta", "--preset", "smoke", "--num-samples", "1"]
    killed = subprocess.run(
        command, cwd=user_folder, env={**user_environment(), EXIT_AFTER_TRIALS_ENV: "1"},
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert killed.returncode == 9, killed.stdout[-3000:] + killed.stderr[-3000:]
    (folder,) = (runs_dir / SWEEPS_DIR).glob("tta-smoke-*")
    plan = json.loads((folder / PLAN_FILE).read_text())
    (done,) = [report for report in (folder / "trials").glob("*/report.json")]
    done_at = done.stat().st_mtime_ns

    resumed = subprocess.run(
        [str(WSSS), "tune", "--resume", str(folder)], cwd=user_folder, env=user_environment(),
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 trial(s); best first:" in resumed.stdout
    assert done.stat().st_mtime_ns == done_at  # the finished trial was not run again
    assert len(list((folder / "trials").glob("*/report.json"))) == 2
    # Tune restored the experiment (a restart would name its trials after a new experiment).
    assert len({trial.name.rsplit("_", 1)[0] for trial in (folder / "trials").iterdir()}) == 1
    step3 = next(line for line in resumed.stdout.splitlines() if line.startswith("  step3:"))
    assert "built" not in step3  # DeepLabV3+ was trained once, by the smoke run

    port = free_port()
    with mlflow_server(f"sqlite:///{runs_dir / 'mlflow.db'}", port):
        children = _search_children(f"http://127.0.0.1:{port}", plan["parent_run_id"])
    assert len(children) == 2  # one per trial, none twice
    for run in children:
        params = {p["key"] for p in run["data"]["params"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"step3.tta.scales", "step3.tta.flip"} <= params
        assert {"final_miou", "segmentation_tta_miou", "test_segmentation_miou"} <= metrics
    flips = sorted(p["value"] for run in children for p in run["data"]["params"]
                   if p["key"] == "step3.tta.flip")  # fmt: skip
    assert flips == ["False", "True"]
