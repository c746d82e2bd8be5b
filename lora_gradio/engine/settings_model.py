"""Small helpers so the settings models work under pydantic 2 and pydantic 1.10.

Standalone we get pydantic 2 (gradio 4+ brings it); inside the AUTOMATIC1111 WebUI, which pins
fastapi 0.94, we get pydantic 1.10. The settings models only use what both share (``BaseModel``,
``Field(default, ge=, le=, multiple_of=, description=)``, ``Literal``, ``List``, ``Union``), plus the
decorators here for per-field and whole-model checks. Everything else (UI, CLI, TOML) reads the models
through `field_infos`, `to_dict` and `validate`, never through version-specific attributes.
"""

from __future__ import annotations

import typing
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Type, TypeVar

import pydantic
from pydantic import BaseModel

from lora_gradio.engine.errors import UserError

PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2

M = TypeVar("M", bound=BaseModel)
_CONSTRAINT_NAMES = ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length")


class FieldSpec(NamedTuple):
    """What the UI and CLI need to know about one setting."""

    default: Any
    annotation: Any
    description: str
    constraints: Dict[str, Any]  # ge/gt/le/lt/multiple_of/..., "choices" for a Literal, "allowed" text if given


def allowed(text: str) -> Dict[str, Any]:
    """``Field(..., **allowed("true, false or a number"))``: the allowed values in words, where the type can't say it.

    Both versions keep ``json_schema_extra`` (pydantic 1 files unknown Field arguments under ``extra``).
    """
    return {"json_schema_extra": {"allowed": text}}


if PYDANTIC_V2:

    class SettingsBase(BaseModel):
        """Base for settings models: unknown keys are errors (a typo must not be silently ignored)."""

        model_config = pydantic.ConfigDict(extra="forbid")

else:  # pragma: no cover - exercised in the pydantic-1 venv

    class SettingsBase(BaseModel):  # type: ignore[no-redef]
        """Base for settings models: unknown keys are errors (a typo must not be silently ignored)."""

        class Config:
            extra = "forbid"


def field_check(*names: str, before: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Decorate ``def check(cls, value) -> value`` (raise ValueError to refuse) as a field validator.

    ``before=True`` runs it on the raw input, before type conversion.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        if PYDANTIC_V2:
            return pydantic.field_validator(*names, mode="before" if before else "after")(func)
        return pydantic.validator(*names, pre=before, allow_reuse=True)(func)  # pragma: no cover

    return decorate


def model_check(func: Callable[[Mapping[str, Any]], None]) -> Any:
    """Turn ``func(values) -> None`` (raise ValueError to refuse) into a whole-model check.

    Runs after every field is valid; `values` maps field names to the converted values. Assign the
    result to a public class attribute name (pydantic 2 treats ``_names`` as private attributes).
    """
    if PYDANTIC_V2:

        def after(self: BaseModel) -> BaseModel:
            func({name: getattr(self, name) for name in type(self).model_fields})
            return self

        return pydantic.model_validator(mode="after")(after)

    def root(cls: type, values: Dict[str, Any]) -> Dict[str, Any]:  # pragma: no cover
        func(values)
        return values

    return pydantic.root_validator(skip_on_failure=True, allow_reuse=True)(root)  # pragma: no cover


def field_infos(model_cls: Type[BaseModel]) -> Dict[str, FieldSpec]:
    """Default, annotation, description and constraints of each field, in declaration order."""
    specs: Dict[str, FieldSpec] = {}
    if PYDANTIC_V2:
        for name, info in model_cls.model_fields.items():
            constraints: Dict[str, Any] = {}
            for meta in info.metadata:
                for key in _CONSTRAINT_NAMES:
                    if getattr(meta, key, None) is not None:
                        constraints[key] = getattr(meta, key)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "allowed" in extra:
                constraints["allowed"] = extra["allowed"]
            specs[name] = _spec(info.get_default(call_default_factory=True), info.annotation, info.description, constraints)
    else:  # pragma: no cover
        # ModelField.outer_type_ is a generated Constrained* class; the declared type is in the hints.
        hints = typing.get_type_hints(model_cls)
        for name, field in model_cls.__fields__.items():
            constraints = {key: getattr(field.field_info, key) for key in _CONSTRAINT_NAMES if getattr(field.field_info, key, None) is not None}
            extra = field.field_info.extra.get("json_schema_extra") or {}
            if "allowed" in extra:
                constraints["allowed"] = extra["allowed"]
            specs[name] = _spec(field.get_default(), hints.get(name, field.outer_type_), field.field_info.description, constraints)
    return specs


def _spec(default: Any, annotation: Any, description: Optional[str], constraints: Dict[str, Any]) -> FieldSpec:
    choices = literal_choices(annotation)
    if choices:
        constraints = {**constraints, "choices": choices}
    return FieldSpec(default, annotation, description or "", constraints)


def literal_choices(annotation: Any) -> Tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` (or ``Optional[Literal[...]]``) annotation, else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg)
    return ()


def to_dict(model: BaseModel) -> Dict[str, Any]:
    """Plain data (nested models as dicts), ready for TOML or JSON."""
    return model.model_dump() if PYDANTIC_V2 else model.dict()


def describe_allowed(spec: FieldSpec) -> str:
    """The allowed values of a field in words, e.g. '256..2048, a multiple of 64' or 'one of: a, b'."""
    c = spec.constraints
    if "allowed" in c:
        return str(c["allowed"])
    if "choices" in c:
        return "one of: " + ", ".join(str(choice) for choice in c["choices"])
    kind = _kind(spec.annotation)
    lower = f">= {c['ge']}" if "ge" in c else f"> {c['gt']}" if "gt" in c else None
    upper = f"<= {c['le']}" if "le" in c else f"< {c['lt']}" if "lt" in c else None
    if "ge" in c and "le" in c:
        text = f"{c['ge']}..{c['le']}"
    else:
        text = " and ".join(part for part in (lower, upper) if part)
    if kind == "int":
        text = f"whole number {text}".strip()
    elif kind == "float":
        text = f"number {text}".strip()
    elif kind == "bool":
        text = "true or false"
    elif kind == "list":
        text = "list"
    elif kind == "str":
        text = "text"
    if "multiple_of" in c:
        text += f", a multiple of {c['multiple_of']}"
    return text or "any"


def _kind(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Union:  # Optional[X] reads as X
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    if annotation is bool:
        return "bool"
    if isinstance(annotation, type) and issubclass(annotation, int):
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "str"
    if typing.get_origin(annotation) in (list, typing.List):
        return "list"
    return "other"


def validate(model_cls: Type[M], data: Mapping[str, Any], where: str = "") -> M:
    """Build `model_cls` from `data`, or raise `UserError` with one line naming the key, value and allowed values.

    `where` prefixes the message (e.g. "In ~/Loras/x/lora_gradio.toml [train]: ").
    """
    specs = field_infos(model_cls)
    data = normalize_choices(specs, data)
    _refuse_loose_numbers(specs, data, where)
    try:
        return model_cls(**data)
    except pydantic.ValidationError as exc:
        raise UserError(where + _explain(model_cls, specs, data, exc)) from None
    except (TypeError, ValueError) as exc:  # a check that raised outside pydantic's wrapping
        raise UserError(f"{where}{exc}") from None


def normalize_choices(specs: Mapping[str, FieldSpec], data: Mapping[str, Any]) -> Dict[str, Any]:
    """Match text choices case-insensitively ("locon" -> "LoCon"), so hand-edited files and shells just work."""
    out = dict(data)
    for name, value in data.items():
        choices = specs[name].constraints.get("choices", ()) if name in specs else ()
        if isinstance(value, str) and value not in choices:
            out[name] = next((c for c in choices if isinstance(c, str) and c.lower() == value.strip().lower()), value)
    return out


def _refuse_loose_numbers(specs: Dict[str, FieldSpec], data: Dict[str, Any], where: str) -> None:
    # pydantic 1 quietly turns 5.5 into 5 and True into 1 for an int field; refuse both under either version.
    for name, value in data.items():
        spec = specs.get(name)
        if spec is None or _kind(spec.annotation) != "int" or literal_choices(spec.annotation):
            continue
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{where}{name} = {_show(value)} is not allowed: use {allowed_phrase(spec)}.")


def _explain(model_cls: Type[BaseModel], specs: Dict[str, FieldSpec], data: Mapping[str, Any], exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    loc = tuple(part for part in error.get("loc", ()) if part != "__root__")
    kind = str(error.get("type", ""))
    message = _clean_message(str(error.get("msg", "")))
    if not loc:  # a whole-model check: its message says it all
        return _sentence(message)
    key = _loc_text(loc)
    if kind in ("extra_forbidden", "value_error.extra"):
        known = ", ".join(_specs_at(model_cls, loc[:-1]) or [])
        return f"Unknown setting {key!r}: use one of {known}." if known else f"Unknown setting {key!r}."
    spec = (_specs_at(model_cls, loc[:-1]) or {}).get(loc[-1]) if isinstance(loc[-1], str) else None
    if kind in ("missing", "value_error.missing"):
        return f"{key} is missing: add it ({describe_allowed(spec)})." if spec else f"{key} is missing: add it."
    found, value = _lookup(data, loc)
    if not found and "input" in error:
        found, value = True, error["input"]
    shown = f"{key} = {_show(value)}" if found else key
    if kind in ("value_error", "assertion_error") or spec is None:
        return f"{shown} is not allowed: {_sentence(message)}"  # our own check's advice, or pydantic's words
    return f"{shown} is not allowed: use {allowed_phrase(spec)}."


def allowed_phrase(spec: FieldSpec) -> str:
    """`describe_allowed` ready to follow "use": 'a whole number 1..64', 'one of: a, b', 'true or false'."""
    text = describe_allowed(spec)
    return text if text.startswith(("one of", "true", "any", "a ", "an ")) else "a " + text


def _specs_at(model_cls: Type[BaseModel], path: Tuple[Any, ...]) -> Optional[Dict[str, FieldSpec]]:
    """Field specs of the (nested) model found by following `path` (names and list indexes)."""
    cls: Any = model_cls
    for part in path:
        if isinstance(part, int):
            continue
        spec = field_infos(cls).get(str(part))
        if spec is None:
            return None
        cls = _nested_model(spec.annotation)
        if cls is None:
            return None
    return field_infos(cls)


def _nested_model(annotation: Any) -> Optional[Type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _lookup(data: Any, loc: Tuple[Any, ...]) -> Tuple[bool, Any]:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _loc_text(loc: Tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _clean_message(message: str) -> str:
    # pydantic 2 prefixes our ValueError text with "Value error, "; pydantic 1 does not.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _sentence(message: str) -> str:
    message = message.strip()
    return message if message.endswith((".", "!", "?")) else message + "."


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
