"""Which chunks of an object a peer holds: a set of chunk indices with a compact wire form.

Pure and I/O-free. The wire form is a string (it travels in a message's JSON header): base64 of
one form byte and a body, the encoder picking the shorter form (the bitmap on a tie):

    0x00 bitmap   bit i of byte i // 8 (least significant first) = chunk i, as in the partial
                  file's bitmap; no trailing zero bytes (the empty set is the form byte alone)
    0x01 ranges   (gap, length) pairs of unsigned LEB128 varints: a run of ``length`` >= 1 chunks
                  starting ``gap`` after the end of the previous run (after 0 for the first);
                  consecutive runs must not touch (gap >= 1 after the first)

Scattered sets (rarest-first downloads) are smallest as bitmaps, contiguous ones (a sequential
download, a read-ahead) as ranges. Decoding is strict: every set has exactly one encoding, and
malformed input raises ValueError before allocating more than the input's size allows.
"""

from __future__ import annotations

import base64
import binascii
from typing import Iterable, Iterator

MAX_CHUNKS = 1 << 24  # 16 Mi chunks: 16 TiB at 1 MiB a chunk
MAX_WIRE_CHARS = 4 * ((1 + MAX_CHUNKS // 8 + 2) // 3)  # the largest bitmap, in base64
_BITMAP, _RANGES = 0, 1


class ChunkSet:
    """An immutable set of chunk indices (0 <= i < MAX_CHUNKS), kept as an int bitmask."""

    __slots__ = ("_bits",)

    def __init__(self, chunks: Iterable[int] = ()):
        bits = 0
        for i in chunks:
            if not 0 <= i < MAX_CHUNKS:
                raise ValueError(f"chunk index {i} out of range")
            bits |= 1 << i
        self._bits = bits

    @classmethod
    def from_bitmap(cls, bitmap: bytes) -> "ChunkSet":
        """From a bitmap laid out as the wire form's (and the partial file's): bit i of byte i // 8."""
        if len(bitmap) > MAX_CHUNKS // 8:
            raise ValueError("bitmap too long")
        out = cls.__new__(cls)
        out._bits = int.from_bytes(bitmap, "little")
        return out

    @classmethod
    def range(cls, start: int, stop: int) -> "ChunkSet":
        if not 0 <= start <= stop <= MAX_CHUNKS:
            raise ValueError("range out of bounds")
        out = cls.__new__(cls)
        out._bits = ((1 << (stop - start)) - 1) << start
        return out

    def bitmap(self) -> bytes:
        return self._bits.to_bytes((self._bits.bit_length() + 7) // 8, "little")

    def __contains__(self, i: int) -> bool:
        return 0 <= i and bool(self._bits >> i & 1)

    def __len__(self) -> int:
        return self._bits.bit_count()

    def __bool__(self) -> bool:
        return self._bits != 0

    def __iter__(self) -> Iterator[int]:
        for byte_index, byte in enumerate(self.bitmap()):
            while byte:
                low = byte & -byte
                yield byte_index * 8 + low.bit_length() - 1
                byte ^= low

    def __or__(self, other: "ChunkSet") -> "ChunkSet":
        out = ChunkSet.__new__(ChunkSet)
        out._bits = self._bits | other._bits
        return out

    def __sub__(self, other: "ChunkSet") -> "ChunkSet":
        out = ChunkSet.__new__(ChunkSet)
        out._bits = self._bits & ~other._bits
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChunkSet) and self._bits == other._bits

    def __hash__(self) -> int:
        return hash(self._bits)

    def __repr__(self) -> str:
        runs = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in self.runs())
        return f"ChunkSet({runs})"

    def end(self) -> int:
        """One past the highest index held (0 for the empty set)."""
        return self._bits.bit_length()

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of consecutive indices as (start, stop) pairs, ascending."""
        out: list[tuple[int, int]] = []
        for i in self:
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1)
            else:
                out.append((i, i + 1))
        return out

    # --- wire form

    def encode(self) -> str:
        bitmap = bytes([_BITMAP]) + self.bitmap()
        ranges = bytearray([_RANGES])
        previous_end = 0
        for start, stop in self.runs():
            ranges += _varint(start - previous_end) + _varint(stop - start)
            previous_end = stop
            if len(ranges) > len(bitmap):
                break  # the bitmap wins already
        raw = bytes(ranges) if len(ranges) < len(bitmap) else bitmap
        return base64.b64encode(raw).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> "ChunkSet":
        if not isinstance(text, str) or len(text) > MAX_WIRE_CHARS:
            raise ValueError("chunk set is not a string of bounded length")
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("chunk set is not base64") from None
        if base64.b64encode(raw).decode("ascii") != text:
            raise ValueError("chunk set base64 is not canonical")
        if not raw:
            raise ValueError("chunk set lacks its form byte")
        form, body = raw[0], raw[1:]
        if form == _BITMAP:
            if body and body[-1] == 0:
                raise ValueError("chunk bitmap has trailing zero bytes")
            out = cls.from_bitmap(body)
        elif form == _RANGES:
            out = cls.from_bitmap(_ranges_to_bitmap(body))
        else:
            raise ValueError(f"unknown chunk set form {form}")
        if out.encode() != text:
            raise ValueError("chunk set is not in its shortest form")
        return out


def _ranges_to_bitmap(body: bytes) -> bytes:
    """Runs filled into a bitmap: O(runs + bitmap size), however the runs are laid out."""
    runs: list[tuple[int, int]] = []
    position, end = 0, 0
    while position < len(body):
        gap, position = _read_varint(body, position)
        length, position = _read_varint(body, position)
        if length == 0 or (gap == 0 and runs):
            raise ValueError("chunk ranges are not canonical")
        start = end + gap
        end = start + length
        if end > MAX_CHUNKS:
            raise ValueError("chunk range out of bounds")
        runs.append((start, end))
    bitmap = bytearray((end + 7) // 8)
    for start, stop in runs:
        first_full, last_full = (start + 7) // 8, stop // 8
        if first_full <= last_full:
            bitmap[first_full:last_full] = b"\xff" * (last_full - first_full)
            for i in range(start, first_full * 8):
                bitmap[i >> 3] |= 1 << (i & 7)
            for i in range(last_full * 8, stop):
                bitmap[i >> 3] |= 1 << (i & 7)
        else:  # within one byte
            for i in range(start, stop):
                bitmap[i >> 3] |= 1 << (i & 7)
    return bytes(bitmap)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint in chunk ranges")
        if shift > 28:
            raise ValueError("varint too long in chunk ranges")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and shift > 7:
                raise ValueError("varint is not minimal")
            return value, position


__all__ = ["ChunkSet", "MAX_CHUNKS"]
