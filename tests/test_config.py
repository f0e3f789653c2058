"""Config validation: every preset loads, overrides merge, bad values name their key."""

from pathlib import Path

import pytest
import yaml

from wsss.platform.config import ConfigError, load_config, parse_override, preset_names, to_yaml


def test_shipped_presets_are_the_four_promised_and_all_validate():
    assert preset_names() == ["demo", "paper", "smoke", "voc"]
    for name in preset_names():
        assert load_config(name).name == name


def test_paper_preset_carries_the_papers_numbers():
    config = load_config("paper")
    assert config.step1.backbone == "vgg16_oaa"
    assert (config.step1.lr_pretrained, config.step1.lr_new) == (1e-4, 1e-3)
    assert config.step1.exclude_classes == ["person"]
    assert config.data.balance == "downsample"
    assert config.step2.backbone == "resnet50" and config.step2.freeze_backbone
    assert (config.step2.lr_displacement, config.step2.lr_boundary) == (0.05, 0.005)
    assert config.step2.min_confidence == 0.8
    assert config.step2.scales == [0.5, 1.0, 1.5, 2.0]
    assert config.step2.sem_seg_bg_thres in (0.3, 0.5)
    assert config.step3.encoder == "resnet50" and config.step3.weights == "imagenet"
    assert (config.step3.lr, config.step3.momentum, config.step3.weight_decay) == (1e-3, 0.9, 1e-6)
    assert config.step3.tta.scales == [0.5, 1.0, 2.0] and config.step3.tta.flip
    assert (config.step1.conf_fg_thres, config.step1.conf_bg_thres) == (0.30, 0.05)


def test_test_presets_never_ask_for_downloads():
    for name in ("smoke", "demo"):
        config = load_config(name)
        assert config.step1.weights is None
        assert config.step2.weights is None
        assert config.step3.weights is None
        assert not config.ray.use_gpu


def test_set_overrides_parse_yaml_values_and_win_over_file(tmp_path: Path):
    file = tmp_path / "mine.yaml"
    file.write_text("step2:\n  sem_seg_bg_thres: 0.5\n  beta: 7\n")
    config = load_config(
        "smoke", file, ["step2.beta=12", "step3.tta.scales=[1.0, 2.0]", "step3.tta.flip=false"]
    )
    assert config.step2.sem_seg_bg_thres == 0.5
    assert config.step2.beta == 12
    assert config.step3.tta.scales == [1.0, 2.0]
    assert config.step3.tta.flip is False
    assert config.step1.epochs == load_config("smoke").step1.epochs


def test_parse_override_nests_the_dotted_key():
    assert parse_override("a.b.c=0.5") == {"a": {"b": {"c": 0.5}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("step2.beta")


def test_unknown_key_names_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        load_config("smoke", overrides=["step2.bta=3"])
    message = str(error.value)
    assert "step2.bta: unknown key" in message
    assert "beta" in message and "sem_seg_bg_thres" in message


def test_unknown_top_level_section_is_reported():
    with pytest.raises(ConfigError, match="config key stepp: unknown key; allowed here: data"):
        load_config("smoke", overrides=["stepp.x=1"])


def test_wrong_type_names_the_key_and_the_value():
    with pytest.raises(ConfigError, match=r"step1\.epochs: .*integer.*'many'"):
        load_config("smoke", overrides=["step1.epochs=many"])


def test_out_of_range_value_names_the_bound():
    with pytest.raises(
        ConfigError, match=r"data\.synthetic\.num_classes: .*less than or equal to 200"
    ):
        load_config("smoke", overrides=["data.synthetic.num_classes=500"])


def test_closed_choices_list_the_options():
    with pytest.raises(ConfigError, match=r"step3\.output_stride: .*8 or 16"):
        load_config("smoke", overrides=["step3.output_stride=4"])


def test_swapped_confidence_thresholds_are_refused():
    with pytest.raises(ConfigError, match=r"conf_fg_thres .* must be > conf_bg_thres"):
        load_config("smoke", overrides=["step1.conf_fg_thres=0.05", "step1.conf_bg_thres=0.3"])


@pytest.mark.parametrize(
    ("section", "key"), [("step2", "backbone"), ("step3", "encoder")], ids=["irnet", "deeplab"]
)
def test_initial_weights_from_step1_need_the_same_backbone(section, key):
    message = rf"{section}\.{key}_from .* needs {section}\.{key} \('resnet50'\) equal to step1"
    with pytest.raises(ConfigError, match=message):
        load_config(
            "smoke",
            overrides=[f"{section}.{key}_from=step1_classifier", f"{section}.{key}=resnet50"],
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "step1.backbone=resnet5",
            r"step1\.backbone: unknown backbone 'resnet5'; available: .*resnet50",
        ),
        (
            "step2.backbone=vgg16",
            r"step2\.backbone: unknown IRNet backbone 'vgg16'; available: resnet50",
        ),
        (
            "step3.encoder=resnet5",
            r"step3\.encoder: unknown encoder 'resnet5'; valid names include resnet50",
        ),
    ],
    ids=["classifier", "irnet", "deeplab"],
)
def test_a_misspelt_network_is_refused_with_the_names_there_are(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", overrides=[override])


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_config("smoke", overrides=["step2.beta=-1", "ray.num_cpus=0", "tta=1"])
    message = str(error.value)
    assert "step2.beta" in message and "ray.num_cpus" in message and "tta" in message


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'fast'; valid presets: demo, paper"):
        load_config("fast")


def test_missing_and_malformed_config_files_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("smoke", tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=f"{bad}: expected a mapping"):
        load_config(None, bad)


def test_resolved_yaml_loads_back_to_the_same_config(tmp_path: Path):
    config = load_config("demo", overrides=["step2.sem_seg_bg_thres=0.5"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(None, saved) == config
    assert yaml.safe_load(saved.read_text())["step2"]["sem_seg_bg_thres"] == 0.5
