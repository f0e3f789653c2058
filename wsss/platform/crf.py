"""Dense CRF refinement (pydensecrf) of class probabilities and label maps, and its Ray Data stage.

Both refinements use the fully connected CRF of Krähenbühl & Koltun with a Gaussian
(smoothness) and a bilateral (appearance) pairwise term whose parameters come from `CRFConfig`:

- `refine_probabilities`: unary = -log(probabilities), as PSA's `crf_inference`; returns the
  mean-field marginals Q (or, with `argmax=True` in the batch/dataset functions, argmax Q).
- `refine_labels`: unary from a hard label map trusted with probability `gt_prob`, as IRNet's
  `crf_inference_label`; returns argmax Q.

`refine_dataset` runs either over a Ray Dataset as parallel CPU tasks. An image the CRF cannot
refine (mismatched shapes, NaN scores, labels out of range, a pydensecrf error) is logged and
passed through unrefined with `crf_failed=True`, so one bad image never stops a dataset.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pydensecrf.densecrf as dcrf
import ray.data
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from wsss.platform.config import CRFConfig

logger = logging.getLogger(__name__)

RefineMode = Literal["probabilities", "labels"]
DEFAULT_INPUT_COLUMNS: dict[str, str] = {"probabilities": "probs", "labels": "labels"}


def refine_probabilities(image: np.ndarray, probs: np.ndarray, config: CRFConfig) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF.

    Args:
        image: uint8 [H, W, 3], RGB.
        probs: float [C, H, W], finite and >= 0, summing to 1 over C. Values are clipped to
            at least 1e-5 before taking the log, so zeros are allowed.
        config: pairwise weights/widths and the number of mean-field iterations.

    Returns:
        float32 [C, H, W]: the CRF marginals, in [0, 1] and summing to 1 over C.

    Raises:
        ValueError: wrong dtype or shape, shapes that do not match, or non-finite/negative
            probabilities.
    """
    image = _checked_image(image)
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs must be [C, H, W] with H, W = {image.shape[:2]} of the image, "
            f"got shape {probs.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    if not np.isfinite(probs).all():
        raise ValueError("probs hold NaN or infinite values")
    if (probs < 0).any():
        raise ValueError(f"probs must be >= 0, found a minimum of {probs.min()}")
    n_labels, height, width = probs.shape
    unary = np.ascontiguousarray(unary_from_softmax(probs))
    return _mean_field(image, unary, n_labels, config).reshape(n_labels, height, width)


def refine_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, config: CRFConfig
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
    image: np.ndarray, unary: np.ndarray, n_labels: int, config: CRFConfig
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


def refine_batch(
    batch: dict[str, np.ndarray],
    config: CRFConfig,
    mode: RefineMode = "probabilities",
    *,
    n_labels: int | None = None,
    image_column: str = "image",
    input_column: str | None = None,
    output_column: str | None = None,
    argmax: bool = False,
) -> dict[str, Any]:
    """Refine every row of a NumPy batch; the `map_batches` function of `refine_dataset`.

    Args:
        batch: column name -> array with one entry per row. `image_column` holds uint8
            [H, W, 3] images; `input_column` holds float [C, H, W] probabilities (mode
            "probabilities") or integer [H, W] label maps (mode "labels"). An `id` column, if
            present, names rows in failure logs.
        config: CRF settings.
        mode: which refinement to run.
        n_labels: number of labels; required in mode "labels".
        image_column: column of images.
        input_column: column to refine; default "probs" or "labels" by mode.
        output_column: column for the result; default `input_column` (refined in place).
        argmax: in mode "probabilities", return argmax Q as labels (uint8 up to 256 labels)
            instead of the float32 marginals, which are 4*C times larger.

    Returns:
        The batch with `output_column` set (float32 [C, H, W] marginals, or [H, W] labels: in
        the input's dtype in mode "labels", the smallest unsigned dtype for C labels with
        `argmax`), plus `crf_failed` (bool [B]) and `crf_error` (str [B], "" where the row was
        refined). Failed rows keep their input, converted like a refined row (probabilities to
        float32, or to their argmax) so the column's dtype stays uniform.
    """
    _check_mode(mode, n_labels)
    input_column = input_column or DEFAULT_INPUT_COLUMNS[mode]
    output_column = output_column or input_column
    missing = {image_column, input_column} - set(batch)
    if missing:
        raise ValueError(f"batch lacks column(s) {sorted(missing)}; it has {sorted(batch)}")

    images, inputs = batch[image_column], batch[input_column]
    row_ids = batch.get("id")
    outputs: list[np.ndarray] = []
    errors: list[str] = []
    for index in range(len(images)):
        try:
            if mode == "probabilities":
                refined = refine_probabilities(images[index], inputs[index], config)
                refined = _as_labels(refined) if argmax else refined
            else:
                refined = refine_labels(images[index], inputs[index], n_labels, config)
            errors.append("")
        except Exception as exc:  # one unrefinable image must not stop the whole dataset
            refined = _unrefined(inputs[index], mode, argmax)
            errors.append(f"{type(exc).__name__}: {exc}")
            row = f"id {row_ids[index]}" if row_ids is not None else f"batch row {index}"
            logger.warning("dense CRF failed for %s, passed through unrefined: %s", row, errors[-1])
        outputs.append(refined)

    return {
        **batch,
        output_column: _as_column(outputs),
        "crf_failed": np.array([bool(error) for error in errors], dtype=bool),
        "crf_error": np.array(errors, dtype=str),
    }


def _check_mode(mode: RefineMode, n_labels: int | None) -> None:
    if mode not in DEFAULT_INPUT_COLUMNS:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(DEFAULT_INPUT_COLUMNS)}")
    if mode == "labels" and n_labels is None:
        raise ValueError('mode "labels" needs n_labels')


def _unrefined(value: Any, mode: RefineMode, argmax: bool) -> np.ndarray:
    value = np.asarray(value)
    if mode == "probabilities" and np.issubdtype(value.dtype, np.floating):
        return _as_labels(value) if argmax and value.ndim == 3 else value.astype(np.float32)
    return value


def _as_labels(marginals: np.ndarray) -> np.ndarray:
    """argmax over the first axis of [C, H, W], in the smallest unsigned dtype for C labels."""
    return marginals.argmax(axis=0).astype(np.min_scalar_type(len(marginals) - 1))


def _as_column(values: list[np.ndarray]) -> np.ndarray:
    """One array [B, ...] when all rows share shape and dtype, else an object array of rows."""
    if all(v.shape == values[0].shape and v.dtype == values[0].dtype for v in values):
        return np.stack(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def refine_dataset(
    dataset: ray.data.Dataset,
    config: CRFConfig,
    mode: RefineMode = "probabilities",
    *,
    n_labels: int | None = None,
    image_column: str = "image",
    input_column: str | None = None,
    output_column: str | None = None,
    argmax: bool = False,
    batch_size: int = 8,
    num_cpus: float = 1.0,
    concurrency: int | None = None,
) -> ray.data.Dataset:
    """The dataset with every row refined by the dense CRF, as parallel Ray tasks (lazy).

    Rows and columns are those of `refine_batch`. Each task refines `batch_size` rows on
    `num_cpus` CPUs (pydensecrf is single-threaded: 1 is right unless memory is the limit), with
    at most `concurrency` tasks at a time (default: as many as the CPUs allow). Tasks should run
    for seconds (a 320x320 row takes about 0.4 s, the default 8 rows about 3 s). Moving float32
    marginals through the object store is most of what Ray adds to the CRF's own time (measured
    by bench/crf.py on one CPU, 320x320 rows, 21 labels: 11% slower than a plain loop with
    marginals, 4-5% with `argmax`), so ask for the marginals only where they are used.
    """
    _check_mode(mode, n_labels)
    return dataset.map_batches(
        refine_batch,
        batch_format="numpy",
        batch_size=batch_size,
        zero_copy_batch=True,
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=concurrency) if concurrency else None,
        fn_kwargs={
            "config": config,
            "mode": mode,
            "n_labels": n_labels,
            "image_column": image_column,
            "input_column": input_column,
            "output_column": output_column,
            "argmax": argmax,
        },
    )
