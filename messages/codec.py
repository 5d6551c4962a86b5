"""Encode and decode conveyor messages as msgpack.

A message travels as a two-element array ``[tag, {field: value}]``; a nested message
(a ``WorkItem`` inside a ``Grant``) travels the same way. Decoding checks the tag, the
set of fields and every field's type, and raises ``CodecError`` naming what is wrong,
so a corrupt file or a hostile peer can never produce a half-built message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from messages import types as mtypes

__all__ = [
    "MESSAGE_TYPES",
    "CodecError",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "from_wire",
    "to_wire",
]


class CodecError(ValueError):
    """Bytes that are not a well-formed conveyor message."""


MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.TAG: cls
    for cls in vars(mtypes).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and hasattr(cls, "TAG")
}

Check = Callable[[Any, str], Any]


def _fail(where: str, expected: str, value: Any) -> typing.NoReturn:
    raise CodecError(f"{where}: expected {expected}, got {type(value).__name__}")


def _check_for(hint: Any) -> Check:
    """Return a function that validates (and normalises) one field value."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_check_for(arg) for arg in typing.get_args(hint)]
        names = " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint))

        def check_union(value: Any, where: str) -> Any:
            for option in options:
                try:
                    return option(value, where)
                except CodecError:
                    continue
            _fail(where, names, value)

        return check_union
    if origin is typing.Literal:
        allowed = typing.get_args(hint)

        def check_literal(value: Any, where: str) -> Any:
            if isinstance(value, str) and value in allowed:
                return value
            raise CodecError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")

        return check_literal
    if origin is tuple:
        inner = _check_for(typing.get_args(hint)[0])

        def check_tuple(value: Any, where: str) -> Any:
            if not isinstance(value, list | tuple):
                _fail(where, "array", value)
            return tuple(inner(v, f"{where}[{i}]") for i, v in enumerate(value))

        return check_tuple
    if origin is dict:

        def check_dict(value: Any, where: str) -> Any:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                _fail(where, "map with string keys", value)
            return value

        return check_dict
    if hint is type(None):
        return lambda v, w: v if v is None else _fail(w, "nil", v)
    if hint is bool:
        return lambda v, w: v if isinstance(v, bool) else _fail(w, "bool", v)
    if hint is int:
        return lambda v, w: (
            v if isinstance(v, int) and not isinstance(v, bool) else _fail(w, "int", v)
        )
    if hint is float:
        return lambda v, w: (
            float(v)
            if isinstance(v, int | float) and not isinstance(v, bool)
            else _fail(w, "float", v)
        )
    if hint is str:
        return lambda v, w: v if isinstance(v, str) else _fail(w, "str", v)
    if hint is bytes:
        return lambda v, w: v if isinstance(v, bytes) else _fail(w, "bytes", v)
    if isinstance(hint, type) and hint.__name__ in {c.__name__ for c in MESSAGE_TYPES.values()}:
        return lambda v, w: _from_wire(v, w, expected=hint)
    raise TypeError(f"unsupported message field type {hint!r}")  # a bug in messages/types.py


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """A message class's field types (read once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, vars(mtypes))
    return _HINTS[cls]


_SCHEMAS: dict[type[Any], dict[str, tuple[Check, bool]]] = {}


def _schema(cls: type[Any]) -> dict[str, tuple[Check, bool]]:
    """Field name -> (validator, required), built once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = _hints(cls)
        schema = {
            f.name: (
                _check_for(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        }
        _SCHEMAS[cls] = schema
    return schema


def to_wire(message: Any) -> list[Any]:
    """Return the msgpack-ready ``[tag, fields]`` form of a message."""
    cls = type(message)
    plan = _PLANS.get(cls)
    if plan is None:
        tag = getattr(cls, "TAG", None)
        if not isinstance(tag, str) or MESSAGE_TYPES.get(tag) is not cls:
            raise CodecError(f"{cls.__name__} is not a conveyor message type")
        plan = _PLANS[cls] = _plan(cls)
    fields: dict[str, Any] = {}
    for name, nested in plan:
        value = getattr(message, name)
        if nested and value is not None:
            if type(value) is tuple:
                value = [to_wire(v) if hasattr(v, "TAG") else v for v in value]
            elif hasattr(value, "TAG"):
                value = to_wire(value)
        fields[name] = value
    return [cls.TAG, fields]


_PLANS: dict[type[Any], tuple[tuple[str, bool], ...]] = {}


def _plan(cls: type[Any]) -> tuple[tuple[str, bool], ...]:
    """``(field, may hold messages)`` of a message class, in order (``to_wire``'s)."""
    hints = _hints(cls)
    return tuple((f.name, _may_hold_messages(hints[f.name])) for f in dataclasses.fields(cls))


def _may_hold_messages(hint: Any) -> bool:
    if isinstance(hint, type) and hint in MESSAGE_TYPES.values():
        return True
    return any(_may_hold_messages(arg) for arg in typing.get_args(hint))


# -- decoding: a fast path for what is well formed, the checks below for what is not ---


class _BadError(Exception):
    """A fast check does not accept a value (then the slow path says why)."""


_MISSING: Any = object()
Fast = Callable[[Any], Any]


def _bad() -> typing.NoReturn:
    raise _BadError


def _fast_for(hint: Any) -> Fast:
    """A check of one field that returns the value (normalised as ``_check_for``'s) or
    raises ``_BadError``, building no message: it accepts no more than ``_check_for``, and
    what it accepts it turns into the same value."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_fast_for(arg) for arg in typing.get_args(hint)]

        def union(v: Any) -> Any:
            for option in options:
                try:
                    return option(v)
                except _BadError:
                    continue
            raise _BadError

        if len(options) == 2 and typing.get_args(hint)[1] is type(None):  # X | None
            first = options[0]
            return lambda v: None if v is None else first(v)
        return union
    if origin is typing.Literal:
        allowed = frozenset(a for a in typing.get_args(hint) if isinstance(a, str))
        return lambda v: v if type(v) is str and v in allowed else _bad()
    if origin is tuple:
        inner = _fast_for(typing.get_args(hint)[0])
        return lambda v: tuple(map(inner, v)) if type(v) is list or type(v) is tuple else _bad()
    if origin is dict:
        return lambda v: v if type(v) is dict and all(type(k) is str for k in v) else _bad()
    simple = {type(None): type(None), bool: bool, int: int, str: str, bytes: bytes}
    if hint in simple:
        exact = simple[hint]
        return lambda v: v if type(v) is exact else _bad()
    if hint is float:
        return lambda v: v if type(v) is float else float(v) if type(v) is int else _bad()
    if isinstance(hint, type) and hint in MESSAGE_TYPES.values():
        return lambda v: _fast_from_wire(v, hint)
    raise TypeError(f"unsupported message field type {hint!r}")  # a bug in messages/types.py


FastField = tuple[str, type | None, Fast, bool]
_FAST: dict[type[Any], tuple[frozenset[str], tuple[FastField, ...]]] = {}


def _fast_schema(cls: type[Any]) -> tuple[frozenset[str], tuple[FastField, ...]]:
    """Field names, and ``(field, str or int for a plain one, check, required)``."""
    schema = _FAST.get(cls)
    if schema is None:
        hints = _hints(cls)
        fields = tuple(
            (
                f.name,
                hints[f.name] if hints[f.name] in (str, int) else None,
                _fast_for(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        schema = _FAST[cls] = (frozenset(f.name for f in dataclasses.fields(cls)), fields)
    return schema


def _fast_from_wire(obj: Any, expected: type[Any] | None = None) -> Any:
    """The message ``obj`` stands for; ``_BadError`` when anything about it is wrong."""
    if (type(obj) is not list and type(obj) is not tuple) or len(obj) != 2:
        raise _BadError
    tag, fields = obj
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    if cls is None or (expected is not None and cls is not expected) or type(fields) is not dict:
        raise _BadError
    names, schema = _FAST.get(cls) or _fast_schema(cls)
    if not names.issuperset(fields):
        raise _BadError
    kwargs = {}
    for name, exact, check, required in schema:
        value = fields.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise _BadError
        elif exact is None:
            kwargs[name] = check(value)
        elif type(value) is exact:  # a str or an int: the most common, checked here
            kwargs[name] = value
        else:
            raise _BadError
    return cls(**kwargs)


def _from_wire(obj: Any, where: str, expected: type[Any] | None = None) -> Any:
    if not isinstance(obj, list | tuple) or len(obj) != 2:
        raise CodecError(f"{where}: expected [tag, fields], got {type(obj).__name__}")
    tag, fields = obj
    cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise CodecError(f"{where}: unknown message tag {tag!r}")
    if expected is not None and cls is not expected:
        raise CodecError(f"{where}: expected {expected.__name__}, got {cls.__name__}")
    if not isinstance(fields, dict):
        raise CodecError(f"{where}: fields of {cls.__name__} must be a map")
    schema = _schema(cls)
    unknown = set(fields) - set(schema)
    if unknown:
        raise CodecError(f"{where}: unknown field(s) {sorted(map(str, unknown))} in {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, (check, required) in schema.items():
        if name not in fields:
            if required:
                raise CodecError(f"{where}: {cls.__name__} is missing field {name!r}")
            continue
        kwargs[name] = check(fields[name], f"{where}.{name}")
    return cls(**kwargs)


def from_wire(obj: Any) -> Any:
    """Build a message from its ``[tag, fields]`` form, checking every field."""
    try:
        return _fast_from_wire(obj)
    except _BadError:
        return _from_wire(obj, "message")  # (which says what is wrong)


def encode(message: Any) -> bytes:
    """Encode one message as msgpack bytes."""
    packed: bytes = msgpack.packb(to_wire(message), use_bin_type=True)
    return packed


def decode(data: bytes) -> Any:
    """Decode msgpack bytes into a message; raise ``CodecError`` on anything malformed."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc
    return from_wire(obj)


def encode_batch(messages: tuple[Any, ...] | list[Any]) -> bytes:
    """Encode several messages as one msgpack array (one frame on a pipe)."""
    packed: bytes = msgpack.packb([to_wire(m) for m in messages], use_bin_type=True)
    return packed


def decode_batch(data: bytes) -> tuple[Any, ...]:
    """Decode what ``encode_batch`` wrote; raise ``CodecError`` on anything malformed."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc
    if not isinstance(obj, list):
        raise CodecError(f"batch: expected an array, got {type(obj).__name__}")
    try:
        return tuple(map(_fast_from_wire, obj))
    except _BadError:  # (the slow path says what is wrong)
        return tuple(_from_wire(m, f"batch[{i}]") for i, m in enumerate(obj))
