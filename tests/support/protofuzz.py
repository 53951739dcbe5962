"""Hypothesis strategies that build hostile protobuf messages, and raw bytes, from a message's descriptor.

Values are of the right wire type but chosen to break things: extreme and negative numbers, NaN
and infinities, empty, huge and path-like strings ("../x"), ids that do or do not exist, enum
numbers the schema does not name, long repeated fields, timestamps and durations out of range.
`raw_requests` adds bytes that do not decode: random bytes, truncated messages, and invalid UTF-8
in a string field, which the wire format can carry but proto3 forbids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
HOSTILE_TEXT = [
    "", " ", "..", "../x", "../../etc/passwd", "/abs", "a/b", "a\\b", "x\x00y", "%2e%2e%2fx", "~", "*", "?",
    "-", "_", "a" * 65, "raw/../datasets", "datasets/x", "\u202eevil", "名前", "😀" * 10, "-1", "1e999", "nan",
    "00000000-0000-0000-0000-000000000000", "{}", "null", "' OR 1=1 --", "9" * 30, "4294967296", "1_0", "٣",
]
LONG = 100_000  # a string this long must still be answered with a short message
MAX_DEPTH = 3


def texts(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Strings: ordinary, hostile, very long, and the `known` ones (ids that exist) so lookups get past NOT_FOUND."""
    options = [
        st.text(max_size=20),
        st.sampled_from(HOSTILE_TEXT),
        st.sampled_from(["x" * LONG, "é" * 3000, "😀" * 5000]),
        st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    ]
    if known:
        options.append(st.sampled_from(list(known)))
    return st.one_of(options)


def _scalar(field: FieldDescriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        small = st.integers(max(lo, -3), 100)
        return st.one_of(st.sampled_from(sorted({lo, hi, 0, 1, max(lo, -1)})), st.integers(lo, hi), small)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        width = 32 if t == F.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1e-45, float("nan"), float("inf"), float("-inf")]),
                         st.floats(width=width))
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-(2**31), 2**31 - 1))  # proto3 enums are open
    if t == F.TYPE_STRING:
        return texts(known)
    if t == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\xff" * 10_000))
    raise AssertionError(f"no strategy for field type {t} ({field.full_name})")


def _filler(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """What a huge repeated field repeats: a small value, so thousands stay cheap to send."""
    if field.message_type is not None:
        return st.just(GetMessageClass(field.message_type)())
    return {F.TYPE_STRING: st.sampled_from(["", "a", "../x"]), F.TYPE_BYTES: st.just(b""),
            F.TYPE_BOOL: st.just(True)}.get(field.type, st.just(0))


def _repeated(element: st.SearchStrategy[Any], huge: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Mostly a few elements; sometimes thousands (within a bound that keeps a call cheap to send)."""
    return st.one_of(st.lists(element, max_size=3), st.lists(element, max_size=3).flatmap(
        lambda few: huge.map(lambda one: few + [one] * 5000)))


def messages(descriptor: Descriptor, known: Sequence[str] = (), depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of their fields set to hostile values."""
    cls = GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue  # no request type has a map; a map would need entries, not a list
        if field.message_type is not None:
            if depth >= MAX_DEPTH:
                continue
            value: st.SearchStrategy[Any] = st.deferred(lambda f=field: messages(f.message_type, known, depth + 1))
        else:
            value = _scalar(field, known)
        fields[field.name] = _repeated(value, _filler(field)) if field.is_repeated else value

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for name in draw(st.lists(st.sampled_from(sorted(fields)), unique=True)) if fields else []:
            field = descriptor.fields_by_name[name]
            value = draw(fields[name])
            if field.is_repeated:
                getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bad_utf8(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A string field (if the message has one at its top level) holding bytes that are not UTF-8."""
    numbers = [f.number for f in descriptor.fields if f.type == F.TYPE_STRING]
    if not numbers:
        return st.nothing()
    bad = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf0\x28\x8c\x28", b"\x80" * 300])
    return st.builds(lambda n, b: _varint(n << 3 | 2) + _varint(len(b)) + b, st.sampled_from(numbers), bad)


def raw_requests(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes that should not decode as `descriptor`'s type (some random ones may, by chance)."""
    serialised = messages(descriptor).map(lambda m: m.SerializeToString())
    truncated = serialised.filter(lambda b: len(b) > 1).map(lambda b: b[:-1]) if descriptor.fields else st.nothing()
    return st.one_of(
        _bad_utf8(descriptor),
        st.binary(min_size=1, max_size=200),
        truncated,
        st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b"]),
    )
