"""Class activation maps: multi-scale extraction, normalisation, Grad-CAM, and label maps.

Extraction and normalisation follow IRNet's `step/make_cam.py`; `cam_to_mask` and
`cam_masks` follow `step/eval_cam.py` and `confident_labels` follows `step/cam_to_ir_label.py`,
with the refinement (the dense CRF of `wsss.stages.classification.crf`) passed in.

Label-map convention (all functions here): 0 is background, class index k (0-based, into the
classifier's K outputs) is label k + 1, and 255 marks unsure pixels that training ignores.
Label maps are uint8, so class indices must be below 254.
"""

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

UNSURE_LABEL = 255

# refine(labels, n_labels) -> labels: labels are int64 [h, w] in 0..n_labels-1, 0 = background,
# i = the i-th kept class; returns a refined map of the same shape and range (e.g. a dense CRF).
LabelRefiner = Callable[[np.ndarray, int], np.ndarray]


class CamModel(Protocol):
    """Anything with `cam(x: [B, C, H, W]) -> [B, K, h, w]`, e.g. a CamClassifier."""

    def cam(self, x: Tensor) -> Tensor: ...


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(ceil(H / stride), ceil(W / stride)): the map size IRNet uses for stride-`stride` CAMs."""
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


@torch.no_grad()
def multiscale_cam(
    model: CamModel,
    image: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    stride: int = 4,
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Multi-scale, flip-augmented CAMs of one image, summed (IRNet make_cam).

    image: normalised float [C, H, W] on the model's device. For each scale the image is
    resized to (round(H*s), round(W*s)), bilinear and antialiased (IRNet rescales the uint8
    image bicubically with antialiasing before normalising; the sizes match, the interpolation
    differs slightly), run together with its horizontal flip, and each pass's CAM goes through
    a ReLU before the flipped one is flipped back and the two are added (IRNet's CAM.forward).
    Every scale's map is then resized bilinearly to the common size and the scales are summed.

    The common size is `output_size` if given, else `strided_size((H, W), stride)`. IRNet's
    image-resolution maps instead upsample to a multiple of the network stride and crop; direct
    resizing used here differs from that by less than one feature cell at the bottom/right edge.

    Returns float [K, h, w], >= 0, unnormalised (see `normalise_cams`). Runs the model in
    whatever mode it is in; call `model.eval()` first.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales must not be empty")
    height, width = image.shape[-2:]
    target_size = output_size if output_size is not None else strided_size((height, width), stride)
    per_scale = []
    for scale in scales:
        batch = image.unsqueeze(0)
        if scale != 1.0:
            scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            batch = F.interpolate(
                batch, size=scaled_size, mode="bilinear", align_corners=False, antialias=True
            )
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        cams = F.relu(model.cam(batch))
        cams = cams[:1] + cams[1:].flip(-1) if flip else cams
        per_scale.append(
            F.interpolate(cams, size=target_size, mode="bilinear", align_corners=False)[0]
        )
    return torch.stack(per_scale).sum(dim=0)


def normalise_cams(
    cams: Tensor, mode: Literal["per_class", "global"] = "per_class", eps: float = 1e-5
) -> Tensor:
    """Scale non-negative CAMs [K, h, w] into [0, 1).

    "per_class" divides each map by its own maximum + eps (IRNet), so every class peaks near 1;
    "global" divides all maps by the overall maximum + eps, keeping the classes' relative
    strengths. Returns a new tensor of the same shape and dtype.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be [K, h, w], got shape {tuple(cams.shape)}")
    if mode == "per_class":
        return cams / (cams.amax(dim=(1, 2), keepdim=True) + eps)
    if mode == "global":
        return cams / (cams.max() + eps)
    raise ValueError(f"mode must be 'per_class' or 'global', got {mode!r}")


def grad_cam(model: nn.Module, image: Tensor, target_layer_name: str, class_index: int) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of one class on one named layer.

    image: normalised float [C, H, W]; target_layer_name: a module path from
    `model.named_modules()`, e.g. "features.28" (conv5_3 of vgg16_oaa) or "features.layer4".
    The layer's output A [C', h, w] is weighted per channel by the spatial mean of
    d logit[class_index] / dA, summed over channels and passed through a ReLU.

    Returns float [h, w] >= 0 at the layer's resolution, unnormalised, detached. Parameter
    gradients are not touched. For a GAP + linear head on the last feature map this is
    relu(CAM) / (h * w).
    """
    modules = dict(model.named_modules())
    modules.pop("", None)
    if target_layer_name not in modules:
        raise ValueError(f"unknown layer {target_layer_name!r}; available: {', '.join(modules)}")
    captured: list[Tensor] = []

    def capture(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {target_layer_name!r} does not output a single tensor")
        captured.append(output)
        # A following in-place op (e.g. ReLU(inplace=True)) would otherwise overwrite the
        # activations and the gradient would be taken after it.
        return output.clone()

    handle = modules[target_layer_name].register_forward_hook(capture)
    try:
        with torch.enable_grad():
            # Gradients must reach the layer even when the layers before it are frozen.
            inputs = image.unsqueeze(0).detach().requires_grad_(True)
            logit = model(inputs)[0, class_index]
            (gradient,) = torch.autograd.grad(logit, captured[-1])
    finally:
        handle.remove()
    activations = captured[-1][0].detach()
    channel_weights = gradient[0].mean(dim=(1, 2), keepdim=True)
    return F.relu((channel_weights * activations).sum(dim=0))


def _class_keys(class_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 [1 + n]: compact index -> label (0 -> background, i + 1 -> class_indices[i] + 1)."""
    indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= UNSURE_LABEL - 1):
        raise ValueError(
            f"class indices must lie in [0, {UNSURE_LABEL - 1}) to fit uint8 labels below "
            f"{UNSURE_LABEL}, got {indices.tolist()}"
        )
    return np.concatenate([[0], indices + 1]).astype(np.uint8)


def _argmax_with_background(cams: np.ndarray, background_score: float) -> np.ndarray:
    """int64 [h, w]: 0 where no map exceeds `background_score`, else 1 + the strongest map.

    Ties go to background, then to the earlier class (first maximum), as np.argmax in IRNet.
    """
    if cams.ndim != 3:
        raise ValueError(f"cams must be [n, h, w], got shape {cams.shape}")
    background = np.full((1, *cams.shape[1:]), background_score, dtype=cams.dtype)
    return np.argmax(np.concatenate([background, cams]), axis=0)


def cam_to_mask(
    cams: np.ndarray, class_indices: Sequence[int] | np.ndarray, bg_threshold: float = 0.15
) -> np.ndarray:
    """Label map from normalised CAMs, background where no class reaches the threshold.

    cams: float [n, h, w] in [0, 1], the maps of the n classes in `class_indices` (0-based), in
    that order. As IRNet's eval_cam: background scores the constant `bg_threshold` (IRNet's
    default 0.15) and each pixel takes the argmax over [background, cams]. Returns uint8
    [h, w]: 0 background, k + 1 for class k.
    """
    keys = _class_keys(class_indices)
    if cams.shape[0] != keys.size - 1:
        raise ValueError(f"{cams.shape[0]} maps for {keys.size - 1} class indices")
    return keys[_argmax_with_background(cams, bg_threshold)]


def cam_masks(
    cams: np.ndarray,
    class_indices: Sequence[int] | np.ndarray,
    bg_threshold: float,
    refine: LabelRefiner,
) -> tuple[np.ndarray, np.ndarray]:
    """The `cam_to_mask` label map of normalised CAMs and its refinement by `refine`, which
    receives the compact map (0 = background, i = the i-th class of `class_indices`) and the
    number of labels, as in `confident_labels`. Returns two uint8 [h, w] maps, 0 background,
    k + 1 for class k."""
    keys = _class_keys(class_indices)
    if cams.shape[0] != keys.size - 1:
        raise ValueError(f"{cams.shape[0]} maps for {keys.size - 1} class indices")
    compact = _argmax_with_background(cams, bg_threshold)
    return keys[compact], keys[refine(compact, keys.size)]


def upsample_cams(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [n, H, W]: CAMs [n, h, w] resized bilinearly (corners not aligned) to `size`, as
    IRNet's eval_cam scores stride-4 CAMs at image resolution."""
    if cams.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    resized = F.interpolate(
        torch.from_numpy(cams)[None], size=size, mode="bilinear", align_corners=False
    )
    return resized[0].numpy()


def ir_labels(fg_labels: np.ndarray, bg_labels: np.ndarray) -> np.ndarray:
    """Combine the two confidence label maps into IRNet training labels (cam_to_ir_label).

    fg_labels: labels made with the high (foreground) threshold; bg_labels: with the low
    (background) threshold; both uint8-range integer [h, w], 0 = background. IRNet's rule:
    a pixel is the class of `fg_labels` wherever that is foreground (whatever `bg_labels`
    says); background (0) where both maps say background; unsure (255) where only `fg_labels`
    says background. Returns uint8 [h, w].
    """
    if fg_labels.shape != bg_labels.shape:
        raise ValueError(f"label maps differ in shape: {fg_labels.shape} vs {bg_labels.shape}")
    labels = fg_labels.astype(np.uint8)
    fg_background = fg_labels == 0
    labels[fg_background] = UNSURE_LABEL
    labels[fg_background & (bg_labels == 0)] = 0
    return labels


def confident_labels(
    cams: np.ndarray,
    class_indices: Sequence[int] | np.ndarray,
    conf_fg_thres: float = 0.30,
    conf_bg_thres: float = 0.05,
    refine: LabelRefiner | None = None,
) -> np.ndarray:
    """IRNet training labels from normalised CAMs: confident fg, confident bg, 255 between.

    cams: float [n, h, w] in [0, 1] for the 0-based `class_indices`, in that order. Two label
    maps are made as in `cam_to_mask`, with background scoring `conf_fg_thres` (only strong
    activations become foreground) and `conf_bg_thres` (only very weak ones stay background).
    IRNet runs a dense CRF on each; pass it as `refine`, which receives the compact map
    (0 = background, i = the i-th kept class) and the number of labels n + 1, exactly what
    IRNet gives its CRF. The two maps are combined by `ir_labels`. Returns uint8 [h, w].
    """
    if not conf_fg_thres > conf_bg_thres:
        raise ValueError(
            f"conf_fg_thres ({conf_fg_thres}) must exceed conf_bg_thres ({conf_bg_thres}); "
            "otherwise the unsure band between them is empty"
        )
    keys = _class_keys(class_indices)
    if cams.shape[0] != keys.size - 1:
        raise ValueError(f"{cams.shape[0]} maps for {keys.size - 1} class indices")
    maps = []
    for threshold in (conf_fg_thres, conf_bg_thres):
        compact = _argmax_with_background(cams, threshold)
        if refine is not None:
            compact = refine(compact, keys.size)
        maps.append(keys[compact])
    return ir_labels(*maps)
