"""How an export becomes a dataset: the processing options, with their defaults, in one place.

The CLI, the gRPC servicer and the manifest all speak this model; the servicer converts the
proto message into it, and the manifest stores it as JSON, so a dataset says how it was made.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from doppel.errors import InvalidArgument


class Redaction(str, Enum):
    """Which personal data is replaced by typed placeholders before anything is stored."""

    off = "off"
    personal = "personal"  # emails, phone numbers, card and IBAN numbers
    personal_and_urls = "personal_and_urls"
    # personal_and_urls, street addresses, and people: all but `keep_names` become <PERSON_n> (`pseudonyms`)
    personal_urls_and_names = "personal_urls_and_names"


class IngestOptions(BaseModel):
    """Parsing and filtering options; every field has a default a user can rely on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = ""  # "" detects the format from the content
    exclude_conversations: list[str] = Field(default_factory=list)  # titles or participants, case-insensitive
    exclude_senders: list[str] = Field(default_factory=list)  # case-insensitive
    min_messages: int = Field(2, ge=1)
    session_gap: timedelta | None = None  # split threads where messages are further apart
    merge_window: timedelta | None = None  # merge one sender's consecutive messages within it
    scripts: list[str] = Field(default_factory=list)  # Unicode script names, e.g. "Latin"
    script_min_fraction: float = Field(0.5, ge=0.0, le=1.0)
    redaction: Redaction = Redaction.personal
    # with personal_urls_and_names: the speakers whose names stay (case-insensitive); everyone
    # else in the export becomes <PERSON_n>. Empty pseudonymises everyone.
    keep_names: list[str] = Field(default_factory=list)
    keep_duplicates: bool = False
    timezone: str = ""  # IANA zone applied to naive local times; "" keeps them naive
    # keep an uploaded export itself (raw/<sha256>) for the dataset's life; by default it is
    # deleted once parsed: it holds everyone's messages, media and contacts, unredacted
    keep_raw: bool = False

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v:
            from .parsers import FORMATS

            if v not in FORMATS:
                raise ValueError(f"{v!r} is not a supported format; use one of {', '.join(FORMATS)}")
        return v

    @field_validator("keep_names")
    @classmethod
    def _names_level(cls, v: list[str], info: ValidationInfo) -> list[str]:
        names = [n.strip() for n in v if n.strip()]
        level = info.data.get("redaction")
        if names and level is not None and level is not Redaction.personal_urls_and_names:  # None: reported already
            raise ValueError(f"only the {Redaction.personal_urls_and_names.value} redaction replaces names, "
                             f"not {level.value}")
        return names

    @field_validator("session_gap", "merge_window")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError("must be a positive duration")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        if v:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder ("America") or a name too long
                raise ValueError(f"{v!r} is not an IANA time zone such as 'Europe/Berlin'") from None
        return v

    @field_validator("scripts")
    @classmethod
    def _known_scripts(cls, v: list[str]) -> list[str]:
        from .filters import check_script

        return [check_script(s) for s in v]

    def zone(self) -> tzinfo | None:
        """The time zone for naive timestamps, or None to keep them naive."""
        return ZoneInfo(self.timezone) if self.timezone else None

    @classmethod
    def build(cls, **values: object) -> IngestOptions:
        """Validate options from a user; errors are InvalidArgument naming each bad option."""
        from pydantic import ValidationError

        try:
            return cls(**values)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors())
            raise InvalidArgument(f"invalid ingest options: {problems}") from None
