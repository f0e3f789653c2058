"""`ray job submit` against a `ray start --head` cluster on loopback, with token auth."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ray_job_submit_runs_wsss_on_a_head_node(smoke_run, tmp_path: Path):
    runs_dir, first = smoke_run  # its step cache makes the submitted run quick
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    dashboard = _free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.2",
         "--port", str(_free_port()), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--num-cpus", "2", "--memory", str(3 * 1024**3),
         # Fixed defaults (the agent's 52365, the client server's 10001) may be taken by the
         # test session's own cluster: every port gets a free one.
         "--dashboard-agent-listen-port", str(_free_port()),
         "--dashboard-agent-grpc-port", str(_free_port()),
         "--metrics-export-port", str(_free_port()),
         "--runtime-env-agent-port", str(_free_port()),
         "--ray-client-server-port", str(_free_port()),
         "--object-store-memory", str(300 * 1024**2), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(2)
        # Without the token the job server refuses: the cluster is not open to anyone.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
        assert refused.value.code == 401
        submit = [
            str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
            "--submission-id", "wsss-smoke", "--", "python", "-m", "wsss.cli", "run",
            "--preset", "smoke", "--runs-dir", str(runs_dir), "--set", "name=smoke-job",
        ]  # fmt: skip
        for _ in range(30):  # the head's job agent comes up a little after its dashboard
            submitted = subprocess.run(
                submit, env=env, capture_output=True, text=True, timeout=1200
            )
            if "No available agent" not in submitted.stderr:
                break
            time.sleep(3)
        status = subprocess.run(
            [str(BIN / "ray"), "job", "status", "--address", address, "wsss-smoke"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        shown = status.stdout + status.stderr
        assert "succeeded" in shown.lower(), submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "the cluster at" in submitted.stdout  # the job joined the head, no new cluster
        report = json.loads((runs_dir / "smoke-job" / "report.json").read_text())
        assert report["steps"] == json.loads(json.dumps(first["steps"]))
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
