"""The step store with real processes: one builder per step whoever else wants it, waiting
instead of building twice, and a dead builder's lease taken over with its work resumed.

The builds here are small programs that wait for the test's go-ahead (a file the test
creates), so the test decides when a build is under way and when it ends."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsss.cli import main
from wsss.platform.config import ConfigError
from wsss.platform.store import (
    KEY_FILE,
    Lease,
    StepStore,
    collect_garbage,
    config_key,
    store_entries,
    writable_runs_folder,
)

BUILDER = """
import json, logging, os, sys, time
from pathlib import Path
from wsss.platform.store import StepStore

root, marks, lease_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

def build(folder):
    resumed = (folder / "progress").exists()
    (folder / "progress").write_text("half done")
    with open(marks / "builds", "a") as builds:
        builds.write(f"{os.getpid()}\\n")
    (marks / f"started-{os.getpid()}").touch()
    while not (marks / "go").exists():
        time.sleep(0.02)
    return {"resumed": resumed}

store = StepStore(root, lease_s=lease_s, poll_s=0.05)
folder, summary = store.run("irnet", {"step1": "abc", "epochs": 3}, build)
print("RESULT " + json.dumps({"folder": str(folder), "summary": summary}), flush=True)
"""


def _builder(root: Path, marks: Path, lease_s: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(root), str(marks), str(lease_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _result(process: subprocess.Popen) -> tuple[str, dict]:
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return output, json.loads(line.removeprefix("RESULT "))


def test_two_processes_wanting_one_step_build_it_once(tmp_path: Path):
    root, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    first = _builder(root, marks)
    _wait_for(lambda: any(marks.glob("started-*")), "the first build to start")
    second = _builder(root, marks)
    waiting = second.stdout.readline()  # blocks until the second process has looked
    assert waiting.startswith("[irnet] waiting: process ") and f"{first.pid}" in waiting
    (marks / "go").touch()
    first_output, first_result = _result(first)
    second_output, second_result = _result(second)
    assert (marks / "builds").read_text().splitlines() == [str(first.pid)]
    assert first_result == second_result
    assert "[irnet] starting" in first_output and "[irnet] reusing" in second_output
    folder = Path(first_result["folder"])
    assert json.loads((folder / KEY_FILE).read_text())["made_from"] == {"step1": "abc", "epochs": 3}
    assert sorted(p.name for p in root.iterdir()) == [folder.name]  # no lock, no partial


def test_a_killed_builder_is_taken_over_at_once_and_its_work_resumed(tmp_path: Path):
    """Its lock names a process of this host that no longer runs: the next process takes
    over without waiting out the (long) lease, and resumes the work folder."""
    root, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    dead = _builder(root, marks, lease_s=600.0)
    _wait_for(lambda: (marks / f"started-{dead.pid}").exists(), "the build to start")
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=30)
    lock = next(root.glob("*.lock"))
    assert json.loads(lock.read_text())["pid"] == dead.pid  # left behind, as after a crash

    (marks / "go").touch()
    output, result = _result(_builder(root, marks, lease_s=600.0))
    assert f"process {dead.pid} no longer runs; taking over" in output
    assert "[irnet] resuming in" in output
    assert result["summary"]["resumed"] is True  # the dead builder's work folder was kept
    assert len((marks / "builds").read_text().splitlines()) == 2
    assert sorted(p.name for p in root.iterdir()) == [Path(result["folder"]).name]


def test_a_lock_from_another_node_is_taken_only_when_its_lease_runs_out(tmp_path: Path, caplog):
    """Whether a process on another node runs cannot be asked: only the heartbeat tells."""
    path = tmp_path / "step.lock"
    path.write_text(json.dumps({"host": "another-node", "pid": 4_000_000, "token": "theirs"}))
    lease = Lease(path, lease_s=30.0)
    assert not lease.acquire()
    stale = time.time() - 31.0
    os.utime(path, (stale, stale))
    with caplog.at_level(logging.WARNING, logger="wsss"):
        assert lease.acquire()
    try:
        assert "process 4000000 on another-node, but its lease ran out (31s" in caplog.text
        assert lease.holder()["token"] == lease.owner["token"]
    finally:
        lease.release()


def test_a_live_lease_is_never_taken_and_only_its_owner_releases_it(tmp_path: Path):
    path = tmp_path / "step.lock"
    owner, other = Lease(path, lease_s=30.0), Lease(path, lease_s=30.0)
    assert owner.acquire()
    try:
        assert not other.acquire()
        other.release()  # not the owner: the lock stays
        assert path.exists() and owner.holder()["token"] == owner.owner["token"]
    finally:
        owner.release()
    assert not path.exists()
    assert other.acquire()
    other.release()


def test_a_finished_step_is_reused_and_counted(tmp_path: Path):
    store = StepStore(tmp_path)
    made_from = {"data": "k1", "step1": {"epochs": 2}}
    builds = []

    def build(folder: Path) -> dict:
        builds.append(folder)
        (folder / "model.pt").write_bytes(b"weights")
        return {"f1": 0.5}

    folder, summary = store.run("classifier", made_from, build)
    again, summary_again = store.run("classifier", made_from, build)
    assert folder == again == tmp_path / f"classifier-{config_key(made_from)}"
    assert (folder / "model.pt").read_bytes() == b"weights"
    assert summary_again == summary and summary["f1"] == 0.5 and len(builds) == 1
    assert store.events == {("classifier", "built"): 1, ("classifier", "reused"): 1}
    assert store.build_seconds["classifier"] == summary["duration_s"] > 0


def test_keys_follow_the_settings_not_their_order():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def _save(name: str, content: bytes = b"weights"):
    def build(folder: Path) -> dict:
        (folder / name).write_bytes(content)
        return {}

    return build


def test_gc_keeps_what_run_folders_use_and_removes_orphans_and_dead_work(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    store = StepStore(runs / "cache")
    classifier, _ = store.run("classifier", {"seed": 0}, _save("classifier.pt"))

    def step1(folder: Path) -> dict:
        (folder / "classifier.pt").symlink_to(Path("..") / classifier.name / "classifier.pt")
        return {}

    used, _ = store.run("step1", {"classifier": classifier.name}, step1)
    orphan, _ = store.run("step3", {"step2": "gone"}, _save("segmenter.pt"))
    abandoned = runs / "cache" / "step2-0123456789ab.partial"  # a dead builder's, lock expired
    abandoned.mkdir()
    building = runs / "cache" / "step2-ba9876543210.partial"
    building.mkdir()
    lease = Lease(runs / "cache" / "step2-ba9876543210.lock")
    assert lease.acquire()
    run = runs / "demo"
    run.mkdir()
    (run / "config.yaml").write_text("name: demo\n")
    (run / "step1").symlink_to(used)
    try:
        entries = {e.folder.name: e for e in store_entries(runs)}
        assert entries[used.name].used_by == ["demo"]
        assert entries[classifier.name].used_by == ["demo"]  # through step 1's classifier.pt
        assert entries[orphan.name].used_by == [] and entries[orphan.name].state == "done"
        assert entries[abandoned.name].state == "abandoned"
        assert entries[building.name].state == "building"
        assert entries[used.name].made_from == {"classifier": classifier.name}

        assert main(["cache", "ls", "--runs-dir", str(runs)]) == 0
        listed = capsys.readouterr().out
        assert f"cache/{used.name}" in listed and "demo" in listed
        assert f"classifier {classifier.name}" in listed  # what the key was made from

        would = collect_garbage(runs, dry_run=True)
        assert {e.folder.name for e in would} == {orphan.name, abandoned.name}
        assert orphan.exists() and abandoned.exists()
        assert main(["cache", "gc", "--runs-dir", str(runs)]) == 0
        assert "removed 2 folder(s)" in capsys.readouterr().out
        assert not orphan.exists() and not abandoned.exists()
        assert used.exists() and classifier.exists() and building.exists()
    finally:
        lease.release()


def test_a_runs_folder_that_cannot_be_written_is_named_before_any_work(tmp_path: Path):
    """A runs folder under a file (as root, whom permissions do not stop, the way to make a
    folder nobody can write in)."""
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError) as error:
        writable_runs_folder(tmp_path / "a-file" / "runs")
    assert str(error.value) == (
        f"--runs-dir: cannot write in {tmp_path / 'a-file' / 'runs'}: Not a directory (choose a "
        f"folder you can write to, with room for the runs)"
    )
    assert writable_runs_folder(tmp_path / "runs") == tmp_path / "runs"
    assert list((tmp_path / "runs").iterdir()) == []  # the probe leaves nothing
