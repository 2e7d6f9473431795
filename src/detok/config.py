"""Typed dataclass configs: build from dicts / YAML, dotted `key=value` overrides, save resolved.

Every component owns a dataclass of its settings; a run's config is the nesting of those. Unknown
keys and values of the wrong type are errors that name the offending key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config key or value that does not fit the dataclass it is meant for."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    min: float | None = None,
    max: float | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A config field with its `--help` text, inclusive bounds (checked when the config is built) and
    deprecated key spellings; `factory` for mutable defaults."""
    meta: dict[str, Any] = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if aliases:
        meta["aliases"] = tuple(aliases)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1.0e6" / "1e-4" as text
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. sampler steps "250" written as a number
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys and bad types raise ConfigError."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for f in fields.values():  # deprecated spellings of a key (metadata "aliases"), for one release
        for old in f.metadata.get("aliases", ()):
            if old in data:
                warnings.warn(f"config key {prefix}{old} is deprecated; use {prefix}{f.name}", DeprecationWarning,
                              stacklevel=2)
                value = data.pop(old)
                data.setdefault(f.name, value)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys of {cls.__name__}: {', '.join(sorted(fields))}"
        )
    hints = _hints(cls)
    kwargs = {k: _check_range(_coerce(v, hints[k], prefix + k), fields[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _check_range(value: Any, f: dataclasses.Field, key: str) -> Any:
    """A field's declared bounds (metadata "min" / "max", inclusive) hold for numbers, else ConfigError."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: {value!r} is below its minimum {lo}" + _range_hint(f))
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: {value!r} is above its maximum {hi}" + _range_hint(f))
    return value


def _range_hint(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    return f" ({text})" if text else ""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples become lists) fit for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value), with the value read as YAML (1e-4, true, [1, 2], text)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.split("."), value


def merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    """Set base[path[0]][path[1]]... = value, creating mappings on the way."""
    node = base
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `new` into `base` (in place) and return it."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a named preset (no suffix) is looked up in detok's preset folder."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = PRESET_DIR / f"{path}.yaml"
    if not p.exists():
        presets = ", ".join(sorted(x.stem for x in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"config file {path} not found (built-in presets: {presets})")
    try:
        with open(p) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: YAML syntax error{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def resolve(cls: type[T], presets: list[str] | None = None, overrides: list[str] | None = None) -> T:
    """Presets (YAML files, applied in order) then dotted overrides, checked against `cls`."""
    data: dict[str, Any] = to_dict(cls())
    for preset in presets or []:
        deep_update(data, load_yaml(preset))
    for text in overrides or []:
        path, value = parse_override(text)
        merge(data, path, value)
    return from_dict(cls, data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, f, sort_keys=False)


def field_help(cls_or_instance: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, comment) for every leaf field, for `--help` listings.

    Nested sections show the defaults the outer dataclass gives them (a generator run's `optim` has the
    generator recipe's lr, not OptimConfig's), so pass the class or an instance holding the real defaults.
    """
    inst = cls_or_instance() if isinstance(cls_or_instance, type) else cls_or_instance
    rows = []
    for f in dataclasses.fields(inst):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows += field_help(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, value, f.metadata.get("help", "")))
    return rows
