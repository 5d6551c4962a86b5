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


_SCHEMAS: dict[type[Any], dict[str, tuple[Check, bool]]] = {}


def _schema(cls: type[Any]) -> dict[str, tuple[Check, bool]]:
    """Field name -> (validator, required), built once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls, vars(mtypes))
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
    tag = getattr(cls, "TAG", None)
    if not isinstance(tag, str) or MESSAGE_TYPES.get(tag) is not cls:
        raise CodecError(f"{cls.__name__} is not a conveyor message type")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, tuple):
            value = [to_wire(v) if hasattr(v, "TAG") else v for v in value]
        elif hasattr(value, "TAG"):
            value = to_wire(value)
        fields[f.name] = value
    return [cls.TAG, fields]


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
    return _from_wire(obj, "message")


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
    return tuple(_from_wire(m, f"batch[{i}]") for i, m in enumerate(obj))
