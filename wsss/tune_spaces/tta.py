"""Test-time augmentation: the scales the final model's predictions are averaged over, with and
without their horizontal flips. TTA is read at evaluation only, so every trial reuses one
trained DeepLabV3+ and costs an evaluation of val and test.

Each draw picks a scale set and runs it with and without flips."""

from collections.abc import Mapping
from typing import Any

from ray import tune

from wsss.platform.config import WsssConfig
from wsss.tune_spaces import SearchSpace, register_space

# The paper's scales (0.5, 1, 2), one scale (flips only), and sets between and beyond them.
SCALE_SETS = ([1.0], [0.5, 1.0], [0.5, 1.0, 1.5], [0.5, 1.0, 2.0], [0.5, 0.75, 1.0, 1.5, 2.0])


def _scales_cell(params: Mapping[str, Any]) -> str:
    return " ".join(f"{scale:g}" for scale in params["step3.tta.scales"])


@register_space("tta")
def tta(base: WsssConfig) -> SearchSpace:
    return SearchSpace(
        name="tta",
        description="test-time augmentation's scales and flips, one trained DeepLabV3+",
        params={
            "step3.tta.enabled": True,
            "step3.tta.scales": tune.choice([list(scales) for scales in SCALE_SETS]),
            "step3.tta.flip": tune.grid_search([False, True]),
        },
        columns=(
            ("Scales", _scales_cell),
            ("Flip", lambda p: "Yes" if p["step3.tta.flip"] else "No"),
        ),
        num_samples=len(SCALE_SETS),
    )
