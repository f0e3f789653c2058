"""Shared fixtures: one local Ray cluster for every test that needs one, and one smoke run of
the whole pipeline that the end-to-end tests read."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsss.platform.config import WsssConfig, load_config
from wsss.platform.pipeline import run_pipeline
from wsss.platform.ray_cluster import ray_session


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """The platform's own local cluster (loopback node, token auth, the smoke preset's limits)."""
    with ray_session(load_config("smoke").ray):
        yield


@pytest.fixture(scope="session")
def smoke_config() -> WsssConfig:
    return load_config("smoke")


@pytest.fixture(scope="session")
def smoke_run(ray_cluster, smoke_config, tmp_path_factory) -> tuple[Path, dict]:
    """(runs folder, report) of one `wsss run --preset smoke` on the shared cluster."""
    runs_dir = tmp_path_factory.mktemp("runs")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return runs_dir, run_pipeline(smoke_config, runs_dir)
