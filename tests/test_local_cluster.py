"""`wsss cluster up`'s plan: nodes, addresses and limits that fit the machine; its token."""

import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from wsss.platform import local_cluster
from wsss.platform.local_cluster import ClusterError, LocalCluster, plan_nodes

MACHINE_GB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


def test_nodes_get_their_own_loopback_address_limits_and_resource():
    nodes = plan_nodes(3, cpus=1, memory_gb=2, object_store_gb=0.5)
    assert [n.address for n in nodes] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert [n.resource for n in nodes] == ["wsss_node_0", "wsss_node_1", "wsss_node_2"]
    assert all((n.num_cpus, n.memory_gb, n.object_store_gb) == (1, 2, 0.5) for n in nodes)


def test_by_default_the_nodes_share_the_cpus_and_half_the_memory():
    nodes = plan_nodes(2)
    assert nodes[0].num_cpus == max(1, (os.cpu_count() or 1) // 2)
    assert nodes[0].memory_gb == round(MACHINE_GB / 2 / 2, 1)
    assert nodes[0].object_store_gb == round(nodes[0].memory_gb / 4, 2)
    assert (nodes[0].memory_gb + nodes[0].object_store_gb) * 2 <= MACHINE_GB


def test_memory_that_does_not_fit_the_machine_is_refused():
    with pytest.raises(ClusterError, match=r"2 nodes of .* do not fit this machine's"):
        plan_nodes(2, memory_gb=MACHINE_GB, object_store_gb=1)
    with pytest.raises(ClusterError, match="--nodes must be at least 1, not 0"):
        plan_nodes(0)


def test_status_and_down_without_a_cluster_say_where_they_looked(tmp_path: Path):
    with pytest.raises(ClusterError, match=f"no local cluster was started from {tmp_path}"):
        LocalCluster.load(tmp_path)


def test_the_token_is_made_once_and_readable_by_its_owner_only(tmp_path, monkeypatch):
    token_file = tmp_path / ".ray" / "auth_token"
    monkeypatch.setattr(local_cluster, "TOKEN_FILE", token_file)
    assert local_cluster.ensure_token() == token_file
    token = token_file.read_text()
    assert len(token) == 64 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    local_cluster.ensure_token()
    assert token_file.read_text() == token  # an existing token is kept


@pytest.fixture
def running_and_stopped(tmp_path: Path):
    """(a process group that runs, one that has ended), standing in for nodes."""
    running = subprocess.Popen(["sleep", "600"], start_new_session=True)
    ended = subprocess.Popen(["true"], start_new_session=True)
    ended.wait()
    yield running.pid, ended.pid
    running.kill()
    running.wait()


def _recorded(folder: Path, groups: tuple[int, int]) -> None:
    nodes = plan_nodes(2, cpus=1, memory_gb=1, object_store_gb=0.25)
    started = tuple(replace(n, process_group=g) for n, g in zip(nodes, groups, strict=True))
    LocalCluster("127.0.0.2:6379", "http://127.0.0.1:8265", started).save(folder)


def test_up_over_a_running_cluster_of_another_size_says_to_take_it_down(
    tmp_path: Path, running_and_stopped
):
    running, ended = running_and_stopped
    _recorded(tmp_path, (running, ended))
    with pytest.raises(ClusterError, match=r"of 2 node\(s\) .* is running: `wsss cluster down`"):
        local_cluster.cluster_up(tmp_path, 3)


def test_up_over_a_cluster_whose_head_stopped_says_to_take_it_down(
    tmp_path: Path, running_and_stopped
):
    running, ended = running_and_stopped
    _recorded(tmp_path, (ended, running))
    with pytest.raises(ClusterError, match=r"the head of the local cluster .* has stopped"):
        local_cluster.cluster_up(tmp_path, 2)
