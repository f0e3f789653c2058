"""Step 1 on Ray: train the multi-label classifier (and the binary one for an excluded class),
extract CAMs on an actor pool, refine them with the dense CRF as parallel tasks, write IRNet's
confident labels, and score CAM and CAM+CRF against the val and test masks (paper 3.1, Table 2
row 1).

Artifacts in the step folder: `classifier.pt` (weights, class list, per-class thresholds),
`binary_<class>.pt`, `cams/<id>.npz` (float16 CAMs at `cam_stride` for the kept classes,
their dataset class indices, the classifier's top score; for val and test images also those of
the classes the classifiers predict), `ir_labels/<id>.png` (train images; 0 background, class
index, 255 unsure) and `summary.json`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.platform.config import ClassificationConfig, WsssConfig
from wsss.platform.console import Progress
from wsss.platform.crf import refine_labels
from wsss.platform.data.balance import balance, binary_task_rows, remove_classes, repeat_to_size
from wsss.platform.data.pipeline import rows_dataset, training_dataset
from wsss.platform.datasets.images import read_mask, read_rgb, write_palette_png
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow, with_oracle_masks
from wsss.platform.metrics import ConfusionMatrix
from wsss.platform.model_file import load_model_file
from wsss.platform.steps import (
    IMAGES_COLUMN,
    MASK_SCORED_SPLITS,
    PREDICTED_SUFFIX,
    SCORED_SPLITS,
    CamLabels,
    actor_pool_options,
    inference_device,
    read_cams,
    remove_this_node_once,
    require_inputs,
    scored_columns,
    scored_splits,
    summaries_by_split,
    total_confusions,
)
from wsss.platform.training import EpochData, TrainOutput, TrainTask, fit
from wsss.stages.classification.backbones import create_classifier
from wsss.stages.classification.cam import (
    cam_to_mask,
    confident_labels,
    grad_cam,
    multiscale_cam,
    normalise_cams,
    strided_size,
)
from wsss.stages.classification.selection import best_thresholds, macro_f1
from wsss.stages.normalise import to_model_input

CLASSIFIER_FILE = "classifier.pt"


@dataclass(frozen=True)
class ClassifierSpec:
    """Which dataset classes a classifier predicts, in output order (dataset class indices)."""

    backbone: str
    class_indices: tuple[int, ...]


def _build(backbone: str, num_outputs: int, weights: str | None) -> torch.nn.Module:
    return create_classifier(backbone, num_outputs, weights)


def _param_groups(model: torch.nn.Module, lr_pretrained: float, lr_new: float) -> list[dict]:
    pretrained, new = model.parameter_groups()
    return [
        {"params": [p for p in pretrained if p.requires_grad], "lr": lr_pretrained},
        {"params": new, "lr": lr_new},
    ]


def _bce_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(to_model_input(batch["image"]))
    return F.binary_cross_entropy_with_logits(logits, batch["target"])


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
        ManifestRow(r.id, r.image, r.split, (binary_class,) if target else (), r.mask)
        for r, target in binary_task_rows(rows, binary_class)
    ]


def classifier_name(binary_class: str | None = None) -> str:
    """The name of step 1's multi-label classifier, or of the binary one for `binary_class`;
    the model is saved as `<name>.pt`."""
    return "classifier" if binary_class is None else f"binary_{binary_class}"


def train_classifier(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step_dir: Path,
    binary_class: str | None = None,
) -> tuple[ClassifierSpec, TrainOutput]:
    """Train the multi-label classifier (excluded classes removed, classes balanced), or with
    `binary_class` the one-output classifier for that class, and save it in `step_dir` as
    `<classifier_name(binary_class)>.pt`."""
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
    spec = ClassifierSpec(step1.backbone, tuple(info.classes.index(n) for n in names))
    data = {
        split: EpochData(
            _target_rows(split_rows, names, binary_class),
            functools.partial(
                training_dataset,
                root=str(info.root),
                class_names=names,
                size=config.data.image_size,
                augmentation="strong" if split == "train" else "weak",
                augmentation_config=config.data.augmentation,
                columns=["image", "target"],
            ),
            config.seed,
            shuffle=split == "train",
        )
        for split, split_rows in (("train", train_rows), ("val", val_rows))
    }
    task = TrainTask(
        name="step1" if binary_class is None else f"step1-{binary_class}",
        build_model=functools.partial(_build, step1.backbone, len(names), step1.weights),
        param_groups=functools.partial(
            _param_groups, lr_pretrained=step1.lr_pretrained, lr_new=step1.lr_new
        ),
        batch_loss=_bce_loss,
        train_data=data["train"],
        val_data=data["val"],
        epochs=step1.epochs,
        batch_size=step1.batch_size,
        steps_per_epoch=math.ceil(len(train_rows) / (step1.batch_size * config.ray.num_workers)),
        optimizer="adam",
        poly_power=None,
        eval_batch=_scores,
        eval_summary=_f1_summary,
        select_metric="f1_macro",
        seed=config.seed,
    )
    run_name = classifier_name(binary_class)
    output = fit(task, config.ray, step_dir / "train", run_name)
    torch.save(
        {
            "model": output.model_state,
            "backbone": spec.backbone,
            "class_indices": list(spec.class_indices),
            "thresholds": output.extras["thresholds"],
        },
        step_dir / f"{run_name}.pt",
    )
    return spec, output


def load_classifier(
    path: Path, device: torch.device | None = None
) -> tuple[torch.nn.Module, list[int], np.ndarray]:
    """(model in eval mode on `device` (default CPU), dataset class indices of its outputs,
    per-class thresholds)."""
    saved = load_model_file(path)
    model = create_classifier(saved["backbone"], len(saved["class_indices"]), None)
    model.load_state_dict(saved["model"])
    model.to(device or torch.device("cpu")).eval()
    return model, list(saved["class_indices"]), np.asarray(saved["thresholds"], np.float32)


def _class_indices(kept: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array([class_index for class_index, _, _ in kept], np.int32)


class CamExtractor:
    """Ray Data actor: loads the classifier(s) once, writes each image's CAMs to `cams/`.

    Kept classes: the image's labels among the classifier's classes; for an unlabelled image,
    the classes scoring above their saved thresholds. With a binary classifier for an excluded
    class, its CAM is added (`merge_binary_cams`) where that class is labelled or predicted —
    the only way to recover it where its label is missing. With `cam_method: gradcam` each
    kept class's map is Grad-CAM on `gradcam_layer` instead of the multi-scale CAM.

    A val or test image also gets the CAMs of the classes the classifiers predict, labels or
    not (`predicted_cams`, `predicted_classes`): steps 1 and 2 scored as step 3 is, without
    the image's labels.
    """

    def __init__(
        self,
        root: str,
        classes: list[str],
        model_files: list[str],
        config: ClassificationConfig,
        cam_dir: str,
    ) -> None:
        torch.set_num_threads(1)
        self.root, self.classes, self.config = Path(root), classes, config
        self.cam_dir = Path(cam_dir)
        self.device = inference_device()
        self.models = [load_classifier(Path(f), self.device) for f in model_files]

    def _one(self, image_id: str, image_path: str, split: str, labels: list[str]) -> float:
        image = read_rgb(self.root / image_path)
        x = to_model_input(torch.from_numpy(image)[None].to(self.device))[0]
        labelled = {self.classes.index(label) for label in labels}
        kept: list[tuple[int, int, int]] = []  # (dataset class, model rank, output)
        predicted_kept: list[tuple[int, int, int]] = []
        top = 0.0
        for rank, (model, class_indices, thresholds) in enumerate(self.models):
            with torch.no_grad():
                scores = torch.sigmoid(model(x[None]))[0].cpu().numpy()
            if rank == 0:
                top = float(scores.max()) if scores.size else 0.0
            is_binary = rank > 0
            for k, class_index in enumerate(class_indices):
                predicted = scores[k] > thresholds[k]
                if (class_index in labelled) or ((not labels or is_binary) and predicted):
                    kept.append((class_index, rank, k))
                if predicted:
                    predicted_kept.append((class_index, rank, k))
        cam_size = strided_size(image.shape[:2], self.config.cam_stride)
        cams_of = functools.partial(self._cams, x, cam_size, {})
        saved = {"cams": cams_of(kept), "classes": _class_indices(kept), "top_score": top}
        if split in SCORED_SPLITS:
            saved["predicted_cams"] = cams_of(predicted_kept)
            saved["predicted_classes"] = _class_indices(predicted_kept)
        temporary = self.cam_dir / f".{image_id}.tmp.npz"
        np.savez(temporary, **saved)
        temporary.replace(self.cam_dir / f"{image_id}.npz")
        return top

    def _cams(
        self,
        x: torch.Tensor,
        cam_size: tuple[int, int],
        per_model: dict[int, torch.Tensor],
        kept: list[tuple[int, int, int]],
    ) -> np.ndarray:
        """The normalised float16 CAMs [len(kept), h, w] of the (class, model rank, output)
        triples in `kept`; `per_model` caches each model's multi-scale CAMs of `x`."""
        maps = []
        for _, rank, k in kept:
            model = self.models[rank][0]
            if self.config.cam_method == "gradcam":
                cam = grad_cam(model, x, self.config.gradcam_layer, k)
                cam = F.interpolate(cam[None, None], size=cam_size, mode="bilinear")[0, 0]
            else:
                if rank not in per_model:
                    per_model[rank] = multiscale_cam(
                        model,
                        x,
                        self.config.cam_scales,
                        self.config.cam_flip,
                        self.config.cam_stride,
                    )
                cam = per_model[rank][k]
            maps.append(cam.detach())
        if not maps:
            return np.zeros((0, *cam_size), np.float16)
        cams = normalise_cams(torch.stack(maps), self.config.cam_norm)
        return cams.cpu().numpy().astype(np.float16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = zip(batch["id"], batch["image"], batch["split"], batch["labels"], strict=True)
        tops = [self._one(str(i), str(p), str(s), list(labels)) for i, p, s, labels in rows]
        return {"id": batch["id"], "split": batch["split"], "top_score": np.array(tops, np.float32)}


def _cams_at_image_size(
    cam_dir: Path, image_id: str, height: int, width: int, labels: CamLabels = "given"
) -> tuple[np.ndarray, np.ndarray]:
    """(CAMs float32 [n, H, W] upsampled from the saved stride, dataset class indices [n])."""
    cams, classes = read_cams(cam_dir, image_id, labels)
    if cams.shape[0] == 0:
        return np.zeros((0, height, width), np.float32), classes
    up = F.interpolate(
        torch.from_numpy(cams)[None], size=(height, width), mode="bilinear", align_corners=False
    )
    return up[0].numpy(), classes


def cam_masks(
    image: np.ndarray,
    image_id: str,
    cam_dir: Path,
    config: ClassificationConfig,
    labels: CamLabels = "given",
) -> tuple[np.ndarray, np.ndarray]:
    """The CAM mask (background at `cam_eval_thres`) and its dense-CRF refinement, uint8
    [H, W] of dataset class indices, for one image whose CAMs are in `cam_dir` (those of its
    given or predicted `labels`)."""
    cams, classes = _cams_at_image_size(cam_dir, image_id, *image.shape[:2], labels)
    predicted = cam_to_mask(cams, classes - 1, config.cam_eval_thres)
    keys = np.concatenate([[0], classes]).astype(np.uint8)
    to_compact = np.zeros(256, np.int64)
    to_compact[keys] = np.arange(len(keys))
    return predicted, keys[_crf_labels(image, to_compact[predicted], len(keys), config)]


CAM_METRICS = ("cam", "cam_crf")


def refine_and_score(
    batch: dict[str, np.ndarray],
    root: str,
    num_classes: int,
    config: ClassificationConfig,
    cam_dir: str,
    ir_dir: str,
) -> dict[str, np.ndarray]:
    """Dense-CRF task over CAM files: IR labels for train images; for images with a mask, the
    confusion matrices (flattened, one column per `scored_columns`) of the CAM and CAM+CRF
    masks against it, drawn on val and test with the given and with the predicted labels."""
    columns = scored_columns(CAM_METRICS, MASK_SCORED_SPLITS)
    matrices = {column: ConfusionMatrix(num_classes) for column in columns}
    rows = zip(batch["id"], batch["image"], batch["split"], batch["mask"], strict=True)
    for image_id, image_path, split, mask in rows:
        image = read_rgb(Path(root) / str(image_path))
        if split == "train":
            cams, classes = _cams_at_image_size(Path(cam_dir), image_id, *image.shape[:2])
            crf = functools.partial(_crf_labels, image, config=config)
            labels = confident_labels(
                cams, classes - 1, config.conf_fg_thres, config.conf_bg_thres, refine=crf
            )
            write_palette_png(Path(ir_dir) / f"{image_id}.png", labels)
        if split in MASK_SCORED_SPLITS and isinstance(mask, str):
            truth = read_mask(Path(root) / mask)
            drawn: dict[str, CamLabels] = {"": "given"}
            if split in SCORED_SPLITS:
                drawn[PREDICTED_SUFFIX] = "predicted"
            for suffix, labels in drawn.items():
                masks = cam_masks(image, str(image_id), Path(cam_dir), config, labels)
                for name, predicted in zip(CAM_METRICS, masks, strict=True):
                    matrices[f"{name}{suffix}_{split}"].update(predicted, truth)
    remove_this_node_once()
    return {
        IMAGES_COLUMN: np.array([len(batch["id"])]),
        **{column: matrix.counts.reshape(1, -1) for column, matrix in matrices.items()},
    }


def _crf_labels(
    image: np.ndarray, compact: np.ndarray, n_labels: int, config: ClassificationConfig
) -> np.ndarray:
    # With no class kept there is nothing to refine: the map is all background.
    if n_labels < 2:
        return compact
    return refine_labels(image, compact, n_labels, config.crf)


def extract_cams(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step_dir: Path,
    model_files: list[Path],
) -> dict[str, Any]:
    """CAMs for the train images and those of the scored splits (actor pool), then CRF, IR
    labels and CAM metrics (tasks).

    Returns {"metrics": {split: {"cam": summary, "cam_crf": summary}}, "train_top_scores":
    {id: top score}}: the metrics of the scored splits (with `cam_predicted` and
    `cam_crf_predicted`, drawn with the predicted labels) and, where the data set has its true
    masks, of train; the classifier's highest class score per train image, for step 2's
    confidence filter.
    """
    require_inputs("step 1's CAM extraction", {f"the model {f.name}": f for f in model_files})
    cam_dir, ir_dir = step_dir / "cams", step_dir / "ir_labels"
    cam_dir.mkdir(parents=True, exist_ok=True)
    ir_dir.mkdir(parents=True, exist_ok=True)
    splits = scored_splits(rows)
    wanted = [
        r for r in with_oracle_masks(rows, info.root) if r.split == "train" or r.split in splits
    ]
    extracted = rows_dataset(wanted).map_batches(
        CamExtractor,
        fn_constructor_kwargs={
            "root": str(info.root),
            "classes": info.classes,
            "model_files": [str(f) for f in model_files],
            "config": config.step1,
            "cam_dir": str(cam_dir),
        },
        batch_size=8,
        batch_format="numpy",
        **actor_pool_options(config.ray),
    )
    progress = Progress("[step1] CAMs", len(wanted))
    train_top_scores: dict[str, float] = {}
    for batch in extracted.iter_batches(batch_format="numpy", batch_size=None):
        for image_id, split, top in zip(
            batch["id"], batch["split"], batch["top_score"], strict=True
        ):
            if split == "train":
                train_top_scores[str(image_id)] = float(top)
        progress.update(len(batch["id"]))
    progress.finish()
    scored = rows_dataset(wanted).map_batches(
        refine_and_score,
        fn_kwargs={
            "root": str(info.root),
            "num_classes": len(info.classes),
            "config": config.step1,
            "cam_dir": str(cam_dir),
            "ir_dir": str(ir_dir),
        },
        batch_size=8,
        batch_format="numpy",
        num_cpus=1,
    )
    mask_splits = scored_splits(wanted, MASK_SCORED_SPLITS)
    totals = total_confusions(
        scored,
        scored_columns(CAM_METRICS, mask_splits),
        len(info.classes),
        Progress("[step1] dense CRF", len(wanted)),
    )
    return {
        "metrics": summaries_by_split(totals, mask_splits, info.classes),
        "train_top_scores": train_top_scores,
    }
