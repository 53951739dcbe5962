"""Object storage, Doppel's system of record: one `open_store(url)` for every backend.

`file:///path` is a local folder (the embedded default); `s3://bucket[/root]?endpoint=...`
is any S3 server (MinIO, SeaweedFS, AWS S3, R2). Nothing outside this package branches
on which one it is.
"""

from __future__ import annotations

from doppel.errors import InvalidArgument

from .base import ObjectInfo, Store, validate_key, validate_prefix

__all__ = ["ObjectInfo", "Store", "open_store", "validate_key", "validate_prefix"]

EXAMPLES = "file:///var/lib/doppel/store or s3://my-bucket?endpoint=127.0.0.1:9000&secure=false"


def open_store(url: str) -> Store:
    """Open the store a URL names; S3 buckets are created if missing."""
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
