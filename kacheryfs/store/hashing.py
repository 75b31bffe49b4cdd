"""One-pass hashing of a byte stream: the whole-file SHA-1 and the SHA-1 of every fixed-size chunk."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import xxhash

# 1 MiB: see docs/architecture.md ("Chunk size"). Changing it changes every manifest hash.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Digest:
    sha1: str
    size: int
    chunk_sha1s: tuple[str, ...]
    chunk_size: int = CHUNK_SIZE
    # xxh3-128 of each chunk (16 bytes each, concatenated): a cheap local check against bit rot,
    # recorded when the bytes are written (store/integrity.py); b"" when not computed
    chunk_sums: bytes = b""


class ContentHasher:
    """Feed bytes in order with ``update``; ``digest`` gives the whole and per-chunk SHA-1s.

    The two SHA-1 passes are independent *lanes*: ``update_whole`` (the whole-file SHA-1) and
    ``update_chunks`` (each chunk's SHA-1 and xxh3) may run at the same time in two threads (hashlib
    and xxhash release the GIL), each lane fed the same bytes in order; ``update`` feeds both."""

    def __init__(self, chunk_size: int = CHUNK_SIZE):
        self.chunk_size = chunk_size
        self._whole = hashlib.sha1()
        self._whole_size = 0
        self._chunk = hashlib.sha1()
        self._sum = xxhash.xxh3_128()
        self._chunk_fill = 0
        self._chunks: list[str] = []
        self._sums: list[bytes] = []
        self.size = 0  # bytes through the chunk lane

    def update(self, data) -> None:
        self.update_whole(data)
        self.update_chunks(data)

    def update_whole(self, data) -> None:
        view = memoryview(data).cast("B")
        self._whole.update(view)
        self._whole_size += len(view)

    def update_chunks(self, data) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        while len(view):
            room = self.chunk_size - self._chunk_fill
            piece = view[:room]
            self._chunk.update(piece)
            self._sum.update(piece)
            self._chunk_fill += len(piece)
            view = view[len(piece):]
            if self._chunk_fill == self.chunk_size:
                self._chunks.append(self._chunk.hexdigest())
                self._sums.append(self._sum.digest())
                self._chunk = hashlib.sha1()
                self._sum = xxhash.xxh3_128()
                self._chunk_fill = 0

    def digest(self) -> Digest:
        if self._whole_size != self.size:
            raise ValueError(f"hash lanes disagree: {self._whole_size} bytes whole, {self.size} chunked")
        chunks, sums = list(self._chunks), list(self._sums)
        if self._chunk_fill or not chunks:
            chunks.append(self._chunk.hexdigest())
            sums.append(self._sum.digest())
        return Digest(self._whole.hexdigest(), self.size, tuple(chunks), self.chunk_size, b"".join(sums))


def hash_bytes(data: bytes) -> Digest:
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.digest()


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def chunk_sum(data) -> bytes:
    """The xxh3-128 of one chunk, as recorded in Digest.chunk_sums."""
    return xxhash.xxh3_128(data).digest()
