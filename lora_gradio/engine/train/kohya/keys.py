"""kohya's keys as import reads them: each level (a training file, [general], a dataset, a subset) remembers
which of its keys were read and where each value came from, for the notes and the error messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import UserError


@dataclass
class Origin:
    """Where a value came from, for error messages."""

    path: Path
    label: str
    value: Any = None

    def describe(self) -> str:
        return f"In {self.path}, {self.label}" + ("" if self.value is None else f" = {show(self.value)}")


class Keys:
    """One level of kohya keys (a training file, [general], a dataset, a subset), remembering which were read."""

    def __init__(self, path: Path, values: dict[str, tuple[Any, str]]):
        self.path = path
        self.values = values  # key -> (value, label such as "[training_arguments] seed")
        self.used: set = set()

    @classmethod
    def table(cls, path: Path, table: Mapping[str, Any], where: str) -> Keys:
        return cls(path, {key: (value, f"{where} {key}") for key, value in table.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def raw(self, key: str, default: Any = None) -> Any:
        if key not in self.values:
            return default
        self.used.add(key)
        return self.values[key][0]

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        """The value as `kind` (int, float, bool, str), or `default` when the key is absent."""
        if key not in self.values:
            return default
        return convert(self, key, self.raw(key), kind)

    def origin(self, key: str) -> Origin:
        value, label = self.values[key]
        return Origin(self.path, label, value)

    def bad(self, key: str, advice: str) -> UserError:
        return UserError(f"{self.origin(key).describe()} is not allowed: {advice}.")

    def unused(self) -> list[str]:
        return [key for key in self.values if key not in self.used]


def convert(keys: Keys, key: str, value: Any, kind: type) -> Any:
    """`value` (of `key` in `keys`) as `kind` (int, float, bool, str), refusing a value of another type."""
    if kind is bool:
        if not isinstance(value, bool):
            raise keys.bad(key, "use true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise keys.bad(key, "use text in quotes")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise keys.bad(key, "use a number")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise keys.bad(key, "use a whole number")
        return int(value)
    return float(value)


def lookup(chain: list[Keys], key: str) -> tuple[Keys, str] | None:
    """The first level of `chain` (subset, dataset, [general], training file) that sets `key`."""
    for keys in chain:
        if key in keys:
            return keys, key
    return None


def lookup_value(chain: list[Keys], key: str, kind: type) -> Any:
    """The value of `key` as `kind` from the first level of `chain` that sets it, else None."""
    hit = lookup(chain, key)
    return hit[0].get(key, kind) if hit else None


def agreed(chains: list[list[Keys]], key: str) -> tuple[Keys, str] | None:
    """Where `key` is set for every subset, refusing subsets that disagree."""
    hits = [hit for hit in (lookup(chain, key) for chain in chains) if hit]
    values = sorted({json.dumps(keys.raw(k)) for keys, k in hits})
    if len(values) > 1:
        raise hits[-1][0].bad(key, f"the subsets disagree on {key} ({', '.join(values)}), but this tool uses one for the whole run; make them equal")
    return hits[0] if hits else None


def show(value: Any) -> str:
    """A value for notes and messages: true/false, quoted text, numbers as they are, lists and tables as JSON
    (shortened past 80 characters)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)
