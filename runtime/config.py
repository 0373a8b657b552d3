"""Typed TOML configuration: one frozen dataclass tree per process, validated at start.

``load(GatewayConfig, path)`` reads the TOML file and builds the dataclass, refusing unknown
keys, missing required keys and wrong types with a :class:`ConfigError` that names the key
(``mqtt.port: expected int, got str``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


def load(cls: type[T], path: Path | str) -> T:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    return build(cls, raw)


def build(cls: type[T], raw: dict[str, Any], prefix: str = "") -> T:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip("."), f"expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(prefix + unknown[0], f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "missing required key")
            continue
        kwargs[name] = _convert(hints[name], raw[name], key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # a component's own check (__post_init__) refused it
        raise ConfigError(prefix.rstrip("."), str(e)) from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, f"expected an array, got {type(value).__name__}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a path string, got {type(value).__name__}")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:  # StrEnum
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not one of {[m.value for m in tp]}") from None  # type: ignore[attr-defined]
    if isinstance(tp, type):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(key, f"expected {tp.__name__}, got bool")
        if not isinstance(value, tp):
            raise ConfigError(key, f"expected {tp.__name__}, got {type(value).__name__}")
    return value
