"""The dense CRF (`wsss.stages.classification.crf`) as a Ray Data stage over images and class
probabilities or label maps.

`refine_dataset` runs either refinement over a Ray Dataset as parallel CPU tasks. An image the
CRF cannot refine (mismatched shapes, NaN scores, labels out of range, a pydensecrf error) is
logged and passed through unrefined with `crf_failed=True`, so one bad image never stops a
dataset.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import ray.data

from wsss.platform.config import CRFConfig
from wsss.stages.classification.crf import refine_labels, refine_probabilities

logger = logging.getLogger(__name__)

RefineMode = Literal["probabilities", "labels"]
DEFAULT_INPUT_COLUMNS: dict[str, str] = {"probabilities": "probs", "labels": "labels"}


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
    at most `concurrency` tasks at a time (default: as many as the CPUs allow). Moving float32
    marginals through the object store is most of what Ray adds to the CRF's own time
    (bench/crf.py measures it), so ask for the marginals (`argmax=False`) only where they are
    used.
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
