"""Generic checking of frozen config dataclasses: field rules, type checks against annotations, ``from_dict``.

A config class declares each field's range as metadata (``field(metadata=at_least(1))``, :func:`rule`,
:data:`NON_EMPTY`) and calls :func:`validate` in ``__post_init__``; cross-field checks raise :func:`fail`.
:func:`validate` checks every value against its annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``,
``X | None``, tuples, nested configs) and normalises it (a list becomes a tuple, a mapping of names becomes sorted
pairs, a YAML int becomes a float); :func:`from_dict` builds a config from plain data (YAML) and names the dotted
field of a bad value. Nothing here knows the stage configs: each stage keeps its own beside its code
(``stats/config.py``: :class:`CTConfig`; ``embedding/config.py``; ``fingerprint/config.py``; ``io/config.py``:
:class:`DatasetSpec`; ``probes/config.py``; ``job/config.py``: :class:`AuditConfig` and YAML loading).
:func:`to_dict` and :func:`digest` give every config's JSON record and short stable digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import types
from collections.abc import Callable
from dataclasses import fields, replace
from functools import cache
from typing import Any, ClassVar, Literal, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigInstance(Protocol):
    """Any config dataclass instance (what :func:`dataclasses.fields` accepts)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field and what to do."""


class FieldError(ConfigError):
    """One field's value is not allowed; the message is one line: ``path=value: must be <allowed>``.

    ``owner``: the config class whose check raised it, ``name``: the field's path inside that class, so
    :func:`from_dict` can restate it under the section being read (``train.name``, ``generated[1].urls``).
    """

    def __init__(self, path: str, value: object, allowed: str, owner: type | None = None, name: str = "") -> None:
        self.path, self.value, self.allowed, self.owner, self.name = path, value, allowed, owner, name or path
        super().__init__(f"{path}={value!r}: must be {allowed}")


# ---- declarative checks: field(metadata=...) rules, applied with the annotation's type check by validate() ----


def rule(text: str, ok: Callable[[Any], bool]) -> dict[str, Any]:
    """Field metadata: the (non-null) value must satisfy ``ok``; ``text`` says what is allowed."""
    return {"rule": (text, ok)}


def at_least(lo: float) -> dict[str, Any]:
    """The value must be >= ``lo``."""
    return rule(f">= {lo}", lambda v: v >= lo)


def above(lo: float) -> dict[str, Any]:
    """The value must be > ``lo``."""
    return rule(f"> {lo}", lambda v: v > lo)


NON_EMPTY = rule("(non-empty)", lambda v: len(v) > 0)


class _Mismatch(Exception):
    """The value does not have the annotated type (internal to validate)."""


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _arms(tp: object) -> tuple[Any, ...] | None:
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else None


def describe(tp: object, text: str = "") -> str:
    """What the annotation ``tp`` (plus the rule ``text``) allows, in words: ``an integer >= 1 or null``."""
    tail = f" {text}" if text else ""
    if (arms := _arms(tp)) is not None:
        words = [describe(a, text) for a in arms if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in arms else []))
    if get_origin(tp) is Literal:
        args = get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if get_origin(item) is tuple:
            return f"a mapping of names to values{tail}"
        plural = f"{getattr(item, 'SECTION', '') or 'config'} sections" if dataclasses.is_dataclass(item) else None
        return f"a list of {plural or _PLURAL.get(item, 'entries')}{tail}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping (a {getattr(tp, 'SECTION', '') or tp.__name__} section)"
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return words.get(tp, "anything") + ("" if tp is bool else tail)


def _coerce(value: object, tp: object, path: str) -> Any:
    """``value`` as the annotation ``tp`` wants it (list -> tuple, mapping -> sorted pairs or a nested config,
    YAML int -> float), or raise :class:`_Mismatch`. ``bool`` is not an int; a scalar is a one-element list."""
    if tp is Any:
        return value
    if (arms := _arms(tp)) is not None:
        if value is None and type(None) in arms:
            return None
        for arm in (a for a in arms if a is not type(None)):
            try:
                return _coerce(value, arm, path)
            except _Mismatch:
                pass
        raise _Mismatch
    if get_origin(tp) is Literal:
        if any(type(value) is type(a) and value == a for a in get_args(tp)):
            return value
        raise _Mismatch
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if tp is float and isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if get_origin(tp) is tuple:
        return _coerce_tuple(value, get_args(tp), path)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, path)
    raise _Mismatch


def _coerce_tuple(value: object, args: tuple[Any, ...], path: str) -> tuple[Any, ...]:
    pairs = get_origin(args[0]) is tuple
    if pairs and isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _Mismatch
        value = sorted(value.items())
    elif not isinstance(value, (list, tuple)):
        if pairs or value is None:
            raise _Mismatch
        value = [value]
    if len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise _Mismatch
    return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def validate(cfg: ConfigInstance) -> None:
    """Check (and normalise in place) every field of a frozen config against its annotation and its rule.

    Raises :class:`FieldError` naming ``<SECTION>.<field>``, the value and what is allowed.
    """
    cls, section = type(cfg), getattr(type(cfg), "SECTION", "")
    hints = _hints(cls)
    for f in fields(cfg):
        value, path = getattr(cfg, f.name), f"{section}.{f.name}" if section else f.name
        text, ok = f.metadata.get("rule", ("", None))
        shown = "<redacted>" if f.metadata.get("secret") else value
        try:
            new = _coerce(value, hints[f.name], path)
        except _Mismatch:
            raise FieldError(path, shown, describe(hints[f.name], text), cls, f.name) from None
        if ok is not None and new is not None and not ok(new):
            raise FieldError(path, shown, describe(hints[f.name], text), cls, f.name)
        if new is not value:
            object.__setattr__(cfg, f.name, new)


def fail(cfg: ConfigInstance, name: str, allowed: str) -> FieldError:
    """A :class:`FieldError` for field ``name`` of ``cfg`` (cross-field checks in ``__post_init__``)."""
    section = getattr(type(cfg), "SECTION", "")
    return FieldError(f"{section}.{name}" if section else name, getattr(cfg, name), allowed, type(cfg), name)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str | None = None) -> T:
    """Build a frozen config from plain data (YAML, ``to_dict``), checking every value's type and range.

    ``where``: the dotted path of ``data`` in the whole config (default: the class's section, e.g. ``ct``).
    Unknown keys, missing required fields and bad values raise :class:`ConfigError` naming the dotted field.
    """
    where = getattr(cls, "SECTION", "") if where is None else where
    if data is not None and not isinstance(data, dict):
        raise FieldError(where or cls.__name__, data, describe(cls))
    data = dict(data or {})
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    required = [
        f.name
        for f in fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if required:
        raise ConfigError(f"{where or cls.__name__}: missing required field(s) {required}")
    try:
        return cls(**data)
    except FieldError as exc:
        if exc.owner is not cls:  # raised (and placed) by a nested section
            raise
        path = f"{where}.{exc.name}" if where else exc.name
        raise FieldError(path, exc.value, exc.allowed) from None


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def to_dict(cfg: ConfigInstance | dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass or dict; tuples become lists; secrets redacted."""
    raw = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    out = json.loads(json.dumps(raw, default=list))
    if isinstance(out, dict) and out.get("storage_options"):
        out["storage_options"] = [
            [k, "<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else v]
            for k, v in out["storage_options"]
        ]
    return out


def digest(cfg: ConfigInstance | dict[str, Any]) -> str:
    """A short stable digest of a config (12 hex chars of SHA-256 over canonical JSON)."""
    payload = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def with_overrides(cfg: T, **overrides: Any) -> T:
    """Return ``cfg`` with the non-``None`` overrides applied (CLI flags over YAML)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]
