"""Keyword options of labs and tasks, checked against the annotations of the parameters they go to.

A config's ``lab.options`` and ``task.options`` are plain YAML values. Before a lab or task is built, each value whose
parameter is annotated with a plain type (``int``, ``float``, ``bool``, ``str``, or one of them ``| None``) is
validated by pydantic and converted (``49.0`` → 49, the YAML-1.1 string ``"5e-6"`` → 5e-6); a value that does not fit
is named in a one-line :class:`~pnnkit.errors.ConfigError` instead of failing somewhere inside the constructor. A
mapping given for a dataclass-annotated parameter (``timing: {t_segment: 5e-6}``) has its keys checked the same way
against the dataclass's fields, and anything else given for it is refused; a ``torch.dtype`` parameter takes the
name ``float32`` or ``float64``. Parameters with other annotations (tensors) are passed on unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator

from .errors import ConfigError

_PLAIN = (int, float, bool, str)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def float_dtype_named(value: Any) -> torch.dtype | None:
    """``torch.float32``/``torch.float64`` for themselves or their names (``"float64"``, ``"torch.float64"``), else
    None: a lab's values are real, and lower precision rounds past their declared ranges."""
    if isinstance(value, torch.dtype):
        return value if value in _DTYPES.values() else None
    return _DTYPES.get(value.removeprefix("torch.")) if isinstance(value, str) else None


def _number_not_flag(hint: Any) -> bool:
    """Whether ``hint`` takes an int or float but not a bool (pydantic's lax mode would read true as 1)."""
    if typing.get_origin(hint) is typing.Annotated:
        return _number_not_flag(typing.get_args(hint)[0])
    parts = _parts(hint)
    return any(p is int or p is float for p in parts) and not any(p is bool or p is Any or p is object for p in parts)


class StrictModel(BaseModel):
    """Base of the config models: unknown keys, ``.inf``/``.nan`` (meaningless in a config) and ``true``/``false``
    where a number belongs (pydantic would read them as 1/0) are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, v in data.items():
                field = cls.model_fields.get(key) if isinstance(v, bool) else None
                if field is not None and _number_not_flag(field.annotation):
                    raise ValueError(f"{key} must be a number, got the boolean {str(v).lower()}")
        return data


def _parts(hint: Any) -> tuple[Any, ...]:
    """The members of a union annotation (the annotation itself otherwise)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_plain(hint: Any) -> bool:
    parts = _parts(hint)
    return any(p in _PLAIN for p in parts) and all(p in _PLAIN or p is type(None) for p in parts)


def _type_name(hint: Any) -> str:
    return " or ".join("None" if p is type(None) else p.__name__ for p in _parts(hint))


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # unresolvable annotations: nothing to check against
        return {}


def _convert(what: str, key: str, hint: Any, value: Any) -> Any:
    parts = _parts(hint)
    if torch.dtype in parts:  # YAML gives a name
        dtype = float_dtype_named(value)
        if dtype is None:
            raise ConfigError(f"{what}: option {key!r} must be float32 or float64, got {value!r}")
        return dtype
    if isinstance(value, bool) and bool not in parts:
        raise ConfigError(f"{what}: option {key!r} must be {_type_name(hint)}, got {value!r}")
    try:
        return TypeAdapter(hint).validate_python(value)
    except ValidationError:
        raise ConfigError(f"{what}: option {key!r} must be {_type_name(hint)}, got {value!r}") from None


def option_names(target: Callable[..., Any]) -> set[str] | None:
    """Keyword options ``target`` accepts (None if it takes ``**kwargs`` or has no readable signature)."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _shown_default(value: Any) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _field_default(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        return _shown_default(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _shown_default(f.default_factory())
    return "(required)"


def describe_options(target: Callable[..., Any]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``target``'s keyword options as (name, default as text, fields): ``fields`` lists (field, default) of the
    dataclass the option takes (its defaults are what ``None`` means), else empty. For ``pnnkit labs NAME``."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return []
    hints = _hints(target)
    out = []
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name == "self":
            continue
        default = "(required)" if p.default is inspect.Parameter.empty else _shown_default(p.default)
        cls = next((c for c in _parts(hints.get(p.name)) if dataclasses.is_dataclass(c)), None)
        fields = [(f.name, _field_default(f)) for f in dataclasses.fields(cls)] if cls is not None else []
        out.append((p.name, default, fields))
    return out


def refuse_unknown(what: str, options: dict[str, Any], accepted: set[str] | None) -> None:
    """A one-line :class:`ConfigError` for the first option not in ``accepted`` (with a did-you-mean and the
    list); nothing when all are known or ``accepted`` is None (anything goes)."""
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(accepted or ()), n=1)
        raise ConfigError(f"{what} has no option {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; its options: {', '.join(sorted(accepted or ()))}")


def check_options(what: str, target: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every plain-typed value validated and converted against ``target``'s annotations.

    ``what`` names the thing being built in errors (``"lab 'circuit'"``); ``target`` is the class or function
    whose parameters the options are. Unknown option names are not this function's concern (they are passed on),
    except inside an option given as a mapping for a dataclass (``timing: {...}``): a field the dataclass does not
    have is refused here, with a did-you-mean.
    """
    hints = _hints(target)
    out = dict(options)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            continue
        cls = next((p for p in _parts(hint) if dataclasses.is_dataclass(p)), None)
        if _is_plain(hint) or torch.dtype in _parts(hint):
            out[key] = _convert(what, key, hint, value)
        elif cls is not None and not (isinstance(value, (dict, cls)) or (value is None and type(None) in _parts(hint))):
            raise ConfigError(f"{what}: option {key!r} must be a mapping of {cls.__name__}'s fields "
                              f"({', '.join(f.name for f in dataclasses.fields(cls))}), got {value!r}")
        elif isinstance(value, dict):
            if cls is not None:
                refuse_unknown(f"{what} option {key!r}", value, {f.name for f in dataclasses.fields(cls)})
                fields = _hints(cls)
                out[key] = {k: _convert(what, f"{key}.{k}", fields[k], v) if _is_plain(fields.get(k)) else v
                            for k, v in value.items()}
    return out
