"""The pydantic 1/2 helpers, and the training settings built on them.

Runs under pydantic 2 (the main venv) and pydantic 1.10 (the WebUI's; no torch there):
    PYTHONPATH=. .venv-gradio3/bin/python -m pytest tests/test_settings_model.py
"""

from __future__ import annotations

from typing import List, Literal, Mapping, Optional

import pydantic
import pytest
from pydantic import Field

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.settings_model import (
    PYDANTIC_V2,
    SettingsBase,
    allowed,
    describe_allowed,
    field_check,
    field_infos,
    model_check,
    to_dict,
    validate,
)


class Entry(SettingsBase):
    folder: str = Field(..., description="Folder name.")
    repeats: Optional[int] = Field(None, ge=1, le=100, description="Repeats.")


def _check_pair(values: Mapping[str, object]) -> None:
    if values["low"] > values["high"]:
        raise ValueError(f"low ({values['low']}) must not exceed high ({values['high']}): lower low or raise high")


class Sample(SettingsBase):
    size: int = Field(512, ge=256, le=2048, multiple_of=64, description="Size in pixels.")
    rate: float = Field(5e-4, ge=0, lt=1, description="A rate.")
    mode: Literal["Epochs", "Steps"] = Field("Epochs", description="Unit.")
    tokens: Literal[75, 150, 225] = Field(225, description="Tokens.")
    flag: bool = Field(False, description="A flag.")
    words: List[str] = Field(default_factory=list, **allowed("a list of words"), description="Words.")
    entries: List[Entry] = Field(default_factory=list, description="Entries.")
    name: str = Field("", description="A name.")
    low: int = Field(1, ge=0, le=10)
    high: int = Field(5, ge=0, le=10)

    @field_check("name")
    def check_name(cls, value: str) -> str:
        if "/" in value:
            raise ValueError("use a plain name without '/'")
        return value

    @field_check("words", before=True)
    def split_words(cls, value: object) -> object:
        return value.split() if isinstance(value, str) else value

    check_pair = model_check(_check_pair)


def test_the_installed_pydantic_is_the_one_we_think():
    assert PYDANTIC_V2 == pydantic.VERSION.startswith("2")


def test_field_infos_reports_defaults_help_and_limits_in_order():
    infos = field_infos(Sample)
    assert list(infos)[:3] == ["size", "rate", "mode"]
    size = infos["size"]
    assert size.default == 512 and size.annotation is int and size.description == "Size in pixels."
    assert size.constraints == {"ge": 256, "le": 2048, "multiple_of": 64}
    assert infos["rate"].constraints == {"ge": 0, "lt": 1}
    assert infos["mode"].constraints["choices"] == ("Epochs", "Steps")
    assert infos["tokens"].constraints["choices"] == (75, 150, 225)
    assert infos["words"].default == [] and infos["words"].constraints["allowed"] == "a list of words"
    # A namedtuple: also usable as the plain (default, annotation, description, constraints) tuple.
    default, annotation, description, constraints = infos["flag"]
    assert (default, annotation, description, constraints) == (False, bool, "A flag.", {})


def test_describe_allowed_in_words():
    infos = field_infos(Sample)
    assert describe_allowed(infos["size"]) == "whole number 256..2048, a multiple of 64"
    assert describe_allowed(infos["rate"]) == "number >= 0 and < 1"
    assert describe_allowed(infos["mode"]) == "one of: Epochs, Steps"
    assert describe_allowed(infos["flag"]) == "true or false"
    assert describe_allowed(infos["words"]) == "a list of words"
    assert describe_allowed(field_infos(Entry)["repeats"]) == "whole number 1..100"


def test_validate_and_to_dict_round_trip_nested_models():
    model = validate(Sample, {"size": 768, "entries": [{"folder": "a", "repeats": 3}], "words": "x y"})
    data = to_dict(model)
    assert data["size"] == 768 and data["words"] == ["x", "y"]
    assert data["entries"] == [{"folder": "a", "repeats": 3}]
    assert validate(Sample, data) == model


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"size": 100}, ["size = 100", "256..2048", "multiple of 64"]),
        ({"size": 500}, ["size = 500", "multiple of 64"]),
        ({"rate": 1.5}, ["rate = 1.5", ">= 0 and < 1"]),
        ({"mode": "Minutes"}, ["mode = 'Minutes'", "one of: Epochs, Steps"]),
        ({"tokens": 100}, ["tokens = 100", "one of: 75, 150, 225"]),
        ({"size": "big"}, ["size = 'big'", "whole number 256..2048"]),
        ({"entries": [{"folder": "a", "repeats": 0}]}, ["entries[0].repeats = 0", "1..100"]),
        ({"entries": [{"repeats": 2}]}, ["entries[0].folder is missing"]),
        ({"entries": [{"folder": "a", "bogus": 1}]}, ["entries[0].bogus", "folder, repeats"]),
        ({"name": "a/b"}, ["name = 'a/b'", "use a plain name without '/'"]),
        ({"low": 9, "high": 2}, ["low (9) must not exceed high (2)"]),
        ({"unknown_key": 1}, ["unknown_key", "size, rate, mode"]),
    ],
)
def test_validate_refuses_with_one_line_naming_key_value_and_allowed(data, expected):
    with pytest.raises(UserError) as caught:
        validate(Sample, data, where="In x.toml: ")
    message = str(caught.value)
    assert message.startswith("In x.toml: ")
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)
    assert "Value error" not in message and "pydantic" not in message


def test_int_fields_refuse_fractions_and_booleans_under_both_versions():
    # pydantic 1 would quietly turn 5.5 into 5 and True into 1.
    with pytest.raises(UserError, match=r"size = 576.5"):
        validate(Sample, {"size": 576.5})
    with pytest.raises(UserError, match=r"low = true"):
        validate(Sample, {"low": True})
    assert validate(Sample, {"size": 576.0}).size == 576


def test_text_choices_match_case_insensitively():
    assert validate(Sample, {"mode": "steps"}).mode == "Steps"


# The training settings under this pydantic version (the WebUI runs them under pydantic 1).


def test_train_settings_defaults_and_overrides_work_under_this_pydantic():
    from lora_gradio.engine.train.config import TrainSettings, apply_overrides, describe_settings, resolved_min_snr_gamma

    settings = TrainSettings()
    assert (settings.resolution, settings.num_repeats, settings.train_batch_size, settings.unet_lr) == (512, 10, 2, 5e-4)
    assert resolved_min_snr_gamma(settings) == 5.0
    changed = apply_overrides(
        settings,
        ["lora_type=locon", "min_snr_gamma=1.0", "max_token_length=150", 'custom_dataset=[{"folder": "a", "activation_tags": 2}]'],
    )
    assert changed.lora_type == "LoCon" and changed.max_token_length == 150
    # 1.0 must stay a gamma of 1.0, not turn into True (= 5.0) through bool coercion.
    assert changed.min_snr_gamma == 1.0 and resolved_min_snr_gamma(changed) == 1.0
    assert changed.custom_dataset[0].keep_tokens == 2
    with pytest.raises(UserError, match=r"resolution = 100 .*256\.\.2048"):
        apply_overrides(settings, ["resolution=100"])
    assert "network_dim" in describe_settings()
