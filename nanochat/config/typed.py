"""Typed settings, read from their dataclass definitions: ranges, --help tables and one-line errors.

Every setting a user can give is one dataclass field (`nanochat.common.knob`: type, default, doc, range). OmegaConf
checks the type when a value is merged into the structured config; this module checks the range from the same
field, renders the `--help` table from it, and turns OmegaConf's and Hydra's multi-line errors into the one line
a user gets ("model.depth: 'four' is not an integer").
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from nanochat.common import NanochatError

def type_name(tp: Any) -> str:
    """'int', 'float?', 'list[float]', ... for the help table."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return (type_name(inner[0]) if len(inner) == 1 else "|".join(type_name(a) for a in inner)) + "?"
    if origin in (list, typing.List):
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if origin in (dict, typing.Dict):
        return "map"
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return "group"
    return getattr(tp, "__name__", str(tp))


def iter_fields(cls, prefix: str = ""):
    """(dotted key, field, type) of every leaf setting of a dataclass, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.name == "defaults":
            continue
        tp = hints.get(f.name, f.type)
        key = f"{prefix}{f.name}"
        inner = _dataclass_of(tp)
        if inner is not None:
            yield from iter_fields(inner, key + ".")
        else:
            yield key, f, tp


def _dataclass_of(tp):
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _default_text(f) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def help_table(cls, prefix: str = "") -> list[str]:
    """One line per key: `key  type  default  doc`."""
    rows = []
    for key, f, tp in iter_fields(cls, prefix):
        default = _default_text(f)
        doc = f.metadata.get("doc", "")
        choices = f.metadata.get("choices")
        if choices:
            doc += f" (one of: {', '.join(map(str, choices))})"
        rows.append((key, type_name(tp), default, doc))
    if not rows:
        return []
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = min(24, max(len(r[2]) for r in rows))
    return [f"  {k:<{w0}}  {t:<{w1}}  {d:<{w2}}  {doc}".rstrip() for k, t, d, doc in rows]


def check_value(key: str, f, value: Any) -> None:
    """Raise a NanochatError naming the key when `value` is outside the field's range or choices."""
    if value is None:
        return
    meta = f.metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        raise NanochatError(f"{key}: {value!r} is not allowed; expected one of: {', '.join(map(str, choices))}")
    length = meta.get("length")
    if length is not None and isinstance(value, (list, tuple)) and len(value) != length:
        raise NanochatError(f"{key}: {list(value)} must hold {length} numbers")
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = (f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"between {low:g} and {high:g}")
            raise NanochatError(f"{key}: {value!r} is out of range; expected a value {bounds}")


def check_ranges(cfg, cls, prefix: str = "") -> None:
    """Check every field of `cls` present in the (Omega)config `cfg` against its range; first failure raises."""
    from omegaconf import OmegaConf

    for key, f, _ in iter_fields(cls):
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True) if OmegaConf.is_config(cfg) \
                else _getpath(cfg, key)
        except Exception as e:  # an interpolation that cannot resolve
            raise NanochatError(f"{prefix}{key}: {str(e).splitlines()[0]}") from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(prefix + key, f, value)


def _getpath(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None) if not isinstance(obj, dict) else obj.get(part)
    return obj


def one_line(exc: BaseException) -> str:
    """The one line a user sees for a config error from OmegaConf or Hydra (never a traceback)."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    chain, e = [], exc
    while e is not None and len(chain) < 6:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OmegaConfBaseException):
            key = getattr(e, "full_key", None) or ""
            msg = str(getattr(e, "msg", None) or e).splitlines()[0]
            if isinstance(e, ValidationError):
                value = getattr(e, "value", None)
                expected = _expected(getattr(e, "ref_type", None) or "", msg)
                if expected:
                    return f"{key}: {value!r} is not {expected}"
                return f"{key}: {msg}"
            if isinstance(e, (ConfigKeyError, AttributeError)) or "not in struct" in msg:
                parent = key.rpartition(".")[0]
                return f"{key}: unknown key" + (f" in {parent}" if parent else "") + " (see --help for the keys)"
            return f"{key}: {msg}" if key else msg
    first = str(exc).strip().splitlines()
    text = first[0] if first else type(exc).__name__
    if "Could not find" in text or "In '" in text:
        return text.replace("\n", " ")
    return text


def _expected(ref_type, msg: str) -> str:
    lowered = msg.lower()
    for word, name in (("integer", "an integer"), ("float", "a number"), ("bool", "true or false"),
                       ("str", "a string")):
        if f"converted to {word}" in lowered:
            return name
    if "enum" in lowered:
        return "one of the allowed names"
    return ""
