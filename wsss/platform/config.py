"""Typed configuration for the whole pipeline, YAML presets, and `--set` overrides.

Defaults are the paper's settings (NoPeopleAllowed, sections 3.1-3.4); presets shipped in
`wsss/platform/presets/` override what a machine or a test needs. Every value is validated
before any work starts: an unknown key, a wrong type or an out-of-range value raises
`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS_PACKAGE = "wsss.platform.presets"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(StrictModel):
    """The built-in synthetic dataset (see `wsss.platform.datasets.synthetic`)."""

    num_classes: int = Field(10, ge=2, le=200, description="object classes, background excluded")
    image_size: int = Field(128, ge=32, le=1024, description="side of the square images, pixels")
    train_images: int = Field(2000, ge=1)
    val_images: int = Field(200, ge=1)
    test_images: int = Field(200, ge=1)
    min_objects: int = Field(1, ge=1, le=8)
    max_objects: int = Field(4, ge=1, le=8)
    zipf_exponent: float = Field(1.1, ge=0.0, le=4.0, description="class frequency ~ 1/rank^s")
    dominant_class: str = Field("person", min_length=1)
    dominant_share: float = Field(
        0.45, ge=0.0, le=1.0, description="share of images that contain the dominant class"
    )
    dominant_cooccurrence: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="share of dominant-class images that also hold another class",
    )
    accessory_classes: int = Field(
        2, ge=0, le=20, description="small classes drawn on top of the dominant class"
    )
    missing_label_rate: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="share of train images with the dominant class whose label is dropped",
    )
    distractors: int = Field(3, ge=0, le=20, description="max no-class clutter shapes per image")
    ignore_border: int = Field(1, ge=0, le=8, description="255 band around objects in masks")
    workers: int = Field(2, ge=1, le=256, description="processes that draw images in parallel")
    awkward_files: bool = Field(
        False,
        description="store the first train and val images as grey, RGBA, 16-bit, CMYK, "
        "EXIF-turned, 1x1 and (train only) 10000x200 files",
    )

    @model_validator(mode="after")
    def _objects_range(self) -> SyntheticConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})"
            )
        if self.accessory_classes > self.num_classes - 2:
            raise ValueError(
                f"accessory_classes ({self.accessory_classes}) must be <= num_classes - 2 "
                f"({self.num_classes - 2}): the dominant class and one main class are needed"
            )
        return self


class AugmentationConfig(StrictModel):
    """The paper's strong augmentation (3.1), as albumentations probabilities and limits."""

    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    shift_scale_rotate_p: float = Field(0.5, ge=0.0, le=1.0)
    shift_limit: float = Field(0.0625, ge=0.0, le=1.0)
    scale_limit: float = Field(0.1, ge=0.0, le=1.0)
    rotate_limit: int = Field(15, ge=0, le=180)
    gauss_noise_p: float = Field(0.2, ge=0.0, le=1.0)
    brightness_contrast_p: float = Field(0.3, ge=0.0, le=1.0)
    brightness_limit: float = Field(0.2, ge=0.0, le=1.0)
    contrast_limit: float = Field(0.2, ge=0.0, le=1.0)
    median_blur_p: float = Field(0.1, ge=0.0, le=1.0)
    median_blur_limit: int = Field(5, ge=3, le=15)
    rgb_shift_p: float = Field(0.2, ge=0.0, le=1.0)
    rgb_shift_limit: int = Field(15, ge=0, le=255)

    @field_validator("median_blur_limit")
    @classmethod
    def _odd_blur(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (median blur kernel), got {value}")
        return value


class DataConfig(StrictModel):
    source: Literal["synthetic", "voc", "lid", "folder"] = "synthetic"
    root: Path | None = Field(
        None, description="dataset folder (imported manifest); synthetic: generated if empty"
    )
    image_size: int = Field(320, ge=32, le=2048, description="training crop side, pixels")
    balance: Literal["none", "downsample", "upsample", "both"] = "downsample"
    # "balanced": step 1's epoch shows the balanced rows once (the paper's); "train_size": they
    # are repeated to the train split's size, so that the steps an epoch takes follow the data
    # set, not how much of it balancing keeps (little when classes are many and long-tailed).
    balanced_epoch: Literal["balanced", "train_size"] = "balanced"
    synthetic: SyntheticConfig = SyntheticConfig()
    augmentation: AugmentationConfig = AugmentationConfig()

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: Path | None) -> Path | None:
        # Relative to the folder the command runs in; Ray workers run elsewhere.
        return value.expanduser().resolve() if value is not None else None


class CRFConfig(StrictModel):
    """Dense CRF (pydensecrf) settings; defaults follow IRNet / PSA."""

    iterations: int = Field(10, ge=1, le=100)
    gauss_sxy: float = Field(3.0, gt=0)
    gauss_compat: float = Field(3.0, ge=0)
    bilateral_sxy: float = Field(50.0, gt=0)
    bilateral_srgb: float = Field(5.0, gt=0)
    bilateral_compat: float = Field(10.0, ge=0)
    gt_prob: float = Field(0.7, gt=0.0, lt=1.0, description="label-CRF confidence in the labels")


class TrainedStepConfig(StrictModel):
    """What every trained step shares."""

    # bf16 runs the forward and backward passes under `torch.autocast` (bfloat16), the losses
    # and the weights in float32. It pays where the chip has native bf16 (recent GPUs, x86 CPUs
    # with AVX-512 BF16 or AMX); elsewhere the CPU emulates it and training is slower, so auto
    # takes bf16 only there, deciding on each worker's device.
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="training arithmetic: fp32, bf16, or auto (bf16 where native)"
    )


class ClassificationConfig(TrainedStepConfig):
    """Step 1: multi-label classifier, CAMs, CRF and IRNet's confident labels (paper 3.1)."""

    backbone: str = "vgg16_oaa"
    weights: Literal["imagenet"] | None = "imagenet"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_pretrained: float = Field(1e-4, gt=0)
    lr_new: float = Field(1e-3, gt=0)
    exclude_classes: list[str] = ["person"]
    merge_binary_cams: bool = False
    cam_scales: list[float] = [1.0, 0.5, 1.5, 2.0]
    cam_flip: bool = True
    cam_norm: Literal["per_class", "global"] = "per_class"
    cam_method: Literal["cam", "gradcam"] = "cam"
    gradcam_layer: str | None = None
    cam_stride: int = Field(4, ge=1, le=32)
    cam_eval_thres: float = Field(0.15, gt=0.0, lt=1.0)
    conf_fg_thres: float = Field(0.30, gt=0.0, lt=1.0)
    conf_bg_thres: float = Field(0.05, gt=0.0, lt=1.0)
    crf: CRFConfig = CRFConfig()

    # Read only once the classifiers are trained (CAMs, CRF, confident labels, which CAMs to
    # merge): a change reuses the trained classifiers.
    inference_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "merge_binary_cams",
            "cam_scales",
            "cam_flip",
            "cam_norm",
            "cam_method",
            "gradcam_layer",
            "cam_stride",
            "cam_eval_thres",
            "conf_fg_thres",
            "conf_bg_thres",
            "crf",
        }
    )

    @field_validator("cam_scales")
    @classmethod
    def _positive_scales(cls, value: list[float]) -> list[float]:
        return _check_scales(value)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        # Imported here: torch loads in seconds, and commands that only read a config need none.
        from wsss.stages.classification.backbones import available_backbones

        if value not in available_backbones():
            raise ValueError(
                f"unknown backbone {value!r}; available: {', '.join(available_backbones())}"
            )
        return value

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ClassificationConfig:
        # A swapped pair silently removes the unsure band between foreground and background.
        if self.conf_fg_thres <= self.conf_bg_thres:
            raise ValueError(
                f"conf_fg_thres ({self.conf_fg_thres}) must be > conf_bg_thres "
                f"({self.conf_bg_thres})"
            )
        if self.cam_method == "gradcam" and not self.gradcam_layer:
            raise ValueError("cam_method 'gradcam' needs gradcam_layer (a module name)")
        return self


class IRNetConfig(TrainedStepConfig):
    """Step 2: IRNet boundary + displacement branches and the random walk (paper 3.2)."""

    backbone: str = "resnet50"
    weights: Literal["imagenet"] | None = "imagenet"
    # "step1_classifier" starts the backbone from step 1's trained classifier (same backbone
    # name required), for runs that cannot download ImageNet weights; `weights` is then unused.
    backbone_from: Literal["weights", "step1_classifier"] = "weights"
    freeze_backbone: bool = True
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    crop_size: int = Field(512, ge=32)
    lr_displacement: float = Field(0.05, gt=0)
    lr_boundary: float = Field(0.005, gt=0)
    # IRNet's PolyOptimizer passes weight decay where SGD takes momentum, so its published
    # runs trained with momentum ~1e-4; the paper's SGD uses 0.9. Both are reachable here.
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    min_confidence: float = Field(0.8, ge=0.0, le=1.0)
    scales: list[float] = [0.5, 1.0, 1.5, 2.0]
    radius_train: int = Field(10, ge=2, le=20)
    radius_infer: int = Field(5, ge=2, le=20)
    beta: float = Field(10.0, gt=0)
    exp_times: int = Field(8, ge=1, le=12)
    sem_seg_bg_thres: float = Field(0.3, gt=0.0, lt=1.0)

    # Read only when the trained IRNet writes pseudo masks: a change reuses the trained model.
    inference_fields: ClassVar[frozenset[str]] = frozenset(
        {"radius_infer", "beta", "exp_times", "sem_seg_bg_thres"}
    )

    @field_validator("scales")
    @classmethod
    def _positive_scales(cls, value: list[float]) -> list[float]:
        return _check_scales(value)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from wsss.stages.irnet.model import check_backbone

        check_backbone(value)
        return value

    @model_validator(mode="after")
    def _crop_fits_radius(self) -> IRNetConfig:
        # Training pairs start at least radius - 1 pixels from the sides of the stride-4 map.
        if self.crop_size % 16:
            raise ValueError(f"crop_size ({self.crop_size}) must be a multiple of 16")
        if self.crop_size // 4 < 2 * self.radius_train:
            raise ValueError(
                f"crop_size ({self.crop_size}) is too small for radius_train "
                f"({self.radius_train}): needs crop_size >= {8 * self.radius_train}"
            )
        return self


class TTAConfig(StrictModel):
    # Off, the run's final model is the plain pass (Table 3's "TTA: No"); the model trained is
    # the same, so a sweep over it trains once.
    enabled: bool = True
    scales: list[float] = [0.5, 1.0, 2.0]
    flip: bool = True

    @field_validator("scales")
    @classmethod
    def _positive_scales(cls, value: list[float]) -> list[float]:
        return _check_scales(value)


class SegmentationConfig(TrainedStepConfig):
    """Step 3: DeepLabV3+ trained on the pseudo masks, with test-time augmentation (3.3, 3.4)."""

    encoder: str = "resnet50"
    weights: Literal["imagenet"] | None = "imagenet"
    # As step2.backbone_from: the encoder starts from step 1's classifier (same ResNet).
    encoder_from: Literal["weights", "step1_classifier"] = "weights"
    output_stride: Literal[8, 16] = 16
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-6, ge=0.0)
    tta: TTAConfig = TTAConfig()

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        from wsss.stages.segmentation.model import check_encoder

        check_encoder(value)
        return value

    @property
    def test_time_augmentation(self) -> TTAConfig | None:
        """The TTA the final model predicts with; None for one plain pass."""
        return self.tta if self.tta.enabled else None


class RayConfig(StrictModel):
    """Where the job runs and how much of the machine it may take."""

    address: str | None = Field(None, description="join this cluster; None starts a local one")
    node_ip_address: str = Field(
        "127.0.0.1", description="a local cluster's node; on 127.0.0.1 every port is loopback only"
    )
    dashboard_host: str = "127.0.0.1"
    num_cpus: int = Field(2, ge=1)
    memory_gb: float = Field(8.0, gt=0)
    object_store_gb: float = Field(2.0, gt=0)
    num_workers: int = Field(2, ge=1, description="Ray Train workers")
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool = False
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="Ray Train workers: PACK fills a node first, SPREAD uses many nodes"
    )


class TrackingConfig(StrictModel):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; None: sqlite database in the runs folder"
    )
    experiment: str = "wsss"


class WsssConfig(StrictModel):
    name: str = Field("wsss", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    step1: ClassificationConfig = ClassificationConfig()
    step2: IRNetConfig = IRNetConfig()
    step3: SegmentationConfig = SegmentationConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _initial_weights_match_the_classifier(self) -> WsssConfig:
        taken = (
            ("step2.backbone", self.step2.backbone, self.step2.backbone_from),
            ("step3.encoder", self.step3.encoder, self.step3.encoder_from),
        )
        for key, name, source in taken:
            if source == "step1_classifier" and name != self.step1.backbone:
                raise ValueError(
                    f"{key}_from 'step1_classifier' needs {key} ({name!r}) equal to "
                    f"step1.backbone ({self.step1.backbone!r})"
                )
        return self


def _check_scales(scales: list[float]) -> list[float]:
    if not scales:
        raise ValueError("needs at least one scale")
    bad = [s for s in scales if not 0 < s <= 8]
    if bad:
        raise ValueError(f"scales must lie in (0, 8], got {bad}")
    return scales


def preset_names() -> list[str]:
    """Names of the presets shipped with the package, sorted."""
    folder = resources.files(PRESETS_PACKAGE)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_preset(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped preset; an unknown name lists the valid ones."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`; mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn `a.b.c=value` into `{"a": {"b": {"c": value}}}`; the value is read as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. step2.beta=10")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {assignment!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _allowed_keys(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """Field names of the section that `location` points into (for unknown-key messages)."""
    current: type[BaseModel] = model
    for part in location:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return sorted(current.model_fields)


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for error in exc.errors():
        location = tuple(error["loc"])
        key = ".".join(str(p) for p in location) or "<root>"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, location[:-1]))
            lines.append(f"config key {key}: unknown key; allowed here: {allowed}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            # A section-level check already names its fields; echoing the section adds noise.
            got = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"config key {key}: {message}{got}")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate(raw: dict[str, Any]) -> WsssConfig:
    """Validate a raw mapping into a `WsssConfig`, or raise `ConfigError` naming each bad key."""
    try:
        return WsssConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, WsssConfig)) from None


def load_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> WsssConfig:
    """Resolve preset ← config file ← `--set` overrides (later wins) into a validated config."""
    raw: dict[str, Any] = read_preset(preset) if preset else {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = merge(raw, _read_yaml(path.read_text(), str(path)))
    for assignment in overrides:
        raw = merge(raw, parse_override(assignment))
    return validate(raw)


def to_yaml(config: WsssConfig) -> str:
    """The resolved config as YAML, loadable again with `--config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
