"""The msgpack codec: every message round-trips; anything malformed is a CodecError."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages
from messages import (
    MESSAGE_TYPES,
    CodecError,
    WorkItem,
    decode,
    decode_batch,
    encode,
    encode_batch,
)
from messages import types as mtypes

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


def _strategy(hint: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*[_strategy(a) for a in typing.get_args(hint)])
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(hint))
    if origin is tuple:
        return st.lists(_strategy(typing.get_args(hint)[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(), json_like, max_size=4)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(),
        int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        float: st.floats(allow_nan=False),
        bool: st.booleans(),
        type(None): st.none(),
        bytes: st.binary(),
    }
    if hint in simple:
        return simple[hint]
    return message_of(hint)


def message_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, vars(mtypes))
    fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.TAG)).flatmap(
    message_of
)


@given(any_message)
def test_every_message_round_trips(message: Any) -> None:
    """decode(encode(m)) == m for every message type and any field values."""
    assert decode(encode(message)) == message


def test_minimum_message_set_is_exported() -> None:
    """The message set DESIGN.md names exists and is exported."""
    required = {
        "WorkItem",
        "Enqueue",
        "Demand",
        "Grant",
        "DownloadStarted",
        "ProgressUpdate",
        "DownloadComplete",
        "DownloadFailed",
        "ProcessingComplete",
        "ProcessingFailed",
        "PostProcessed",
        "Cancel",
        "RunFinished",
    }
    assert required <= set(messages.__all__)
    assert {"error_kind", "permanent"} <= {
        f.name for f in dataclasses.fields(messages.DownloadFailed)
    }


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    """Garbage either decodes to a real message or raises CodecError, nothing else."""
    try:
        result = decode(data)
    except CodecError:
        return
    assert type(result) in MESSAGE_TYPES.values()


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (["no_such_tag", {}], "unknown message tag 'no_such_tag'"),
        (["demand", {"worker": "d"}], "missing field 'n'"),
        (["demand", {"worker": "d", "n": "3"}], "message.n: expected int, got str"),
        (["demand", {"worker": "d", "n": True}], "expected int, got bool"),
        (["demand", {"worker": "d", "n": 1, "extra": 2}], "unknown field(s) ['extra']"),
        (
            ["grant", {"worker": "d", "items": [["demand", {"worker": "x", "n": 1}]]}],
            "expected WorkItem, got Demand",
        ),
        (["grant", {"worker": "d", "items": "nope"}], "expected array"),
        ([1, 2, 3], "expected [tag, fields]"),
        (["demand", [1, 2]], "must be a map"),
    ],
)
def test_malformed_messages_name_the_problem(wire: Any, fragment: str) -> None:
    """Wrong tags, missing fields and wrong types raise CodecError saying which."""
    with pytest.raises(CodecError) as info:
        decode(msgpack.packb(wire))
    assert fragment in str(info.value)


def test_truncated_bytes_raise_codec_error() -> None:
    """A message cut short is malformed msgpack, reported as CodecError."""
    data = encode(WorkItem(id="a", url="http://h/a", name="a"))
    with pytest.raises(CodecError, match="malformed msgpack"):
        decode(data[:-3])


def test_encoding_a_foreign_object_fails() -> None:
    """Only conveyor messages can be encoded."""
    with pytest.raises(CodecError, match="not a conveyor message"):
        encode({"tag": "demand"})


@given(st.lists(any_message, max_size=8))
def test_batches_round_trip(batch: list[Any]) -> None:
    """A pipe frame (a batch of messages, possibly empty) decodes to the same messages."""
    assert decode_batch(encode_batch(batch)) == tuple(batch)


@given(st.binary(max_size=64))
def test_random_frames_never_raise_anything_but_codec_error(data: bytes) -> None:
    try:
        result = decode_batch(data)
    except CodecError:
        return
    assert all(type(m) in MESSAGE_TYPES.values() for m in result)


def test_a_frame_that_is_not_an_array_of_messages_is_refused() -> None:
    with pytest.raises(CodecError, match="batch: expected an array"):
        decode_batch(msgpack.packb({"tag": "demand"}))
    with pytest.raises(CodecError, match=r"batch\[0\]: expected \[tag, fields\]"):
        decode_batch(encode(messages.Demand(worker="w", n=1)))  # one message, not a batch


def test_closed_vocabularies_are_checked_on_decode() -> None:
    """Status, error kind, lane and scope are Literal types: a value outside them is a
    CodecError naming the field, not a message that later confuses an actor."""
    import msgpack

    from messages import CodecError, Outcome, decode, encode

    good = Outcome(id="a", url="http://h/a", name="a", path="", status="failed",
                   error_kind="http_5xx")  # fmt: skip
    assert decode(encode(good)) == good
    tag, fields = msgpack.unpackb(encode(good))
    for key, bad in (("status", "done"), ("error_kind", "oops")):
        raw = msgpack.packb([tag, {**fields, key: bad}])
        with pytest.raises(CodecError, match=key):
            decode(raw)


def _wire(message: Any) -> Any:
    """``message`` as the receiving end unpacks it."""
    return msgpack.unpackb(encode(message), raw=False, strict_map_key=True)


def _field_maps(wire: Any) -> list[dict[str, Any]]:
    """The fields of ``wire`` and of every message nested in it (a Grant's items)."""
    found = [wire[1]]
    for value in wire[1].values():
        nested = value if isinstance(value, list) else [value]
        for v in nested:
            if (
                isinstance(v, list)
                and len(v) == 2
                and isinstance(v[1], dict)
                and v[0] in MESSAGE_TYPES
            ):
                found += _field_maps(v)
    return found


odd_values = st.one_of(json_like, st.binary(max_size=4), any_message.map(_wire))


@given(any_message, st.data())
def test_the_fast_decoder_accepts_no_more_than_the_checks(message: Any, data: Any) -> None:
    """Decoding tries a fast path first and falls back to the field-by-field checks
    (which say what is wrong). Whatever the fast path accepts, the checks accept too and
    turn into the same message; a well-formed message never needs the fallback."""
    from messages import codec

    wire = _wire(message)
    fields = data.draw(st.sampled_from(_field_maps(wire)))  # (at any depth)
    change = data.draw(st.sampled_from(["none", "set", "drop", "add", "tag"]))
    if change == "set" and fields:
        fields[data.draw(st.sampled_from(sorted(fields)))] = data.draw(odd_values)
    elif change == "drop" and fields:
        del fields[data.draw(st.sampled_from(sorted(fields)))]
    elif change == "add":
        fields[data.draw(st.text(max_size=3))] = data.draw(odd_values)
    elif change == "tag":
        wire[0] = data.draw(st.sampled_from([*sorted(MESSAGE_TYPES), "nope", 1, None]))
    try:
        checked = codec._from_wire(wire, "message")
    except CodecError:
        checked = None
    try:
        fast = codec._fast_from_wire(wire)
    except codec._BadError:
        assert change != "none", "a well-formed message took the slow path"
        return
    assert checked is not None, f"the fast path accepted what the checks refuse: {wire!r}"
    assert fast == checked
    assert type(fast) is type(checked)


@given(any_message, st.data())
def test_evolve_is_dataclasses_replace(message: Any, data: Any) -> None:
    """``messages.evolve`` (the ledger's cheap copy) gives what ``dataclasses.replace``
    gives, for any message and any fields changed (values taken from another message
    of the same kind)."""
    other = data.draw(message_of(type(message)))
    names = [f.name for f in dataclasses.fields(message)]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    changes = {name: getattr(other, name) for name in chosen}
    assert messages.evolve(message, **changes) == dataclasses.replace(message, **changes)
    with pytest.raises(TypeError):
        messages.evolve(message, no_such_field=1)


def test_evolve_on_control_messages_and_odd_dataclasses() -> None:
    """``evolve`` copies the control messages (some have no field at all) and falls back
    to ``dataclasses.replace`` where a copy of the slots would be wrong."""
    from messages import control

    samples = {"str": "x", "int": 2, "float": 1.5, "bool": True}
    for cls in vars(control).values():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        kwargs = {f.name: samples.get(str(f.type), ()) for f in dataclasses.fields(cls)
                  if f.default is dataclasses.MISSING}  # fmt: skip
        message = cls(**kwargs)
        assert messages.evolve(message) == message
        for f in dataclasses.fields(cls):
            value = getattr(message, f.name)
            assert messages.evolve(message, **{f.name: value}) == message

    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int = 1

    @dataclasses.dataclass(frozen=True, slots=True)
    class Child(Base):
        b: int = 2

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        a: int = 1
        later: int = dataclasses.field(default=0, init=False)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int = 1

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    assert messages.evolve(Child(), a=5) == Child(a=5, b=2)
    assert messages.evolve(Unslotted(), a=3) == Unslotted(a=3)
    with pytest.raises(ValueError, match="init=False"):
        messages.evolve(Unslotted(), later=3)  # (as replace says)
    with pytest.raises(ValueError, match="negative"):
        messages.evolve(Checked(), a=-1)  # (its __post_init__ runs)
