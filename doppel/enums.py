"""Proto enum values by their short names: `RUN_STATE_COMPLETED` <-> "completed".

Doppel's enums follow buf's rules: each value is prefixed with the enum's name in upper snake
case, and zero is `<PREFIX>_UNSPECIFIED`, "not set". A value's short name is the rest, in lower
case: "whatsapp", "discord_csv", "end_of_turn". These are the names the CLI takes and prints,
the UI shows and the services' cores use, so every mapping between them and the wire is made
here, from the generated enum itself: a value added to a proto needs no second list.

    from doppel.v1 import trainer_pb2
    name(trainer_pb2.RunState, 3)            # "completed"
    value(trainer_pb2.RunState, "failed")    # 4
    names(trainer_pb2.LrSchedule)            # {1: "constant", 2: "linear", 3: "cosine"}

An enum without the `_UNSPECIFIED` zero (the standard health service's `ServingStatus`) has no
prefix: its short names are its value names in lower case, zero included.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar, cast

E = TypeVar("E", bound=int)  # a generated enum: its stubs make it an int subclass, its values instances


@cache
def _prefix(enum: Any) -> str:
    zero = enum.DESCRIPTOR.values_by_number.get(0)
    return zero.name.removesuffix("UNSPECIFIED") if zero and zero.name.endswith("_UNSPECIFIED") else ""


def name(enum: type[int], number: int) -> str:
    """The short name of `number` ("unspecified" for an unset enum's zero); a number this build does
    not know (sent by a newer peer) as the number itself, so a display never fails on it."""
    found = cast(Any, enum).DESCRIPTOR.values_by_number.get(number)
    return found.name.removeprefix(_prefix(cast(Any, enum))).lower() if found else str(number)


def label(enum: type[int], number: int) -> str:
    """`name` for people: "end of turn"."""
    return name(enum, number).replace("_", " ")


@cache
def _names(enum: Any) -> tuple[tuple[int, str], ...]:
    skip = 0 if _prefix(enum) else None
    return tuple((v.number, name(enum, v.number)) for v in enum.DESCRIPTOR.values if v.number != skip)


def names(enum: type[E]) -> dict[E, str]:
    """Every value that says something (all but the `_UNSPECIFIED` zero) -> its short name, in the proto's order."""
    return {cast(E, v): n for v, n in _names(cast(Any, enum))}


def values(enum: type[E]) -> dict[str, E]:
    """`names` the other way round: short name -> value."""
    return {n: cast(E, v) for v, n in _names(cast(Any, enum))}


def value(enum: type[E], short: str) -> E:
    """The value of a short name (any case); a ValueError that lists the names otherwise."""
    known = values(enum)
    found = known.get(short.strip().lower())
    if found is None:
        raise ValueError(f"{short!r} is not a {cast(Any, enum).DESCRIPTOR.name}; use one of {', '.join(known)}")
    return found
