"""DeepLabV3+ factory: shapes, dilation at output stride 8 and 16, and its error messages."""

import pytest
import torch

from wsss.stages.segmentation.model import create_segmentation_model

NUM_CLASSES = 3
INPUT_SIZE = 64


@pytest.fixture(scope="module", params=[16, 8])
def resnet18_model(request):
    torch.manual_seed(0)
    model = create_segmentation_model("resnet18", NUM_CLASSES, output_stride=request.param)
    return request.param, model.eval()


def test_logits_cover_every_class_at_input_size(resnet18_model):
    _, model = resnet18_model
    with torch.no_grad():
        logits = model(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))
    assert logits.shape == (2, NUM_CLASSES, INPUT_SIZE, INPUT_SIZE)
    assert logits.dtype == torch.float32


def test_deepest_encoder_features_are_at_the_output_stride(resnet18_model):
    output_stride, model = resnet18_model
    with torch.no_grad():
        deepest = model.encoder(torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE))[-1]
    # Undilated, ResNet's last stage would be at INPUT_SIZE / 32 = 2.
    assert deepest.shape[-2:] == (INPUT_SIZE // output_stride, INPUT_SIZE // output_stride)


@pytest.mark.parametrize("encoder", ["resnet50", "resnet101"])
def test_paper_encoders_build_without_weights(encoder):
    model = create_segmentation_model(encoder, NUM_CLASSES, weights=None).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE))
    assert logits.shape == (1, NUM_CLASSES, INPUT_SIZE, INPUT_SIZE)
    assert model.encoder.out_channels[-1] == 2048


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ValueError, match="unknown encoder 'resnet5'") as error:
        create_segmentation_model("resnet5", NUM_CLASSES)
    assert "resnet50" in str(error.value)
    assert "get_encoder_names" in str(error.value)


def test_unrelated_unknown_encoder_still_suggests_names():
    with pytest.raises(ValueError, match="resnet50"):
        create_segmentation_model("zzzz", NUM_CLASSES)


@pytest.mark.parametrize(
    ("num_classes", "weights", "message"),
    [(0, None, "num_classes"), (3, "imagenet21k", "no 'imagenet21k' weights")],
)
def test_invalid_arguments_are_rejected(num_classes, weights, message):
    with pytest.raises(ValueError, match=message):
        create_segmentation_model("resnet18", num_classes, weights=weights)
