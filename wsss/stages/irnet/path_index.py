"""Pixel pairs within a search radius and the pixels on the path between them (IRNet).

IRNet relates every pixel to the pixels within a radius: a pair's affinity is
``1 - max(boundary on the path between them)``. Only half of the disc is searched
(destination below, or on the same row to the right), so each unordered pair appears once.
"""

from typing import Final

import numpy as np
import torch

TRAIN_RADIUS: Final = 10
INFERENCE_RADIUS: Final = 5


def search_paths(radius: int) -> list[np.ndarray]:
    """Search directions within ``radius`` and the offsets of the pixels on each path.

    Directions are the offsets ``(dy, dx)`` with ``0 < dy² + dx² < radius²`` and either
    ``dy > 0`` or ``dy == 0, dx > 0``. A pixel ``(y, x)`` of the bounding box spanned by the
    source ``(0, 0)`` and the destination ``(dy, dx)`` is on the path when its distance to the
    line through both is below one pixel: ``(dy*x - dx*y)² < dy² + dx²``.

    Returns one int64 array ``[L, 2]`` of ``(y, x)`` offsets per direction, destination first
    and source last, ordered as IRNet orders them: by path length ``L``, then by ``(dy, dx)``.
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2 to have any direction, got {radius}")
    directions = [(0, dx) for dx in range(1, radius)] + [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-radius + 1, radius)
        if dy * dy + dx * dx < radius * radius
    ]
    paths = []
    for dy, dx in directions:
        length_sq = dy * dy + dx * dx
        on_path = [
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 < length_sq
        ]
        # Farthest first puts the destination in row 0, where the pair index reads it.
        on_path.sort(key=lambda p: -abs(p[0]) - abs(p[1]))
        paths.append(np.array(on_path, dtype=np.int64))
    # A stable sort keeps (dy, dx) order within a length, which fixes IRNet's direction order.
    return sorted(paths, key=len)


class PathIndex:
    """Flat pixel indices of the searched pairs on an ``height × width`` map, as IRNet builds them.

    Sources are the pixels from which every direction stays inside the map: rows
    ``[0, height - (radius - 1))``, columns ``[radius - 1, width - (radius - 1))``, in raster
    order. All indices index the row-major flattened map.

    Attributes:
        radius: search radius (int, >= 2).
        size: ``(height, width)`` of the map.
        directions: int64 ``[D, 2]``, ``(dy, dx)`` of each direction.
        src_indices: int64 ``[S]``, flat index of each source pixel.
        dst_indices: int64 ``[D, S]``, flat index of the destination of each pair.
        path_indices: one int64 array ``[D_L, L, S]`` per path length ``L`` (ascending); the
            groups concatenated along axis 0 follow ``directions``; ``[:, 0]`` is the destination.
    """

    def __init__(self, radius: int, size: tuple[int, int]) -> None:
        height, width = size
        margin = radius - 1
        cropped_height, cropped_width = height - margin, width - 2 * margin
        if cropped_height < 1 or cropped_width < 1:
            raise ValueError(f"map {size} too small for radius {radius}")
        self.radius = radius
        self.size = (height, width)

        flat = np.arange(height * width, dtype=np.int64).reshape(height, width)

        def shifted(dy: int, dx: int) -> np.ndarray:
            rows = slice(dy, dy + cropped_height)
            cols = slice(margin + dx, margin + dx + cropped_width)
            return flat[rows, cols].reshape(-1)

        paths = search_paths(radius)
        self.directions = np.stack([path[0] for path in paths])
        self.src_indices = shifted(0, 0)
        self.dst_indices = np.stack([shifted(dy, dx) for dy, dx in self.directions])
        self.path_indices = [
            np.stack([[shifted(y, x) for y, x in path] for path in paths if len(path) == length])
            for length in sorted({len(path) for path in paths})
        ]


def boundary_to_affinity(boundary: torch.Tensor, path_index: PathIndex) -> torch.Tensor:
    """Affinity of each searched pair: one minus the strongest boundary on its path.

    Args:
        boundary: float ``[B, height, width]`` (or ``[B, height * width]``), values in [0, 1].
        path_index: pairs for a map of the same size.

    Returns:
        float ``[B, D, S]`` in [0, 1], ordered as ``path_index.dst_indices``; differentiable.
    """
    flat = boundary.reshape(boundary.shape[0], -1)
    per_length = []
    for indices in path_index.path_indices:
        index = torch.as_tensor(indices, device=flat.device)
        on_path = flat[:, index.reshape(-1)].reshape(flat.shape[0], *index.shape)
        per_length.append(1 - on_path.max(dim=2).values)
    return torch.cat(per_length, dim=1)
