"""Every export format Doppel reads, and detection from content (never from the name alone).

Each module holds one family of formats and exports `PARSERS`, a list of `Parser`s. The
order of `REGISTRY` is the detection order of FORMATS.md 0.1: first match wins.
"""

from __future__ import annotations

from collections.abc import Iterator

from doppel.conversation import Conversation
from doppel.errors import InvalidArgument

from ..source import Source
from . import discord, jsonl, messenger, reddit, slack, telegram, whatsapp
from .base import Parser

REGISTRY: list[Parser] = [
    *messenger.PARSERS,  # instagram before messenger: a bare messages/inbox/ can be either
    *discord.PARSERS,
    *telegram.PARSERS,
    *slack.PARSERS,
    *whatsapp.PARSERS,
    *reddit.PARSERS,
    *jsonl.PARSERS,
]
FORMATS: list[str] = list(dict.fromkeys(p.format for p in REGISTRY))


def parser_for(name: str) -> Parser:
    """The parser of a format name, e.g. "whatsapp"."""
    for p in REGISTRY:
        if p.format == name:
            return p
    raise InvalidArgument(f"unknown export format {name!r}; supported formats: {', '.join(FORMATS)}")


def detect(source: Source) -> Parser:
    """The first parser whose detector accepts `source`; else an error listing what is supported."""
    for p in REGISTRY:
        if p.detect(source):
            return p
    files = source.files()
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    raise InvalidArgument(
        f"{source.name}: not a supported chat export (files: {shown or 'none'}); "
        f"supported formats: {', '.join(FORMATS)}"
    )


def parse(source: Source, format: str = "") -> tuple[str, Iterator[Conversation]]:
    """(format name, conversations) for `source`, detecting the format unless one is named."""
    p = parser_for(format) if format else detect(source)
    return p.format, p.parse(source)
