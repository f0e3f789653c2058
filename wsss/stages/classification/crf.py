"""Dense CRF (pydensecrf): the fully connected CRF of Krähenbühl & Koltun with a Gaussian
(smoothness) and a bilateral (appearance) pairwise term, on a hard label map as IRNet's
`crf_inference_label`: each label trusted with probability `gt_prob`; the result is argmax Q.
`label_refiner` hands it to `cam.confident_labels` and `cam.cam_masks` for one image.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from wsss.stages.classification.cam import LabelRefiner


class CRFParams(Protocol):
    """The CRF's settings (the config's `step1.crf`): pairwise weights and widths, mean-field
    iterations, and how far a hard label is trusted."""

    iterations: int
    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    gt_prob: float


def refine_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, config: CRFParams
) -> np.ndarray:
    """Refine a hard label map with a dense CRF, exactly as IRNet's `crf_inference_label`.

    Every pixel's label is trusted with probability `config.gt_prob`, the rest spread evenly
    over the other `n_labels - 1` labels; label 0 is an ordinary label (no "unsure" value).

    Args:
        image: uint8 [H, W, 3], RGB.
        labels: integer [H, W], values in [0, n_labels).
        n_labels: number of labels, >= 2.
        config: pairwise terms, iterations and `gt_prob`.

    Returns:
        [H, W] argmax of the CRF marginals, values in [0, n_labels), same dtype as `labels`.

    Raises:
        ValueError: wrong dtype or shape, shapes that do not match, labels out of range, or a
            label dtype too narrow for `n_labels - 1`.
    """
    image = _checked_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels must be [H, W] = {image.shape[:2]} of the image, got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer, got dtype {labels.dtype}")
    if n_labels < 2:
        raise ValueError(f"n_labels must be >= 2, got {n_labels}")
    if n_labels - 1 > np.iinfo(labels.dtype).max:
        raise ValueError(f"labels dtype {labels.dtype} cannot hold label {n_labels - 1}")
    if labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(
            f"labels must lie in [0, {n_labels}), got values in [{labels.min()}, {labels.max()}]"
        )
    unary = unary_from_labels(labels, n_labels, gt_prob=config.gt_prob, zero_unsure=False)
    marginals = _mean_field(image, unary, n_labels, config)
    return marginals.reshape(n_labels, *labels.shape).argmax(axis=0).astype(labels.dtype)


def _checked_image(image: np.ndarray) -> np.ndarray:
    """The image as pydensecrf needs it: C-contiguous, writable uint8 [H, W, 3]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be [H, W, 3] with H, W > 0, got shape {image.shape}")
    # pydensecrf takes the image as a writable memoryview; Ray's zero-copy batches are read-only.
    return np.require(image, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _mean_field(
    image: np.ndarray, unary: np.ndarray, n_labels: int, config: CRFParams
) -> np.ndarray:
    """float32 [n_labels, H*W] marginals after `config.iterations` mean-field steps."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=config.gauss_sxy, compat=config.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy,
        srgb=config.bilateral_srgb,
        rgbim=image,
        compat=config.bilateral_compat,
    )
    return np.asarray(crf.inference(config.iterations), dtype=np.float32)


def label_refiner(image: np.ndarray, config: CRFParams) -> LabelRefiner:
    """`refine_labels` on `image` as a `LabelRefiner`; a map with fewer than two labels (no
    class kept) has nothing to refine and comes back as it is."""

    def refine(labels: np.ndarray, n_labels: int) -> np.ndarray:
        return labels if n_labels < 2 else refine_labels(image, labels, n_labels, config)

    return refine
