"""GPU check: every network and inference stage of the method on one device, in a few seconds.

Runs without Ray (torch, segmentation-models-pytorch and `wsss.stages` only), so it can go on
a bare GPU machine before a cluster is set up. On small inputs it runs:
- forward and backward of each step-1 classifier (`resnet18`, `resnet50`, `vgg16_oaa`), of
  IRNet (its training loss on IR labels) and of DeepLabV3+ (ResNet50, output stride 8);
- multi-scale CAM extraction, IRNet's flip-averaged boundaries with the random walk to a
  pseudo mask, and DeepLabV3+'s test-time augmentation;
and compares what the inference stages give on the device with what they give on the CPU from
the same weights (pseudo-mask and TTA labels: the share of pixels that agree; CAMs: the
largest absolute difference).

Prints one JSON line: {"device", "device_name", "torch", "cuda", "seconds": {check: s},
"agreement": {"cam_max_abs_diff", "pseudo_mask", "tta_labels"}, "ok"}. `ok` is false, and the
exit code 1, when the device disagrees with the CPU; a loss or gradient that is not finite
stops the script with an AssertionError naming it.

Run: `python bench/gpu_check.py [--device cuda]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.stages.classification.backbones import create_classifier
from wsss.stages.classification.cam import multiscale_cam, normalise_cams
from wsss.stages.irnet.losses import loss_on_ir_labels
from wsss.stages.irnet.model import IRNet, infer_boundary
from wsss.stages.irnet.pseudo_masks import propagate_to_mask
from wsss.stages.normalise import to_model_input
from wsss.stages.segmentation.model import create_segmentation_model
from wsss.stages.segmentation.tta import predict_labels

SIZE = 64  # image side: every network's strides divide it
NUM_CLASSES = 4  # object classes; segmentation adds background


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)
    return to_model_input(pixels)


def _finite_backward(loss: torch.Tensor, model: torch.nn.Module) -> None:
    if not torch.isfinite(loss):
        raise AssertionError(f"loss is {loss.item()}")
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            raise AssertionError(f"gradient of {name} is not finite")


def train_step_classifier(device: torch.device, backbone: str) -> float:
    """One forward and backward of a step-1 classifier with the BCE loss; returns the loss."""
    torch.manual_seed(0)
    model = create_classifier(backbone, NUM_CLASSES, None).to(device).train()
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]], device=device)
    loss = F.binary_cross_entropy_with_logits(model(_images(2).to(device)), targets)
    _finite_backward(loss, model)
    return float(loss.detach())


def train_step_irnet(device: torch.device) -> float:
    """One forward and backward of IRNet (ResNet50, frozen) with its loss on IR labels."""
    torch.manual_seed(0)
    model = IRNet("resnet50", None, freeze_backbone=True).to(device).train()
    labels = np.full((2, SIZE, SIZE), 255, dtype=np.uint8)
    labels[:, 8:40, 8:40] = 1  # a confident object
    labels[:, 48:, :] = 0  # confident background
    boundary, displacement = model(_images(2).to(device))
    loss = loss_on_ir_labels(boundary, displacement, labels, radius=5).total
    _finite_backward(loss, model)
    return float(loss.detach())


def train_step_segmenter(device: torch.device) -> float:
    """One forward and backward of DeepLabV3+ (ResNet50, output stride 8) with cross-entropy."""
    torch.manual_seed(0)
    model = create_segmentation_model("resnet50", NUM_CLASSES + 1, None, 8).to(device).train()
    masks = torch.zeros((2, SIZE, SIZE), dtype=torch.long, device=device)
    masks[:, 16:48, 16:48] = 2
    loss = F.cross_entropy(model(_images(2).to(device)), masks, ignore_index=255)
    _finite_backward(loss, model)
    return float(loss.detach())


def cam_difference(device: torch.device) -> float:
    """Largest absolute difference of normalised multi-scale CAMs between `device` and CPU."""
    torch.manual_seed(0)
    model = create_classifier("resnet18", NUM_CLASSES, None).eval()
    image = _images(1)[0]
    maps = {}
    for where in (torch.device("cpu"), device):
        cams = multiscale_cam(model.to(where), image.to(where), (1.0, 0.5, 1.5), True, 4)
        maps[where.type] = normalise_cams(cams).cpu()
    return float((maps["cpu"] - maps[device.type]).abs().max())


def pseudo_mask_agreement(device: torch.device) -> float:
    """Share of pixels where the pseudo mask (boundaries + random walk) made on `device`
    equals the one made on the CPU."""
    torch.manual_seed(0)
    model = IRNet("resnet18", None, freeze_backbone=True).eval()
    image = _images(1, seed=1)[0]
    cams = torch.zeros((2, SIZE // 4, SIZE // 4))
    cams[0, 2:8, 2:8], cams[1, 9:14, 9:14] = 1.0, 0.8
    masks = {}
    for where in (torch.device("cpu"), device):
        boundary = infer_boundary(model.to(where), image.to(where))
        masks[where.type] = propagate_to_mask(
            cams, [1, 3], boundary, (SIZE, SIZE), bg_threshold=0.3, radius=5, exp_times=3
        )
    return float((masks["cpu"] == masks[device.type]).mean())


def tta_agreement(device: torch.device) -> float:
    """Share of pixels where DeepLabV3+'s TTA labels (flip, scales 0.5/1/2) on `device` equal
    those on the CPU."""
    torch.manual_seed(0)
    model = create_segmentation_model("resnet18", NUM_CLASSES + 1, None, 16).eval()
    images = _images(2, seed=2)
    labels = {
        where.type: predict_labels(model.to(where), images.to(where), (0.5, 1.0, 2.0), True).cpu()
        for where in (torch.device("cpu"), device)
    }
    return float((labels["cpu"] == labels[device.type]).float().mean())


def _timed(seconds: dict[str, float], name: str, check: Callable[[], Any]) -> Any:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = check()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds[name] = round(time.perf_counter() - started, 3)
    return result


def run_checks(device: torch.device) -> dict[str, Any]:
    """Every check on `device`; the JSON summary described in the module docstring."""
    seconds: dict[str, float] = {}
    for backbone in ("resnet18", "resnet50", "vgg16_oaa"):
        step = lambda b=backbone: train_step_classifier(device, b)  # noqa: E731
        _timed(seconds, f"classifier_{backbone}", step)
    _timed(seconds, "irnet", lambda: train_step_irnet(device))
    _timed(seconds, "deeplabv3plus", lambda: train_step_segmenter(device))
    agreement = {
        "cam_max_abs_diff": _timed(seconds, "cam", lambda: cam_difference(device)),
        "pseudo_mask": _timed(seconds, "random_walk", lambda: pseudo_mask_agreement(device)),
        "tta_labels": _timed(seconds, "tta", lambda: tta_agreement(device)),
    }
    ok = (
        agreement["cam_max_abs_diff"] < 1e-3
        and agreement["pseudo_mask"] > 0.99
        and agreement["tta_labels"] > 0.99
    )
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "seconds": seconds,
        "agreement": agreement,
        "ok": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    device = torch.device(parser.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here (torch.cuda.is_available() is False)")
    summary = run_checks(device)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
