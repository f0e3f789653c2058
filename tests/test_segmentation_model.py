"""DeepLabV3+ factory: shapes, dilation at output stride 8 and 16, and its error messages."""

import pytest
import torch

from wsss.stages.classification.backbones import create_classifier
from wsss.stages.segmentation.model import create_segmentation_model, load_classifier_encoder

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


def test_classifier_encoder_is_copied_and_matches_up_to_the_dilated_stage():
    torch.manual_seed(0)
    classifier = create_classifier("resnet18", num_classes=3, weights=None).eval()
    model = create_segmentation_model("resnet18", num_classes=4).eval()
    load_classifier_encoder(model, classifier.state_dict())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # Up to layer3 both networks are the same function; layer4 is dilated only in smp's.
        expected = classifier.features[:-1](image)
        encoder = model.encoder
        x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(image))))
        actual = encoder.layer3(encoder.layer2(encoder.layer1(x)))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        model.encoder.layer4[1].conv2.weight, classifier.features.layer4[1].conv2.weight
    )


def test_classifier_encoder_of_another_architecture_is_refused():
    classifier = create_classifier("resnet50", num_classes=3, weights=None)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_classifier_encoder(create_segmentation_model("resnet18", 4), classifier.state_dict())
