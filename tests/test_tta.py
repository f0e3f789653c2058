"""TTA: the mean of flip × scale passes, worked out by hand on models with known logits."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.stages.segmentation.model import create_segmentation_model
from wsss.stages.segmentation.tta import predict_labels, tta_probabilities


class ColumnRampModel(nn.Module):
    """Logits [channel 0 of the input, column index]: class 1 grows to the right."""

    def forward(self, images: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        ramp = torch.arange(width, dtype=images.dtype).expand(batch, 1, height, width)
        return torch.cat([images[:, :1], ramp], dim=1)


class HeightModel(nn.Module):
    """Logits [0, input height / 4] everywhere: each scale gives a different answer."""

    def forward(self, images: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        return torch.stack(
            [torch.zeros(batch, height, width), torch.full((batch, height, width), height / 4)],
            dim=1,
        )


class PointwiseModel(nn.Module):
    """A fixed 1×1 conv; with `divisible_by`, refuses other sizes as DeepLabV3+ does."""

    def __init__(self, divisible_by: int = 1) -> None:
        super().__init__()
        self.divisible_by = divisible_by
        self.conv = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        if any(side % self.divisible_by for side in images.shape[-2:]):
            raise RuntimeError(f"sides {tuple(images.shape[-2:])} not divisible")
        return self.conv(images)


def test_flip_averages_the_pass_and_its_mirror():
    images = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 2.0, -1.0, 1.0]]).expand(1, 3, 2, 4)
    model = ColumnRampModel().eval()
    columns = torch.arange(4.0)
    content = images[0, 0]
    # Softmax of [a, b] gives class 1 sigmoid(b - a). The mirrored pass sees flipped content
    # but the same ramp; flipped back, its class-1 logit at column j is 3 - j.
    expected = (torch.sigmoid(columns - content) + torch.sigmoid(3 - columns - content)) / 2
    probabilities = tta_probabilities(model, images, scales=(1.0,), flip=True, size_multiple=1)
    torch.testing.assert_close(probabilities[0, 1], expected)
    torch.testing.assert_close(probabilities[0, 0], 1 - expected)


def test_scales_are_averaged_with_equal_weight_at_input_size():
    images = torch.randn(2, 3, 8, 8)
    probabilities = tta_probabilities(
        HeightModel().eval(), images, scales=(0.5, 1.0, 2.0), flip=False, size_multiple=1
    )
    # Heights 4, 8 and 16 give class-1 logits 1, 2 and 4:
    # (sigmoid(1) + sigmoid(2) + sigmoid(4)) / 3 = (0.7310586 + 0.8807971 + 0.9820138) / 3.
    expected = torch.tensor(0.8646232)
    assert probabilities.shape == (2, 2, 8, 8)
    torch.testing.assert_close(probabilities[:, 1], expected.expand(2, 8, 8))


def test_result_is_the_mean_of_each_pass_resized_back():
    torch.manual_seed(0)
    images = torch.randn(1, 3, 8, 12)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), ColumnRampModel()).eval()

    def resize(tensor: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)

    with torch.no_grad():
        passes = []
        for size in [(4, 6), (16, 24)]:
            scaled = resize(images, size)
            passes.append(resize(model(scaled).softmax(1), (8, 12)))
            passes.append(resize(model(scaled.flip(-1)).softmax(1).flip(-1), (8, 12)))
    probabilities = tta_probabilities(model, images, scales=(0.5, 2.0), flip=True, size_multiple=1)
    torch.testing.assert_close(probabilities, torch.stack(passes).mean(0))


def test_one_scale_without_flip_is_the_softmax_of_one_pass():
    torch.manual_seed(0)
    model = create_segmentation_model("resnet18", 3).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images).softmax(dim=1)
    probabilities = tta_probabilities(model, images, scales=(1.0,), flip=False)
    torch.testing.assert_close(probabilities, expected)

    odd_sizes = torch.randn(1, 3, 100, 70)
    probabilities = tta_probabilities(model, odd_sizes, scales=(0.5, 1.0, 2.0), flip=True)
    assert probabilities.shape == (1, 3, 100, 70)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 100, 70))


def test_padding_for_the_model_does_not_shift_the_prediction():
    torch.manual_seed(0)
    strict = PointwiseModel(divisible_by=16).eval()
    lenient = PointwiseModel().eval()
    lenient.load_state_dict(strict.state_dict())
    images = torch.randn(2, 3, 100, 70)
    with pytest.raises(RuntimeError, match="not divisible"):
        tta_probabilities(strict, images, size_multiple=1)
    # A pointwise model sees each pixel alone, so padded-then-cropped must equal unpadded.
    torch.testing.assert_close(
        tta_probabilities(strict, images, size_multiple=16),
        tta_probabilities(lenient, images, size_multiple=1),
    )


def test_predict_labels_is_the_argmax_as_int64():
    images = torch.tensor([[2.0, -2.0, 0.0, 5.0]]).expand(1, 3, 1, 4)
    labels = predict_labels(ColumnRampModel().eval(), images, (1.0,), False, size_multiple=1)
    # class 1 wins where column index > channel 0: columns 1 and 2.
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[[0, 1, 1, 0]]]


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        tta_probabilities(ColumnRampModel(), torch.zeros(1, 3, 4, 4))
