"""What a user sees: counted progress, durations, worker lines, errors in one line, and the
console/log split of a command."""

import io
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from ray.exceptions import RayTaskError
from ray.train.v2.api.exceptions import WorkerGroupError

from wsss.platform.console import (
    Progress,
    capture_console,
    describe_error,
    eta_text,
    format_duration,
    forward_worker_lines,
    root_cause,
)
from wsss.platform.model_file import ModelFileError, load_model_file


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3725, "1:02:05")]
)
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert format_duration(seconds) == text


def test_the_estimate_assumes_a_constant_rate():
    # 1 of 4 done in 30 s: 3 more at 30 s each.
    assert eta_text(30, 1, 4) == "0:30 elapsed, ~1:30 left"
    assert eta_text(30, 0, 4) == "0:30 elapsed"  # nothing to go by yet
    assert eta_text(30, 4, 4) == "0:30 elapsed"


def test_progress_speaks_at_each_quarter_and_when_done(caplog):
    clock = FakeClock()
    progress = Progress("[step1] CAMs", 8, clock=clock)
    with caplog.at_level(logging.INFO, logger="wsss"):
        clock.now = 1.0
        progress.update(1)  # 1/8: below the first quarter
        clock.now = 2.0
        progress.update(1)  # 2/8: the first quarter
        clock.now = 3.0
        progress.update(1)
        clock.now = 8.0
        progress.update(5)  # the last ones: the closing line says it
        progress.finish()
    assert [r.getMessage() for r in caplog.records] == [
        "[step1] CAMs 2/8 images (25%), 0:02 elapsed, ~0:06 left",
        "[step1] CAMs 8/8 images in 0:08",
    ]


def test_a_slow_stage_speaks_at_least_every_interval(caplog):
    clock = FakeClock()
    progress = Progress("[step2] pseudo masks", 100, min_interval_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="wsss"):
        clock.now = 61.0
        progress.update(1)
    assert caplog.records[0].getMessage().startswith("[step2] pseudo masks 1/100 images (1%)")


def test_worker_lines_with_the_prefix_are_logged_at_their_level(caplog):
    data = {
        "lines": [
            "wsss:INFO [step1] epoch 1/2 loss 0.5",
            "Progress bars disabled. To enable, set ...",
            "wsss:WARNING skipping img5: corrupt",
        ]
    }
    with caplog.at_level(logging.INFO, logger="wsss"):
        forward_worker_lines(data)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "[step1] epoch 1/2 loss 0.5"),
        (logging.WARNING, "skipping img5: corrupt"),
    ]
    assert all(r.forwarded for r in caplog.records)


def test_a_worker_logs_its_wsss_lines_with_the_prefix():
    code = (
        "import logging; from wsss.platform.console import setup_worker_logging as s; s(); s(); "
        "logging.getLogger('wsss.platform.training').info('[step3] epoch 1/1')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr == "wsss:INFO [step3] epoch 1/1\n"  # once, though set up twice


def test_the_root_cause_of_a_training_failure_is_the_workers_error():
    missing = FileNotFoundError(2, "No such file or directory", "/runs/cache/classifier.pt")
    in_worker = RayTaskError("train_fn", "Traceback (most recent call last):\n  ...", missing)
    failed = WorkerGroupError("Training failed due to worker errors", {0: in_worker})
    assert root_cause(failed) is missing
    assert describe_error(failed) == (
        "FileNotFoundError: [Errno 2] No such file or directory: '/runs/cache/classifier.pt'"
    )


def test_chained_errors_are_followed_to_the_first():
    try:
        try:
            raise ValueError("crop_size must be a multiple of 16")
        except ValueError as exc:
            raise RuntimeError("step failed") from exc
    except RuntimeError as outer:
        assert describe_error(outer) == "ValueError: crop_size must be a multiple of 16"


def test_a_wsss_error_is_the_root_cause_though_it_wraps_a_library_error(tmp_path: Path):
    """A saved model cut short: torch's own error says nothing of what to do; the platform's,
    raised from it in a Ray worker, is what the console shows."""
    model = tmp_path / "classifier.pt"
    torch.save({"model": {"w": torch.zeros(64, 64)}}, model)
    model.write_bytes(model.read_bytes()[:-4096])
    try:
        load_model_file(model)
    except ModelFileError as error:
        damaged = error
    in_worker = RayTaskError("train_fn", "Traceback (most recent call last):\n  ...", damaged)
    failed = WorkerGroupError("Training failed due to worker errors", {0: in_worker})
    assert damaged.__cause__ is not None  # torch's own error, which says nothing of what to do
    assert root_cause(failed) is damaged
    assert describe_error(failed).startswith(f"ModelFileError: {model} cannot be read")


def test_a_long_message_is_cut_to_one_line():
    text = describe_error(ValueError("x" * 1000 + "\nsecond line"), limit=50)
    assert len(text) == 50 and text.endswith("...") and "\n" not in text


def test_the_console_shows_wsss_lines_and_the_log_gets_everything(tmp_path, capfd):
    log_file = tmp_path / "run" / "run.log"
    screen = io.StringIO()
    logger = logging.getLogger("wsss.platform.run")
    with capture_console(log_file, console=screen):
        os.write(2, b"E core_worker.cc:2465: native noise\n")
        print("python noise")
        logger.info("[step1] starting")
        logger.warning("an image was skipped")
        forward_worker_lines({"lines": ["wsss:INFO [step1] epoch 1/1"]})
    print("after the block")
    assert screen.getvalue() == (
        "[step1] starting\nwarning: an image was skipped\n[step1] epoch 1/1\n"
    )
    log = log_file.read_text()
    for line in ("native noise", "python noise", "[step1] starting", "an image was skipped"):
        assert line in log
    # A forwarded line is in the log as the worker wrote it (Ray's own handler puts it there).
    assert "epoch 1/1" not in log
    assert "after the block" in capfd.readouterr().out


def test_a_log_that_cannot_be_written_is_said_once_and_the_console_goes_on():
    """A full disk under the log (here /dev/full, where every write finds no room): the
    error a user must see still reaches the console, and so does the reason the log is
    missing, once."""
    screen = io.StringIO()
    with capture_console(Path("/dev/full"), console=screen):
        print("x" * 100_000)  # more than the log's buffer holds: the write reaches the device
        traceback.print_stack()
        logging.getLogger("wsss.platform.run").error("step 1 failed")
    shown = screen.getvalue()
    assert shown.count("the log /dev/full cannot be written") == 1
    assert "No space left on device" in shown
    assert shown.endswith("error: step 1 failed\n")
