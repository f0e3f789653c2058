"""Every network and inference stage on every device at hand: bench/gpu_check.py's checks,
run on the CPU everywhere and on CUDA where a GPU exists (the GPU path of `ray.use_gpu`)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import DEVICES

SPEC = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).parents[1] / "bench" / "gpu_check.py"
)
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


@pytest.mark.parametrize("device", DEVICES)
def test_every_network_trains_and_every_inference_stage_matches_the_cpu(device):
    summary = gpu_check.run_checks(torch.device(device))
    assert summary["ok"], summary
    assert set(summary["seconds"]) == {
        "classifier_resnet18", "classifier_resnet50", "classifier_vgg16_oaa", "irnet",
        "deeplabv3plus", "cam", "random_walk", "tta",
    }  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_a_training_step_gives_a_finite_positive_loss(device):
    where = torch.device(device)
    for loss in (
        gpu_check.train_step_classifier(where, "resnet18"),
        gpu_check.train_step_irnet(where),
        gpu_check.train_step_segmenter(where),
    ):
        assert 0.0 < loss < 100.0
