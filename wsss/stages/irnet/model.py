"""IRNet's network (paper 3.2, IRNet's ``net/resnet50_irn.py``): a frozen ResNet and two branches.

The ResNet is IRNet's (strides 2, 2, 2, 1: output stride 16, last stage at stride 1 without
dilation), taken from the step-1 backbone registry. Both branches read the outputs of its five
stages (stem after max-pooling at stride 4, ``layer1`` at 4, ``layer2`` at 8, ``layer3`` and
``layer4`` at 16):

- boundary branch: each stage reduced to 32 channels by 1×1 conv + GroupNorm + ReLU, brought to
  stride 4 by bilinear upsampling, concatenated and mapped to one logit by a 1×1 conv;
- displacement branch: stages reduced to 64/128/256/256/256 channels; the deepest three are
  fused at stride 8, upsampled and fused with the first two at stride 4 into a 2-channel field.

For ResNet18 (stage widths 64/64/128/256/512 instead of 64/256/512/1024/2048) each reduction
keeps IRNet's width unless the stage is narrower, then it keeps the stage's width: a 1×1 conv
never widens its input, and ResNet50 gets exactly IRNet's layers.

The boundary output is a logit (no sigmoid), as IRNet's ``Net``: training applies the sigmoid
before :func:`~wsss.stages.irnet.path_index.boundary_to_affinity`, and flip inference
(:func:`infer_boundary`) averages logits before it, as IRNet's ``EdgeDisplacement``.

All models expect ImageNet-normalised RGB input, float32 ``[B, 3, H, W]``.
"""

from typing import Final, Literal

import torch
from torch import Tensor, nn

from wsss.stages.classification.backbones import Weights, create_classifier, features_state

Backbone = Literal["resnet50", "resnet18"]

# Output channels of the stem and layer1..layer4.
STAGE_CHANNELS: Final[dict[str, tuple[int, int, int, int, int]]] = {
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet18": (64, 64, 128, 256, 512),
}
STAGE_NAMES: Final = (
    ("conv1", "bn1", "relu", "maxpool"),
    ("layer1",),
    ("layer2",),
    ("layer3",),
    ("layer4",),
)

# IRNet's per-stage reduction widths and GroupNorm group counts (ResNet50).
# Both outputs, and the CAMs and labels read beside them, are at a quarter of the image size.
FEATURE_STRIDE: Final = 4
BOUNDARY_WIDTH: Final = 32
BOUNDARY_GROUPS: Final = 4
DISPLACEMENT_WIDTHS: Final = (64, 128, 256, 256, 256)
DISPLACEMENT_GROUPS: Final = (8, 16, 16, 16, 16)
DISPLACEMENT_FUSED_WIDTH: Final = 256
DISPLACEMENT_FUSED_GROUPS: Final = 16


def _reduction(
    in_channels: int, out_channels: int, groups: int, upsample: int = 1
) -> nn.Sequential:
    """IRNet's block: bias-free 1×1 conv -> GroupNorm -> bilinear ×``upsample`` -> ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.GroupNorm(groups, out_channels),
    ]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _crop_to(x: Tensor, reference: Tensor) -> Tensor:
    """Top-left crop of ``x`` to ``reference``'s spatial size (upsampled maps can be larger)."""
    return x[..., : reference.shape[-2], : reference.shape[-1]]


class BoundaryBranch(nn.Module):
    """Five stage features -> class-boundary logits ``[B, 1, h, w]`` at the stem's stride 4."""

    def __init__(self, stage_channels: tuple[int, ...]) -> None:
        super().__init__()
        widths = [min(BOUNDARY_WIDTH, channels) for channels in stage_channels]
        upsampling = (1, 1, 2, 4, 4)
        self.reductions = nn.ModuleList(
            _reduction(channels, width, BOUNDARY_GROUPS, factor)
            for channels, width, factor in zip(stage_channels, widths, upsampling, strict=True)
        )
        self.classifier = nn.Conv2d(sum(widths), 1, 1, bias=True)

    def forward(self, features: list[Tensor]) -> Tensor:
        reduced = [
            reduce(feature) for reduce, feature in zip(self.reductions, features, strict=True)
        ]
        return self.classifier(torch.cat([_crop_to(x, reduced[0]) for x in reduced], dim=1))


class MeanShift(nn.Module):
    """Subtracts the displacement field's running mean at inference, IRNet's ``MeanShift``.

    The displacement loss only sees differences between pixels, so the field's overall offset
    is never trained; subtracting its running mean (tracked in training with momentum 0.1, as a
    BatchNorm's) makes it zero on average, so the mostly-background pixels point at themselves.
    In training the input passes unchanged.
    """

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                # In the buffer's float32 also when the field comes in bfloat16 (autocast).
                batch_mean = x.to(self.running_mean.dtype).mean(dim=(0, 2, 3))
                self.running_mean.lerp_(batch_mean, self.momentum)
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class DisplacementBranch(nn.Module):
    """Five stage features -> displacement field ``[B, 2, h, w]`` (rows, columns) at stride 4."""

    def __init__(self, stage_channels: tuple[int, ...]) -> None:
        super().__init__()
        widths = [
            min(width, channels)
            for width, channels in zip(DISPLACEMENT_WIDTHS, stage_channels, strict=True)
        ]
        # layer2 is at stride 8, layer3 and layer4 at 16: the deep three meet at stride 8.
        upsampling = (1, 1, 1, 2, 2)
        self.reductions = nn.ModuleList(
            _reduction(channels, width, groups, factor)
            for channels, width, groups, factor in zip(
                stage_channels, widths, DISPLACEMENT_GROUPS, upsampling, strict=True
            )
        )
        self.fuse_deep = _reduction(
            sum(widths[2:]), DISPLACEMENT_FUSED_WIDTH, DISPLACEMENT_FUSED_GROUPS, upsample=2
        )
        self.fuse_all = nn.Sequential(
            _reduction(
                sum(widths[:2]) + DISPLACEMENT_FUSED_WIDTH,
                DISPLACEMENT_FUSED_WIDTH,
                DISPLACEMENT_FUSED_GROUPS,
            ),
            nn.Conv2d(DISPLACEMENT_FUSED_WIDTH, 2, 1, bias=False),
            MeanShift(2),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        reduced = [
            reduce(feature) for reduce, feature in zip(self.reductions, features, strict=True)
        ]
        deep = torch.cat([_crop_to(x, reduced[2]) for x in reduced[2:]], dim=1)
        fused_deep = _crop_to(self.fuse_deep(deep), reduced[0])
        return self.fuse_all(torch.cat([reduced[0], reduced[1], fused_deep], dim=1))


def check_backbone(backbone: str) -> None:
    """Raise ValueError listing the available ones when IRNet cannot be built on `backbone`."""
    if backbone not in STAGE_CHANNELS:
        raise ValueError(
            f"unknown IRNet backbone {backbone!r}; available: {', '.join(STAGE_CHANNELS)}"
        )


class IRNet(nn.Module):
    """IRNet's boundary and displacement branches on an IRNet ResNet.

    With ``freeze_backbone`` (the paper's setting) the backbone has ``requires_grad=False``,
    runs without building a graph, and stays in eval mode (fixed BatchNorm statistics, as
    IRNet's FixedBatchNorm) even after ``.train()``. Without it the backbone trains like any
    layer, BatchNorm included. ``weights="imagenet"`` loads torchvision's ImageNet weights
    into the backbone (downloads on first use); the branches always start from PyTorch's
    default initialisation, as in IRNet.
    """

    def __init__(
        self,
        backbone: Backbone = "resnet50",
        weights: Weights = None,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        # The step-1 ResNets are IRNet's ResNets; their classifier layer is left unused.
        resnet = create_classifier(backbone, num_classes=1, weights=weights).features
        self.backbone = nn.ModuleList(
            nn.Sequential(*(getattr(resnet, name) for name in names)) for names in STAGE_NAMES
        )
        # The step-1 builder freezes only the early stages of a pretrained ResNet; here the
        # choice is all or nothing.
        self.backbone.requires_grad_(not freeze_backbone)
        self.freeze_backbone = freeze_backbone
        self.boundary_branch = BoundaryBranch(STAGE_CHANNELS[backbone])
        self.displacement_branch = DisplacementBranch(STAGE_CHANNELS[backbone])
        self.train(self.training)

    def load_classifier_backbone(self, classifier_state: dict[str, Tensor]) -> None:
        """Copy the ``features`` of a step-1 classifier's state dict into the backbone.

        The step-1 ResNets are built like this backbone, so the classifier's convolutions and
        BatchNorm statistics transfer one to one. A classifier trained on the image-level
        labels is the only trained backbone there is when no ImageNet weights can be
        downloaded; a random frozen one gives the branches nothing to separate classes with.
        """
        features = features_state(classifier_state)
        mapped = {}
        for stage_index, names in enumerate(STAGE_NAMES):
            for module_index, name in enumerate(names):
                for key, value in features.items():
                    if key.startswith(f"{name}."):
                        mapped[f"{stage_index}.{module_index}.{key[len(name) + 1 :]}"] = value
        self.backbone.load_state_dict(mapped)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, H, W]`` -> ``(boundary logits [B, 1, h, w], displacement [B, 2, h, w])``.

        ``h, w = ceil(H / 4), ceil(W / 4)``. Boundary logits are unbounded (apply a sigmoid for
        probabilities). The displacement is in stride-4 pixels, channel 0 rows, 1 columns;
        in eval mode its running mean is subtracted.
        """
        features = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            for stage in self.backbone:
                x = stage(x)
                features.append(x)
        return self.boundary_branch(features), self.displacement_branch(features)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary parameters, displacement parameters): the trainable parameters, partitioned.

        Paper 3.2 trains the boundary branch with lr 0.005 and the displacement branch with
        0.05. An unfrozen backbone joins the boundary group, the smaller learning rate, as
        pretrained layers are fine-tuned with the smaller one in step 1 too.
        """
        boundary = list(self.boundary_branch.parameters())
        if not self.freeze_backbone:
            boundary = [*self.backbone.parameters(), *boundary]
        return boundary, list(self.displacement_branch.parameters())

    def train(self, mode: bool = True) -> "IRNet":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self


def infer_boundary(model: nn.Module, image: Tensor, flip: bool = True) -> Tensor:
    """Class-boundary probabilities of one image, IRNet's ``EdgeDisplacement`` inference.

    Args:
        model: an :class:`IRNet` (or any module with its ``forward`` contract), in eval mode,
            on ``image``'s device.
        image: ImageNet-normalised float ``[3, H, W]``.
        flip: also run the horizontally flipped image (in the same batch) and average the two
            boundary logits, the flipped one flipped back, before the sigmoid, as IRNet does.

    Returns:
        float ``[ceil(H / 4), ceil(W / 4)]`` in [0, 1], no gradient.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    batch = torch.stack([image, image.flip(-1)]) if flip else image[None]
    with torch.no_grad():
        logits = model(batch)[0][:, 0]
    if flip:
        return torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)
    return torch.sigmoid(logits[0])
