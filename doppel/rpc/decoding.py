"""What a request must be before any servicer sees it: bytes that decode, and timestamps and
durations within protobuf's ranges.

grpc answers a request deserialiser's exception UNKNOWN (INTERNAL within a request stream)
before any interceptor sees the call, so `lenient` deserialisers return `InvalidRequest` instead,
for `ErrorInterceptor` to answer INVALID_ARGUMENT. Out-of-range Timestamps and Durations decode
fine but break their conversions (`ToTimedelta` raises OverflowError), so they are refused here,
once, for every RPC.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

Deserializer = Callable[[bytes], Any]
NANOS = 999_999_999
TIMESTAMP_S = (-62_135_596_800, 253_402_300_799)  # 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
DURATION_S = 315_576_000_000  # 10,000 years, either way


@dataclass(frozen=True)
class InvalidRequest:
    """A request that is not a valid message, and why: what a `lenient` deserialiser returns."""

    reason: str


def lenient(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, returning `InvalidRequest` instead of raising or passing on out-of-range times."""
    if deserializer is None:
        return None
    decode = deserializer

    def lenient_decode(data: bytes) -> Any:
        try:
            request = decode(data)
        except Exception as exc:  # noqa: BLE001 - whatever the wire held, the caller hears why
            return InvalidRequest(str(exc) or type(exc).__name__)
        problem = out_of_range(request) if isinstance(request, Message) else None
        return InvalidRequest(problem) if problem else request

    return lenient_decode


def _timestamp(m: Any, path: str) -> str | None:
    if TIMESTAMP_S[0] <= m.seconds <= TIMESTAMP_S[1] and 0 <= m.nanos <= NANOS:
        return None
    return f"{path}: a Timestamp must lie between 0001-01-01 and 9999-12-31 (seconds {m.seconds}, nanos {m.nanos})"


def _duration(m: Any, path: str) -> str | None:
    same_sign = m.seconds == 0 or m.nanos == 0 or (m.seconds > 0) == (m.nanos > 0)
    if abs(m.seconds) <= DURATION_S and abs(m.nanos) <= NANOS and same_sign:
        return None
    return f"{path}: a Duration must be within {DURATION_S:,} seconds either way (seconds {m.seconds}, nanos {m.nanos})"


_CHECKS: dict[str, Callable[[Any, str], str | None]] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
}


@functools.cache
def _holds_times(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a Timestamp or Duration at any depth (most cannot:
    they are not walked)."""
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in _CHECKS:
            return True
        if d.full_name not in seen:
            seen.add(d.full_name)
            todo.extend(f.message_type for f in d.fields if f.message_type is not None)
    return False


def out_of_range(message: Message, path: str = "") -> str | None:
    """What is wrong with the first Timestamp or Duration in `message` outside protobuf's range, if any."""
    d = message.DESCRIPTOR
    check = _CHECKS.get(d.full_name)
    if check is not None:
        return check(message, path or d.name)
    if not _holds_times(d):
        return None
    for field, value in message.ListFields():
        if field.message_type is None or not _holds_times(field.message_type):
            continue
        name = f"{path}.{field.name}" if path else field.name
        items = value.values() if field.message_type.GetOptions().map_entry else value if field.is_repeated else [value]
        for item in items:
            if isinstance(item, Message) and (problem := out_of_range(item, name)):
                return problem
    return None
