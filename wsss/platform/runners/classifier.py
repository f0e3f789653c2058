"""Step 1's training on Ray: the multi-label classifier (excluded classes removed, classes
balanced) and, for an excluded class, the binary one (paper 3.1), each with per-class
thresholds chosen on val by macro-F1 (paper 4.1).

A classifier is saved as `<classifier_name>.pt` with its backbone, the dataset class indices of
its outputs and its thresholds.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.platform.config import WsssConfig
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow
from wsss.platform.loaders.balance import balance, binary_task_rows, remove_classes, repeat_to_size
from wsss.platform.model_file import load_model, save_model_file
from wsss.platform.training import TrainOutput, TrainTask, epoch_data, fit
from wsss.stages.classification.backbones import create_classifier
from wsss.stages.classification.losses import multilabel_loss
from wsss.stages.classification.selection import best_thresholds, macro_f1
from wsss.stages.normalise import to_model_input


def _build(backbone: str, num_outputs: int, weights: str | None) -> torch.nn.Module:
    return create_classifier(backbone, num_outputs, weights)


def _rebuild(saved: dict[str, Any]) -> torch.nn.Module:
    return create_classifier(saved["backbone"], len(saved["class_indices"]), None)


def _param_groups(model: torch.nn.Module, lr_pretrained: float, lr_new: float) -> list[dict]:
    pretrained, new = model.parameter_groups()
    return [
        {"params": [p for p in pretrained if p.requires_grad], "lr": lr_pretrained},
        {"params": new, "lr": lr_new},
    ]


def _batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return multilabel_loss(model(to_model_input(batch["image"])), batch["target"])


def _scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    scores = torch.sigmoid(model(to_model_input(batch["image"])))
    return {"scores": scores.cpu().numpy(), "targets": batch["target"].cpu().numpy()}


def _f1_summary(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Macro-F1 at per-class thresholds chosen on these (validation) scores (paper 4.1)."""
    thresholds = best_thresholds(outputs["scores"], outputs["targets"])
    return {
        "f1_macro": macro_f1(outputs["scores"], outputs["targets"], thresholds),
        "thresholds": thresholds,
    }


def _target_rows(
    rows: list[ManifestRow], names: list[str], binary_class: str | None
) -> list[ManifestRow]:
    """Rows whose labels are exactly what the classifier learns (binary: the class or none)."""
    if binary_class is None:
        return rows
    return [
        replace(r, labels=(binary_class,) if target else ())
        for r, target in binary_task_rows(rows, binary_class)
    ]


def classifier_name(binary_class: str | None = None) -> str:
    """The name of step 1's multi-label classifier, or of the binary one for `binary_class`;
    the model is saved as `<name>.pt`."""
    return "classifier" if binary_class is None else f"binary_{binary_class}"


def classifier_task(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    binary_class: str | None = None,
) -> tuple[TrainTask, list[str]]:
    """What step 1 trains: the multi-label classifier (excluded classes removed, classes
    balanced), or with `binary_class` the one-output classifier for that class; with the
    class names of its outputs."""
    step1 = config.step1
    train_rows = [r for r in rows if r.split == "train"]
    val_rows = [r for r in rows if r.split == "val"]
    if binary_class is None:
        names = [c for c in info.object_classes if c not in step1.exclude_classes]
        balanced = balance(
            remove_classes(train_rows, step1.exclude_classes), config.data.balance, config.seed
        )
        if config.data.balanced_epoch == "train_size":
            balanced = repeat_to_size(balanced, len(train_rows), config.seed)
        train_rows = balanced
        val_rows = remove_classes(val_rows, step1.exclude_classes)
    else:
        names = [binary_class]
    data = {
        split: epoch_data(
            _target_rows(split_rows, names, binary_class),
            config.seed,
            train=split == "train",
            root=info.root,
            class_names=names,
            size=config.data.image_size,
            augmentation_config=config.data.augmentation,
            columns=["image", "target"],
        )
        for split, split_rows in (("train", train_rows), ("val", val_rows))
    }
    task = TrainTask(
        name="step1" if binary_class is None else f"step1-{binary_class}",
        build_model=functools.partial(_build, step1.backbone, len(names), step1.weights),
        param_groups=functools.partial(
            _param_groups, lr_pretrained=step1.lr_pretrained, lr_new=step1.lr_new
        ),
        batch_loss=_batch_loss,
        train_data=data["train"],
        val_data=data["val"],
        epochs=step1.epochs,
        batch_size=step1.batch_size,
        optimizer="adam",
        poly_power=None,
        eval_batch=_scores,
        eval_summary=_f1_summary,
        select_metric="f1_macro",
        seed=config.seed,
        precision=step1.precision,
    )
    return task, names


def train_classifier(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step_dir: Path,
    binary_class: str | None = None,
) -> TrainOutput:
    """Train `classifier_task` and save the classifier in `step_dir` as
    `<classifier_name(binary_class)>.pt`."""
    task, names = classifier_task(config, info, rows, binary_class)
    run_name = classifier_name(binary_class)
    output = fit(task, config.ray, step_dir / "train", run_name)
    save_model_file(
        step_dir / f"{run_name}.pt",
        output.model_state,
        backbone=config.step1.backbone,
        class_indices=[info.classes.index(n) for n in names],
        thresholds=output.extras["thresholds"],
    )
    return output


def load_classifier(
    path: Path | str, device: torch.device | None = None
) -> tuple[torch.nn.Module, list[int], np.ndarray]:
    """(model in eval mode on `device` (default CPU), dataset class indices of its outputs,
    per-class thresholds)."""
    model, saved = load_model(path, _rebuild, device or torch.device("cpu"))
    return model, list(saved["class_indices"]), np.asarray(saved["thresholds"], np.float32)
