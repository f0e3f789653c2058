"""The platform's local cluster: what its workers can reach."""

import socket
import threading

import ray
import ray.util.state

from wsss.platform.ray_cluster import (
    DEFAULT_DASHBOARD_PORT,
    _dashboard_port,
    reserved_dashboard_port,
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
