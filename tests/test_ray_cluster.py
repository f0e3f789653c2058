"""The platform's local cluster: what its workers can reach, and what a config may ask of a
cluster."""

import socket
import threading

import ray
import ray.util.state

from wsss.platform.config import RayConfig
from wsss.platform.ray_cluster import (
    DEFAULT_DASHBOARD_PORT,
    ClusterCapacity,
    _dashboard_port,
    cluster_capacity,
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_runs_started_at_once_get_different_dashboard_ports() -> None:
    """The first run has chosen its port and not yet listens on it (its dashboard is starting)
    when a second run chooses: the second waits, then sees the port taken."""
    preferred = _free_port()
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


LAPTOP = ClusterCapacity(cpus=2, gpus=0, largest_node_cpus=2)


def test_the_local_cluster_offers_its_configured_limits(ray_cluster) -> None:
    assert cluster_capacity() == LAPTOP  # the smoke preset's 2 CPUs on one node, no GPU


def test_every_request_the_cluster_cannot_meet_is_named_with_its_config_keys() -> None:
    asked = RayConfig(num_workers=8, cpus_per_worker=4, use_gpu=True, num_cpus=3)
    assert unmet_requests(asked, LAPTOP) == [
        "ray.use_gpu=true with ray.num_workers=8 asks for 8 GPUs (one per Ray Train worker); "
        "the cluster has 0",
        "ray.cpus_per_worker=4 is more than any node has (the largest has 2 CPUs)",
        # 8 x 4 = 32 CPUs for Train, 1 for Data.
        "ray.num_workers=8 x ray.cpus_per_worker=4 ask for 32 CPUs for Ray Train, plus 1 for "
        "Ray Data; the cluster has 2",
    ]
    # Without GPUs the inference actors take one CPU each: 3 of them on 2 CPUs.
    assert unmet_requests(RayConfig(num_cpus=3), LAPTOP) == [
        "ray.num_cpus=3 asks for 3 inference actors of one CPU each; the cluster has 2 CPUs"
    ]


def test_train_workers_must_leave_ray_data_a_cpu() -> None:
    assert unmet_requests(RayConfig(num_workers=2, cpus_per_worker=0.5), LAPTOP) == []
    # 2 x 1 = 2 CPUs for Train leave none for Data: the job would wait forever.
    assert len(unmet_requests(RayConfig(num_workers=2, cpus_per_worker=1), LAPTOP)) == 1


def test_the_paper_settings_fit_a_gpu_cluster_and_inference_alone_fits_a_laptop() -> None:
    paper = RayConfig(num_workers=3, cpus_per_worker=4, use_gpu=True)
    gpu_cluster = ClusterCapacity(cpus=8 + 3 * 8, gpus=3, largest_node_cpus=8)
    assert unmet_requests(paper, gpu_cluster) == []
    assert unmet_requests(paper, ClusterCapacity(cpus=13, gpus=2, largest_node_cpus=8)) == [
        "ray.use_gpu=true with ray.num_workers=3 asks for 3 GPUs (one per Ray Train worker); "
        "the cluster has 2"
    ]
    # `wsss predict` with the paper run's config: its Train settings do not apply.
    assert unmet_requests(paper, LAPTOP, training=False) == [
        "ray.use_gpu=true asks for a GPU; the cluster has 0"
    ]
    assert unmet_requests(paper.model_copy(update={"use_gpu": False}), LAPTOP, False) == []
