"""The paper's Table 3: DeepLabV3+ encoder x IRNet threshold x TTA x the `person` CAMs.

Sixteen trials sharing every step they can: the classifier is trained once, the binary
`person` classifier once, IRNet once per CAM set (with or without `person`), the pseudo masks
once per CAM set and threshold, DeepLabV3+ once per encoder and pseudo masks, and TTA on and
off read one trained model.

The paper's encoders are ResNet50 and ResNet101 (ImageNet weights). A preset whose step 3
starts from step 1's classifier (the CPU presets, which cannot download weights) sweeps two
encoders it can train instead: step 1's own backbone, which starts from the classifier, and
the next larger ResNet, which cannot and starts from random weights; the table says which.
"""

from collections.abc import Mapping
from typing import Any

from ray import tune

from wsss.platform.config import WsssConfig
from wsss.tune_spaces import SearchSpace, register_space

PAPER_ENCODERS = ("resnet50", "resnet101")
# A small encoder and the next ResNet up, for presets that start step 3 from step 1's ResNet.
LARGER = {"resnet18": "resnet34", "resnet34": "resnet50", "resnet50": "resnet101"}


def _encoders(base: WsssConfig) -> list[dict[str, str]]:
    if base.step3.encoder_from != "step1_classifier":
        return [{"encoder": name, "encoder_from": "weights"} for name in PAPER_ENCODERS]
    own = base.step1.backbone
    return [
        {"encoder": own, "encoder_from": "step1_classifier"},
        {"encoder": LARGER.get(own, "resnet50"), "encoder_from": "weights"},
    ]


def _encoder_cell(params: Mapping[str, Any]) -> str:
    step3 = params["step3"]
    start = "step-1 start" if step3["encoder_from"] == "step1_classifier" else "own start"
    return f"{step3['encoder']} ({start})"


@register_space("table3")
def table3(base: WsssConfig) -> SearchSpace:
    return SearchSpace(
        name="table3",
        description="the paper's Table 3: encoder x IRNet threshold x TTA x person CAMs",
        params={
            "step3": tune.grid_search(_encoders(base)),
            "step2.sem_seg_bg_thres": tune.grid_search([0.3, 0.5]),
            "step3.tta.enabled": tune.grid_search([False, True]),
            "step1.merge_binary_cams": tune.grid_search([False, True]),
        },
        columns=(
            ("Encoder", _encoder_cell),
            ("IRNet thr.", lambda p: f"{p['step2.sem_seg_bg_thres']:g}"),
            ("TTA", lambda p: "Yes" if p["step3.tta.enabled"] else "No"),
            ("Person", lambda p: "Yes" if p["step1.merge_binary_cams"] else "No"),
        ),
    )
