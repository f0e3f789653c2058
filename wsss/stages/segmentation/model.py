"""The step-3 segmentation network (paper 3.3): DeepLabV3+ over a dilated encoder.

Built by segmentation-models-pytorch. The model expects ImageNet-normalised RGB, float32
[B, 3, H, W] with H and W divisible by its output stride (`tta.tta_probabilities` pads other
sizes), and returns per-class logits [B, num_classes, H, W].

The poly learning-rate schedule of every step is torch's own
`torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=0.9)`, which
gives `base_lr * (1 - step / total_steps) ** 0.9`; nothing here re-implements it.
"""

import difflib
from typing import Literal

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders import get_encoder_names
from torch import Tensor, nn

from wsss.stages.classification.backbones import features_state

# Shown when an unknown name resembles nothing: the paper's encoders (Table 3) and a small one.
_SUGGESTED_ENCODERS = ("resnet18", "resnet50", "resnet101")


def check_encoder(encoder: str) -> None:
    """Raise ValueError naming the closest valid names when `encoder` is not one of
    segmentation-models-pytorch's encoders."""
    names = get_encoder_names()
    if encoder not in names:
        suggestions = difflib.get_close_matches(encoder, names, n=5) or _SUGGESTED_ENCODERS
        raise ValueError(
            f"unknown encoder {encoder!r}; valid names include {', '.join(suggestions)} "
            f"({len(names)} in all: segmentation_models_pytorch.encoders.get_encoder_names())"
        )


def create_segmentation_model(
    encoder: str,
    num_classes: int,
    weights: Literal["imagenet"] | None = None,
    output_stride: Literal[8, 16] = 16,
) -> nn.Module:
    """DeepLabV3+ with `num_classes` output channels (background included) on `encoder`.

    `encoder` is any segmentation-models-pytorch encoder name (`resnet50`, `resnet101`, ...);
    an unknown one raises ValueError listing the closest valid names. `weights="imagenet"`
    downloads the encoder's ImageNet weights on first use; `None` initialises randomly. The
    encoder's last stages trade stride for dilation so its deepest feature map is
    H / `output_stride` (paper 3.3: "stride replaced with dilation").
    """
    check_encoder(encoder)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weights is not None and weights not in smp_encoders[encoder]["pretrained_settings"]:
        raise ValueError(f"encoder {encoder!r} has no {weights!r} weights")
    return smp.DeepLabV3Plus(
        encoder_name=encoder,
        encoder_weights=weights,
        encoder_output_stride=output_stride,
        classes=num_classes,
    )


def load_classifier_encoder(model: nn.Module, classifier_state: dict[str, Tensor]) -> None:
    """Copy the ``features`` of a step-1 ResNet classifier's state dict into ``model.encoder``.

    The step-1 ResNets and smp's ResNet encoders are both torchvision ResNets (the classifier
    runs its last stage at stride 1, the encoder dilates it; the weights are the same shapes),
    so every convolution and BatchNorm transfers by name. A mismatched architecture raises
    RuntimeError from ``load_state_dict``.
    """
    model.encoder.load_state_dict(features_state(classifier_state))
