"""Checking a presented API token against DOPPEL_API_TOKEN without leaking it through timing.

Both sides are hashed first, so `hmac.compare_digest` always compares 32 bytes with 32 bytes:
how long the comparison takes depends neither on the lengths nor on how much of the token a
guess got right, and a missing token goes through the same comparison. Every gate goes through
`token_matches`: the gRPC `AuthInterceptor` and the UI's login.
"""

from __future__ import annotations

import hashlib
import hmac


def _digest(value: str | bytes) -> bytes:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return hashlib.sha256(data).digest()


def token_matches(given: str | bytes | None, expected: str | bytes) -> bool:
    """Whether `given` is `expected`, in a time that does not depend on the secret; None never matches."""
    same = hmac.compare_digest(_digest(given if given is not None else b""), _digest(expected))
    return same and given is not None
