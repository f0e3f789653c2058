"""IRNet's network: output shapes, the frozen backbone, parameter groups and flip inference."""

import pytest
import torch
from torch import Tensor, nn

from wsss.stages.classification.backbones import create_classifier
from wsss.stages.irnet.model import IRNet, infer_boundary


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(scope="module")
def frozen_resnet18() -> IRNet:
    torch.manual_seed(0)
    return IRNet("resnet18", weights=None)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet18"])
@pytest.mark.parametrize(("height", "width"), [(64, 64), (66, 71)])
def test_outputs_are_at_stride_4(backbone, height, width):
    model = IRNet(backbone, weights=None).eval()
    with torch.no_grad():
        boundary, displacement = model(torch.randn(2, 3, height, width))
    stride4 = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    assert boundary.shape == (2, 1, *stride4)
    assert displacement.shape == (2, 2, *stride4)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet50, resnet18"):
        IRNet("vgg16_oaa")  # a step-1 backbone, but not a ResNet


def test_frozen_backbone_has_no_trainable_parameters_and_fixed_batchnorm(frozen_resnet18):
    model = frozen_resnet18.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(not bn.training for bn in batchnorms(model.backbone))
    assert model.boundary_branch.training and model.displacement_branch.training
    before = [bn.running_mean.clone() for bn in batchnorms(model.backbone)]
    model(torch.randn(2, 3, 32, 32))
    after = [bn.running_mean for bn in batchnorms(model.backbone)]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_unfrozen_backbone_trains_with_batch_statistics():
    model = IRNet("resnet18", weights=None, freeze_backbone=False).train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(bn.training for bn in batchnorms(model.backbone))


def test_gradients_reach_both_branches_but_not_the_frozen_backbone(frozen_resnet18):
    model = frozen_resnet18.train()
    model.zero_grad()
    boundary, displacement = model(torch.randn(2, 3, 32, 32))
    (boundary.sum() + displacement.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.boundary_branch.classifier.weight.grad.abs().sum() > 0
    assert model.displacement_branch.reductions[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("freeze_backbone", [True, False])
def test_parameter_groups_partition_the_trainable_parameters(freeze_backbone):
    model = IRNet("resnet18", weights=None, freeze_backbone=freeze_backbone)
    boundary, displacement = model.parameter_groups()
    boundary_ids, displacement_ids = {id(p) for p in boundary}, {id(p) for p in displacement}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(boundary_ids) == len(boundary) and len(displacement_ids) == len(displacement)
    assert not boundary_ids & displacement_ids
    assert boundary_ids | displacement_ids == trainable
    assert id(model.boundary_branch.classifier.weight) in boundary_ids
    assert id(model.displacement_branch.fuse_all[1].weight) in displacement_ids


def test_resnet18_reductions_never_widen_a_stage():
    model = IRNet("resnet18", weights=None)
    widths = [block[0].out_channels for block in model.displacement_branch.reductions]
    assert widths == [64, 64, 128, 256, 256]
    assert [block[0].out_channels for block in model.boundary_branch.reductions] == [32] * 5


def test_displacement_mean_is_tracked_in_training_and_removed_in_eval(frozen_resnet18):
    model = frozen_resnet18
    model.displacement_branch.fuse_all[2].running_mean.zero_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trained = model.train()(x)[1]
        evaluated = model.eval()(x)[1]
    # One update from zero with momentum 0.1.
    expected_mean = 0.1 * trained.mean(dim=(0, 2, 3))
    assert expected_mean.abs().max() > 0
    torch.testing.assert_close(evaluated, trained - expected_mean.view(1, 2, 1, 1))


def test_the_displacement_mean_stays_float32_under_bf16_autocast(frozen_resnet18):
    model = frozen_resnet18.train()
    model.displacement_branch.fuse_all[2].running_mean.zero_()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        displacement = model(torch.randn(2, 3, 32, 32))[1]
    assert displacement.dtype == torch.bfloat16
    running_mean = model.displacement_branch.fuse_all[2].running_mean
    assert running_mean.dtype == torch.float32
    torch.testing.assert_close(running_mean, 0.1 * displacement.float().mean(dim=(0, 2, 3)))


class KnownBoundary(nn.Module):
    """Boundary logits = a fixed ``[1, 2]`` map + the input's mean; records its input."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.inputs.append(x)
        boundary = self.logits.expand(len(x), 1, -1, -1) + x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return boundary, torch.zeros(len(x), 2, *self.logits.shape)


def test_flip_inference_averages_the_logits_of_both_passes():
    image = torch.full((3, 4, 8), 0.5)  # stride-4 map [1, 2]
    image[:, :, 0] = -1.0  # mean 0.3125, not flip-symmetric
    model = KnownBoundary(torch.tensor([[0.0, 2.0]]))

    boundary = infer_boundary(model, image, flip=True)

    batch = model.inputs[-1]
    assert torch.equal(batch, torch.stack([image, image.flip(-1)]))
    # Logits [0, 2] + mean and, flipped back, [2, 0] + mean: average 1 + mean at both pixels.
    mean = image.mean()
    torch.testing.assert_close(boundary, torch.sigmoid(torch.full((1, 2), 1.0 + mean)))


def test_without_flip_one_pass_is_used():
    image = torch.zeros(3, 4, 8)
    model = KnownBoundary(torch.tensor([[0.0, 2.0]]))
    boundary = infer_boundary(model, image, flip=False)
    assert model.inputs[-1].shape == (1, 3, 4, 8)
    torch.testing.assert_close(boundary, torch.sigmoid(torch.tensor([[0.0, 2.0]])))


def test_classifier_backbone_is_copied_layer_for_layer():
    torch.manual_seed(0)
    classifier = create_classifier("resnet18", num_classes=3, weights=None)
    # Non-default BatchNorm statistics, so a copy that skipped buffers would show.
    for bn in batchnorms(classifier.features):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    classifier.eval()
    model = IRNet("resnet18", weights=None).eval()
    model.load_classifier_backbone(classifier.state_dict())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = image
        for stage in model.backbone:
            features = stage(features)
        expected = classifier.features(image)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


def test_classifier_backbone_of_another_architecture_is_refused():
    classifier = create_classifier("resnet50", num_classes=3, weights=None)
    with pytest.raises(RuntimeError, match="size mismatch"):
        IRNet("resnet18", weights=None).load_classifier_backbone(classifier.state_dict())
