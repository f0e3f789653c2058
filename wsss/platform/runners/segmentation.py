"""Step 3 on Ray: DeepLabV3+ trained on step 2's pseudo masks, the best epoch by val mIoU,
scored on the val and test masks with and without test-time augmentation (paper 3.3, 3.4,
4.1) in one inference pass (`map_through_model`).

Artifacts in the step folder: `segmenter.pt` (weights, encoder, output stride, class list),
`summary.json`. Predictions for new images go through the `Segmenter` model class.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch
from PIL import Image

from wsss.platform.config import RayConfig, TTAConfig, WsssConfig
from wsss.platform.console import Progress
from wsss.platform.datasets.images import ImageError, read_mask, read_rgb, write_palette_png
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow
from wsss.platform.loaders.batches import rows_dataset
from wsss.platform.model_file import load_model_file, save_model_file
from wsss.platform.runners import (
    SCORED_SPLITS,
    confusion_batch,
    load_for_inference,
    map_through_model,
    require_inputs,
    scored_splits,
    total_confusions,
)
from wsss.platform.runners.outputs import SEGMENTER_FILE, Step1Output, Step3Output
from wsss.platform.training import TrainTask, epoch_data, fit
from wsss.stages.metrics import ConfusionMatrix
from wsss.stages.normalise import to_model_input
from wsss.stages.segmentation.losses import segmentation_loss
from wsss.stages.segmentation.model import create_segmentation_model, load_classifier_encoder
from wsss.stages.segmentation.render import overlay, side_by_side, with_legend
from wsss.stages.segmentation.tta import predict_labels

logger = logging.getLogger(__name__)
# Images per call of the scoring model: on CPUs a task's (see `cams.CAM_BATCH`).
SCORING_BATCH = 16


def _build(
    encoder: str,
    num_classes: int,
    weights: str | None,
    output_stride: int,
    classifier_file: str | None,
) -> torch.nn.Module:
    model = create_segmentation_model(
        encoder, num_classes, None if classifier_file else weights, output_stride
    )
    if classifier_file:
        saved = load_model_file(classifier_file)
        load_classifier_encoder(model, saved["model"])
    return model


def _rebuild(saved: dict[str, Any]) -> torch.nn.Module:
    return create_segmentation_model(
        saved["encoder"], len(saved["classes"]), None, saved["output_stride"]
    )


def _param_groups(model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


def _batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return segmentation_loss(model(to_model_input(batch["image"])), batch["mask"])


def _confusion(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], num_classes: int
) -> dict[str, np.ndarray]:
    predicted = model(to_model_input(batch["image"])).argmax(1).cpu().numpy()
    matrix = ConfusionMatrix(num_classes)
    matrix.update(predicted, batch["mask"].cpu().numpy())
    return {"confusion": matrix.counts.reshape(1, -1)}


def _miou_summary(outputs: dict[str, np.ndarray], num_classes: int) -> dict[str, Any]:
    matrix = ConfusionMatrix(num_classes)
    matrix.counts = outputs["confusion"].sum(axis=0).reshape(num_classes, num_classes)
    return {"val_miou": matrix.miou()}


def segmenter_task(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    mask_dir: Path,
    step1: Step1Output,
) -> TrainTask:
    """What step 3 trains: DeepLabV3+ on the train images' masks in `mask_dir` (step 2's pseudo
    masks, or a data set's true masks for full supervision), the best epoch by val mIoU. Step
    1's classifier is read when `step3.encoder_from` is "step1_classifier"."""
    classifier_file = step1.classifier_file
    step3 = config.step3
    inputs = {"the pseudo masks of step 2": mask_dir}
    if step3.encoder_from == "step1_classifier":
        inputs["step 1's classifier (step3.encoder_from)"] = classifier_file
    require_inputs("step 3's DeepLabV3+ training", inputs)
    num_classes = len(info.classes)
    train_rows = [
        replace(r, mask=str(mask_dir / f"{r.id}.png"))
        for r in rows
        if r.split == "train" and (mask_dir / f"{r.id}.png").is_file()
    ]
    val_rows = [r for r in rows if r.split == "val" and r.mask is not None]
    data = {
        split: epoch_data(
            split_rows,
            config.seed,
            train=split == "train",
            root=info.root,
            class_names=info.object_classes,
            size=config.data.image_size,
            augmentation_config=config.data.augmentation,
            columns=["image", "mask"],
        )
        for split, split_rows in (("train", train_rows), ("val", val_rows))
    }
    return TrainTask(
        name="step3",
        build_model=functools.partial(
            _build,
            step3.encoder,
            num_classes,
            step3.weights,
            step3.output_stride,
            str(classifier_file) if step3.encoder_from == "step1_classifier" else None,
        ),
        param_groups=functools.partial(_param_groups, lr=step3.lr),
        batch_loss=_batch_loss,
        train_data=data["train"],
        val_data=data["val"],
        epochs=step3.epochs,
        batch_size=step3.batch_size,
        optimizer="sgd",
        momentum=step3.momentum,
        weight_decay=step3.weight_decay,
        eval_batch=functools.partial(_confusion, num_classes=num_classes),
        eval_summary=functools.partial(_miou_summary, num_classes=num_classes),
        select_metric="val_miou",
        seed=config.seed,
        precision=step3.precision,
    )


def train_segmenter(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    mask_dir: Path,
    step1: Step1Output,
    step_dir: Path,
) -> dict[str, Any]:
    """Train `segmenter_task` and save the model in `step_dir` as `SEGMENTER_FILE`."""
    step3 = config.step3
    task = segmenter_task(config, info, rows, mask_dir, step1)
    output = fit(task, config.ray, step_dir / "train", "segmenter")
    save_model_file(
        step_dir / SEGMENTER_FILE,
        output.model_state,
        encoder=step3.encoder,
        output_stride=step3.output_stride,
        classes=info.classes,
    )
    return {"best_epoch": output.metrics.get("epoch"), "history": output.history}


class Segmenter:
    """Inference callable: loads the segmenter once; labels whole images at their own size.

    `tta` None predicts with one plain pass; otherwise the mean of softmax over its flips and
    scales. Input rows need `id` and `image` (a path, absolute or under `root`); each image's
    labels are written to `out_dir` as `<id>.png` (palette) and `<id>_overlay.png` (image |
    overlay, above a legend naming the classes drawn), and a batch returns `id` and `error`
    ("" when written, else why the image could not be read).
    """

    def __init__(
        self, model_file: str, root: str, tta: TTAConfig | None, out_dir: str | None = None
    ) -> None:
        self.model, saved, self.device = load_for_inference(model_file, _rebuild)
        self.classes: list[str] = saved["classes"]
        self.root, self.tta = Path(root), tta
        self.out_dir = Path(out_dir) if out_dir else None

    def labels(self, image: np.ndarray, tta: TTAConfig | None = None) -> np.ndarray:
        """uint8 [H, W] class indices for an RGB uint8 [H, W, 3] image, with `tta` (None: one
        plain pass)."""
        x = to_model_input(torch.from_numpy(image)[None].to(self.device))
        scales = tta.scales if tta else (1.0,)
        labels = predict_labels(self.model, x, scales, bool(tta and tta.flip))[0]
        return labels.cpu().numpy().astype(np.uint8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = []
        for index, image_id in enumerate(batch["id"]):
            try:
                image = read_rgb(self.root / str(batch["image"][index]))
            except ImageError as exc:
                logger.warning("cannot segment %s: %s", image_id, exc)
                errors.append(exc.reason)
                continue
            predicted = self.labels(image, self.tta)
            errors.append("")
            if self.out_dir is not None:
                write_palette_png(self.out_dir / f"{image_id}.png", predicted)
                panel = side_by_side(image, overlay(image, predicted))
                panel = with_legend(panel, predicted, self.classes)
                Image.fromarray(panel).save(self.out_dir / f"{image_id}_overlay.png")
        return {"id": batch["id"], "image": batch["image"], "error": np.array(errors, dtype=object)}


class SegmenterScorer:
    """Inference callable: scores the saved segmenter against rows' masks, once per variant ({name:
    TTA or None}) of one model; a batch returns one flattened confusion matrix per
    `<name>_<split>` of the scored splits."""

    def __init__(self, model_file: str, root: str, variants: dict[str, TTAConfig | None]) -> None:
        self.segmenter, self.variants = Segmenter(model_file, root, None), variants

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        num_classes = len(self.segmenter.classes)
        matrices = {
            f"{name}_{split}": ConfusionMatrix(num_classes)
            for name in self.variants
            for split in SCORED_SPLITS
        }
        for image_path, split, mask in zip(
            batch["image"], batch["split"], batch["mask"], strict=True
        ):
            image = read_rgb(self.segmenter.root / str(image_path))
            truth = read_mask(self.segmenter.root / str(mask))
            for name, tta in self.variants.items():
                matrices[f"{name}_{split}"].update(self.segmenter.labels(image, tta), truth)
        return confusion_batch(matrices, len(batch["id"]))


def evaluation_variants(tta: TTAConfig) -> dict[str, TTAConfig | None]:
    """What a run's evaluation scores ({name: TTA or None}): the plain pass, and with `tta`
    enabled the TTA one."""
    return {"segmentation": None, **({"segmentation_tta": tta} if tta.enabled else {})}


def evaluation_rows(rows: list[ManifestRow]) -> list[ManifestRow]:
    """The rows the evaluation scores: those of the scored splits with their masks."""
    splits = scored_splits(rows)
    return [r for r in rows if r.split in splits and r.mask is not None]


def evaluate_segmenter(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step3: Step3Output,
    variants: dict[str, TTAConfig | None],
) -> dict[str, dict[str, Any]]:
    """Table-1 metrics of step 3's segmenter on the masks of every scored split, for each
    variant ({name: TTA or None}) in one pass: {split: {name: summary}}."""
    model_file = step3.segmenter_file
    require_inputs("the evaluation", {"step 3's model": model_file})
    splits = scored_splits(rows)
    scored_rows = evaluation_rows(rows)
    confusions = map_through_model(
        rows_dataset(scored_rows),
        SegmenterScorer,
        {"model_file": str(model_file), "root": str(info.root), "variants": variants},
        batch_size=SCORING_BATCH,
        ray_config=config.ray,
    )
    progress = Progress(f"[evaluation] DeepLabV3+ on {' and '.join(splits)}", len(scored_rows))
    columns = [f"{name}_{split}" for name in variants for split in splits]
    totals = total_confusions(confusions, columns, len(info.classes), progress)
    return {
        split: {name: dict(totals[f"{name}_{split}"].summary(info.classes)) for name in variants}
        for split in splits
    }


def segment_images(
    model_file: Path,
    images: ray.data.Dataset,
    out_dir: Path,
    tta: TTAConfig | None,
    ray_config: RayConfig,
) -> ray.data.Dataset:
    """Segment a dataset of {id, image (absolute path)} rows (`map_through_model`), writing
    masks and overlays to `out_dir` (absolute); the result has each row's `error` ("" if
    written)."""
    return map_through_model(
        images,
        Segmenter,
        {"model_file": str(model_file), "root": "/", "tta": tta, "out_dir": str(out_dir)},
        batch_size=4,
        ray_config=ray_config,
    )
