"""Pair labels for IRNet's training, from the confident-region label map of step 1."""

from typing import NamedTuple

import numpy as np

from wsss.stages.irnet.path_index import PathIndex

UNSURE_LABEL = 255


class AffinityLabels(NamedTuple):
    """Masks over the pairs of a :class:`PathIndex`, float32 ``[..., D, S]``, values 0 or 1.

    ``background_positive``: both pixels background; ``foreground_positive``: both pixels the same
    class; ``negative``: the two labels differ. Pairs touching an unsure pixel are in none of
    them.
    """

    background_positive: np.ndarray
    foreground_positive: np.ndarray
    negative: np.ndarray


def affinity_labels(
    label_map: np.ndarray, path_index: PathIndex, unsure_label: int = UNSURE_LABEL
) -> AffinityLabels:
    """Label every pair of ``path_index`` from a label map.

    Args:
        label_map: integer ``[..., height, width]`` at the path index's size; 0 = background,
            1..C = class, ``unsure_label`` = not confident.
        path_index: pairs to label.
        unsure_label: value marking pixels whose pairs are left out.

    Returns:
        :class:`AffinityLabels`, each float32 ``[..., D, S]``.
    """
    if label_map.shape[-2:] != path_index.size:
        raise ValueError(f"label map {label_map.shape[-2:]} != path index size {path_index.size}")
    flat = label_map.reshape(*label_map.shape[:-2], -1)
    src = flat[..., None, path_index.src_indices]
    dst = flat[..., path_index.dst_indices]
    sure = (src != unsure_label) & (dst != unsure_label)
    same = src == dst
    positive = same & sure
    return AffinityLabels(
        background_positive=(positive & (src == 0)).astype(np.float32),
        foreground_positive=(positive & (src != 0)).astype(np.float32),
        negative=(~same & sure).astype(np.float32),
    )
