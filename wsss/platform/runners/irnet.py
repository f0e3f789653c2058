"""Step 2 on Ray: IRNet trained on step 1's confident labels, then random-walk pseudo masks
(paper 3.2, Table 2 row 2).

Training uses only train images whose classifier confidence exceeds `step2.min_confidence`,
each at every scale of `step2.scales` with the strong augmentation and random crops. Inference
(`map_through_model`): flip-averaged boundaries, the random walk of each image's CAMs, the
background threshold, and a palette PNG per image in `pseudo_masks/` (train, val and test);
the masks are scored against the ground truth (train's where the data set has it), and on val
and test a second random walk from the CAMs of the predicted classes is scored beside them.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.platform.config import IRNetConfig, WsssConfig
from wsss.platform.console import Progress
from wsss.platform.datasets.images import read_mask, read_rgb, write_palette_png
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow, with_oracle_masks
from wsss.platform.loaders.batches import rows_dataset
from wsss.platform.model_file import load_model_file, save_model_file
from wsss.platform.runners import (
    MASK_SCORED_SPLITS,
    PREDICTED_SUFFIX,
    SCORED_SPLITS,
    CamLabels,
    confusion_batch,
    load_for_inference,
    map_through_model,
    read_cams,
    require_inputs,
    scored_columns,
    scored_splits,
    summaries_by_split,
    total_confusions,
)
from wsss.platform.runners.outputs import IRNET_FILE, PSEUDO_MASK_DIR, Step1Output
from wsss.platform.training import TrainTask, epoch_data, fit
from wsss.stages.classification.selection import confident_images
from wsss.stages.irnet.losses import loss_on_ir_labels
from wsss.stages.irnet.model import IRNet, infer_boundary
from wsss.stages.irnet.pseudo_masks import propagate_to_mask
from wsss.stages.metrics import ConfusionMatrix
from wsss.stages.normalise import to_model_input

# The pseudo masks' metric name (Table 2's step-2 row).
PSEUDO_MASK_METRIC = "irnet"
PSEUDO_MASK_COLUMNS = scored_columns([PSEUDO_MASK_METRIC], MASK_SCORED_SPLITS)
# Images per call of the pseudo-mask model: on CPUs a task's (see `cams.CAM_BATCH`).
PSEUDO_MASK_BATCH = 32


def _build(
    backbone: str, weights: str | None, freeze_backbone: bool, classifier_file: str | None
) -> IRNet:
    model = IRNet(backbone, None if classifier_file else weights, freeze_backbone)
    if classifier_file:
        saved = load_model_file(classifier_file)
        model.load_classifier_backbone(saved["model"])
    return model


def _rebuild(saved: dict[str, Any]) -> IRNet:
    return IRNet(saved["backbone"], None, True)


def _param_groups(model: IRNet, lr_boundary: float, lr_displacement: float) -> list[dict]:
    boundary, displacement = model.parameter_groups()
    return [
        {"params": boundary, "lr": lr_boundary},
        {"params": displacement, "lr": lr_displacement},
    ]


def _irnet_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], radius: int
) -> torch.Tensor:
    boundary, displacement = model(to_model_input(batch["image"]))
    return loss_on_ir_labels(boundary, displacement, batch["mask"], radius).total


def irnet_task(
    config: WsssConfig, info: DatasetInfo, rows: list[ManifestRow], step1: Step1Output
) -> TrainTask:
    """What step 2 trains: IRNet on the IR labels of the train images step 1 is confident about
    (top class score above `step2.min_confidence`), at every configured scale. Step 1's
    classifier is read when `step2.backbone_from` is "step1_classifier"."""
    step2 = config.step2
    ir_label_dir, classifier_file = step1.ir_label_dir, step1.classifier_file
    if step2.crop_size % 16:
        raise ValueError(
            f"config key step2.crop_size: must be a multiple of 16, got {step2.crop_size}"
        )
    inputs = {"the IR labels of step 1": ir_label_dir}
    if step2.backbone_from == "step1_classifier":
        inputs["step 1's classifier (step2.backbone_from)"] = classifier_file
    require_inputs("step 2's IRNet training", inputs)
    confident = set(confident_images(step1.train_top_scores, step2.min_confidence))
    train_rows = [
        replace(r, mask=str(ir_label_dir / f"{r.id}.png"))
        for r in rows
        if r.split == "train" and r.id in confident
    ]
    if not train_rows:
        raise RuntimeError(
            f"step 2 has no training image: no train image's classifier confidence exceeds "
            f"step2.min_confidence={step2.min_confidence} (train step 1 longer or lower it)"
        )
    train_data = epoch_data(
        train_rows,
        config.seed,
        train=True,
        root=info.root,
        class_names=info.object_classes,
        size=step2.crop_size,
        augmentation_config=config.data.augmentation,
        columns=["image", "mask"],
        rescales=step2.scales,
        crop=True,
    )
    return TrainTask(
        name="step2",
        build_model=functools.partial(
            _build,
            step2.backbone,
            step2.weights,
            step2.freeze_backbone,
            str(classifier_file) if step2.backbone_from == "step1_classifier" else None,
        ),
        param_groups=functools.partial(
            _param_groups, lr_boundary=step2.lr_boundary, lr_displacement=step2.lr_displacement
        ),
        batch_loss=functools.partial(_irnet_loss, radius=step2.radius_train),
        train_data=train_data,
        epochs=step2.epochs,
        batch_size=step2.batch_size,
        optimizer="sgd",
        momentum=step2.momentum,
        weight_decay=step2.weight_decay,
        seed=config.seed,
        precision=step2.precision,
    )


def train_irnet(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step1: Step1Output,
    step_dir: Path,
) -> dict[str, Any]:
    """Train `irnet_task`; returns the history and how many images it learned from.

    The model goes to `step_dir / IRNET_FILE`; `make_pseudo_masks` then applies it with the
    inference settings, which training never reads.
    """
    task = irnet_task(config, info, rows, step1)
    output = fit(task, config.ray, step_dir / "train", "irnet")
    save_model_file(step_dir / IRNET_FILE, output.model_state, backbone=config.step2.backbone)
    return {"history": output.history, "train_images": len(task.train_data.items)}


class PseudoMaskWriter:
    """Inference callable: loads IRNet once; writes each image's pseudo mask and scores those of
    the images with a mask (a flattened confusion matrix per `scored_columns` column and
    batch), on val and test also the mask drawn from the predicted classes' CAMs."""

    def __init__(
        self,
        model_file: str,
        root: str,
        cam_dir: str,
        out_dir: str,
        config: IRNetConfig,
        num_classes: int,
    ) -> None:
        self.model, _, self.device = load_for_inference(model_file, _rebuild)
        self.root, self.cam_dir, self.out_dir = Path(root), Path(cam_dir), Path(out_dir)
        self.config, self.num_classes = config, num_classes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        matrices = {column: ConfusionMatrix(self.num_classes) for column in PSEUDO_MASK_COLUMNS}
        rows = zip(batch["id"], batch["image"], batch["split"], batch["mask"], strict=True)
        for image_id, image_path, split, mask in rows:
            image = read_rgb(self.root / str(image_path))
            with torch.no_grad():
                boundary = infer_boundary(
                    self.model, to_model_input(torch.from_numpy(image)[None].to(self.device))[0]
                )
            pseudo = self._walk(str(image_id), "given", boundary, image.shape[:2])
            write_palette_png(self.out_dir / f"{image_id}.png", pseudo)
            if split not in MASK_SCORED_SPLITS or not isinstance(mask, str):
                continue
            truth = read_mask(self.root / mask)
            matrices[f"{PSEUDO_MASK_METRIC}_{split}"].update(pseudo, truth)
            if split in SCORED_SPLITS:
                pseudo = self._walk(str(image_id), "predicted", boundary, image.shape[:2])
                matrices[f"{PSEUDO_MASK_METRIC}{PREDICTED_SUFFIX}_{split}"].update(pseudo, truth)
        return confusion_batch(matrices, len(batch["id"]))

    def _walk(
        self,
        image_id: str,
        labels: CamLabels,
        boundary: torch.Tensor,
        image_size: tuple[int, int],
    ) -> np.ndarray:
        """The pseudo mask of the random walk from the image's CAMs of its `labels`."""
        cams, classes = read_cams(self.cam_dir, image_id, labels)
        cams = torch.from_numpy(cams).to(self.device)
        if cams.shape[-2:] != boundary.shape and len(cams):
            # CAMs saved at another stride than IRNet's 4 are resampled to its grid.
            cams = F.interpolate(cams[None], size=boundary.shape, mode="bilinear")[0]
        return propagate_to_mask(
            cams,
            classes.tolist(),
            boundary,
            image_size,
            bg_threshold=self.config.sem_seg_bg_thres,
            radius=self.config.radius_infer,
            beta=self.config.beta,
            exp_times=self.config.exp_times,
        )


def make_pseudo_masks(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step1: Step1Output,
    model_file: Path,
    step_dir: Path,
) -> dict[str, Any]:
    """Pseudo masks for every image with CAMs (train and the scored splits), from the IRNet in
    `model_file`; returns {split: {"irnet": metrics}} of the scored splits' masks (with
    "irnet_predicted", drawn from the predicted classes) and, where the data set has its true
    masks, of train's."""
    cam_dir = step1.cam_dir
    require_inputs(
        "step 2's pseudo masks", {"the trained IRNet": model_file, "step 1's CAMs": cam_dir}
    )
    out_dir = step_dir / PSEUDO_MASK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = scored_splits(rows)
    wanted = [
        r
        for r in with_oracle_masks(rows, info.root)
        if (r.split == "train" or r.split in splits) and (cam_dir / f"{r.id}.npz").is_file()
    ]
    mask_splits = scored_splits(wanted, MASK_SCORED_SPLITS)
    confusions = map_through_model(
        rows_dataset(wanted),
        PseudoMaskWriter,
        {
            "model_file": str(model_file),
            "root": str(info.root),
            "cam_dir": str(cam_dir),
            "out_dir": str(out_dir),
            "config": config.step2,
            "num_classes": len(info.classes),
        },
        batch_size=PSEUDO_MASK_BATCH,
        ray_config=config.ray,
    )
    progress = Progress("[step2] pseudo masks", len(wanted))
    columns = scored_columns([PSEUDO_MASK_METRIC], mask_splits)
    totals = total_confusions(confusions, columns, len(info.classes), progress)
    return summaries_by_split(totals, mask_splits, info.classes)
