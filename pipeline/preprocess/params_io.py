"""Preprocessing parameters to and from JSON, so a model bundle carries the exact ones it was
trained with (the node can never drift from training)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, get_args, get_origin

from pipeline.preprocess.study import PreprocessParams


def params_to_dict(params: PreprocessParams) -> dict[str, Any]:
    """Plain JSON-ready data (tuples become lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(params)))


def params_from_dict(data: dict[str, Any]) -> PreprocessParams:
    """The inverse of `params_to_dict`; missing keys take today's defaults, unknown keys fail."""
    return typing.cast(PreprocessParams, _build(PreprocessParams, data, "preprocess"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {sorted(unknown)}")
    values = {name: _value(hints[name], data[name], f"{where}.{name}") for name in data}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(typing.cast(type[Any], hint), value, where)
    origin = get_origin(hint)
    if origin is tuple and isinstance(value, list):
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, where) for v in value)
        return tuple(_value(a, v, where) for a, v in zip(args, value, strict=True))
    if hint is float and isinstance(value, int):
        return float(value)
    return value
