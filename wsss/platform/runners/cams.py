"""Step 1's inference on Ray: CAMs of every train image and of the scored splits on an actor
pool, then the dense CRF as parallel tasks, which writes IRNet's confident labels and scores
CAM and CAM+CRF against the true masks (paper 3.1, Table 2 row 1).

Artifacts in the step folder: `cams/<id>.npz` (float16 CAMs at `cam_stride` for the kept
classes, their dataset class indices, the classifier's top score; for val and test images also
those of the classes the classifiers predict), `ir_labels/<id>.png` (train images; 0
background, class index, 255 unsure), `cam_masks/<id>.png` and `cam_crf_masks/<id>.png` (val
and test images with a mask: their CAM and CAM+CRF masks from their given labels).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch
import torch.nn.functional as F

from wsss.platform.config import ClassificationConfig, RayConfig, WsssConfig
from wsss.platform.console import Progress
from wsss.platform.datasets.images import read_mask, read_rgb, write_palette_png
from wsss.platform.datasets.manifest import DatasetInfo, ManifestRow, with_oracle_masks
from wsss.platform.loaders.batches import rows_dataset
from wsss.platform.runners import (
    MASK_SCORED_SPLITS,
    PREDICTED_SUFFIX,
    SCORED_SPLITS,
    CamLabels,
    confusion_batch,
    cpu_tasks,
    inference_device,
    map_through_model,
    read_cams,
    remove_this_node_once,
    require_inputs,
    scored_columns,
    scored_splits,
    summaries_by_split,
    total_confusions,
)
from wsss.platform.runners.classifier import load_classifier
from wsss.platform.runners.outputs import CAM_DIR, CAM_MASK_DIRS, IR_LABEL_DIR
from wsss.stages.classification import cam
from wsss.stages.classification.crf import label_refiner
from wsss.stages.classification.selection import CamSource, cam_classes
from wsss.stages.metrics import ConfusionMatrix
from wsss.stages.normalise import to_model_input

CAM_METRICS = ("cam", "cam_crf")
# Images per dense-CRF task: enough that Ray's cost per task is small beside the CRF's.
CRF_BATCH = 8
# Images per call of the CAM model: on CPUs a task's, enough that Ray's cost per task is small
# beside the model's.
CAM_BATCH = 32


class CamExtractor:
    """Inference callable: loads the classifier(s) once, writes each image's CAMs to `cams/`.

    Which classes get a CAM is `selection.cam_classes`; with a binary classifier for an
    excluded class (`merge_binary_cams`), its CAM joins the image's where that class is
    labelled or predicted. With `cam_method: gradcam` each kept class's map is Grad-CAM on
    `gradcam_layer` instead of the multi-scale CAM.

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
        self.models = [load_classifier(f, self.device) for f in model_files]

    def _one(self, image_id: str, image_path: str, split: str, labels: list[str]) -> float:
        image = read_rgb(self.root / image_path)
        x = to_model_input(torch.from_numpy(image)[None].to(self.device))[0]
        scores = []
        for model, _, _ in self.models:
            with torch.no_grad():
                scores.append(torch.sigmoid(model(x[None]))[0].cpu().numpy())
        kept, predicted = cam_classes(
            scores,
            [class_indices for _, class_indices, _ in self.models],
            [thresholds for _, _, thresholds in self.models],
            {self.classes.index(label) for label in labels},
        )
        top = float(scores[0].max()) if scores[0].size else 0.0
        cam_size = cam.strided_size(image.shape[:2], self.config.cam_stride)
        cams_of = functools.partial(self._cams, x, cam_size, {})
        saved = {"cams": cams_of(kept), "classes": _class_indices(kept), "top_score": top}
        if split in SCORED_SPLITS:
            saved["predicted_cams"] = cams_of(predicted)
            saved["predicted_classes"] = _class_indices(predicted)
        write_cams(self.cam_dir, image_id, saved)
        return top

    def _cams(
        self,
        x: torch.Tensor,
        cam_size: tuple[int, int],
        per_model: dict[int, torch.Tensor],
        sources: list[CamSource],
    ) -> np.ndarray:
        """The normalised float16 CAMs [len(sources), h, w] of `sources`; `per_model` caches
        each classifier's multi-scale CAMs of `x`."""
        maps = []
        for source in sources:
            model = self.models[source.classifier][0]
            if self.config.cam_method == "gradcam":
                one = cam.grad_cam(model, x, self.config.gradcam_layer, source.output)
                one = F.interpolate(one[None, None], size=cam_size, mode="bilinear")[0, 0]
            else:
                if source.classifier not in per_model:
                    per_model[source.classifier] = cam.multiscale_cam(
                        model,
                        x,
                        self.config.cam_scales,
                        self.config.cam_flip,
                        self.config.cam_stride,
                    )
                one = per_model[source.classifier][source.output]
            maps.append(one.detach())
        if not maps:
            return np.zeros((0, *cam_size), np.float16)
        cams = cam.normalise_cams(torch.stack(maps), self.config.cam_norm)
        return cams.cpu().numpy().astype(np.float16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = zip(batch["id"], batch["image"], batch["split"], batch["labels"], strict=True)
        tops = [self._one(str(i), str(p), str(s), list(labels)) for i, p, s, labels in rows]
        return {"id": batch["id"], "split": batch["split"], "top_score": np.array(tops, np.float32)}


def write_cams(cam_dir: Path, image_id: str, saved: dict[str, Any]) -> None:
    """One image's CAM file, `cam_dir/<id>.npz` with the arrays `read_cams` reads, written
    whole or not at all (a run killed mid-write leaves no half file)."""
    temporary = cam_dir / f".{image_id}.tmp.npz"
    np.savez(temporary, **saved)
    temporary.replace(cam_dir / f"{image_id}.npz")


def _class_indices(sources: list[CamSource]) -> np.ndarray:
    return np.array([source.class_index for source in sources], np.int32)


def _cams_at_image_size(
    cam_dir: Path, image_id: str, size: tuple[int, int], labels: CamLabels = "given"
) -> tuple[np.ndarray, np.ndarray]:
    """(CAMs float32 [n, H, W] upsampled from the saved stride, dataset class indices [n])."""
    cams, classes = read_cams(cam_dir, image_id, labels)
    return cam.upsample_cams(cams, size), classes


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
    cams, classes = _cams_at_image_size(cam_dir, image_id, image.shape[:2], labels)
    return cam.cam_masks(cams, classes - 1, config.cam_eval_thres, label_refiner(image, config.crf))


def refine_and_score(
    batch: dict[str, np.ndarray],
    root: str,
    num_classes: int,
    config: ClassificationConfig,
    step_dir: str,
) -> dict[str, np.ndarray]:
    """Dense-CRF task over the CAM files in `step_dir`: IR labels for train images; for images
    with a mask, the confusion matrices (flattened, one column per `scored_columns`) of the CAM
    and CAM+CRF masks against it, drawn on val and test with the given and with the predicted
    labels. The masks drawn with the given labels of val and test images are kept (the
    Figure-2 panels show them)."""
    cam_dir, ir_label_dir = Path(step_dir) / CAM_DIR, Path(step_dir) / IR_LABEL_DIR
    mask_dirs = {name: Path(step_dir) / CAM_MASK_DIRS[name] for name in CAM_METRICS}
    for folder in (ir_label_dir, *mask_dirs.values()):
        folder.mkdir(exist_ok=True)
    columns = scored_columns(CAM_METRICS, MASK_SCORED_SPLITS)
    matrices = {column: ConfusionMatrix(num_classes) for column in columns}
    rows = zip(batch["id"], batch["image"], batch["split"], batch["mask"], strict=True)
    for image_id, image_path, split, mask in rows:
        image = read_rgb(Path(root) / str(image_path))
        if split == "train":
            cams, classes = _cams_at_image_size(cam_dir, image_id, image.shape[:2])
            labels = cam.confident_labels(
                cams,
                classes - 1,
                config.conf_fg_thres,
                config.conf_bg_thres,
                refine=label_refiner(image, config.crf),
            )
            write_palette_png(ir_label_dir / f"{image_id}.png", labels)
        if split in MASK_SCORED_SPLITS and isinstance(mask, str):
            truth = read_mask(Path(root) / mask)
            drawn: dict[str, CamLabels] = {"": "given"}
            if split in SCORED_SPLITS:
                drawn[PREDICTED_SUFFIX] = "predicted"
            for suffix, labels in drawn.items():
                masks = cam_masks(image, str(image_id), cam_dir, config, labels)
                for name, predicted in zip(CAM_METRICS, masks, strict=True):
                    matrices[f"{name}{suffix}_{split}"].update(predicted, truth)
                    if split in SCORED_SPLITS and labels == "given":
                        write_palette_png(mask_dirs[name] / f"{image_id}.png", predicted)
    remove_this_node_once()
    return confusion_batch(matrices, len(batch["id"]))


def crf_stage(
    rows: Sequence[ManifestRow],
    info: DatasetInfo,
    config: ClassificationConfig,
    step_dir: Path,
    ray_config: RayConfig,
) -> ray.data.Dataset:
    """Step 1's dense-CRF stage over `rows` whose CAMs are in `step_dir` (lazy):
    `refine_and_score` as `cpu_tasks` of `CRF_BATCH` images, writing its IR labels and masks
    to `step_dir`."""
    fn_kwargs = {
        "root": str(info.root),
        "num_classes": len(info.classes),
        "config": config,
        "step_dir": str(step_dir),
    }
    return cpu_tasks(rows_dataset(rows), refine_and_score, fn_kwargs, CRF_BATCH, ray_config)


def cam_rows(rows: list[ManifestRow], root: Path) -> list[ManifestRow]:
    """The rows step 1 makes CAMs for: train and the scored splits, train rows with their true
    masks where the data set keeps them (`with_oracle_masks`)."""
    splits = scored_splits(rows)
    return [r for r in with_oracle_masks(rows, root) if r.split == "train" or r.split in splits]


def write_cam_files(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    model_files: list[Path],
    cam_dir: Path,
) -> dict[str, float]:
    """Write the CAM file of each of `rows` to `cam_dir` (`CamExtractor`, `map_through_model`);
    returns the classifier's highest class score of each train image {id: score}."""
    cam_dir.mkdir(parents=True, exist_ok=True)
    extracted = map_through_model(
        rows_dataset(rows),
        CamExtractor,
        {
            "root": str(info.root),
            "classes": info.classes,
            "model_files": [str(f) for f in model_files],
            "config": config.step1,
            "cam_dir": str(cam_dir),
        },
        batch_size=CAM_BATCH,
        ray_config=config.ray,
    )
    progress = Progress("[step1] CAMs", len(rows))
    train_top_scores: dict[str, float] = {}
    for batch in extracted.iter_batches(batch_format="numpy", batch_size=None):
        for image_id, split, top in zip(
            batch["id"], batch["split"], batch["top_score"], strict=True
        ):
            if split == "train":
                train_top_scores[str(image_id)] = float(top)
        progress.update(len(batch["id"]))
    progress.finish()
    return train_top_scores


def extract_cams(
    config: WsssConfig,
    info: DatasetInfo,
    rows: list[ManifestRow],
    step_dir: Path,
    model_files: list[Path],
) -> dict[str, Any]:
    """CAMs for the train images and those of the scored splits (`map_through_model`), then CRF, IR
    labels and CAM metrics (tasks).

    Returns {"metrics": {split: {"cam": summary, "cam_crf": summary}}, "train_top_scores":
    {id: top score}}: the metrics of the scored splits (with `cam_predicted` and
    `cam_crf_predicted`, drawn with the predicted labels) and, where the data set has its true
    masks, of train; the classifier's highest class score per train image, for step 2's
    confidence filter.
    """
    require_inputs("step 1's CAM extraction", {f"the model {f.name}": f for f in model_files})
    cam_dir = step_dir / CAM_DIR
    wanted = cam_rows(rows, info.root)
    train_top_scores = write_cam_files(config, info, wanted, model_files, cam_dir)
    mask_splits = scored_splits(wanted, MASK_SCORED_SPLITS)
    totals = total_confusions(
        crf_stage(wanted, info, config.step1, step_dir, config.ray),
        scored_columns(CAM_METRICS, mask_splits),
        len(info.classes),
        Progress("[step1] dense CRF", len(wanted)),
    )
    return {
        "metrics": summaries_by_split(totals, mask_splits, info.classes),
        "train_top_scores": train_top_scores,
    }
