"""The CAM-classifier contract, tested once and run for every registered backbone."""

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._api import WeightsEnum

from wsss.stages.classification.backbones import (
    CamClassifier,
    available_backbones,
    create_classifier,
    register_backbone,
)

NUM_CLASSES = 3
INPUT_SIZE = 64


def test_registry_holds_the_three_backbones():
    assert available_backbones() == ["resnet18", "resnet50", "vgg16_oaa"]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'") as error:
        create_classifier("resnet5", NUM_CLASSES)
    for name in available_backbones():
        assert name in str(error.value)


@pytest.mark.parametrize(("num_classes", "weights"), [(0, None), (3, "imagenet21k")])
def test_invalid_arguments_are_rejected(num_classes, weights):
    with pytest.raises(ValueError):
        create_classifier("resnet18", num_classes, weights=weights)


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet18")(lambda num_classes, weights: None)


class BackboneContract:
    """Shared tests; a subclass names the backbone and what is specific to it."""

    name: str
    output_stride: int
    new_parameter_tensors: int  # weights and biases of the layers that get the higher lr
    torchvision_architecture: Callable[[], nn.Module]
    frozen_when_pretrained: tuple[str, ...]  # prefixes of parameters IRNet-style freezing stops

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> CamClassifier:
        torch.manual_seed(0)
        return create_classifier(cls.name, NUM_CLASSES, weights=None).eval()

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls) -> torch.Tensor:
        return torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))

    def test_forward_and_cam_shapes(self, model, images):
        side = INPUT_SIZE // self.output_stride
        with torch.no_grad():
            assert model(images).shape == (2, NUM_CLASSES)
            assert model.cam(images).shape == (2, NUM_CLASSES, side, side)
        assert model.output_stride == self.output_stride

    def test_cam_spatial_mean_equals_logits(self, model, images):
        with torch.no_grad():
            logits = model(images)
            cams = model.cam(images)
        scale = logits.abs().max()
        assert scale > 0
        # Relative: freshly initialised heads give logits far below 1.
        assert ((cams.mean(dim=(2, 3)) - logits).abs().max() / scale) < 1e-5
        assert (cams < 0).any(), "cam() must not apply a ReLU"

    def test_classifier_is_a_bias_free_1x1_conv(self, model):
        assert model.classifier.kernel_size == (1, 1)
        assert model.classifier.bias is None

    def test_parameter_groups_partition_the_parameters(self, model):
        pretrained, new = model.parameter_groups()
        pretrained_ids, new_ids = {id(p) for p in pretrained}, {id(p) for p in new}
        assert len(pretrained_ids) == len(pretrained) and len(new_ids) == len(new)
        assert not pretrained_ids & new_ids
        assert pretrained_ids | new_ids == {id(p) for p in model.parameters()}
        assert len(new) == self.new_parameter_tensors
        assert id(model.classifier.weight) in new_ids

    def test_random_init_trains_everything_with_live_batchnorm(self):
        model = create_classifier(self.name, NUM_CLASSES).train()
        assert all(p.requires_grad for p in model.parameters())
        assert all(m.training for m in model.modules())

    def test_imagenet_weights_load_into_features(self, monkeypatch):
        with torch.device("meta"):
            reference = self.torchvision_architecture().state_dict()
        marker = 0.5
        checkpoint = {
            key: torch.full(value.shape, marker, dtype=value.dtype)
            if value.is_floating_point()
            else torch.zeros(value.shape, dtype=value.dtype)
            for key, value in reference.items()
        }
        monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, **kwargs: checkpoint)

        model = create_classifier(self.name, NUM_CLASSES, weights="imagenet").train()

        assert all((p == marker).all() for p in model.features.parameters())
        assert not any((p == marker).all() for p in model.classifier.parameters())
        frozen = {
            name
            for name, p in model.features.named_parameters()
            if name.startswith(self.frozen_when_pretrained)
        }
        for name, parameter in model.features.named_parameters():
            assert parameter.requires_grad == (name not in frozen), name
        batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(not m.training for m in batchnorms)


class TestVgg16Oaa(BackboneContract):
    name = "vgg16_oaa"
    output_stride = 8
    new_parameter_tensors = 3 * 2 + 1
    torchvision_architecture = staticmethod(torchvision.models.vgg16)
    frozen_when_pretrained = ()

    def test_layout_is_oaa_at_torchvision_indices(self, model):
        assert isinstance(model.features[23], nn.MaxPool2d)
        assert model.features[23].stride == 1
        assert model.features[28].dilation == (2, 2)
        assert len(model.features) == 30


class TestResNet50(BackboneContract):
    name = "resnet50"
    output_stride = 16
    new_parameter_tensors = 1
    torchvision_architecture = staticmethod(torchvision.models.resnet50)
    frozen_when_pretrained = ("conv1.", "bn1.", "layer1.", "layer2.")


class TestResNet18(BackboneContract):
    name = "resnet18"
    output_stride = 16
    new_parameter_tensors = 1
    torchvision_architecture = staticmethod(torchvision.models.resnet18)
    frozen_when_pretrained = ("conv1.", "bn1.", "layer1.", "layer2.")
