"""IRNet's walk and threshold: the knobs to tune on new data, all read after training, so
IRNet is trained once and every trial redraws the pseudo masks and retrains step 3.

The walk's reach suits the image size (2^exp_times steps; see the presets), so its range is
centred on the preset's value."""

from ray import tune

from wsss.platform.config import WsssConfig
from wsss.tune_spaces import SearchSpace, register_space


@register_space("irnet")
def irnet(base: WsssConfig) -> SearchSpace:
    steps = base.step2.exp_times
    return SearchSpace(
        name="irnet",
        description="IRNet's walk and threshold, tuned with IRNet trained once",
        params={
            "step2.beta": tune.choice([5.0, 10.0, 15.0]),
            "step2.exp_times": tune.choice(sorted({max(1, steps - 1), steps, min(12, steps + 1)})),
            "step2.radius_infer": tune.choice([3, 5, 7]),
            "step2.sem_seg_bg_thres": tune.quniform(0.2, 0.6, 0.05),
        },
        num_samples=8,
    )
