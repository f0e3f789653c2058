"""Steps 1 and 3's training losses against numbers worked out by hand."""

import math

import pytest
import torch

from wsss.stages.classification.losses import multilabel_loss
from wsss.stages.labels import IGNORE_INDEX
from wsss.stages.segmentation.losses import segmentation_loss


def test_multilabel_loss_is_the_mean_binary_cross_entropy_over_classes():
    # -log(sigmoid(2)) = log(1 + e^-2) for the present class, -log(1 - sigmoid(-1)) =
    # log(1 + e^-1) for the absent one.
    loss = multilabel_loss(torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]]))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected)


def test_segmentation_loss_averages_over_the_pixels_that_are_not_ignored():
    # Pixel 0: logits (log 3, 0), class 0 -> -log(3/4); pixel 1: (0, 0), class 1 -> log 2;
    # pixel 2 is ignored whatever its logits.
    logits = torch.tensor([[[[math.log(3), 0.0, 9.0]], [[0.0, 0.0, -9.0]]]])
    masks = torch.tensor([[[0, 1, IGNORE_INDEX]]], dtype=torch.uint8)
    expected = (-math.log(3 / 4) + math.log(2)) / 2
    assert segmentation_loss(logits, masks).item() == pytest.approx(expected)


def test_losses_of_bfloat16_logits_are_float32_and_equal_those_of_the_same_values():
    logits = torch.tensor([[2.0, -1.0]], dtype=torch.bfloat16)
    loss = multilabel_loss(logits, torch.tensor([[1.0, 0.0]]))
    assert loss.dtype == torch.float32
    assert loss.item() == multilabel_loss(logits.float(), torch.tensor([[1.0, 0.0]])).item()
    pixels = torch.tensor([[[[0.5, 0.0]], [[0.0, 0.25]]]], dtype=torch.bfloat16)
    masks = torch.tensor([[[0, 1]]])
    loss = segmentation_loss(pixels, masks)
    assert loss.dtype == torch.float32
    assert loss.item() == segmentation_loss(pixels.float(), masks).item()
