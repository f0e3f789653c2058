"""IRNet's losses on a 3×3 map with radius 2, worked out by hand.

PathIndex(2, (3, 3)) has two sources, pixels 1 = (0,1) and 4 = (1,1), and the directions
(0,1), (1,0), (1,-1), (1,1); pair (direction d, source s) is entry [0, d, s] below.
"""

import math

import numpy as np
import pytest
import torch

from wsss.stages.irnet.affinity_labels import AffinityLabels
from wsss.stages.irnet.losses import (
    affinity_loss,
    displacement_loss,
    irnet_loss,
    loss_on_ir_labels,
    pair_displacement,
)
from wsss.stages.irnet.path_index import PathIndex, boundary_to_affinity

EPS = 1e-5


def mask(*pairs: tuple[int, int]) -> np.ndarray:
    out = np.zeros((1, 4, 2), np.float32)
    for direction, source in pairs:
        out[0, direction, source] = 1
    return out


@pytest.fixture
def index() -> PathIndex:
    return PathIndex(2, (3, 3))


@pytest.fixture
def labels() -> AffinityLabels:
    return AffinityLabels(
        background_positive=mask((2, 0)),  # 1 -> 3
        foreground_positive=mask((0, 0), (1, 1)),  # 1 -> 2, 4 -> 7
        negative=mask((3, 0)),  # 1 -> 5
    )


@pytest.fixture
def affinity() -> torch.Tensor:
    # 0.9 on unlabelled pairs: they must not count.
    values = torch.full((1, 4, 2), 0.9)
    values[0, 2, 0] = 0.5
    values[0, 0, 0] = 1.0
    values[0, 1, 1] = 0.25
    values[0, 3, 0] = 0.75
    return values


@pytest.fixture
def displacement() -> torch.Tensor:
    field = torch.zeros(1, 2, 3, 3)
    field[0, :, 0, 2] = torch.tensor([0.0, -1.0])  # pixel 2
    field[0, :, 1, 0] = torch.tensor([0.5, 0.5])  # pixel 3
    field[0, :, 1, 2] = torch.tensor([3.0, 3.0])  # pixel 5, only on the negative pair
    return field


def expected_affinity_loss() -> float:
    background = -math.log(0.5 + EPS) / (1 + EPS)
    foreground = (-math.log(1 + EPS) - math.log(0.25 + EPS)) / (2 + EPS)
    negative = -math.log(1 + EPS - 0.75) / (1 + EPS)
    return ((background + foreground) / 2 + negative) / 2


def expected_displacement_loss() -> float:
    # Foreground: 1->2 differ by (0,0)-(0,-1) = (0,1) = its offset, error 0; 4->7 differ by
    # (0,0) where (1,0) is expected, error 1. Background: 1->3 differ by (-0.5,-0.5), error 1.
    foreground = (0 + 1) / (2 * 2 + EPS)
    background = 1 / (2 * 1 + EPS)
    return (foreground + background) / 2


def test_hand_numbers_are_what_the_formulas_give():
    assert expected_affinity_loss() == pytest.approx(1.03968, abs=1e-5)
    assert expected_displacement_loss() == pytest.approx(0.375, abs=1e-5)


def test_affinity_loss(affinity, labels):
    loss = affinity_loss(affinity, labels)
    assert loss.item() == pytest.approx(expected_affinity_loss(), rel=1e-6)


def test_pair_displacement(displacement, index):
    pairs = pair_displacement(displacement, index)
    assert pairs.shape == (1, 2, 4, 2)
    assert pairs[0, :, 0, 0].tolist() == [0.0, 1.0]  # 1 -> 2
    assert pairs[0, :, 2, 0].tolist() == [-0.5, -0.5]  # 1 -> 3
    assert pairs[0, :, 3, 0].tolist() == [-3.0, -3.0]  # 1 -> 5


def test_displacement_loss(displacement, labels, index):
    loss = displacement_loss(displacement, labels, index)
    assert loss.item() == pytest.approx(expected_displacement_loss(), rel=1e-6)


def test_irnet_loss_is_the_sum(affinity, displacement, labels, index):
    loss = irnet_loss(affinity, displacement, labels, index)
    expected = expected_affinity_loss() + expected_displacement_loss()
    assert loss.total.item() == pytest.approx(expected, rel=1e-6)
    assert loss.affinity.item() == pytest.approx(expected_affinity_loss(), rel=1e-6)
    assert loss.displacement.item() == pytest.approx(expected_displacement_loss(), rel=1e-6)


def test_negative_pair_pushes_boundary_up_on_its_path(labels, index):
    # Distinct values, so each path has a single strongest pixel to take the gradient.
    boundary = (torch.arange(9.0) / 10).reshape(1, 3, 3).requires_grad_()
    affinity_loss(boundary_to_affinity(boundary, index), labels).backward()
    # Pixel 5 is the strongest on the path of the negative pair 1 -> 5 (pixels 1, 2, 4, 5) and
    # on no other labelled path: raising it must lower the loss.
    assert boundary.grad[0, 1, 2] < 0
    # Pixel 6 is on no labelled path.
    assert boundary.grad[0, 2, 0] == 0


def test_the_loss_of_bfloat16_outputs_is_computed_in_float32():
    """The 3x3 map, its left column background and the rest class 1: of each source's four
    pairs the one down-left is negative, the other three are foreground positives. A boundary
    logit of -30 gives every pair affinity 1, so a negative pair costs -log(1 + EPS - 1) =
    -log(EPS) in float32, and log(0) in bfloat16, where 1 + EPS is 1."""
    ir_labels = np.ones((1, 12, 12), np.uint8)
    ir_labels[:, :, :4] = 0
    boundary = torch.full((1, 1, 3, 3), -30.0, dtype=torch.bfloat16)
    displacement = torch.zeros((1, 2, 3, 3), dtype=torch.bfloat16)
    loss = loss_on_ir_labels(boundary, displacement, ir_labels, radius=2)
    assert loss.total.dtype == torch.float32
    # ((background + foreground) / 2 + negative) / 2, with no background pair.
    expected = (-math.log(1 + EPS) / 2 - math.log(EPS)) / 2
    assert loss.affinity.item() == pytest.approx(expected, rel=1e-3)
    same_in_float32 = loss_on_ir_labels(boundary.float(), displacement.float(), ir_labels, 2)
    assert loss.total.item() == same_in_float32.total.item()
