"""Step 1's classifier: learning rates and augmentation strength, trials stopped early by ASHA
on the val macro-F1 of each epoch (the classifier only: what the later steps need most is
a classifier whose CAMs and confidences are right)."""

from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from wsss.platform.config import AugmentationConfig, WsssConfig
from wsss.tune_spaces import SearchSpace, register_space

# The paper's augmentation (the defaults) at a fraction and at a multiple of its probabilities.
_PROBABILITIES = (
    "hflip_p",
    "shift_scale_rotate_p",
    "gauss_noise_p",
    "brightness_contrast_p",
    "median_blur_p",
    "rgb_shift_p",
)


def _strength(factor: float) -> dict[str, float]:
    paper = AugmentationConfig()
    return {name: round(min(1.0, factor * getattr(paper, name)), 4) for name in _PROBABILITIES}


def _strength_cell(params: Mapping[str, Any]) -> str:
    return f"x{params['data.augmentation']['hflip_p'] / AugmentationConfig().hflip_p:g}"


def _asha(base: WsssConfig) -> TrialScheduler:
    # One Tune iteration per epoch and one for the trial's closing report; a trial runs at
    # least a quarter of its epochs.
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=base.step1.epochs + 1,
        grace_period=max(1, base.step1.epochs // 4),
    )


@register_space("step1")
def step1(base: WsssConfig) -> SearchSpace:
    return SearchSpace(
        name="step1",
        description="step 1's learning rates and augmentation, ASHA on val macro-F1",
        params={
            "step1.lr_pretrained": tune.loguniform(1e-4, 1e-2),
            "step1.lr_new": tune.loguniform(1e-4, 1e-2),
            "data.augmentation": tune.choice([_strength(0.5), _strength(1.0), _strength(1.5)]),
        },
        trial="classifier",
        columns=(
            ("lr pretrained", lambda p: f"{p['step1.lr_pretrained']:.2g}"),
            ("lr new", lambda p: f"{p['step1.lr_new']:.2g}"),
            ("augmentation", _strength_cell),
        ),
        metric="f1_macro",
        scheduler=_asha,
        num_samples=8,
    )
