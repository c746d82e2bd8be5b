"""Training settings: the guide's defaults, TOML round trip through a real project, --set parsing, refusals."""

from __future__ import annotations

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train.config import (
    MAX_STEPS,
    TrainSettings,
    apply_overrides,
    describe_settings,
    load_settings,
    resolved_min_snr_gamma,
    resolved_output_name,
    save_settings,
    settings_fields,
    validate_settings,
)

# The notebook's names and the guide's values (landscape.md, "Lora Trainer" defaults).
GUIDE_DEFAULTS = {
    "training_model": "anime",
    "resolution": 512,
    "flip_aug": False,
    "shuffle_tags": True,
    "activation_tags": 1,
    "caption_extension": ".txt",
    "num_repeats": 10,
    "preferred_unit": "Epochs",
    "how_many": 10,
    "save_every_n_epochs": 1,
    "keep_only_last_n_epochs": 10,
    "train_batch_size": 2,
    "unet_lr": 5e-4,
    "text_encoder_lr": 1e-4,
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_number": 3,
    "lr_warmup_ratio": 0.05,
    "min_snr_gamma": True,
    "lora_type": "LoRA",
    "network_dim": 16,
    "network_alpha": 8,
    "conv_dim": 8,
    "conv_alpha": 4,
    "optimizer": "AdamW8bit",
    "optimizer_args": [],
    "custom_dataset": [],
    "continue_from_lora": "",
    "weighted_captions": False,
    "clip_skip": 2,
    "max_token_length": 225,
    "seed": 42,
    "save_precision": "fp16",
    "noise_offset": 0.0,
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "bucket_reso_steps": 64,
    "cache_latents": True,
    "cache_latents_to_disk": True,
    "force_steps": False,
}


@pytest.fixture
def project(tmp_path):
    return Projects(tmp_path).create("p")


def test_defaults_are_the_guides():
    settings = TrainSettings()
    for key, value in GUIDE_DEFAULTS.items():
        assert getattr(settings, key) == value, key
    assert resolved_min_snr_gamma(settings) == 5.0


def test_every_setting_has_help_and_a_default():
    fields = settings_fields()
    assert set(GUIDE_DEFAULTS) <= set(fields)
    for name, spec in fields.items():
        assert len(spec.description) > 10, name
    table = describe_settings()
    for name, spec in fields.items():
        assert name in table
    assert "5e-4" in table and "cosine_with_restarts" in table and "--set key=value" in table


def test_new_project_loads_the_defaults(project):
    assert load_settings(project) == TrainSettings()


def test_toml_round_trip_through_a_real_project(project):
    settings = apply_overrides(
        TrainSettings(),
        [
            "resolution=768",
            "min_snr_gamma=8",
            "optimizer=Prodigy",
            "unet_lr=1.0",
            "text_encoder_lr=1.0",
            "optimizer_args=decouple=True, weight_decay=0.01, betas=[0.9,0.999]",
            'custom_dataset=[{"folder": "good", "num_repeats": 3}, {"folder": "reg", "is_reg": true, "flip_aug": true}]',
            "sample_prompts=1girl, solo | 1girl, smile",
            "output_name=my_lora",
        ],
    )
    save_settings(project, settings)
    text = project.settings_file.read_text(encoding="utf-8")
    assert "[train]" in text and "[project]" in text  # the other section is kept
    loaded = load_settings(project)
    assert loaded == settings
    assert loaded.custom_dataset[1].is_reg and loaded.custom_dataset[1].num_repeats is None  # unset stays unset
    assert resolved_min_snr_gamma(loaded) == 8.0
    assert resolved_output_name(loaded, project) == "my_lora"
    assert resolved_output_name(TrainSettings(), project) == "p"


def test_a_partial_section_takes_defaults_for_the_rest(project):
    project.write_section("train", {"num_repeats": 3, "lora_type": "locon"})
    loaded = load_settings(project)
    assert loaded.num_repeats == 3 and loaded.lora_type == "LoCon" and loaded.resolution == 512


def test_a_bad_stored_value_names_the_settings_file(project):
    project.write_section("train", {"train_batch_size": 0})
    with pytest.raises(UserError) as caught:
        load_settings(project)
    message = str(caught.value)
    assert str(project.settings_file) in message and "[train]" in message
    assert "train_batch_size = 0" in message and "1..64" in message


def test_an_unknown_stored_key_names_the_file_and_suggests(project):
    project.write_section("train", {"num_repeat": 5})
    with pytest.raises(UserError) as caught:
        load_settings(project)
    assert str(project.settings_file) in str(caught.value) and "num_repeats" in str(caught.value)


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("resolution=640", "resolution", 640),
        ("how_many=1e4", "how_many", 10000),
        ("unet_lr=2e-4", "unet_lr", 2e-4),
        ("text_encoder_lr=0", "text_encoder_lr", 0.0),
        ("flip_aug=yes", "flip_aug", True),
        ("shuffle_tags=off", "shuffle_tags", False),
        ("cache_latents=FALSE", "cache_latents", False),
        ("preferred_unit=steps", "preferred_unit", "Steps"),
        ("lr_scheduler=Constant", "lr_scheduler", "constant"),
        ("lora_type=LOCON", "lora_type", "LoCon"),
        ("mixed_precision=bf16", "mixed_precision", "bf16"),
        ("max_token_length=75", "max_token_length", 75),
        ("min_snr_gamma=true", "min_snr_gamma", True),
        ("min_snr_gamma=false", "min_snr_gamma", False),
        ("min_snr_gamma=0", "min_snr_gamma", False),
        ("min_snr_gamma=5.5", "min_snr_gamma", 5.5),
        ("training_model='C:/models/my model.safetensors'", "training_model", "C:/models/my model.safetensors"),
        ("training_model=https://civitai.com/api/download/models/12345", "training_model", "https://civitai.com/api/download/models/12345"),
        ("continue_from_lora=", "continue_from_lora", ""),
        ("optimizer_args=weight_decay=0.1 betas=[0.9,0.99]", "optimizer_args", ["weight_decay=0.1", "betas=[0.9,0.99]"]),
        ('optimizer_args=["weight_decay=0.1", "betas=[0.9, 0.99]"]', "optimizer_args", ["weight_decay=0.1", "betas=[0.9, 0.99]"]),
        ("optimizer_args=", "optimizer_args", []),
        ("sample_prompts=1girl, solo, smile", "sample_prompts", ["1girl, solo, smile"]),
        ('sample_prompts=["a, b", "c"]', "sample_prompts", ["a, b", "c"]),
        ("caption_extension=.caption", "caption_extension", ".caption"),
    ],
)
def test_every_override_type(override, key, expected):
    value = getattr(apply_overrides(TrainSettings(), [override]), key)
    assert value == expected and type(value) is type(expected)


def test_custom_dataset_override_as_json_list_or_single_object():
    settings = apply_overrides(TrainSettings(), ['custom_dataset=[{"folder": "a", "num_repeats": 3, "keep_tokens": 2}, {"folder": "r", "is_reg": true}]'])
    assert [(e.folder, e.num_repeats, e.is_reg, e.keep_tokens) for e in settings.custom_dataset] == [("a", 3, False, 2), ("r", None, True, None)]
    single = apply_overrides(TrainSettings(), ['custom_dataset={"folder": "only", "activation_tags": 3}'])
    assert single.custom_dataset[0].folder == "only" and single.custom_dataset[0].keep_tokens == 3
    assert apply_overrides(settings, ["custom_dataset=[]"]).custom_dataset == []


def test_overrides_apply_in_order_and_keep_the_rest():
    settings = apply_overrides(TrainSettings(), ["num_repeats=5", "num_repeats=7", "network_dim=32"])
    assert (settings.num_repeats, settings.network_dim, settings.network_alpha) == (7, 32, 8)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("resolution=500", ["resolution = 500", "256..2048", "multiple of 64"]),
        ("resolution=4096", ["resolution = 4096", "256..2048"]),
        ("train_batch_size=0", ["train_batch_size = 0", "1..64"]),
        ("train_batch_size=65", ["1..64"]),
        ("num_repeats=1001", ["num_repeats = 1001", "1..1000"]),
        ("num_repeats=2.5", ["num_repeats = '2.5'", "whole number 1..1000"]),
        ("how_many=0", ["how_many = 0", "1..100000"]),
        ("network_dim=2048", ["network_dim = 2048", "1..1024"]),
        ("clip_skip=13", ["clip_skip = 13", "1..12"]),
        ("max_token_length=100", ["max_token_length = 100", "75, 150, 225"]),
        ("unet_lr=-1e-4", ["unet_lr = -0.0001", "< 1"]),
        ("unet_lr=5", ["unet_lr = 5.0", "below 1", "Prodigy"]),
        ("text_encoder_lr=1", ["text_encoder_lr = 1.0", "below 1"]),
        ("lr_scheduler=cosine_annealing", ["lr_scheduler = 'cosine_annealing'", "cosine_with_restarts", "polynomial"]),
        ("optimizer=SGD", ["optimizer = 'SGD'", "AdamW8bit", "AdaFactor"]),
        ("lora_type=LyCORIS", ["lora_type = 'LyCORIS'", "LoRA, LoCon, LoHa, LoKr, IA3, DoRA"]),
        ("mixed_precision=fp8", ["mixed_precision = 'fp8'", "auto, fp16, bf16, no"]),
        ("save_precision=fp32", ["save_precision = 'fp32'", "fp16, bf16, float"]),
        ("flip_aug=maybe", ["flip_aug = 'maybe'", "true or false"]),
        ("min_snr_gamma=lots", ["min_snr_gamma = 'lots'", "true (= 5.0)"]),
        ("min_snr_gamma=-2", ["min_snr_gamma = -2.0", "0 to 100"]),
        ("optimizer_args=weight_decay", ["key=value"]),
        ("caption_extension=txt", ["caption_extension = 'txt'", "'.txt'"]),
        ("training_model=", ["training_model", "anime, anylora, sd15"]),
        ("output_name=../evil", ["output_name = '../evil'", "letters, digits"]),
        ("lr_warmup_ratio=0.9", ["lr_warmup_ratio = 0.9", "0..0.5"]),
        ("max_bucket_reso=448", ["max_bucket_reso (448)", "resolution (512)"]),
        ("custom_dataset=not json", ["custom_dataset", "JSON", "good_images"]),
        ('custom_dataset=[{"folder": "/abs/path"}]', ["custom_dataset[0].folder = '/abs/path'", "relative"]),
        ('custom_dataset=[{"folder": "a/../../b"}]', ["custom_dataset[0].folder", "no '..'"]),
        ('custom_dataset=[{"folder": "a", "num_repeats": 0}]', ["custom_dataset[0].num_repeats = 0", "1..1000"]),
        ('custom_dataset=[{"folder": "a", "repeats": 3}]', ["custom_dataset[0].repeats", "num_repeats"]),
        ('custom_dataset=[{"num_repeats": 3}]', ["custom_dataset[0].folder is missing"]),
    ],
)
def test_bad_overrides_are_refused_with_the_allowed_values(override, expected):
    with pytest.raises(UserError) as caught:
        apply_overrides(TrainSettings(), [override])
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_prodigy_may_use_rates_around_one():
    settings = apply_overrides(TrainSettings(), ["optimizer=prodigy", "unet_lr=1", "text_encoder_lr=1", "network_alpha=16"])
    assert settings.optimizer == "Prodigy" and settings.unet_lr == 1.0


def test_unknown_key_suggests_close_matches_and_the_help():
    with pytest.raises(UserError) as caught:
        apply_overrides(TrainSettings(), ["unet_rl=1e-4"])
    message = str(caught.value)
    assert "unet_rl" in message and "unet_lr" in message and "train --help-settings" in message
    with pytest.raises(UserError, match="help-settings"):
        apply_overrides(TrainSettings(), ["zzzz=1"])


def test_an_override_without_equals_is_refused():
    with pytest.raises(UserError, match="key=value"):
        apply_overrides(TrainSettings(), ["num_repeats"])


def test_overrides_do_not_change_the_settings_they_start_from():
    base = TrainSettings()
    apply_overrides(base, ["num_repeats=3"])
    assert base.num_repeats == 10


def test_validate_settings_from_plain_data():
    assert validate_settings({"seed": 7}).seed == 7
    with pytest.raises(UserError, match="seed = -1"):
        validate_settings({"seed": -1})


def test_force_steps_and_limit_are_exposed():
    assert MAX_STEPS == 10_000
    assert apply_overrides(TrainSettings(), ["force_steps=true"]).force_steps is True


@pytest.mark.parametrize("value, expected", [(True, 5.0), (False, None), (0.0, None), (8.0, 8.0), (1.0, 1.0)])
def test_resolved_min_snr_gamma(value, expected):
    assert resolved_min_snr_gamma(TrainSettings(min_snr_gamma=value)) == expected


def test_saves_of_different_settings_at_the_same_time_all_land(project):
    """The page saves a field when it is left, while a preset or another field may be saving too."""
    import threading

    from lora_gradio.engine.train.config import load_settings, update_settings

    def save(key, values):
        for value in values:
            update_settings(project, {key: value})

    threads = [threading.Thread(target=save, args=("network_dim", range(1, 41))), threading.Thread(target=save, args=("how_many", range(1, 41)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settings = load_settings(project)
    assert (settings.network_dim, settings.how_many) == (40, 40)
    project.write_section("tags", {"activation": "x"})  # other sections are kept
    update_settings(project, {"network_alpha": 2})
    assert project.read_section("tags") == {"activation": "x"} and load_settings(project).network_alpha == 2
