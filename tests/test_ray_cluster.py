"""The platform's local cluster: what its workers can reach, and what a config may ask of a
cluster."""

import os
import socket
import threading
from pathlib import Path

import pytest
import ray
import ray.data
import ray.util.state
from conftest import free_port, listeners, process_tree

from wsss.platform import ray_cluster as ray_cluster_module
from wsss.platform.config import ConfigError, RayConfig
from wsss.platform.ray_cluster import (
    DEFAULT_DASHBOARD_PORT,
    ClusterCapacity,
    _dashboard_port,
    cluster_capacity,
    ray_session,
    require_shared_storage,
    reserved_dashboard_port,
    unmet_requests,
)


@ray.remote(num_cpus=0)
class Witness:
    def actor_id(self) -> str:
        return ray.get_runtime_context().get_actor_id()


@ray.remote(num_cpus=0)
def actor_state(actor_id: str) -> str | None:
    # Ray Train's PlacementGroupCleaner asks exactly this, from a worker, about its controller.
    found = ray.util.state.get_actor(actor_id, timeout=10)
    return found.state if found else None


def test_a_worker_reads_an_actors_state_from_the_state_api(ray_cluster) -> None:
    witness = Witness.remote()
    actor_id = ray.get(witness.actor_id.remote())

    assert ray.get(actor_state.remote(actor_id), timeout=60) == "ALIVE"


def test_a_taken_dashboard_port_gives_way_to_a_free_one() -> None:
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", DEFAULT_DASHBOARD_PORT))
            holder.listen()
        except OSError:
            pass  # taken already, which is the case under test
        port = _dashboard_port("127.0.0.1")
    assert port not in (DEFAULT_DASHBOARD_PORT, 0)


def test_runs_started_at_once_get_different_dashboard_ports() -> None:
    """The first run has chosen its port and not yet listens on it (its dashboard is starting)
    when a second run chooses: the second waits, then sees the port taken."""
    preferred = free_port()
    second: list[int] = []

    def start_second_run() -> None:
        with reserved_dashboard_port("127.0.0.1", preferred) as port:
            second.append(port)

    with socket.socket() as dashboard:
        with reserved_dashboard_port("127.0.0.1", preferred) as first:
            assert first == preferred
            thread = threading.Thread(target=start_second_run)
            thread.start()
            thread.join(timeout=5)
            assert thread.is_alive() and not second  # waiting for the first run's dashboard
            dashboard.bind(("127.0.0.1", first))
            dashboard.listen()
        thread.join(timeout=60)
    assert second and second[0] not in (first, 0)


LAPTOP = ClusterCapacity(gpus=0, node_cpus=(2,))


def test_the_local_cluster_offers_its_configured_limits(ray_cluster) -> None:
    assert cluster_capacity() == LAPTOP  # the smoke preset's 2 CPUs on one node, no GPU


def test_every_request_the_cluster_cannot_meet_is_named_with_its_config_keys() -> None:
    asked = RayConfig(num_workers=8, cpus_per_worker=4, use_gpu=True, num_cpus=3)
    assert unmet_requests(asked, LAPTOP) == [
        "ray.use_gpu=true with ray.num_workers=8 asks for 8 GPUs (one per Ray Train worker); "
        "the cluster has 0",
        "ray.num_workers=8 x ray.cpus_per_worker=4 do not fit on the cluster's nodes (2 CPUs) "
        "with ray.placement_strategy=PACK",
    ]
    # Without GPUs the inference tasks take one CPU each: 3 of them at once on 2 CPUs.
    assert unmet_requests(RayConfig(num_cpus=3), LAPTOP) == [
        "ray.num_cpus=3 asks for 3 inference tasks at once of one CPU each; the cluster has 2 CPUs"
    ]


def test_train_workers_must_leave_ray_data_a_whole_cpu_on_some_node() -> None:
    assert unmet_requests(RayConfig(num_workers=2, cpus_per_worker=0.5), LAPTOP) == []
    # 2 x 1 = 2 CPUs for Train leave none for Data: the job would wait forever.
    assert unmet_requests(RayConfig(num_workers=2, cpus_per_worker=1), LAPTOP) == [
        "ray.num_workers=2 x ray.cpus_per_worker=1 with ray.placement_strategy=PACK leave no "
        "node of the cluster (2 CPUs) a whole CPU for Ray Data"
    ]
    # Two nodes of one CPU: packed, the workers fill one node and Data has the other; spread,
    # each node keeps half a CPU, and no Data task of one CPU fits anywhere.
    two_nodes = ClusterCapacity(gpus=0, node_cpus=(1, 1))
    assert unmet_requests(RayConfig(num_workers=2, cpus_per_worker=0.5), two_nodes) == []
    spread = RayConfig(num_workers=2, cpus_per_worker=0.5, placement_strategy="SPREAD")
    assert unmet_requests(spread, two_nodes) == [
        "ray.num_workers=2 x ray.cpus_per_worker=0.5 with ray.placement_strategy=SPREAD leave "
        "no node of the cluster (1+1 CPUs) a whole CPU for Ray Data"
    ]
    assert unmet_requests(spread, ClusterCapacity(gpus=0, node_cpus=(2, 2))) == []


def test_a_local_cluster_too_small_for_the_config_is_refused_before_it_starts(monkeypatch):
    def start_a_cluster(config):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_cluster_module, "_connection", start_a_cluster)
    eight = RayConfig(num_cpus=2, num_workers=8, cpus_per_worker=0.5)
    refused = pytest.raises(ConfigError, match=r"ray.num_workers=8 .* nodes \(2 CPUs\)")
    with refused, ray_session(eight):
        pass
    # Its GPUs are counted once Ray has found them, after the start.
    gpus = RayConfig(num_cpus=2, cpus_per_worker=0.5, use_gpu=True)
    with pytest.raises(AssertionError, match="a cluster was started"), ray_session(gpus):
        pass


def test_the_paper_settings_fit_a_gpu_cluster_and_inference_alone_fits_a_laptop() -> None:
    paper = RayConfig(num_workers=3, cpus_per_worker=4, use_gpu=True)
    gpu_cluster = ClusterCapacity(gpus=3, node_cpus=(8, 8, 8, 8))  # a head, 3 GPU workers
    assert unmet_requests(paper, gpu_cluster) == []
    assert unmet_requests(paper, ClusterCapacity(gpus=2, node_cpus=(8, 8, 8))) == [
        "ray.use_gpu=true with ray.num_workers=3 asks for 3 GPUs (one per Ray Train worker); "
        "the cluster has 2"
    ]
    # `wsss predict` with the paper run's config: its Train settings do not apply.
    assert unmet_requests(paper, LAPTOP, training=False) == [
        "ray.use_gpu=true asks for a GPU; the cluster has 0"
    ]
    assert unmet_requests(paper.model_copy(update={"use_gpu": False}), LAPTOP, False) == []


def test_the_local_cluster_listens_on_loopback_only(ray_cluster) -> None:
    """`wsss run`'s own cluster (the one these tests share): every port of every process it
    started, workers, Ray's core ports and its metrics servers included, on loopback."""
    assert ray.data.range(8).map(lambda row: row).count() == 8  # workers up, sockets open
    ours = process_tree(os.getpid())
    mine = [s for s in listeners() if s.pid in ours]
    assert {"gcs_server", "raylet"} <= {s.process for s in mine}  # the cluster's sockets seen
    assert [s for s in mine if not s.loopback] == []


def test_a_runs_folder_a_node_cannot_see_is_refused_naming_the_setting(
    ray_cluster, tmp_path: Path, monkeypatch
) -> None:
    """Two nodes, one of which has a runs folder of its own (the probe of every node is
    replaced: on one machine every node sees the same files)."""
    runs_dir = tmp_path / "runs"
    monkeypatch.setattr(ray_cluster_module.ray, "nodes", lambda: [{"Alive": True}] * 2)
    monkeypatch.setattr(
        ray_cluster_module, "invisible_on_nodes", lambda paths: {"10.0.0.5": [str(paths[0])]}
    )
    with pytest.raises(ConfigError) as error:
        require_shared_storage(runs_dir, None)
    assert str(error.value).startswith(
        f"--runs-dir: {runs_dir} is not the same folder on node 10.0.0.5 as here"
    )
    assert list(runs_dir.iterdir()) == []  # the probe's file is gone
    monkeypatch.setattr(
        ray_cluster_module, "invisible_on_nodes", lambda paths: {"10.0.0.5": [str(paths[1])]}
    )
    with pytest.raises(ConfigError, match=f"data.root: {tmp_path} is not the same folder"):
        require_shared_storage(runs_dir, tmp_path)


def test_every_node_of_the_cluster_is_probed_for_the_folders(ray_cluster, tmp_path: Path):
    assert ray_cluster_module.invisible_on_nodes([tmp_path]) == {}
    missing = str(tmp_path / "missing")
    assert ray_cluster_module.invisible_on_nodes([tmp_path / "missing"]) == {"127.0.0.1": [missing]}
