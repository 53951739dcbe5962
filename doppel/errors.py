"""Typed errors the core raises; the gRPC layer maps each class to one status code.

The core never imports grpc: it raises these and `doppel.rpc.interceptors` turns them
into status codes with the message unchanged (but clipped, `clip`), so every message must
be one a person can act on, and quote long values with `quote`.
"""

from __future__ import annotations

QUOTE_CHARS = 60  # of a bad value quoted in a message
# Of a message as a gRPC status, in UTF-8: the details travel percent-encoded (up to 3 bytes a byte)
# in a header that clients refuse beyond 8-16 KiB (RESOURCE_EXHAUSTED instead of the real error).
MESSAGE_BYTES = 1000


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)`, or for a long value the repr of its first `limit` characters and its length:
    a message quoting a 100,000-character id whole would not fit in a gRPC status."""
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        return f"{value[:limit]!r}... ({len(value):,} {unit})"
    return repr(value)


def clip(message: str, limit: int = MESSAGE_BYTES) -> str:
    """`message` if its UTF-8 is at most `limit` bytes, else its start and its end (which often says
    what to do) around a note of how much was left out."""
    data = message.encode()
    if len(data) <= limit:
        return message
    head = data[: limit * 3 // 4].decode(errors="ignore")
    tail = data[-(limit // 5):].decode(errors="ignore")
    return f"{head} [... {len(message) - len(head) - len(tail):,} characters left out ...] {tail}"


class DoppelError(Exception):
    """Base of every error Doppel means to show to a user."""


class InvalidArgument(DoppelError):
    """The request or input is wrong; the message says what and where."""


class ParseError(InvalidArgument):
    """An export could not be parsed: names the file and, where known, the line or entry."""

    def __init__(self, file: str, reason: str, *, line: int | None = None, entry: str | None = None):
        self.file, self.reason, self.line, self.entry = file, reason, line, entry
        where = file
        if line is not None:
            where += f", line {line}"
        if entry is not None:
            where += f", entry {entry}"
        super().__init__(f"{where}: {reason}")


class InvalidKey(InvalidArgument):
    """A store key that could escape its root or is otherwise not allowed."""


class NotFound(DoppelError):
    """The named thing (dataset, model, run, object) does not exist."""


class AlreadyExists(DoppelError):
    """Something with that name or id exists already."""


class FailedPrecondition(DoppelError):
    """The request is well formed but the system is not in a state to do it."""


class Overloaded(DoppelError):
    """A queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        self.retry_after = retry_after
        super().__init__(message)


class OutOfMemory(DoppelError):
    """The work did not fit in memory (a CUDA out-of-memory, say); smaller work may."""


class Internal(DoppelError):
    """A bug, caught where it happened and logged there with its traceback; the message names
    where to look, since the traceback stays on the server."""


class Unavailable(DoppelError):
    """A part of the system is down for now; retrying later may work."""


class StorageUnavailable(Unavailable):
    """The object store cannot be reached or answered with a server error."""


class Cancelled(DoppelError):
    """The work was cancelled before it finished."""
