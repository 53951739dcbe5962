"""Deduplication across imports: a dataset remembers a fingerprint of every message it took.

Importing an export that overlaps an earlier one into the same dataset must not double any
message. Each message is fingerprinted (64-bit xxhash of conversation id, sender, text after
redaction, and timestamp) and the dataset keeps the set in a compressed file of sorted
uint64s next to its shards: 8 bytes a message on disk, about 70 a message in memory while an
import runs. A repeat inside one export is a duplicate too.
"""

from __future__ import annotations

import numpy as np
import xxhash
import zstandard

from doppel.conversation import Message
from doppel.errors import ParseError


class SeenIndex:
    """The fingerprints of the messages a dataset holds, growing as an import admits more."""

    def __init__(self, fingerprints: set[int] | None = None):
        self._seen: set[int] = fingerprints or set()
        self.added = 0

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, conversation_id: str, messages: list[Message], *, keep_duplicates: bool) -> list[Message]:
        """`messages` without those seen before (unless kept); all of them are remembered."""
        seen = self._seen
        digest = xxhash.xxh64_intdigest
        prefix = conversation_id + "\x1f"
        out = []
        for m in messages:
            # datetime's pickled state is its fields as 10 bytes, 8x cheaper than isoformat();
            # aware timestamps are always UTC here (Message normalises them), so a marker suffices
            state: tuple[bytes, ...] = m.timestamp.__reduce__()[1]  # type: ignore[assignment]  # typeshed: object's
            key = f"{prefix}{m.sender}\x1f{m.text}".encode("utf-8", "surrogatepass") + state[0]
            fp = digest(key + b"Z" if len(state) > 1 else key)
            if fp in seen:
                if keep_duplicates:
                    out.append(m)
                continue
            seen.add(fp)
            out.append(m)
        self.added += len(out)
        return out

    def to_bytes(self) -> bytes:
        """Sorted little-endian uint64s, zstd-compressed."""
        array = np.fromiter(self._seen, dtype="<u8", count=len(self._seen))
        array.sort()
        return zstandard.ZstdCompressor(level=3).compress(array.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> SeenIndex:
        try:
            raw = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise ParseError(name, f"damaged dedupe index ({e})") from None
        if len(raw) % 8:
            raise ParseError(name, "damaged dedupe index (not a whole number of fingerprints)")
        return cls(set(np.frombuffer(raw, dtype="<u8").tolist()))
