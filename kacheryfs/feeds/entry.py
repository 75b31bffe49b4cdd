"""Feed entries: the exact bytes that are signed, their wire encoding, and chain verification.

Pure and I/O-free (nothing here reads a file or a clock). Storage lives in ``feeds/store.py``.

A feed is an ed25519 key pair; its id is the public key in lowercase hex. A subfeed is an
append-only sequence of entries; entry ``i`` carries ``i``, the hash of entry ``i - 1`` (32 zero
bytes for entry 0), a timestamp, one JSON message and the feed key's signature. Notation below:
``u32``/``u64`` are big-endian unsigned integers; ``part(x)`` = ``u32 len(x) || x``.

Signed bytes (``signable_bytes``; every field length-prefixed, so no two field lists collide)::

    part("kacheryfs/feed-entry/v1")   4 + 23 bytes: domain tag
    part(feed public key)             4 + 32
    part(subfeed name, UTF-8)         4 + n        1 <= n <= 255
    part(u64 index)                   4 + 8        index < 2**63
    part(prev_hash)                   4 + 32
    part(u64 timestamp_ms)            4 + 8        ms since the Unix epoch, < 2**63
    part(message)                     4 + m        canonical JSON, UTF-8, m <= 1 MiB

    signature  = Ed25519(feed key, signed bytes)                   64 bytes
    entry_hash = BLAKE2b-256(signed bytes || signature)            the next entry's prev_hash

Wire encoding (``encode_entry`` / ``decode_entry``; 150 + n + m bytes)::

    u8  version = 1
    32  feed public key
    u8  n | n bytes subfeed name (UTF-8)
    u64 index
    32  prev_hash
    u64 timestamp_ms
    u32 m | m bytes message
    64  signature

Canonical JSON is ``json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
allow_nan=False)`` in UTF-8. A decoder accepts only canonical messages, so an entry has exactly one
encoding and ``encode_entry(decode_entry(b)) == b`` whenever decoding succeeds.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..crypto import CryptoError, FeedKey, blake2b, verify_signature
from ..errors import (
    BadFeedSignature,
    FeedFork,
    FeedGap,
    FeedMismatch,
    FeedReorder,
    InvalidFeedEntry,
    InvalidFeedId,
    InvalidFeedMessage,
    InvalidSubfeedName,
    TruncatedFeedEntry,
)

FEED_ENTRY_DOMAIN = b"kacheryfs/feed-entry/v1"
WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
MAX_SUBFEED_BYTES = 255
MAX_INDEX = (1 << 63) - 1  # SQLite integers are signed 64-bit
MAX_TIMESTAMP_MS = (1 << 63) - 1
HASH_BYTES = 32
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
ZERO_HASH = bytes(HASH_BYTES)
WIRE_OVERHEAD = 1 + PUBLIC_KEY_BYTES + 1 + 8 + HASH_BYTES + 8 + 4 + SIGNATURE_BYTES  # 150
MAX_ENTRY_BYTES = WIRE_OVERHEAD + MAX_SUBFEED_BYTES + MAX_MESSAGE_BYTES

_FEED_ID = re.compile(r"[0-9a-f]{64}")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


# ---- field rules -----------------------------------------------------------------------------
def is_feed_id(text: object) -> bool:
    return isinstance(text, str) and bool(_FEED_ID.fullmatch(text))


def check_feed_id(text: object) -> str:
    if not is_feed_id(text):
        raise InvalidFeedId(repr(text)[:80])
    return text  # type: ignore[return-value]


def check_subfeed_name(name: object) -> bytes:
    """The name's UTF-8 bytes. Names become file names under the mount's feeds/<id>/, hence the rules."""
    if not isinstance(name, str):
        raise InvalidSubfeedName(repr(name)[:80])
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSubfeedName("not valid Unicode") from None
    if not 1 <= len(raw) <= MAX_SUBFEED_BYTES or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidSubfeedName(repr(name)[:80])
    return raw


def canonical_json(value: Any) -> bytes:
    """The one byte form of a message; raises InvalidFeedMessage for what JSON cannot carry."""
    try:
        data = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidFeedMessage(str(exc)[:200]) from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidFeedMessage(f"{len(data)} bytes encoded")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_message(data: bytes) -> Any:
    """The JSON value of canonical message bytes; anything else is InvalidFeedEntry."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidFeedEntry(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidFeedEntry("message is not JSON") from None
    try:
        canonical = canonical_json(value)
    except InvalidFeedMessage:
        raise InvalidFeedEntry("message is not JSON") from None
    if canonical != data:
        raise InvalidFeedEntry("message is not in canonical JSON form")
    return value


def _check_int(value: object, limit: int, what: str) -> None:
    # bool is an int subclass; an index of True is a bug, not 1.
    if type(value) is not int or not 0 <= value <= limit:
        raise InvalidFeedEntry(f"{what} {value!r} out of range")


def _check_bytes(value: object, length: int, what: str) -> None:
    if type(value) is not bytes or len(value) != length:
        raise InvalidFeedEntry(f"{what} must be {length} bytes")


# ---- the entry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedEntry:
    """One well-formed entry (checked on construction). Whether it is *signed* by its feed is
    a separate question: verify_entry / verify_chain."""

    feed_id: str  # the feed's ed25519 public key, 64 lowercase hex
    subfeed: str
    index: int
    prev_hash: bytes  # entry_hash of entry index-1; ZERO_HASH for index 0
    timestamp_ms: int
    message: bytes  # canonical JSON, UTF-8
    signature: bytes  # 64 bytes, Ed25519 over signable_bytes

    def __post_init__(self) -> None:
        try:
            check_feed_id(self.feed_id)
            check_subfeed_name(self.subfeed)
        except (InvalidFeedId, InvalidSubfeedName) as exc:
            raise InvalidFeedEntry(str(exc)) from None
        _check_int(self.index, MAX_INDEX, "index")
        _check_bytes(self.prev_hash, HASH_BYTES, "prev_hash")
        if self.index == 0 and self.prev_hash != ZERO_HASH:
            raise InvalidFeedEntry("entry 0 must have an all-zero prev_hash")
        _check_int(self.timestamp_ms, MAX_TIMESTAMP_MS, "timestamp_ms")
        if type(self.message) is not bytes:
            raise InvalidFeedEntry("message must be bytes")
        parse_message(self.message)
        _check_bytes(self.signature, SIGNATURE_BYTES, "signature")

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.feed_id)

    @property
    def value(self) -> Any:
        """The message as a Python value."""
        return json.loads(self.message)

    def signed_bytes(self) -> bytes:
        return signable_bytes(self.feed_id, self.subfeed, self.index, self.prev_hash, self.timestamp_ms,
                              self.message)


def _part(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def signable_bytes(feed_id: str, subfeed: str, index: int, prev_hash: bytes, timestamp_ms: int,
                   message: bytes) -> bytes:
    """THE bytes a feed key signs (layout in the module docstring and docs/protocol.md)."""
    return b"".join((
        _part(FEED_ENTRY_DOMAIN),
        _part(bytes.fromhex(feed_id)),
        _part(subfeed.encode("utf-8")),
        _part(_U64.pack(index)),
        _part(prev_hash),
        _part(_U64.pack(timestamp_ms)),
        _part(message),
    ))


def entry_hash(entry: FeedEntry) -> bytes:
    """BLAKE2b-256 of signed bytes || signature: commits to the signature too, so the chain
    pins the exact entries held, not just their contents."""
    return blake2b(entry.signed_bytes() + entry.signature)


def sign_entry(feed_key: FeedKey, subfeed: str, index: int, prev_hash: bytes, message: bytes,
               timestamp_ms: int) -> FeedEntry:
    """Sign an entry whose message is already canonical JSON bytes."""
    check_subfeed_name(subfeed)
    _check_int(index, MAX_INDEX, "index")
    _check_bytes(prev_hash, HASH_BYTES, "prev_hash")
    _check_int(timestamp_ms, MAX_TIMESTAMP_MS, "timestamp_ms")
    signature = feed_key.sign(signable_bytes(feed_key.feed_id, subfeed, index, prev_hash, timestamp_ms, message))
    return FeedEntry(feed_key.feed_id, subfeed, index, prev_hash, timestamp_ms, message, signature)


def make_entry(feed_key: FeedKey, subfeed: str, index: int, prev_hash: bytes, message_obj: Any,
               timestamp_ms: int) -> FeedEntry:
    return sign_entry(feed_key, subfeed, index, prev_hash, canonical_json(message_obj), timestamp_ms)


# ---- wire encoding ---------------------------------------------------------------------------
def encode_entry(entry: FeedEntry) -> bytes:
    name = entry.subfeed.encode("utf-8")
    return b"".join((
        bytes((WIRE_VERSION,)),
        entry.public_key,
        bytes((len(name),)), name,
        _U64.pack(entry.index),
        entry.prev_hash,
        _U64.pack(entry.timestamp_ms),
        _U32.pack(len(entry.message)), entry.message,
        entry.signature,
    ))


class _Reader:
    """Cursor over the input; running out of bytes is always TruncatedFeedEntry, so a reader fed a
    prefix can tell "need more" from "never valid"."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise TruncatedFeedEntry(f"{what} at byte {self._pos}: {len(self._data) - self._pos} of {n} bytes")
        out = bytes(self._data[self._pos:end])
        self._pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.take(8, what))[0]

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos


def decode_entry(data: bytes) -> FeedEntry:
    """Parse exactly one wire-encoded entry; any defect raises InvalidFeedEntry (a prefix of a valid
    entry raises its subclass TruncatedFeedEntry). Does not check the signature: verify_entry."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidFeedEntry(f"expected bytes, got {type(data).__name__}")
    r = _Reader(data)
    version = r.u8("version")
    if version != WIRE_VERSION:
        raise InvalidFeedEntry(f"unknown entry version {version}")
    public = r.take(PUBLIC_KEY_BYTES, "feed key")
    name_len = r.u8("subfeed name length")
    if name_len == 0:
        raise InvalidFeedEntry("empty subfeed name")
    raw_name = r.take(name_len, "subfeed name")
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFeedEntry("subfeed name is not UTF-8") from None
    index = r.u64("index")
    prev_hash = r.take(HASH_BYTES, "prev_hash")
    timestamp_ms = r.u64("timestamp")
    msg_len = r.u32("message length")
    if msg_len > MAX_MESSAGE_BYTES:  # before reading: never buffer what will be rejected
        raise InvalidFeedEntry(f"message of {msg_len} bytes exceeds {MAX_MESSAGE_BYTES}")
    message = r.take(msg_len, "message")
    signature = r.take(SIGNATURE_BYTES, "signature")
    if r.remaining:
        raise InvalidFeedEntry(f"{r.remaining} trailing bytes")
    return FeedEntry(public.hex(), name, index, prev_hash, timestamp_ms, message, signature)


# ---- verification ----------------------------------------------------------------------------
def verify_entry(entry: FeedEntry) -> None:
    """Raise BadFeedSignature unless the feed's key signed this entry."""
    try:
        verify_signature(entry.public_key, entry.signed_bytes(), entry.signature)
    except CryptoError:
        raise BadFeedSignature(f"{entry.feed_id[:16]}…/{entry.subfeed} entry {entry.index}") from None


def check_link(entry: FeedEntry, next_index: int, prev_hash: bytes) -> None:
    """Does entry extend a log holding next_index entries whose last hash is prev_hash?
    The one statement of the chain rule, used by verify_chain and by the store."""
    if entry.index > next_index:
        raise FeedGap(f"expected entry {next_index}, got {entry.index}")
    if entry.index < next_index:
        raise FeedReorder(f"expected entry {next_index}, got {entry.index}")
    if entry.prev_hash != prev_hash:
        raise FeedFork(f"entry {entry.index} does not link to entry {entry.index - 1}")


def verify_chain(entries: Sequence[FeedEntry], start_prev_hash: bytes | None = None, *,
                 start_index: int | None = None) -> bytes:
    """Check that entries are one subfeed's consecutive, linked, signed entries; return the hash of
    the last one (or the start hash when there are none).

    With no start_prev_hash the chain must begin at entry 0. With one, the first entry must link to
    it (and, if start_index is given, have that index): this verifies a later slice of a log
    against a tip already trusted.
    """
    if start_prev_hash is None:
        prev, expected = ZERO_HASH, 0
        if start_index not in (None, 0):
            raise ValueError("start_index needs start_prev_hash")
    else:
        _check_bytes(start_prev_hash, HASH_BYTES, "start_prev_hash")
        prev = start_prev_hash
        expected = entries[0].index if start_index is None and entries else (start_index or 0)
    if not entries:
        return prev
    first = entries[0]
    for pos, entry in enumerate(entries):
        if (entry.feed_id, entry.subfeed) != (first.feed_id, first.subfeed):
            raise FeedMismatch(f"entry {pos} is {entry.feed_id[:16]}…/{entry.subfeed}, "
                               f"not {first.feed_id[:16]}…/{first.subfeed}")
        try:
            check_link(entry, expected, prev)
        except FeedGap:
            # A missing index that turns up later is a reordering, not a hole.
            if any(e.index == expected for e in entries[pos + 1:]):
                raise FeedReorder(f"expected entry {expected}, got {entry.index}") from None
            raise
        verify_entry(entry)
        prev, expected = entry_hash(entry), expected + 1
    return prev
