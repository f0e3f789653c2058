"""`wsss cluster up`: a head and a worker node on this machine, a smoke job submitted to it with
`ray job submit` as the README says, its work on both nodes, and what the cluster exposes."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray.util.state
from conftest import WSSS, answers_without_token, listeners, process_tree, user_environment
from ray._common.utils import get_ray_address_file

from wsss.platform.datasets.manifest import load_dataset
from wsss.platform.local_cluster import LocalCluster, NodeSpec, cluster_status
from wsss.platform.ray_cluster import idle_workers_limit
from wsss.platform.runners import REMOVE_NODE_ENV

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.multi_node


@pytest.fixture(scope="module")
def two_nodes(smoke_run, tmp_path_factory) -> Iterator[tuple[Path, LocalCluster]]:
    """(runs folder, cluster) of `wsss cluster up --nodes 2`, two CPUs a node (four on this
    machine's two cores: Ray's CPU counts are scheduling slots), stopped with `down`. Started
    after the session's smoke run, which the job below reads: an idle cluster of two nodes
    would share the machine's two cores with that run."""
    runs_dir = tmp_path_factory.mktemp("multi") / "runs"
    command = [str(WSSS), "cluster", "up", "--nodes", "2", "--cpus", "2", "--memory-gb", "4",
               "--object-store-gb", "0.5", "--runs-dir", str(runs_dir)]  # fmt: skip
    up = subprocess.run(
        command, env=user_environment(), capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = LocalCluster.load(runs_dir / "cluster")
        assert f"ray job submit --address {cluster.dashboard_url}" in up.stdout
        assert f"RAY_ADDRESS={cluster.gcs_address} wsss run" in up.stdout
        yield runs_dir, cluster
    finally:  # also after a failed `up`: it may have started nodes
        down = _cluster("down", runs_dir)
        assert "stopped 2 node(s): 127.0.0.3, 127.0.0.2" in down.stdout
        # `ray.init()` and `ray status` are not sent to the stopped head.
        address_file = Path(get_ray_address_file(None))
        assert not (address_file.is_file() and address_file.read_text().startswith("127.0.0.2:"))


def _cluster(command: str, runs_dir: Path) -> subprocess.CompletedProcess:
    """`wsss cluster <command> --runs-dir <runs_dir>`, which must succeed."""
    done = subprocess.run(
        [str(WSSS), "cluster", command, "--runs-dir", str(runs_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_up_starts_each_node_on_its_own_loopback_address_with_its_limits(two_nodes):
    runs_dir, cluster = two_nodes
    status = _cluster("status", runs_dir)
    assert "node 0 127.0.0.2: running (2 CPUs)" in status.stdout
    assert "node 1 127.0.0.3: running (2 CPUs)" in status.stdout
    nodes = {n.node_ip: n for n in ray.util.state.list_nodes(address=cluster.dashboard_url)}
    assert set(nodes) == {"127.0.0.2", "127.0.0.3"}
    for index, ip in enumerate(["127.0.0.2", "127.0.0.3"]):
        resources = nodes[ip].resources_total
        assert resources["CPU"] == 2 and resources[f"wsss_node_{index}"] == 1
        assert resources["memory"] == 4 * 1024**3
        assert resources["object_store_memory"] == 0.5 * 1024**3
    # Each node's raylet keeps idle inference workers through a fit.
    limit = f"RAY_num_workers_soft_limit={idle_workers_limit(2)}"
    for node in cluster.nodes:
        processes = process_tree(node.process_group)
        raylets = [pid for pid in processes if "/raylet " in _command_line(pid)]
        assert len(raylets) == 1 and limit in _environment(raylets[0]), node.address


def test_a_client_without_the_token_is_refused(two_nodes):
    _, cluster = two_nodes
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=30)
    assert refused.value.code == 401
    wrong_token = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "0" * 64,
        # Ray tries a refused connection again every second, 20 times by default.
        "RAY_gcs_server_port_wait_time_s": "2",
    }
    joined = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{cluster.gcs_address}')"],
        env=wrong_token,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert joined.returncode != 0
    assert "AuthenticationError" in joined.stderr


def test_only_token_guarded_core_ports_listen_beyond_loopback(two_nodes):
    """What listens on other interfaces than loopback: Ray's core gRPC ports, which refuse a
    client without the token, and the dashboard's own metrics server, which Ray 2.60 binds to
    every interface on any node address but 127.0.0.1 and cannot turn off."""
    _, cluster = two_nodes
    groups = {node.process_group for node in cluster.nodes}
    ours = [s for s in listeners() if _process_group(s.pid) in groups]
    assert any(s.process == "gcs_server" for s in ours)  # the cluster's sockets are seen
    open_to_all = {s for s in ours if not s.loopback and answers_without_token("127.0.0.1", s.port)}
    dashboard = {s for s in open_to_all if "dashboard.py" in _command_line(s.pid)}
    assert len(dashboard) == 1
    assert open_to_all == dashboard


def _stopped(runs_dir: Path, node: NodeSpec) -> bool:
    return not dict(cluster_status(runs_dir / "cluster"))[node]


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _environment(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_text().split("\0")


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_a_submitted_smoke_job_runs_on_both_nodes_and_survives_losing_one_mid_stage(
    two_nodes, smoke_run, tmp_path: Path
):
    """The smoke run's trained classifier is reused; a new CAM setting redraws the CAMs and
    dense CRF, so that IRNet, the pseudo masks, DeepLabV3+ and the evaluation run again (one
    epoch each), with Train workers spread over the nodes and an inference task per CPU.

    The worker node goes down (its raylet killed) as the first dense-CRF task on it ends, and
    `wsss cluster up` puts a new node in its place, as an autoscaler would: Ray Data runs the
    lost task again, and every train image has its IR labels."""
    cluster_runs, cluster = two_nodes
    runs_dir = tmp_path / "runs"
    for folder in ("datasets", "cache"):
        (runs_dir / folder).mkdir(parents=True)
    # Linked, not copied: step keys hold the data set's resolved path.
    for dataset in (smoke_run[0] / "datasets").iterdir():
        (runs_dir / "datasets" / dataset.name).symlink_to(dataset)
    for classifier in (smoke_run[0] / "cache").glob("classifier-*"):
        shutil.copytree(classifier, runs_dir / "cache" / classifier.name, symlinks=True)
    removed = tmp_path / "node-removed"
    fault = {"env_vars": {REMOVE_NODE_ENV: f"127.0.0.3:{removed}"}}
    settings = ["step1.cam_flip=false", "step2.epochs=1", "step3.epochs=1",
                "ray.placement_strategy=SPREAD", "ray.num_cpus=4", "name=two-nodes"]  # fmt: skip
    submit = [str(RAY), "job", "submit", "--address", cluster.dashboard_url,
              "--working-dir", str(REPO), "--runtime-env-json", json.dumps(fault),
              "--submission-id", "wsss-two-nodes", "--",
              "wsss", "run", "--preset", "smoke", "--runs-dir", str(runs_dir),
              *[part for setting in settings for part in ("--set", setting)]]  # fmt: skip
    console = tmp_path / "submit.log"
    with console.open("w") as output:
        job = subprocess.Popen(submit, env=user_environment(), stdout=output, stderr=output)
        try:
            deadline = time.monotonic() + 900
            while not _stopped(cluster_runs, cluster.nodes[1]):
                assert job.poll() is None, "the job ended before the fault: " + console.read_text()
                assert time.monotonic() < deadline, "the node at 127.0.0.3 is still running"
                time.sleep(1)
            up = _cluster("up", cluster_runs)
            assert "head 127.0.0.2: already running" in up.stdout
            assert "worker 127.0.0.3: started" in up.stdout
            job.wait(timeout=1200)
        finally:
            if job.poll() is None:
                job.kill()
    printed = console.read_text()
    assert job.returncode == 0, printed[-6000:]
    assert f"the cluster at {cluster.gcs_address}" in printed  # no new cluster
    assert "[classifier] reusing" in printed and "[step1] starting" in printed
    assert removed.read_text().startswith("127.0.0.3 lost in task ")
    report = json.loads((runs_dir / "two-nodes" / "report.json").read_text())
    assert report["steps"]["segmentation_tta"]["miou"] >= 0
    _, rows = load_dataset(next((runs_dir / "datasets").iterdir()))
    step1 = runs_dir / "two-nodes" / "step1"
    assert {path.stem for path in (step1 / "cams").glob("*.npz")} == {row.id for row in rows}
    train = {row.id for row in rows if row.split == "train"}
    assert {path.stem for path in (step1 / "ir_labels").glob("*.png")} == train
    node_ips = {n.node_id: n.node_ip for n in ray.util.state.list_nodes(cluster.dashboard_url)}
    tasks = ray.util.state.list_tasks(cluster.dashboard_url, limit=10_000, detail=True)
    # The map stages' names: CAMs, dense CRF, pseudo masks, evaluation.
    stages = ("CamExtractor", "refine_and_score", "PseudoMaskWriter", "SegmenterScorer")
    by_stage: dict[str, set[str]] = {stage: set() for stage in stages}
    for task in tasks:
        for stage in stages:
            if f"MapBatches({stage})" in task.name and task.node_id:
                by_stage[stage].add(node_ips[task.node_id])
    # Every stage ran, and the stages together on both nodes: Ray Data's tasks spread, but
    # not every stage's over both nodes.
    assert all(by_stage.values()), by_stage
    assert set().union(*by_stage.values()) == {"127.0.0.2", "127.0.0.3"}, by_stage
    train_workers = ray.util.state.list_actors(
        cluster.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")], limit=1000
    )
    placed = {node_ips[actor.node_id] for actor in train_workers if actor.node_id}
    assert placed == {"127.0.0.2", "127.0.0.3"}
