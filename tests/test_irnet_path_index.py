"""Path index, pair affinities and pair labels on small maps worked out by hand."""

import numpy as np
import pytest
import torch

from wsss.stages.irnet.affinity_labels import affinity_labels
from wsss.stages.irnet.path_index import PathIndex, boundary_to_affinity, search_paths

# Radius 2 searches (0,1), (1,-1), (1,0), (1,1) (squared length < 4); IRNet orders them by
# path length (2 for the straight ones, 4 for the diagonals whose path is the 2×2 block).
RADIUS_2_DIRECTIONS = [(0, 1), (1, 0), (1, -1), (1, 1)]

# On a 6×6 map, radius 2 keeps a margin of 1: sources are rows 0..4, columns 1..4.
SOURCES_6X6 = [1, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16, 19, 20, 21, 22, 25, 26, 27, 28]


def as_sets(paths: list[np.ndarray]) -> list[set[tuple[int, int]]]:
    return [{(int(y), int(x)) for y, x in path} for path in paths]


def grid(rows: str) -> np.ndarray:
    """A 5×4 grid of numbers over the sources of SOURCES_6X6, one text line per source row."""
    return np.array([[float(v) for v in line.split()] for line in rows.strip().splitlines()])


def test_radius_2_directions_and_paths():
    paths = search_paths(2)
    assert [tuple(path[0]) for path in paths] == RADIUS_2_DIRECTIONS
    assert as_sets(paths) == [
        {(0, 0), (0, 1)},
        {(0, 0), (1, 0)},
        {(0, 0), (0, -1), (1, -1), (1, 0)},
        {(0, 0), (0, 1), (1, 0), (1, 1)},
    ]
    assert all(tuple(path[-1]) == (0, 0) for path in paths)


def test_radius_3_paths_follow_the_segment():
    paths = {tuple(path[0]): path for path in search_paths(3)}
    assert list(paths) == [
        (0, 1), (1, 0),  # length 2
        (0, 2), (2, 0),  # 3
        (1, -1), (1, 1),  # 4
        (1, -2), (1, 2), (2, -1), (2, 1),  # 6
        (2, -2), (2, 2),  # 7
    ]  # fmt: skip
    # (2,2): |2x - 2y|² < 8 keeps |x - y| <= 1, so the far corners (0,2) and (2,0) are off it.
    assert as_sets([paths[(2, 2)]])[0] == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)}
    # (2,-1): (2x + y)² < 5 holds on the whole 3×2 box.
    assert as_sets([paths[(2, -1)]])[0] == {(0, -1), (0, 0), (1, -1), (1, 0), (2, -1), (2, 0)}
    assert as_sets([paths[(0, 2)]])[0] == {(0, 0), (0, 1), (0, 2)}


def test_pixels_exactly_one_away_are_off_the_path():
    (path,) = [p for p in search_paths(10) if tuple(p[0]) == (3, 4)]
    # |3x - 4y| < 5 row by row; (1,3) and (2,1) give exactly 5, distance 1, and are left out.
    assert as_sets([path])[0] == {
        (0, 0), (0, 1),
        (1, 0), (1, 1), (1, 2),
        (2, 2), (2, 3), (2, 4),
        (3, 3), (3, 4),
    }  # fmt: skip


def test_direction_counts():
    # Radius 5: 4 on row 0, then |dx| <= 4, 4, 3, 2 on rows 1..4 -> 4 + 9 + 9 + 7 + 5.
    assert len(search_paths(5)) == 34
    # Radius 10: 9 on row 0, then 19, 19, 19, 19, 17, 15, 15, 11, 9 on rows 1..9.
    assert len(search_paths(10)) == 152


def test_pair_indices_on_6x6():
    index = PathIndex(2, (6, 6))
    assert index.directions.tolist() == [list(d) for d in RADIUS_2_DIRECTIONS]
    assert index.src_indices.tolist() == SOURCES_6X6
    # Flat offsets of (0,1), (1,0), (1,-1), (1,1) on a 6-wide map: 1, 6, 5, 7.
    for row, offset in zip(index.dst_indices, [1, 6, 5, 7], strict=True):
        assert row.tolist() == [s + offset for s in SOURCES_6X6]
    assert [p.shape for p in index.path_indices] == [(2, 2, 20), (2, 4, 20)]
    # Source (2,3) = 15 is source number 10; towards (1,-1) its path is (3,2), (2,2), (3,3), (2,3).
    assert index.path_indices[1][0, :, 10].tolist() == [20, 14, 21, 15]


def test_map_too_small_for_radius():
    with pytest.raises(ValueError, match="too small"):
        PathIndex(5, (6, 6))


def test_boundary_to_affinity_on_6x6():
    boundary = torch.zeros(6, 6)
    boundary[2, 3] = 0.6
    boundary[4, 1] = 0.3
    affinity = boundary_to_affinity(boundary[None], PathIndex(2, (6, 6)))
    expected = {
        (0, 1): """
            1  1  1  1
            1  1  1  1
            1 .4 .4  1
            1  1  1  1
           .7  1  1  1""",
        (1, 0): """
            1  1  1  1
            1  1 .4  1
            1  1 .4  1
           .7  1  1  1
           .7  1  1  1""",
        (1, -1): """
            1  1  1  1
            1  1 .4 .4
            1  1 .4 .4
           .7 .7  1  1
           .7 .7  1  1""",
        (1, 1): """
            1  1  1  1
            1 .4 .4  1
            1 .4 .4  1
           .7  1  1  1
           .7  1  1  1""",
    }
    assert affinity.shape == (1, 4, 20)
    for k, direction in enumerate(RADIUS_2_DIRECTIONS):
        np.testing.assert_allclose(
            affinity[0, k].reshape(5, 4).numpy(), grid(expected[direction]), atol=1e-6
        )


def test_affinity_labels_on_6x6():
    u = 255
    label_map = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, u, 0, 2, 2],
            [0, 0, 0, 0, 2, 2],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    # b = both background, f = same class, n = different labels, - = touches an unsure pixel.
    expected = {
        (0, 1): ["bbbb", "ffnb", "ffnb", "--nf", "bbnf"],
        (1, 0): ["nnnb", "fffb", "n-nn", "b-bf", "bbbn"],
        (1, -1): ["bnnn", "nffn", "nn-b", "b-bn", "bbbn"],
        (1, 1): ["nnbb", "ffnb", "-nnn", "b-nf", "bbbn"],
    }
    labels = affinity_labels(label_map, PathIndex(2, (6, 6)))
    assert labels.background_positive.shape == (4, 20)
    assert labels.background_positive.dtype == np.float32
    for k, direction in enumerate(RADIUS_2_DIRECTIONS):
        codes = np.array([list(row) for row in expected[direction]]).reshape(-1)
        for mask, code in zip(labels, "bfn", strict=True):
            np.testing.assert_array_equal(mask[k], (codes == code).astype(np.float32))


def test_affinity_labels_keep_batch_dimension():
    label_maps = np.stack([np.zeros((6, 6), np.uint8), np.full((6, 6), 255, np.uint8)])
    labels = affinity_labels(label_maps, PathIndex(2, (6, 6)))
    assert labels.background_positive.shape == (2, 4, 20)
    assert labels.background_positive[0].all()
    assert not labels.background_positive[1].any()
