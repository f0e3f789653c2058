"""A Ray cluster of several nodes on this machine (`wsss cluster up/status/down`): what a real
cluster is, for trying multi-node runs and faults on a laptop.

Every node is a `ray start --block` in its own process group, on its own loopback node address
(127.0.0.2 for the head, then 127.0.0.3, ...), with explicit CPU, memory and object-store
limits that together fit the machine and a custom resource naming it (`wsss_node_<i>`). Ray's
token authentication is on, with the user's Ray token (`~/.ray/auth_token`, made when missing),
which every Ray client of this user finds by itself. The cluster folder records the nodes'
process groups, so `down` stops those nodes and no other Ray on the machine.

The dashboard and job server listen on 127.0.0.1. Ray's core ports listen on every interface
(on a node address other than 127.0.0.1 Ray binds them so; Ray's single-machine mode, which
would not, admits no second node), guarded by the token. Of Ray's metrics servers, which answer
without the token, the nodes' metrics export and the autoscaler's monitor (a fixed cluster needs
no autoscaler) are off; the dashboard's own cannot be turned off or moved in Ray 2.60 and
listens on every interface at a port of its own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
CLUSTER_FILE = "cluster.json"
NODE_RESOURCE = "wsss_node_{}"
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
LOOPBACK = "127.0.0.1"
DASHBOARD_HOST = LOOPBACK
HEAD_NODE_ADDRESS = "127.0.0.2"
# Turns on Ray's single-machine mode (`ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR`), spelt out:
# importing Ray here would slow every `wsss` command.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# How long a node may take to join the cluster before `up` gives up.
START_TIMEOUT_S = 180
# How long `down` lets a node stop by itself: a head's processes take over half a minute to
# stop one after another, where `ray stop` kills what is left after 16 s.
STOP_GRACE_S = 10


class ClusterError(RuntimeError):
    """The local cluster cannot be started, found or stopped; the message says why."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of a local cluster: its address and limits, and the process group running it
    (0 until started)."""

    index: int
    address: str
    num_cpus: int
    memory_gb: float
    object_store_gb: float
    process_group: int = 0
    temp_dir: str = ""

    @property
    def resource(self) -> str:
        return NODE_RESOURCE.format(self.index)


@dataclass(frozen=True)
class LocalCluster:
    """What `wsss cluster up` started: the head's GCS address (for `RAY_ADDRESS` of a driver on
    this machine), the job server's address (for `ray job submit`) and the nodes."""

    gcs_address: str
    dashboard_url: str
    nodes: tuple[NodeSpec, ...]

    def save(self, folder: Path) -> None:
        (folder / CLUSTER_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> LocalCluster:
        path = folder / CLUSTER_FILE
        if not path.is_file():
            raise ClusterError(f"no local cluster was started from {folder} ({path} is missing)")
        raw = json.loads(path.read_text())
        return cls(
            raw["gcs_address"], raw["dashboard_url"], tuple(NodeSpec(**n) for n in raw["nodes"])
        )


def plan_nodes(
    count: int,
    cpus: int | None = None,
    memory_gb: float | None = None,
    object_store_gb: float | None = None,
) -> tuple[NodeSpec, ...]:
    """`count` nodes sharing this machine: by default its CPUs split evenly (at least one
    each), and half its memory, a quarter of each share for the object store. Memory must fit
    the machine; CPUs may count more than its cores, with a warning."""
    from wsss.platform.ray_cluster import GIB

    if count < 1:
        raise ClusterError(f"--nodes must be at least 1, not {count}")
    machine_cpus = os.cpu_count() or 1
    machine_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    cpus = cpus or max(1, machine_cpus // count)
    memory_gb = memory_gb or round(machine_gb / 2 / count, 1)
    object_store_gb = object_store_gb or round(memory_gb / 4, 2)
    if cpus * count > max(machine_cpus, count):
        # Ray's CPU counts are scheduling slots: more than the cores only makes tasks share them.
        logger.warning(
            f"{count} nodes of {cpus} CPUs count {cpus * count} CPUs on this machine's "
            f"{machine_cpus} cores: their tasks will share the cores"
        )
    if (memory_gb + object_store_gb) * count > machine_gb:
        raise ClusterError(
            f"{count} nodes of {memory_gb:g} GiB plus {object_store_gb:g} GiB of object store "
            f"do not fit this machine's {machine_gb:.1f} GiB"
        )
    return tuple(
        NodeSpec(i, f"127.0.0.{i + 2}", cpus, memory_gb, object_store_gb) for i in range(count)
    )


def _free_port(host: str = DASHBOARD_HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ensure_token() -> Path:
    """The user's Ray token file, made (readable by its owner only) when missing."""
    if not TOKEN_FILE.is_file() or not TOKEN_FILE.read_text().strip():
        TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as token:
            token.write(secrets.token_hex(32))
    return TOKEN_FILE


def node_environment() -> dict[str, str]:
    """The environment every node and client of the cluster runs with: token auth on, and this
    environment's scripts first on PATH, so that a job's `python` or `wsss` is this one."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        **os.environ,
        "PATH": path,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ensure_token()),
    }


def _node_start_environment(node: NodeSpec) -> dict[str, str]:
    """`node`'s: no metrics export, whose server would answer anyone on every interface; the
    dashboard's metrics server on a free port, as two clusters on a machine would otherwise
    both want Ray's fixed one; idle inference workers kept through a fit."""
    from wsss.platform.ray_cluster import idle_workers_limit

    environment = {
        **node_environment(),
        "RAY_enable_metrics_collection": "0",
        "DASHBOARD_METRIC_PORT": str(_free_port()),
        "RAY_num_workers_soft_limit": str(idle_workers_limit(node.num_cpus)),
    }
    environment.pop(SINGLE_MACHINE_ENV, None)  # a worker node refuses to start in that mode
    return environment


def _start_command(node: NodeSpec, gcs_address: str, dashboard_port: int) -> list[str]:
    from wsss.platform.ray_cluster import GIB

    ray = str(Path(sys.executable).parent / "ray")
    common = [
        "--block",
        "--node-ip-address", node.address,
        "--num-cpus", str(node.num_cpus),
        "--memory", str(int(node.memory_gb * GIB)),
        "--object-store-memory", str(int(node.object_store_gb * GIB)),
        "--resources", json.dumps({node.resource: 1}),
        # Ray's fixed default ports (the agent's 52365, the client server's 10001, ...) are
        # taken by the first node on this machine: every node gets free ones.
        "--dashboard-agent-listen-port", str(_free_port()),
        "--dashboard-agent-grpc-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()),
        "--runtime-env-agent-port", str(_free_port()),
        "--disable-usage-stats",
    ]  # fmt: skip
    if node.temp_dir:
        common += ["--temp-dir", node.temp_dir]
    if node.index == 0:
        return [ray, "start", "--head", "--port", gcs_address.rsplit(":", 1)[1],
                "--dashboard-host", DASHBOARD_HOST, "--dashboard-port", str(dashboard_port),
                "--no-monitor",
                "--ray-client-server-port", str(_free_port()), *common]  # fmt: skip
    return [ray, "start", "--address", gcs_address, *common]


def _require_running(cluster: LocalCluster, folder: Path) -> None:
    for node in cluster.nodes:
        if not _alive(node):
            raise ClusterError(
                f"node {node.address} stopped while starting: see {folder}/node-{node.index}.log"
            )


def _wait_for_nodes(cluster: LocalCluster, folder: Path, deadline: float) -> None:
    """Block until every node of `cluster` has joined; raise naming a node that stopped, or
    those missing at `deadline`."""
    import ray

    while True:
        _require_running(cluster, folder)
        try:
            ray.init(address=cluster.gcs_address, logging_level="ERROR", log_to_driver=False)
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        while True:
            _require_running(cluster, folder)
            entries = ray.nodes()
            missing = [node.address for node in cluster.nodes if not _joined(node, entries)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes {missing} did not join within the time")
            time.sleep(1)
    finally:
        ray.shutdown()


def _start_node(node: NodeSpec, gcs_address: str, dashboard_port: int, folder: Path) -> NodeSpec:
    """`node` started in a process group of its own, logging to `folder/node-<i>.log`; returned
    with that group."""
    with (folder / f"node-{node.index}.log").open("ab") as log:
        process = subprocess.Popen(
            _start_command(node, gcs_address, dashboard_port),
            env=_node_start_environment(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return NodeSpec(**{**asdict(node), "process_group": process.pid})


def _joined(node: NodeSpec, entries: list[dict]) -> bool:
    """Whether `node` is among Ray's live nodes (`ray.nodes()` entries). A worker node is told
    apart by its session folder, as a lost node may count as alive at its address until Ray
    notices the loss."""
    return any(
        entry["Alive"]
        and entry["NodeManagerAddress"] == node.address
        and entry["ObjectStoreSocketName"].startswith(node.temp_dir)
        for entry in entries
    )


def cluster_up(
    folder: Path,
    count: int,
    cpus: int | None = None,
    memory_gb: float | None = None,
    object_store_gb: float | None = None,
) -> tuple[LocalCluster, list[NodeSpec]]:
    """Start a head and `count - 1` worker nodes; their logs go to `folder/node-<i>.log`.

    Where the cluster started from `folder` runs with worker nodes lost (a crash, a killed
    process), start those again in their places instead, as a cloud's autoscaler replaces a
    lost machine. Returns the cluster and the nodes this call started.
    """
    from wsss.platform.ray_cluster import reserved_dashboard_port

    folder = folder.resolve()
    if (folder / CLUSTER_FILE).exists():
        running = LocalCluster.load(folder)
        if any(_alive(node) for node in running.nodes):
            return _replace_lost_nodes(running, folder, count)
    nodes = plan_nodes(count, cpus, memory_gb, object_store_gb)
    folder.mkdir(parents=True, exist_ok=True)
    started: list[NodeSpec] = []
    gcs_address = f"{HEAD_NODE_ADDRESS}:{_free_port(HEAD_NODE_ADDRESS)}"
    with reserved_dashboard_port(DASHBOARD_HOST) as dashboard_port:
        cluster = LocalCluster(gcs_address, f"http://{DASHBOARD_HOST}:{dashboard_port}", ())
        try:
            for planned in nodes:
                # A worker node's own session folder: nodes sharing one machine would otherwise
                # share Ray's, and a node's runtime-env agent deleted a job's working directory
                # the other node's driver ran in, and each node's log monitor sent the driver
                # every worker line again.
                temp_dir = tempfile.mkdtemp(prefix="wsss-node-") if planned.index else ""
                node = NodeSpec(**{**asdict(planned), "temp_dir": temp_dir})
                started.append(_start_node(node, gcs_address, dashboard_port, folder))
                cluster = LocalCluster(cluster.gcs_address, cluster.dashboard_url, tuple(started))
                cluster.save(folder)
                if node.index == 0:
                    _wait_for_nodes(cluster, folder, time.monotonic() + START_TIMEOUT_S)
            _wait_for_nodes(cluster, folder, time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            cluster_down(folder)
            raise
    return cluster, started


def _replace_lost_nodes(
    cluster: LocalCluster, folder: Path, count: int
) -> tuple[LocalCluster, list[NodeSpec]]:
    """Start again, with their specs, the worker nodes of a running `cluster` that stopped."""
    if not _alive(cluster.nodes[0]):
        raise ClusterError(
            f"the head of the local cluster started from {folder} has stopped: "
            "`wsss cluster down` it, then `up` a new one"
        )
    if count != len(cluster.nodes):
        raise ClusterError(
            f"a local cluster of {len(cluster.nodes)} node(s) started from {folder} is running: "
            f"`wsss cluster down` it first to start one of {count}"
        )
    dashboard_port = int(cluster.dashboard_url.rsplit(":", 1)[1])
    nodes = list(cluster.nodes)
    restarted = []
    for node in cluster.nodes[1:]:
        if not _alive(node):
            shutil.rmtree(node.temp_dir, ignore_errors=True)
            fresh = NodeSpec(**{**asdict(node), "temp_dir": tempfile.mkdtemp(prefix="wsss-node-")})
            nodes[node.index] = _start_node(fresh, cluster.gcs_address, dashboard_port, folder)
            restarted.append(nodes[node.index])
    cluster = LocalCluster(cluster.gcs_address, cluster.dashboard_url, tuple(nodes))
    cluster.save(folder)
    _wait_for_nodes(cluster, folder, time.monotonic() + START_TIMEOUT_S)
    return cluster, restarted


def _alive(node: NodeSpec) -> bool:
    try:
        os.killpg(node.process_group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def cluster_down(folder: Path, grace_s: float = STOP_GRACE_S) -> list[NodeSpec]:
    """Stop the nodes started from `folder` (workers first, then the head; what a node has not
    stopped after `grace_s` is killed); returns those that were running."""
    folder = folder.resolve()
    cluster = LocalCluster.load(folder)
    running = [node for node in reversed(cluster.nodes) if _alive(node)]
    for node in running:
        os.killpg(node.process_group, signal.SIGTERM)  # `ray start --block` stops its node
        deadline = time.monotonic() + grace_s
        while _alive(node) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(node):
            os.killpg(node.process_group, signal.SIGKILL)
            while _alive(node) and time.monotonic() < deadline + grace_s:
                time.sleep(0.2)
    for node in cluster.nodes:
        if node.temp_dir:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    from ray._common.utils import get_ray_address_file

    # The head's `ray start` recorded its address for `ray.init()` and `ray status`; left
    # behind, it sends them to a cluster that is gone (`ray stop` removes it too).
    address_file = Path(get_ray_address_file(None))
    if address_file.is_file() and address_file.read_text().strip() == cluster.gcs_address:
        address_file.unlink()
    (folder / CLUSTER_FILE).unlink()
    return running


def cluster_status(folder: Path) -> list[tuple[NodeSpec, bool]]:
    """Each node started from `folder`, and whether it still runs."""
    cluster = LocalCluster.load(folder.resolve())
    return [(node, _alive(node)) for node in cluster.nodes]
