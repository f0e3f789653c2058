"""Shared fixtures: one local Ray cluster for the tests that use Ray in this process, and one
smoke run of the whole pipeline, made the way the README tells users to, that the end-to-end
tests read."""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from wsss.platform.config import WsssConfig, load_config
from wsss.platform.ray_cluster import ray_session

# The `wsss` console script this environment installed, as users run it.
WSSS = Path(sys.executable).parent / "wsss"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """The platform's own local cluster (loopback node, token auth, the smoke preset's limits)."""
    with ray_session(load_config("smoke").ray):
        yield


@pytest.fixture(scope="session")
def smoke_config() -> WsssConfig:
    return load_config("smoke")


def user_environment() -> dict[str, str]:
    """The environment of a user who typed the README's `.venv/bin/wsss ...`: no tracking
    server, and the venv not activated (its scripts are not on PATH)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if Path(p) != WSSS.parent)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], base: str, **popen: object) -> Iterator[subprocess.Popen]:
    """`command` started in a session of its own, once `base`/health answers; stopped (its
    whole process group) after the block, unless the block stopped it first."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **popen,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{command[:4]} did not answer at {base}"
                time.sleep(1)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        process.stdout.close()


def mlflow_server(backend_uri: str, port: int) -> contextlib.AbstractContextManager:
    """An MLflow tracking server over `backend_uri` on 127.0.0.1:`port`."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return serving(command, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def user_folder(tmp_path_factory) -> Path:
    """A fresh working folder, as a new clone is: nothing but what the commands write."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="session")
def smoke_console(user_folder: Path) -> str:
    """The console of `wsss run --preset smoke` typed in `user_folder`: the installed console
    script, the default runs folder (the relative `runs`), a local cluster of its own."""
    result = subprocess.run(
        [str(WSSS), "run", "--preset", "smoke"],
        cwd=user_folder,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-4000:]
    return console


@pytest.fixture(scope="session")
def smoke_run(smoke_console: str, user_folder: Path) -> tuple[Path, dict]:
    """(runs folder, report) of that smoke run."""
    runs_dir = user_folder / "runs"
    return runs_dir, json.loads((runs_dir / "smoke" / "report.json").read_text())


@pytest.fixture
def runs_without_step2(smoke_run, tmp_path: Path) -> Path:
    """A new runs folder holding the smoke run's store but step 2 (its classifier, CAM and
    DeepLabV3+ folders copied, its dataset linked: the keys hold the dataset's resolved path),
    so a run of the smoke preset there reuses step 1, builds step 2 and, as step 2's settings
    are the smoke run's, reuses step 3."""
    runs_dir = tmp_path / "runs"
    for folder in ("datasets", "cache"):
        (runs_dir / folder).mkdir(parents=True)
    for dataset in (smoke_run[0] / "datasets").iterdir():
        (runs_dir / "datasets" / dataset.name).symlink_to(dataset)
    for pattern in ("classifier-*", "step1-*", "step3-*"):
        for step in (smoke_run[0] / "cache").glob(pattern):
            shutil.copytree(step, runs_dir / "cache" / step.name, symlinks=True)
    return runs_dir


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: its address, port, and the process holding it."""

    host: str
    port: int
    process: str
    pid: int

    @property
    def loopback(self) -> bool:
        return self.host.removeprefix("[::ffff:").startswith("127.") or self.host == "[::1]"


def listeners() -> list[Listener]:
    """Every listening TCP socket on this machine whose process is known (`ss -ltnpH`)."""
    found = []
    for line in subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True
    ).stdout.splitlines():
        fields = line.split()
        address, users = fields[3], fields[-1]
        match = re.search(r'\("([^"]+)",pid=(\d+)', users)
        if match:
            host, _, port = address.rpartition(":")
            found.append(Listener(host, int(port), match.group(1), int(match.group(2))))
    return found


def process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The process name (field 2) may hold spaces: the parent pid follows its ")".
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def answers_without_token(host: str, port: int) -> bool:
    """Whether an HTTP GET of `/metrics` without any token gets a 200 from `host:port` (a
    token-guarded Ray port refuses it, a gRPC port does not speak HTTP/1)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False
