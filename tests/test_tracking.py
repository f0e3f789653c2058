"""The tracker over a store that does not answer: the run goes on, told once."""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from conftest import free_port

from wsss.platform.config import TrackingConfig
from wsss.platform.sweep import SweepTracker
from wsss.platform.tracking import Tracker


def test_a_store_that_does_not_answer_is_said_once_and_nothing_waits_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="wsss"):
        tracker = Tracker(TrackingConfig(tracking_uri=uri), tmp_path, run_dir=tmp_path / "run")
        with tracker.parent_run("run", {"seed": 0}) as parent:
            with tracker.step_run("step1", {"lr": 0.1}) as step:
                tracker.log_history([{"epoch": 1, "loss": 0.5}])
                tracker.log_metrics({"cam_miou": 0.2})
            tracker.log_dict({"a": 1}, "report.json")
    assert parent is None and step is None
    assert not tracker.enabled and tracker.unavailable
    warnings = [r.getMessage() for r in caplog.records if "is unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert uri in warnings[0] and f"wsss log {tmp_path / 'run'}" in warnings[0]
    assert mlflow.active_run() is None
    # MLflow exports the URI it was given; a later run of this process must not inherit it.
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_store_that_goes_away_ends_the_runs_it_opened_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs opened before the store went away leave MLflow's stack of active runs: a later run
    in the same process does not nest under them."""
    tracker = Tracker(TrackingConfig(), tmp_path)
    with tracker.parent_run("run", {}) as parent, tracker.step_run("step1", {}):
        assert mlflow.active_run() is not None
        monkeypatch.setattr(mlflow, "log_metrics", _store_gone)
        tracker.log_metrics({"cam_miou": 0.2})
        assert mlflow.active_run() is None
    assert parent is not None and tracker.unavailable == "ConnectionError: the store went away"
    run = mlflow.MlflowClient(tracker.uri).get_run(parent)
    assert run.info.status == "FAILED"  # the store answered the closing call


def _store_gone(*args: object, **kwargs: object) -> None:
    raise ConnectionError("the store went away")


@pytest.mark.parametrize(
    ("stop", "status"), [(KeyboardInterrupt, "KILLED"), (ValueError, "FAILED")]
)
def test_a_run_stopped_by_ctrl_c_is_marked_killed_and_one_that_raised_failed(
    tmp_path: Path, stop: type[BaseException], status: str
) -> None:
    tracker = Tracker(TrackingConfig(), tmp_path)
    with (
        pytest.raises(stop),
        tracker.parent_run("run", {}) as parent,
        tracker.step_run("step1", {}) as step,
    ):
        raise stop()
    client = mlflow.MlflowClient(tracker.uri)
    assert [client.get_run(run).info.status for run in (parent, step)] == [status, status]
    assert mlflow.active_run() is None


@dataclass
class _Trial:
    """What `SweepTracker` reads of a Tune trial."""

    trial_id: str
    config: dict = field(default_factory=lambda: {"step3.tta.flip": True})
    last_result: dict = field(default_factory=lambda: {"final_miou": 0.25})

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def test_a_sweep_logs_each_trial_once_and_goes_on_when_the_store_stops_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child run per trial under the sweep's run; once the store fails, said once, the trials
    after it are not logged and nothing stops the sweep; a resumed sweep tries the store again,
    finds the trials logged before and logs those that finish from then on."""
    tracker = Tracker(TrackingConfig(), tmp_path)
    with tracker.parent_run("sweep", {}) as parent:
        pass
    callback = SweepTracker(tracker.uri, tracker.experiment_id, parent, tmp_path / "sweep")
    callback.setup()
    callback.on_trial_complete(0, [], _Trial("a"))
    client = mlflow.MlflowClient(tracker.uri)
    query = f"tags.mlflow.parentRunId = '{parent}'"
    (child,) = client.search_runs([tracker.experiment_id], filter_string=query)
    assert child.data.params == {"step3.tta.flip": "True"}
    assert child.data.metrics == {"final_miou": 0.25} and child.info.status == "FINISHED"

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", _store_gone)
    with caplog.at_level(logging.WARNING, logger="wsss"):
        callback.on_trial_complete(0, [], _Trial("b"))
        callback.on_trial_complete(0, [], _Trial("c"))
    (warning,) = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert "ConnectionError: the store went away" in warning and str(tmp_path / "sweep") in warning
    assert callback.logged == {"a"}
    monkeypatch.undo()
    callback.setup()  # as a resumed sweep does
    assert callback.logged == {"a"}
    callback.on_trial_complete(0, [], _Trial("b"))
    assert len(client.search_runs([tracker.experiment_id], filter_string=query)) == 2


def test_a_sweep_without_a_run_of_its_own_logs_nothing(tmp_path: Path) -> None:
    """The store did not answer when the sweep began (its tracker said so): no parent run, so
    the trials' callback never calls the store."""
    callback = SweepTracker("http://127.0.0.1:9", None, None, tmp_path)
    callback.setup()
    callback.on_trial_complete(0, [], _Trial("a"))
    assert not callback.enabled and callback.logged == set()
