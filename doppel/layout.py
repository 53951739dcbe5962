"""Where things live in the object store, and the ids that name them.

One place builds every store key so services agree on the layout:

    raw/<sha256>                                  an uploaded export, by content hash
    datasets/<id>/manifest.json                   written last: no manifest, no dataset
    datasets/<id>/conversations-00000.jsonl.zst   conversation shards (doppel.conversation)
    datasets/<id>/seen-00000.u64.zst              message fingerprints for dedupe, one per import
    runs/<id>/...                                 training run records and checkpoints
    models/<id>/...                               trained persona models

Ids are 1-64 ASCII letters, digits, `-` or `_`, so a key built from one never escapes its prefix.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from doppel.errors import InvalidArgument, quote

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")  # an id, dots allowed inside: "qwen2.5-0.5b"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate_id(value: str, kind: str = "id") -> str:
    """Return `value` if it is a valid id, else raise InvalidArgument naming it."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidArgument(f"invalid {kind} {quote(value)}: use 1-64 letters, digits, '-' or '_'")
    return value


def validate_name(value: str, kind: str = "name") -> str:
    """Return `value` if it is a valid name (an id that may hold dots, not at its ends), else raise
    InvalidArgument naming it."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument(f"invalid {kind} {quote(value)}: use 1-64 letters, digits, '-', '_' or '.' "
                              "(starting and ending with a letter or digit)")
    return value


def new_id(prefix: str = "") -> str:
    """A short unique id that sorts by creation time (UTC, to the second): `ds-20261122-053012-a1b2c3d4`."""
    value = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"
    if prefix:
        validate_id(prefix, "id prefix")
        value = f"{prefix}-{value}"
        if len(value) > 64:
            raise InvalidArgument(f"id prefix {quote(prefix)} is too long: ids have at most 64 characters")
    return value


def dataset_prefix(dataset_id: str) -> str:
    """`datasets/<id>/`: every key of one dataset starts with this."""
    return f"datasets/{validate_id(dataset_id, 'dataset id')}/"


def manifest_key(dataset_id: str) -> str:
    """`datasets/<id>/manifest.json`."""
    return dataset_prefix(dataset_id) + "manifest.json"


def shard_name(n: int) -> str:
    """`conversations-00000.jsonl.zst`: shard `n`'s key relative to its dataset prefix."""
    if not isinstance(n, int) or n < 0:
        raise InvalidArgument(f"invalid shard number {n!r}: must be an integer >= 0")
    return f"conversations-{n:05d}.jsonl.zst"


def seen_name(n: int) -> str:
    """`seen-00000.u64.zst`: the dedupe index written by import `n`, relative to its dataset prefix."""
    return shard_name(n).replace("conversations-", "seen-").replace(".jsonl.zst", ".u64.zst")


def shard_key(dataset_id: str, n: int) -> str:
    """`datasets/<id>/conversations-00000.jsonl.zst`."""
    return dataset_prefix(dataset_id) + shard_name(n)


def raw_export_key(sha256: str) -> str:
    """`raw/<sha256>`: uploaded exports are stored once per content hash (lowercase hex)."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidArgument(f"invalid sha256 {quote(sha256)}: must be 64 lowercase hex digits")
    return f"raw/{sha256}"


def run_prefix(run_id: str) -> str:
    """`runs/<id>/`."""
    return f"runs/{validate_id(run_id, 'run id')}/"


def model_prefix(model_id: str) -> str:
    """`models/<id>/`."""
    return f"models/{validate_id(model_id, 'model id')}/"
