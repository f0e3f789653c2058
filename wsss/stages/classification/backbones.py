"""Multi-label CAM classifiers for step 1 (paper 3.1) behind one factory, `create_classifier`.

Every model is `features` (the ImageNet-pretrainable part) -> `extra_convs` (new layers, may be
empty) -> a bias-free 1×1 `classifier` conv. Logits are the classifier applied to the globally
average-pooled feature map; because the classifier is linear and bias-free, averaging the class
activation maps `cam(x)` over space gives exactly the logits, so CAMs come from the weights
that were trained.

All models expect ImageNet-normalised RGB input, float32 [B, 3, H, W].
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, VGG16_Weights

from wsss.registry import Registry

Weights = Literal["imagenet"] | None
BackboneBuilder = Callable[[int, Weights], "CamClassifier"]

_BACKBONES: Registry[BackboneBuilder] = Registry("backbone")


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Add a builder `(num_classes, weights) -> CamClassifier` to the registry under `name`."""
    return _BACKBONES.register(name)


def available_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return _BACKBONES.names()


def features_state(classifier_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `features` part of a classifier's state dict, keys relative to `features`: what
    later steps take over from a trained step-1 network."""
    prefix = "features."
    return {
        key.removeprefix(prefix): value
        for key, value in classifier_state.items()
        if key.startswith(prefix)
    }


def create_classifier(
    name: str, num_classes: int, weights: Literal["imagenet"] | None = None
) -> "CamClassifier":
    """Build the registered classifier `name` with `num_classes` outputs.

    `weights="imagenet"` loads torchvision's ImageNet weights into the `features` part (downloads
    on first use); `None` leaves every layer randomly initialised. Unknown names raise ValueError
    listing the registered ones.
    """
    builder = _BACKBONES.get(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    return builder(num_classes, weights)


class CamClassifier(nn.Module):
    """features -> extra_convs -> GAP -> bias-free 1×1 classifier; CAMs from the same weights.

    `output_stride` is the ratio of input size to feature-map size (exact for sizes divisible
    by it). With `frozen_batchnorm`, every BatchNorm layer stays in eval mode (fixed running
    statistics) even after `.train()`, as IRNet's FixedBatchNorm does; their affine parameters
    still train unless their `requires_grad` is off.
    """

    def __init__(
        self,
        features: nn.Module,
        extra_convs: nn.Module,
        feature_channels: int,
        num_classes: int,
        output_stride: int,
        frozen_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        self.extra_convs = extra_convs
        self.classifier = nn.Conv2d(feature_channels, num_classes, kernel_size=1, bias=False)
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.frozen_batchnorm = frozen_batchnorm
        if frozen_batchnorm:
            self.train(self.training)

    def feature_map(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> last feature map [B, C, ~H/output_stride, ~W/output_stride]."""
        return self.extra_convs(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> class logits [B, K] (apply a sigmoid for per-class probabilities)."""
        pooled = self.feature_map(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> class activation maps [B, K, h, w], unbounded (no ReLU applied).

        The spatial mean of `cam(x)` equals `forward(x)`.
        """
        return F.conv2d(self.feature_map(x), self.classifier.weight)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(parameters of `features`, parameters of `extra_convs` and `classifier`).

        The two lists partition all parameters of the model. Paper 3.1 trains the first with
        lr 1e-4 and the second with 1e-3. Frozen parameters (`requires_grad=False`) are included;
        they never receive a gradient, so optimisers leave them unchanged.
        """
        pretrained = list(self.features.parameters())
        new = [*self.extra_convs.parameters(), *self.classifier.parameters()]
        return pretrained, new

    def train(self, mode: bool = True) -> "CamClassifier":
        super().train(mode)
        if self.frozen_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def _vgg16_oaa_features() -> nn.Sequential:
    """VGG16 conv layers as in OAA: pool4 3×3/stride 1, conv5 dilated by 2, no pool5.

    Module indices match `torchvision.models.vgg16().features` (index 23 is pool4, 28 conv5_3),
    so its state-dict keys load unchanged. Output stride 8, 512 channels.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    blocks = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    for block_index, (channels, depth) in enumerate(blocks):
        dilation = 2 if block_index == 4 else 1
        for _ in range(depth):
            layers.append(nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation))
            layers.append(nn.ReLU(inplace=True))
            in_channels = channels
        if block_index < 3:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif block_index == 3:
            # Keeps the resolution of conv4 (stride 8) for denser CAMs; pool5 is dropped for
            # the same reason.
            layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
    return nn.Sequential(*layers)


@register_backbone("vgg16_oaa")
def vgg16_oaa(num_classes: int, weights: Weights = None) -> CamClassifier:
    """VGG16 with OAA's modifications (Jiang et al., ICCV 2019), output stride 8.

    The paper's "4 additional convolutional layers" are OAA's three 3×3 512-channel convs with
    ReLU plus the 1×1 score conv; here the score conv is the bias-free `classifier` (OAA's has
    a bias, which would add the same constant to a class's CAM everywhere). New layers are
    initialised N(0, 0.01) with zero bias, as in OAA. Nothing is frozen: OAA trains every VGG
    layer.
    """
    features = _vgg16_oaa_features()
    if weights == "imagenet":
        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
    extra_convs = nn.Sequential(
        *(
            module
            for _ in range(3)
            for module in (nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True))
        )
    )
    model = CamClassifier(features, extra_convs, 512, num_classes, output_stride=8)
    for module in (*extra_convs.modules(), model.classifier):
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _irnet_resnet(
    resnet: torchvision.models.ResNet, num_classes: int, pretrained: bool
) -> CamClassifier:
    """IRNet's CAM network (net/resnet50_cam.py) around a torchvision ResNet, output stride 16.

    The last stage runs at stride 1 without dilation, as in IRNet (strides (2, 2, 2, 1)).
    With pretrained weights it follows IRNet's training setup: BatchNorm statistics fixed,
    and the stem, layer1 and layer2 frozen (IRNet freezes conv1/bn1 and detaches the output
    of layer2, which stops gradients to all of them). Randomly initialised models train every
    layer with ordinary BatchNorm, since fixing random weights would make no sense.
    """
    for module in resnet.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    features = nn.Sequential(
        OrderedDict(
            (name, getattr(resnet, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        )
    )
    if pretrained:
        for name in ("conv1", "bn1", "layer1", "layer2"):
            getattr(features, name).requires_grad_(False)
    channels = resnet.fc.in_features
    return CamClassifier(
        features,
        nn.Sequential(),
        channels,
        num_classes,
        output_stride=16,
        frozen_batchnorm=pretrained,
    )


@register_backbone("resnet50")
def resnet50(num_classes: int, weights: Weights = None) -> CamClassifier:
    """IRNet's ResNet50 CAM network (2048-channel features, output stride 16).

    ImageNet weights are torchvision's IMAGENET1K_V1, the same checkpoint IRNet loads.
    """
    pretrained = weights == "imagenet"
    resnet = torchvision.models.resnet50(
        weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    )
    return _irnet_resnet(resnet, num_classes, pretrained)


@register_backbone("resnet18")
def resnet18(num_classes: int, weights: Weights = None) -> CamClassifier:
    """The resnet50 network on ResNet18 (512-channel features, output stride 16) for CPU runs."""
    pretrained = weights == "imagenet"
    resnet = torchvision.models.resnet18(
        weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
    )
    return _irnet_resnet(resnet, num_classes, pretrained)
