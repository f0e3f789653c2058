"""Sparse random walk against IRNet's dense definition, and on a synthetic object."""

import numpy as np
import pytest
import torch

from wsss.stages.irnet.random_walk import propagate


def dense_propagate(
    cams: np.ndarray, boundary: np.ndarray, radius: int, beta: float, exp_times: int
) -> np.ndarray:
    """IRNet's propagate_to_edge written out from its definition, float64, O(N²) memory."""
    height, width = boundary.shape
    n_pixels = height * width
    affinity = np.eye(n_pixels)
    for y, x in np.ndindex(height, width):
        for dy in range(-radius + 1, radius):
            for dx in range(-radius + 1, radius):
                length_sq = dy * dy + dx * dx
                ty, tx = y + dy, x + dx
                if not (0 < length_sq < radius**2 and 0 <= ty < height and 0 <= tx < width):
                    continue
                # Pixels of the bounding box closer than one pixel to the segment's line.
                strongest = max(
                    boundary[py, px]
                    for py in range(min(y, ty), max(y, ty) + 1)
                    for px in range(min(x, tx), max(x, tx) + 1)
                    if (dy * (px - x) - dx * (py - y)) ** 2 < length_sq
                )
                affinity[y * width + x, ty * width + tx] = (1 - strongest) ** beta
    transition = affinity / affinity.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        transition = transition @ transition
    masked = (cams * (1 - boundary)).reshape(len(cams), n_pixels)
    return (masked @ transition).reshape(cams.shape)


def max_relative_error(result: np.ndarray, reference: np.ndarray) -> float:
    """Largest error of a class map relative to that map's largest value."""
    error = np.abs(result - reference).reshape(len(reference), -1).max(axis=1)
    return float((error / np.abs(reference).reshape(len(reference), -1).max(axis=1)).max())


@pytest.mark.parametrize(
    ("height", "width", "n_classes", "radius", "beta", "exp_times", "power"),
    [
        (6, 7, 2, 3, 10.0, 8, 3.0),
        (13, 11, 3, 5, 10.0, 8, 3.0),
        (20, 20, 2, 5, 10.0, 8, 1.0),
        (9, 16, 1, 4, 4.0, 5, 6.0),
    ],
)
def test_matches_dense_definition(height, width, n_classes, radius, beta, exp_times, power):
    rng = np.random.default_rng(height * width)
    cams = rng.random((n_classes, height, width)).astype(np.float32)
    # Powers of uniform noise give boundaries from mostly open (6) to mostly closed (1).
    boundary = (rng.random((height, width)) ** power).astype(np.float32)
    result = propagate(torch.from_numpy(cams), torch.from_numpy(boundary), radius, beta, exp_times)
    assert result.shape == cams.shape
    assert result.dtype == torch.float32
    reference = dense_propagate(
        cams.astype(np.float64), boundary.astype(np.float64), radius, beta, exp_times
    )
    assert max_relative_error(result.numpy().astype(np.float64), reference) <= 1e-4


def test_fills_object_and_stops_at_its_boundary():
    size, top, bottom = 32, 8, 24  # object: rows and columns [8, 24)
    middle = (top + bottom) // 2
    rng = np.random.default_rng(0)
    boundary = rng.uniform(0.0, 0.05, (size, size))
    ring = np.zeros((size, size), bool)
    ring[top - 1 : bottom + 1, top - 1 : bottom + 1] = True
    ring[top:bottom, top:bottom] = False
    boundary[ring] = 0.9
    cams = np.zeros((1, size, size))
    cams[0, top:bottom, top:middle] = 1.0  # the CAM found only the left half

    result = propagate(torch.from_numpy(cams), torch.from_numpy(boundary))[0].numpy()

    left = result[top:bottom, top:middle].mean()
    right = result[top:bottom, middle:bottom].mean()
    outside = result[~ring & ~np.pad(np.ones((16, 16), bool), top)]
    # Fully mixed, the object holds the mean of its masked CAM, about 0.49 everywhere.
    assert left == pytest.approx(0.49, abs=0.03)
    assert right == pytest.approx(0.49, abs=0.03)
    assert result[top:bottom, top:bottom].min() > 0.4
    assert outside.max() < 1e-6


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected cams"):
        propagate(torch.zeros(2, 8, 8), torch.zeros(8, 9))
