"""Chunk manifests: the SHA-1 of each fixed-size chunk of a large file, stored as an object itself.

The encoding is canonical JSON (sorted keys, no spaces), so one file has exactly one manifest hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import CorruptObject
from .hashing import Digest, sha1_hex
from .uri import is_sha1_hex

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    sha1: str
    size: int
    chunk_size: int
    chunk_sha1s: tuple[str, ...]

    @classmethod
    def from_digest(cls, digest: Digest) -> "Manifest":
        return cls(digest.sha1, digest.size, digest.chunk_size, digest.chunk_sha1s)

    def to_bytes(self) -> bytes:
        doc = {
            "version": MANIFEST_VERSION,
            "sha1": self.sha1,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunk_sha1s),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def manifest_sha1(self) -> str:
        return sha1_hex(self.to_bytes())

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Byte range [start, end) of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def chunks_covering(self, offset: int, length: int) -> range:
        """Indices of the chunks a read of ``length`` bytes at ``offset`` touches."""
        if length <= 0 or offset >= self.size:
            return range(0)
        end = min(offset + length, self.size)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha1: str | None = None) -> "Manifest":
        """Decode and check a manifest; anything malformed raises CorruptObject."""
        if expected_sha1 is not None and sha1_hex(data) != expected_sha1:
            raise CorruptObject(f"manifest does not hash to {expected_sha1}")
        try:
            doc = json.loads(data)
            sha1, size, chunk_size = doc["sha1"], doc["size"], doc["chunk_size"]
            chunks = tuple(doc["chunks"])
            version = doc["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"malformed manifest: {exc}") from None
        if version != MANIFEST_VERSION:
            raise CorruptObject(f"unsupported manifest version {version!r}")
        if not (isinstance(sha1, str) and is_sha1_hex(sha1)):
            raise CorruptObject("manifest sha1 is not 40 hex digits")
        if not (isinstance(size, int) and isinstance(chunk_size, int) and size >= 0 and chunk_size > 0):
            raise CorruptObject("manifest size or chunk_size is invalid")
        expected_chunks = max(1, -(-size // chunk_size))
        if len(chunks) != expected_chunks:
            raise CorruptObject(f"manifest lists {len(chunks)} chunks, size implies {expected_chunks}")
        if not all(isinstance(c, str) and is_sha1_hex(c) for c in chunks):
            raise CorruptObject("manifest chunk hash is not 40 hex digits")
        return cls(sha1, size, chunk_size, chunks)
