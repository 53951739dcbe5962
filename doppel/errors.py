"""Typed errors the core raises; the gRPC layer maps each class to one status code.

The core never imports grpc: it raises these and `doppel.rpc.interceptors` turns them
into status codes with the message unchanged, so every message must be one a person
can act on.
"""

from __future__ import annotations


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
