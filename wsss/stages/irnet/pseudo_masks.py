"""Step 2's output: semantic pseudo masks from CAMs walked within IRNet's class boundaries.

Follows IRNet's ``make_sem_seg_labels``: only the image's classes are walked (there is no
background map during the walk); background enters afterwards as a constant score.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.stages.classification.cam import cam_to_mask, strided_size
from wsss.stages.irnet.model import FEATURE_STRIDE
from wsss.stages.irnet.path_index import INFERENCE_RADIUS
from wsss.stages.irnet.random_walk import propagate


def propagate_to_mask(
    cams: np.ndarray | torch.Tensor,
    class_indices: Sequence[int] | np.ndarray,
    boundary: np.ndarray | torch.Tensor,
    image_size: tuple[int, int],
    bg_threshold: float = 0.3,
    radius: int = INFERENCE_RADIUS,
    beta: float = 10.0,
    exp_times: int = 8,
) -> np.ndarray:
    """Pseudo mask of one image: each class's CAM spread within the class boundaries.

    Steps, as IRNet: random walk of the CAMs (masked by ``1 - boundary``) over the boundary
    map's affinities (:func:`~wsss.stages.irnet.random_walk.propagate`); bilinear upsampling ×4
    cropped to the image; division by the largest value over all classes and pixels (one
    global maximum, so a weaker class stays weaker); a constant background score
    ``bg_threshold`` (the paper's "IRNet thr."); argmax over [background, classes], ties going
    to background, then to the earlier class.

    Args:
        cams: float ``[C, h, w]`` >= 0 with ``h, w = ceil(H / 4), ceil(W / 4)``, normalised CAMs
            of the image's C kept classes (e.g. step 1's ``cams/<id>.npz``).
        class_indices: the C classes' indices in the dataset's class list (background first),
            i.e. their label values, each in [1, 254], in the order of ``cams``.
        boundary: float ``[h, w]`` in [0, 1], class-boundary probabilities
            (:func:`~wsss.stages.irnet.model.infer_boundary`); the walk runs on its device.
        image_size: ``(H, W)`` of the image.
        bg_threshold: background score in (0, 1); higher keeps less foreground.
        radius, beta, exp_times: random-walk settings, see ``propagate``.

    Returns:
        uint8 ``[H, W]``: 0 background, ``class_indices[c]`` where class c wins. All
        background when C = 0 or every walked map is zero.
    """
    indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
    boundary_tensor = torch.as_tensor(boundary, dtype=torch.float32)
    # The walk runs where the boundary map is (IRNet's device).
    cam_tensor = torch.as_tensor(cams, dtype=torch.float32, device=boundary_tensor.device)
    if cam_tensor.ndim != 3 or cam_tensor.shape[0] != indices.size:
        raise ValueError(
            f"expected cams [C, h, w] for {indices.size} classes, got {tuple(cam_tensor.shape)}"
        )
    if indices.size and indices.min() < 1:
        raise ValueError(f"class indices are label values >= 1 (0 is background), got {indices}")
    expected_size = strided_size(image_size, FEATURE_STRIDE)
    if tuple(cam_tensor.shape[1:]) != expected_size:
        raise ValueError(
            f"cams {tuple(cam_tensor.shape[1:])} are not at stride {FEATURE_STRIDE} of the image "
            f"{tuple(image_size)}: expected {expected_size}"
        )
    height, width = image_size
    if indices.size == 0:
        return np.zeros((height, width), dtype=np.uint8)
    walked = propagate(cam_tensor, boundary_tensor, radius, beta, exp_times)
    upsampled = F.interpolate(
        walked[:, None], scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False
    )[:, 0, :height, :width]
    peak = upsampled.max()
    # All-zero maps would divide to NaN; left at zero they lose to background everywhere.
    if peak > 0:
        upsampled = upsampled / peak
    return cam_to_mask(upsampled.cpu().numpy(), indices - 1, bg_threshold)
