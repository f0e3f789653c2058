"""The three steps wired to Ray Data and Ray Train; each reads the previous step's artifacts."""

import ray.data

from wsss.platform.metrics import ConfusionMatrix


def total_confusions(
    dataset: ray.data.Dataset, columns: list[str], num_classes: int
) -> dict[str, ConfusionMatrix]:
    """Sum per-batch confusion matrices (flattened [1, K*K] rows in `columns`) over a dataset.

    Scoring tasks return their batch's counts instead of per-pixel predictions, so only
    K*K numbers per batch travel to the driver.
    """
    totals = {column: ConfusionMatrix(num_classes) for column in columns}
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for column, matrix in totals.items():
            matrix.counts += batch[column].sum(axis=0).reshape(matrix.counts.shape)
    return totals
