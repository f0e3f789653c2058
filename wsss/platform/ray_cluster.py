"""Where a job runs: the cluster in `RAY_ADDRESS` / `ray.address`, or a local one.

A local cluster is started on node address 127.0.0.1 in Ray's single-machine mode, where every
port it opens listens on loopback only (`_single_machine_mode`), with the dashboard on
127.0.0.1, explicit CPU, memory and object-store limits, and Ray's token authentication on.
Its workers reach Ray's state API at the dashboard's address. On connecting, a config that
asks for more than the cluster can give is refused (`require_resources`); before a run, so is
a cluster of several nodes that do not share the runs folder (`require_shared_storage`).

The nodes the platform starts keep idle inference workers through a fit (`idle_workers_limit`).
Every worker of a job (local cluster or joined) sets up its logging with
`wsss.platform.console.setup_worker_logging`, so its `wsss` lines reach the driver's console.
The driver's Ray Data progress bars are off: the platform counts its stages itself.
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
import ray._private.state
import ray.data
from ray._private import ray_constants
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wsss.platform.config import ConfigError, RayConfig
from wsss.platform.local_cluster import LOOPBACK, SINGLE_MACHINE_ENV

GIB = 1024**3
DEFAULT_DASHBOARD_PORT = 8265
WORKER_SETUP_HOOK = "wsss.platform.console.setup_worker_logging"
DASHBOARD_PORT_LOCK = "wsss-dashboard-port.lock"
# The processes a Ray Train fit starts besides its workers: the controller, its placement-group
# cleaner, synchronization actor, dataset manager and preemption watcher.
FIT_HELPER_PROCESSES = 5


def _dashboard_port(host: str, preferred: int = DEFAULT_DASHBOARD_PORT) -> int:
    """`preferred` if nothing listens on it at `host`, else a free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError(f"no free TCP port for the dashboard on {host}")


@contextmanager
def reserved_dashboard_port(host: str, preferred: int = DEFAULT_DASHBOARD_PORT) -> Iterator[int]:
    """A free dashboard port at `host`, chosen under a lock every wsss run on this machine
    takes; start the dashboard inside the block. A port is only seen as taken once something
    listens on it, so two runs started at once would otherwise both choose the same one and
    the slower one's dashboard would fail to bind."""
    # Read-only: flock needs no write access, so every user on the machine can take the lock
    # on the file whoever created it.
    path = Path(tempfile.gettempdir()) / DASHBOARD_PORT_LOCK
    lock = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield _dashboard_port(host, preferred)
    finally:
        os.close(lock)  # releases the lock


@contextmanager
def ray_session(config: RayConfig, training: bool = True) -> Iterator[str]:
    """Connect for the duration of the block; yields a description of the cluster.

    Joins `config.address` or `RAY_ADDRESS` when set (the cluster's own limits apply);
    otherwise starts a local cluster and shuts it down afterwards. Inside an already
    initialised Ray (a job driver, a test session) it reuses that connection. A config that
    asks for more than the cluster has is refused on connecting (`require_resources`; without
    `training`, only what inference asks); a local cluster has the config's own CPUs, so what
    they cannot hold is refused before it starts.
    """
    refuse_for_the_local_cluster(config, training)
    with _connection(config) as where:
        require_resources(config, training)
        yield where


@contextmanager
def _connection(config: RayConfig) -> Iterator[str]:
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    # A stage's error reaches the step's message as itself (a full disk's OSError with its
    # errno and file), not as Ray Data's UserCodeException, whose cause is lost on its way.
    data_context.raise_original_map_exception = True
    if ray.is_initialized():
        yield "the current Ray connection"
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(
            address=address,
            log_to_driver=True,
            runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
        )
        try:
            yield f"the cluster at {address}"
        finally:
            ray.shutdown()
        return
    with (
        reserved_dashboard_port(config.dashboard_host) as dashboard_port,
        _single_machine_mode(config.node_ip_address),
    ):
        context = ray.init(
            address="local",
            num_cpus=config.num_cpus,
            _memory=int(config.memory_gb * GIB),
            object_store_memory=int(config.object_store_gb * GIB),
            _node_ip_address=config.node_ip_address,
            _system_config={"num_workers_soft_limit": idle_workers_limit(config.num_cpus)},
            include_dashboard=True,
            dashboard_host=config.dashboard_host,
            dashboard_port=dashboard_port,
            # Ray's state API (which Ray Train's PlacementGroupCleaner polls for its
            # controller) otherwise finds the cluster through /tmp/ray/ray_current_cluster,
            # which only `ray start` writes: from a cluster started here it reached a stale
            # cluster or none, and the cleaner died with a GCS-timeout traceback in every
            # training run.
            runtime_env={
                "env_vars": {
                    "RAY_API_SERVER_ADDRESS": f"http://{config.dashboard_host}:{dashboard_port}"
                },
                "worker_process_setup_hook": WORKER_SETUP_HOOK,
            },
        )
    try:
        yield (
            f"a local Ray cluster ({config.num_cpus} CPUs, {config.memory_gb:g} GiB, "
            f"dashboard http://{context.dashboard_url})"
        )
    finally:
        ray.shutdown()


def idle_workers_limit(num_cpus: int) -> int:
    """Ray's `num_workers_soft_limit` for a node of `num_cpus` that the platform starts: above
    it the raylet ends idle worker processes, the longest idle first. At Ray's default, the CPU
    count, the task workers that a fit's data pipelines leave idle pushed out the inference
    workers that sat idle during the fit, with PyTorch imported and their model made, and the
    next pass started new ones. This leaves room for one inference worker per CPU beside a
    fit's helpers and a Train worker per CPU; each idle one holds its imports' memory until the
    job ends."""
    return 2 * num_cpus + FIT_HELPER_PROCESSES


@contextmanager
def _single_machine_mode(node_ip_address: str) -> Iterator[None]:
    """For a node on 127.0.0.1: Ray's single-machine mode (its default on macOS and Windows),
    in which every service of the node listens on loopback only, the metrics servers included.
    Anywhere else Ray binds them to every interface, and rewrites 127.0.0.1 to the machine's
    network address. The processes the cluster starts read the mode from the environment;
    this one read it when Ray was imported, hence the constant. Both only while the cluster
    starts: processes this one starts later (a `ray start` of another cluster) must not
    inherit the mode."""
    if node_ip_address != LOOPBACK:
        yield
        return
    saved = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
        if saved[0] is None:
            del os.environ[SINGLE_MACHINE_ENV]
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved[0]


@dataclass(frozen=True)
class ClusterCapacity:
    """The most a cluster can give: its GPUs and each node's CPUs."""

    gpus: float
    node_cpus: tuple[float, ...]

    @property
    def cpus(self) -> float:
        return sum(self.node_cpus)


def cluster_capacity() -> ClusterCapacity:
    """The connected cluster's capacity. An autoscaling cluster counts the nodes its config
    allows (as Ray Train's own check does), so GPU workers that start at zero count."""
    config = ray._private.state.state.get_cluster_config()
    groups = list(config.node_group_configs) if config is not None else []
    if groups:
        most = ray._private.state.state.get_max_resources_from_cluster_config() or {}
        # A group without a bound (-1) counts as many nodes as any config here could ask for.
        node_cpus = [
            group.resources.get("CPU", 0)
            for group in groups
            for _ in range(group.max_count if group.max_count >= 0 else 64)
        ]
        return ClusterCapacity(most.get("GPU", 0), tuple(node_cpus))
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return ClusterCapacity(
        ray.cluster_resources().get("GPU", 0), tuple(node.get("CPU", 0) for node in nodes)
    )


def _free_after_training(config: RayConfig, node_cpus: tuple[float, ...]) -> list[float] | None:
    """Each node's CPUs left once Ray Train's workers are placed as `placement_strategy` places
    them (PACK: the first node with room, biggest first; SPREAD: the node with the most room),
    or None where they do not fit."""
    free = sorted(node_cpus, reverse=True)
    for _ in range(config.num_workers):
        fitting = [i for i in range(len(free)) if free[i] >= config.cpus_per_worker]
        if not fitting:
            return None
        spread = config.placement_strategy == "SPREAD"
        chosen = max(fitting, key=lambda i: free[i]) if spread else fitting[0]
        free[chosen] -= config.cpus_per_worker
    return free


def unmet_requests(
    config: RayConfig, capacity: ClusterCapacity, training: bool = True
) -> list[str]:
    """What `config` asks of a cluster of `capacity` that it cannot give, one sentence each
    naming the config keys; Ray would otherwise wait forever for the resources. Without
    `training`, only what inference asks: its tasks' CPUs or a GPU."""
    problems = []
    gpus = config.num_workers if training else 1
    if config.use_gpu and capacity.gpus < gpus:
        asked = f"with ray.num_workers={gpus} asks for {gpus} GPUs (one per Ray Train worker)"
        problems.append(
            f"ray.use_gpu=true {asked if training else 'asks for a GPU'}; the cluster has "
            f"{capacity.gpus:g}"
        )
    if not config.use_gpu and config.num_cpus > capacity.cpus:
        problems.append(
            f"ray.num_cpus={config.num_cpus} asks for {config.num_cpus} inference tasks at once "
            f"of one CPU each; the cluster has {capacity.cpus:g} CPUs"
        )
    if not training:
        return problems
    asked = f"ray.num_workers={config.num_workers} x ray.cpus_per_worker={config.cpus_per_worker:g}"
    nodes = "+".join(f"{cpus:g}" for cpus in sorted(capacity.node_cpus, reverse=True)) or "0"
    free = _free_after_training(config, capacity.node_cpus)
    if free is None:
        problems.append(
            f"{asked} do not fit on the cluster's nodes ({nodes} CPUs) with "
            f"ray.placement_strategy={config.placement_strategy}"
        )
    # Ray Data reads and augments the batches Train consumes: a task of one CPU must still fit.
    elif max(free, default=0) < 1:
        problems.append(
            f"{asked} with ray.placement_strategy={config.placement_strategy} leave no node of "
            f"the cluster ({nodes} CPUs) a whole CPU for Ray Data"
        )
    return problems


def refuse_for_the_local_cluster(config: RayConfig, training: bool = True) -> None:
    """Where `ray_session` would start a local cluster, raise `ConfigError` listing every
    request of `config` that cluster's CPUs could not meet: callable before a command writes
    anything (a joined cluster is only known on connecting, `require_resources`)."""
    if not ray.is_initialized() and not (config.address or os.environ.get("RAY_ADDRESS")):
        # Its GPUs are known only once Ray has found them: checked on connecting.
        planned = ClusterCapacity(gpus=math.inf, node_cpus=(config.num_cpus,))
        _refuse(unmet_requests(config, planned, training))


def require_resources(config: RayConfig, training: bool = True) -> None:
    """Raise `ConfigError` listing every request of `config` the connected cluster cannot
    meet, before any work."""
    _refuse(unmet_requests(config, cluster_capacity(), training))


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError(
            "the Ray cluster cannot run this config: "
            + "; ".join(problems)
            + " (lower these settings, or join a larger cluster through RAY_ADDRESS)"
        )


@ray.remote(num_cpus=0)
def _invisible(paths: list[str]) -> list[str]:
    """Those of `paths` this node cannot see."""
    return [path for path in paths if not Path(path).exists()]


def invisible_on_nodes(paths: list[Path]) -> dict[str, list[str]]:
    """{node address: the paths it cannot see} over the cluster's live nodes."""
    probes = {
        node["NodeManagerAddress"]: _invisible.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote([str(path) for path in paths])
        for node in ray.nodes()
        if node["Alive"]
    }
    return {address: missing for address, ref in probes.items() if (missing := ray.get(ref))}


def require_shared_storage(runs_dir: Path, data_root: Path | None) -> None:
    """On a cluster of several nodes, raise `ConfigError` unless every node sees the runs
    folder as this process does (the step store and Ray Train's checkpoints are read from every
    node) and the data set's root. A node with a runs folder of the same name that is not the
    shared one would fail later, on a missing file: every node must see a file written here."""
    if len([node for node in ray.nodes() if node["Alive"]]) < 2:
        return
    runs_dir.mkdir(parents=True, exist_ok=True)
    marker = runs_dir / f".wsss-visible-{uuid.uuid4().hex}"
    marker.touch()
    try:
        invisible = invisible_on_nodes([marker] + ([data_root] if data_root else []))
    finally:
        marker.unlink()
    for address, missing in sorted(invisible.items()):
        setting, folder = (
            ("--runs-dir", runs_dir) if str(marker) in missing else ("data.root", data_root)
        )
        raise ConfigError(
            f"{setting}: {folder} is not the same folder on node {address} as here (it cannot "
            f"see what is there): every node reads it, so it must be on a filesystem all nodes "
            f"mount at the same path (see the README's Shared storage)"
        )
