"""The step store: each step's output built once, and shared by every run, sweep trial and node
that reads the same runs folder.

A step's output is the folder `<root>/<step>-<key>/`, the key a hash of what the step was made
from (its config section, the keys of its inputs), which `key.json` in the folder records
beside the step's `summary.json`.

Exactly one process builds a step at a time, across processes and nodes sharing the folder
(NFS may ignore `flock`): the builder holds `<step>-<key>.lock`, created exclusively
(`O_CREAT | O_EXCL`), which names its owner and whose modification time a heartbeat renews. It
builds in `<step>-<key>.partial/` and publishes by renaming that folder, which is atomic. A
process that finds the lock held waits for the folder and then reuses it. A lock whose
heartbeat is older than the lease belongs to a dead owner: the next process removes it (under
a second exclusive file, so only one does) and resumes the owner's `.partial` folder, a
training step from its last Ray Train checkpoint there. An owner on the same host whose process
is gone is dead at once: a run killed and started again resumes without waiting out the lease.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wsss.platform.config import ConfigError
from wsss.platform.console import format_duration
from wsss.platform.datasets.manifest import write_atomic

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
KEY_FILE = "key.json"
LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"
DEFAULT_LEASE_S = 60.0
# Part of every key: raised whenever the code makes different outputs from the same settings,
# so that no folder written by older code is reused.
STORE_VERSION = 4


def _age(path: Path) -> float | None:
    """Seconds since `path` was last modified; None if it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _process_runs(pid: Any) -> bool:
    """Whether a process with this id runs on this host (a malformed id counts as running,
    leaving the decision to the lease)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """An exclusive lock file with a heartbeat: held while its modification time is recent.

    `acquire` takes the lock (True) unless a live owner holds it (False); a lock older than
    `lease_s`, or held by a process of this host that no longer runs, is removed first (its
    owner is dead). The heartbeat renews the time every quarter lease until `release`.
    """

    def __init__(self, path: Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.path, self.lease_s = path, lease_s
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The current owner's record, or None when nobody holds the lock."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_live(self) -> bool:
        """Whether someone holds the lock and renewed it within the lease."""
        age = _age(self.path)
        return age is not None and age <= self.lease_s

    def acquire(self) -> bool:
        """Take the lock if it is free or its owner is dead; False if a live owner holds it."""
        self._remove_if_stale()
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as lock:
            json.dump({**self.owner, "since": time.time()}, lock)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="wsss-lease")
        self._heartbeat.start()
        return True

    def _why_dead(self) -> str | None:
        """Why the lock's owner is dead, or None while it may be alive (or nobody holds it)."""
        age = _age(self.path)
        if age is None:
            return None
        if age > self.lease_s:
            return f"its lease ran out ({age:.0f}s without a heartbeat)"
        holder = self.holder() or {}
        if holder.get("host") == self.owner["host"] and not _process_runs(holder.get("pid")):
            return f"process {holder.get('pid')} no longer runs"
        return None

    def _remove_if_stale(self) -> None:
        if self._why_dead() is None:
            return
        # Two processes may both see the lock stale; the one that creates this file decides,
        # after looking again, so a lock renewed or re-taken meanwhile is never removed.
        referee = self.path.with_name(self.path.name + ".takeover")
        referee_age = _age(referee)
        if referee_age is not None and referee_age > self.lease_s:
            referee.unlink(missing_ok=True)  # left by a process that died deciding
        try:
            os.close(os.open(referee, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return
        try:
            why = self._why_dead()
            if why is not None:
                dead = _describe_owner(self.holder())
                self.path.unlink(missing_ok=True)
                logger.warning(f"{self.path.name}: held by {dead}, but {why}; taking over")
        finally:
            referee.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                logger.warning(f"{self.path}: the lock was removed while held")
                return

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if (self.holder() or {}).get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)


class StepStore:
    """Finished step folders under `root`, each `<step>-<key>`, each built by one process.

    `events` counts, per step, how often this store built, resumed or reused it;
    `build_seconds` sums, per step, how long its builds took.
    """

    def __init__(self, root: Path, lease_s: float = DEFAULT_LEASE_S, poll_s: float = 1.0) -> None:
        self.root, self.lease_s, self.poll_s = Path(root), lease_s, poll_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.events: Counter[tuple[str, str]] = Counter()
        self.build_seconds: Counter[str] = Counter()

    def folder(self, step: str, made_from: Mapping[str, Any]) -> Path:
        """Where the step made from `made_from` is (or will be) published."""
        return self.root / f"{step}-{config_key(made_from)}"

    def run(
        self,
        step: str,
        made_from: Mapping[str, Any],
        build: Callable[[Path], dict[str, Any]],
    ) -> tuple[Path, dict[str, Any]]:
        """The step's folder and summary: reused if published, else built by this process
        (resuming a dead owner's partial work) or, while another process builds it, waited
        for. `made_from` (JSON-able) is what the key hashes; `build(folder)` fills the work
        folder and returns the summary."""
        final = self.folder(step, made_from)
        lease = Lease(final.with_name(final.name + LOCK_SUFFIX), self.lease_s)
        waiting_since: float | None = None
        while not (final / SUMMARY_FILE).is_file():
            if lease.acquire():
                try:
                    if not (final / SUMMARY_FILE).is_file():
                        return final, self._build(step, made_from, final, build)
                finally:
                    lease.release()
                break
            if waiting_since is None:
                waiting_since = time.monotonic()
                logger.info(f"[{step}] waiting: {_describe_owner(lease.holder())} builds it")
            time.sleep(self.poll_s)
        if waiting_since is not None:
            logger.info(f"[{step}] waited {format_duration(time.monotonic() - waiting_since)}")
        logger.info(f"[{step}] reusing {final}")
        self.events[step, "reused"] += 1
        return final, json.loads((final / SUMMARY_FILE).read_text())

    def _build(
        self,
        step: str,
        made_from: Mapping[str, Any],
        final: Path,
        build: Callable[[Path], dict[str, Any]],
    ) -> dict[str, Any]:
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        resuming = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        recipe = {"step": step, "key": final.name.removeprefix(f"{step}-"), "made_from": made_from}
        write_atomic(partial / KEY_FILE, json.dumps(recipe, indent=2, default=str) + "\n")
        logger.info(f"[{step}] {'resuming' if resuming else 'starting'} in {partial}")
        self.events[step, "resumed" if resuming else "built"] += 1
        started = time.perf_counter()
        summary = build(partial)
        summary["duration_s"] = time.perf_counter() - started
        self.build_seconds[step] += summary["duration_s"]
        write_atomic(partial / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        partial.rename(final)
        logger.info(f"[{step}] done in {format_duration(summary['duration_s'])} -> {final}")
        return summary


def _describe_owner(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "another process"
    return f"process {owner.get('pid')} on {owner.get('host')}"


WRITABLE_PROBE_BYTES = 2**16


def writable_runs_folder(runs_dir: Path) -> Path:
    """`runs_dir`, resolved and made, once a file could be written in it; else a `ConfigError`
    naming `--runs-dir`, the folder and why, before any work."""
    runs_dir = Path(runs_dir).resolve()
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        # Some data, not an empty file: a full file system still makes empty files.
        with tempfile.NamedTemporaryFile(dir=runs_dir, prefix=".wsss-writable-") as probe:
            probe.write(bytes(WRITABLE_PROBE_BYTES))
            probe.flush()
    except OSError as exc:
        raise ConfigError(
            f"--runs-dir: cannot write in {runs_dir}: {exc.strerror or exc} (choose a folder "
            f"you can write to, with room for the runs)"
        ) from exc
    return runs_dir


def config_key(made_from: Mapping[str, Any]) -> str:
    """A short stable hash of what a step is made from (JSON-able: config sections, upstream
    keys)."""
    text = json.dumps([STORE_VERSION, made_from], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class StoreEntry:
    """One folder of a step store, as `wsss cache ls` shows it."""

    folder: Path
    step: str
    key: str
    state: Literal["done", "building", "abandoned"]
    made_from: dict[str, Any] | None
    size_bytes: int
    used_by: list[str] = field(default_factory=list)


# The stores of a runs folder: step outputs, and the synthetic data sets they are made from.
STORE_FOLDERS = ("cache", "datasets")


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _entry(folder: Path) -> StoreEntry | None:
    name = folder.name
    partial = name.endswith(PARTIAL_SUFFIX)
    base = name.removesuffix(PARTIAL_SUFFIX)
    if not folder.is_dir() or folder.is_symlink() or "-" not in base:
        return None
    step, _, key = base.rpartition("-")
    if partial:
        live = Lease(folder.with_name(base + LOCK_SUFFIX)).is_live()
        state = "building" if live else "abandoned"
    elif (folder / SUMMARY_FILE).is_file():
        state = "done"
    else:
        return None
    recipe = folder / KEY_FILE
    made_from = json.loads(recipe.read_text())["made_from"] if recipe.is_file() else None
    return StoreEntry(folder, step, key, state, made_from, _folder_size(folder))


def _links_in(folder: Path) -> list[Path]:
    """The folders that the links directly inside `folder` point into."""
    targets = []
    for path in folder.iterdir():
        if path.is_symlink() and path.exists():
            target = path.resolve()
            targets.append(target if target.is_dir() else target.parent)
    return targets


def store_entries(runs_dir: Path) -> list[StoreEntry]:
    """Every folder of the runs folder's stores, with the run folders that use it: those that
    link to it, directly or through another entry's links (a step folder's `classifier.pt`)."""
    runs_dir = Path(runs_dir).resolve()
    entries = {
        folder.resolve(): entry
        for store in STORE_FOLDERS
        if (runs_dir / store).is_dir()
        for folder in sorted((runs_dir / store).iterdir())
        if (entry := _entry(folder)) is not None
    }
    runs = [p for p in sorted(runs_dir.iterdir()) if p.is_dir() and (p / "config.yaml").is_file()]
    for run in runs:
        pending, seen = _links_in(run), set()
        while pending:
            folder = pending.pop()
            if folder in seen or folder not in entries:
                continue
            seen.add(folder)
            entries[folder].used_by.append(run.name)
            pending.extend(_links_in(folder))
    return list(entries.values())


def collect_garbage(runs_dir: Path, dry_run: bool = False) -> list[StoreEntry]:
    """Remove the finished entries no run folder uses and the work folders of dead builders
    (never one being built); returns them. With `dry_run` nothing is removed."""
    doomed = [
        e
        for e in store_entries(runs_dir)
        if (e.state == "done" and not e.used_by) or e.state == "abandoned"
    ]
    if not dry_run:
        for entry in doomed:
            shutil.rmtree(entry.folder)
            base = entry.folder.name.removesuffix(PARTIAL_SUFFIX)
            entry.folder.with_name(base + LOCK_SUFFIX).unlink(missing_ok=True)
    return doomed
