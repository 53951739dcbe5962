"""Object storage, Doppel's system of record: one `open_store(url)` for every backend.

`file:///path` is a local folder (the embedded default); `s3://bucket[/root]?endpoint=...`
is any S3 server (MinIO, SeaweedFS, AWS S3, R2). Nothing outside this package branches
on which one it is.
"""

from __future__ import annotations

import logging
import time

from doppel.errors import InvalidArgument, StorageUnavailable

from .base import ObjectInfo, Store, validate_key, validate_prefix

__all__ = ["ObjectInfo", "Store", "open_store", "validate_key", "validate_prefix"]

log = logging.getLogger(__name__)
EXAMPLES = "file:///var/lib/doppel/store or s3://my-bucket?endpoint=127.0.0.1:9000&secure=false"
STARTUP_WAIT_S = 90.0  # how long a starting service waits for its store (an S3 server starting beside it)


def open_store(url: str, *, wait_s: float = 0.0) -> Store:
    """Open the store a URL names; S3 buckets are created if missing.

    With `wait_s`, a store that does not answer (StorageUnavailable) is tried again, with a
    warning saying why, for up to that long: a service that starts beside its S3 server (compose
    `restart` starts both at once) waits for it instead of exiting.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return _open(url)
        except StorageUnavailable as e:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("the store does not answer yet, trying again in %.1f s: %s", delay, e)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _open(url: str) -> Store:
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"no store URL given; use for example {EXAMPLES}")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "file":
        from .local import LocalStore

        return LocalStore.from_url(url)
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store.from_url(url)
    raise InvalidArgument(f"store URL {url!r} has an unsupported scheme; use for example {EXAMPLES}")
