"""The pure feed core: the exact signed bytes, the wire codec (whole, byte by byte, fuzzed), chains."""

from __future__ import annotations

import dataclasses
import os
import stat
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kacheryfs.crypto import FeedKey, blake2b
from kacheryfs.errors import (
    BadFeedSignature,
    FeedError,
    FeedFork,
    FeedGap,
    FeedMismatch,
    FeedReorder,
    InvalidFeedEntry,
    InvalidFeedMessage,
    InvalidFeedURI,
    InvalidSubfeedName,
    KacheryError,
    TruncatedFeedEntry,
)
from kacheryfs.feeds.entry import (
    MAX_MESSAGE_BYTES,
    ZERO_HASH,
    FeedEntry,
    canonical_json,
    decode_entry,
    encode_entry,
    entry_hash,
    make_entry,
    sign_entry,
    signable_bytes,
    verify_chain,
    verify_entry,
)
from kacheryfs.feeds.uri import FeedURI, feed_uri, parse_feed_uri

SEED = bytes(range(32))
KEY = FeedKey.from_seed(SEED)
OTHER = FeedKey.from_seed(bytes(range(32, 64)))
PUB_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"  # ed25519 public key of SEED
TS = 1_700_000_000_000
PREV = bytes([0x11]) * 32
MESSAGE = {"b": [1, 2.5, None], "a": "é"}
MESSAGE_BYTES = b'{"a":"\xc3\xa9","b":[1,2.5,null]}'  # canonical: sorted keys, no spaces, UTF-8

# The documented layout, written out field by field (protocol.md "Feeds").
EXPECTED_SIGNED_HEX = (
    "00000017" "6b61636865727966732f666565642d656e7472792f7631"  # part("kacheryfs/feed-entry/v1")
    "00000020" + PUB_HEX +                                         # part(feed public key)
    "00000004" "6a6f6273"                                          # part("jobs")
    "00000008" "0000000000000007"                                  # part(u64 index = 7)
    "00000020" + "11" * 32 +                                       # part(prev_hash)
    "00000008" "0000018bcfe56800"                                  # part(u64 timestamp_ms)
    "0000001b" "7b2261223a22c3a9222c2262223a5b312c322e352c6e756c6c5d7d"  # part(message), 27 bytes
)


def part(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def wire(*, version=1, pub=None, name=b"jobs", index=7, prev=PREV, ts=TS, msg=MESSAGE_BYTES, sig=bytes(64),
         name_len=None, msg_len=None) -> bytes:
    """An entry's wire bytes built independently of encode_entry, fields overridable to break them."""
    pub = bytes.fromhex(PUB_HEX) if pub is None else pub
    return (bytes([version]) + pub + bytes([len(name) if name_len is None else name_len]) + name
            + struct.pack(">Q", index) + prev + struct.pack(">Q", ts)
            + struct.pack(">I", len(msg) if msg_len is None else msg_len) + msg + sig)


def chain(key: FeedKey = KEY, n: int = 5, subfeed: str = "jobs") -> list[FeedEntry]:
    out, prev = [], ZERO_HASH
    for i in range(n):
        out.append(make_entry(key, subfeed, i, prev, {"i": i}, TS + i))
        prev = entry_hash(out[-1])
    return out


# ---- byte-exact layouts ----------------------------------------------------------------------
def test_public_key_of_fixed_seed():
    assert KEY.feed_id == PUB_HEX


def test_signed_bytes_are_exactly_the_documented_layout():
    entry = make_entry(KEY, "jobs", 7, PREV, MESSAGE, TS)
    expected = (part(b"kacheryfs/feed-entry/v1") + part(bytes.fromhex(PUB_HEX)) + part(b"jobs")
                + part(struct.pack(">Q", 7)) + part(PREV) + part(struct.pack(">Q", TS)) + part(MESSAGE_BYTES))
    assert expected.hex() == EXPECTED_SIGNED_HEX
    assert entry.signed_bytes() == expected
    assert signable_bytes(PUB_HEX, "jobs", 7, PREV, TS, MESSAGE_BYTES) == expected
    assert entry.message == MESSAGE_BYTES
    # Ed25519 is deterministic: the signature is a function of key and bytes (known answer).
    assert entry.signature == KEY.signing_key.sign(expected).signature
    assert entry_hash(entry) == blake2b(expected + entry.signature)
    verify_entry(entry)


def test_wire_encoding_is_exactly_the_documented_layout():
    entry = make_entry(KEY, "jobs", 7, PREV, MESSAGE, TS)
    data = encode_entry(entry)
    assert data == wire(sig=entry.signature)
    assert len(data) == 150 + 4 + len(MESSAGE_BYTES)
    assert data[0] == 1 and data[1:33].hex() == PUB_HEX and data[33] == 4 and data[34:38] == b"jobs"
    assert data[38:46] == bytes(7) + b"\x07" and data[46:78] == PREV
    assert data[78:86].hex() == "0000018bcfe56800" and data[86:90] == b"\x00\x00\x00\x1b"
    assert data[-64:] == entry.signature


def test_entry_zero_links_to_zero_hash():
    e0 = make_entry(KEY, "jobs", 0, ZERO_HASH, None, 0)
    assert e0.message == b"null"
    with pytest.raises(InvalidFeedEntry):
        make_entry(KEY, "jobs", 0, PREV, None, 0)


# ---- decoding: whole, byte by byte, malformed ------------------------------------------------
def test_decode_whole_and_every_prefix_is_truncated():
    entry = make_entry(KEY, "jobs", 7, PREV, MESSAGE, TS)
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert decode_entry(bytearray(data)) == entry
    for n in range(len(data)):
        with pytest.raises(TruncatedFeedEntry):
            decode_entry(data[:n])
    with pytest.raises(InvalidFeedEntry) as info:
        decode_entry(data + b"\x00")
    assert not isinstance(info.value, TruncatedFeedEntry)


@pytest.mark.parametrize("data, why", [
    (wire(version=2), "version"),
    (wire(name=b"", name_len=0), "empty name"),
    (wire(name=b"a/b"), "slash"),
    (wire(name=b"a\x00b"), "NUL"),
    (wire(name=b"."), "dot"),
    (wire(name=b".."), "dotdot"),
    (wire(name=b"\xff\xfe"), "name not UTF-8"),
    (wire(name=b"\xed\xa0\x80"), "encoded surrogate"),
    (wire(index=1 << 63), "index beyond 2**63-1"),
    (wire(ts=1 << 63), "timestamp beyond 2**63-1"),
    (wire(index=0), "entry 0 with non-zero prev"),
    (wire(msg=b"", msg_len=MAX_MESSAGE_BYTES + 1), "oversized message (rejected before reading)"),
    (wire(msg=b""), "empty message"),
    (wire(msg=b"{"), "bad JSON"),
    (wire(msg=b"\xff"), "message not UTF-8"),
    (wire(msg=b'{"b":1,"a":2}'), "unsorted keys"),
    (wire(msg=b'{"a": 2}'), "whitespace"),
    (wire(msg=b' 1'), "leading whitespace"),
    (wire(msg=b'{"a":1,"a":2}'), "duplicate keys"),
    (wire(msg=b"NaN"), "NaN"),
    (wire(msg=b"1e400"), "infinity"),
    (wire(msg=b"1E2"), "non-canonical number"),
    (wire(msg=b'"\\u00e9"'), "escaped non-ASCII"),
    (wire(msg=b'"\\ud800"'), "lone surrogate"),
    (wire(msg=b"[" * 100_000 + b"]" * 100_000), "deep nesting"),
    (wire() + b"x", "trailing byte"),
])
def test_decode_rejects_malformed(data, why):
    with pytest.raises(InvalidFeedEntry) as info:
        decode_entry(data)
    assert not isinstance(info.value, TruncatedFeedEntry), why


def test_message_limits():
    big = "x" * (MAX_MESSAGE_BYTES - 2)
    assert len(canonical_json(big)) == MAX_MESSAGE_BYTES
    e = make_entry(KEY, "jobs", 0, ZERO_HASH, big, TS)
    assert decode_entry(encode_entry(e)) == e
    for bad in (big + "x", float("nan"), object(), {1: "a", "b": 2}, "\ud800", b"bytes"):
        with pytest.raises(InvalidFeedMessage):
            make_entry(KEY, "jobs", 0, ZERO_HASH, bad, TS)


@pytest.mark.parametrize("name", ["", "a/b", "a\0", ".", "..", "x" * 256, "é" * 128, "\ud800", 5])
def test_bad_subfeed_names(name):
    with pytest.raises(InvalidSubfeedName):
        make_entry(KEY, name, 0, ZERO_HASH, 1, TS)


def test_long_names_are_bytes_not_characters():
    e = make_entry(KEY, "é" * 127 + "x", 0, ZERO_HASH, 1, TS)  # 255 bytes
    assert decode_entry(encode_entry(e)) == e


def test_entry_fields_are_checked_on_construction():
    good = make_entry(KEY, "jobs", 1, PREV, 1, TS)
    for change in ({"feed_id": "AB" * 32}, {"feed_id": "ab"}, {"index": -1}, {"index": True},
                   {"prev_hash": b"x"}, {"timestamp_ms": 1.5}, {"message": "1"}, {"message": b"01"},
                   {"signature": bytes(63)}):
        with pytest.raises(InvalidFeedEntry):
            dataclasses.replace(good, **change)


# ---- fuzzing the decoder ---------------------------------------------------------------------
VALID = encode_entry(make_entry(KEY, "jobs", 7, PREV, MESSAGE, TS))


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "splice":  # overwrite a length or integer field with extreme values
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x10\x00\x01"]))
    return bytes(data)


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=400), mutated()))
def test_fuzz_decoder_raises_only_feed_errors(data):
    try:
        entry = decode_entry(data)
    except FeedError:
        return
    assert encode_entry(entry) == data  # whatever decodes has exactly one encoding


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON, name=st.text(alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                                   min_size=1, max_size=20),
       index=st.integers(1, (1 << 63) - 1), ts=st.integers(0, (1 << 63) - 1))
def test_any_json_message_roundtrips_and_verifies(value, name, index, ts):
    if name in (".", ".."):
        return
    entry = make_entry(KEY, name, index, PREV, value, ts)
    again = decode_entry(encode_entry(entry))
    assert again == entry
    verify_entry(again)
    assert again.value == entry.value


# ---- chains ----------------------------------------------------------------------------------
def test_verify_chain_accepts_an_honest_chain_and_slices_of_it():
    c = chain()
    assert verify_chain(c) == entry_hash(c[-1])
    assert verify_chain([]) == ZERO_HASH
    assert verify_chain(c[2:], entry_hash(c[1])) == entry_hash(c[-1])
    assert verify_chain(c[2:], entry_hash(c[1]), start_index=2) == entry_hash(c[-1])
    assert verify_chain([], entry_hash(c[1])) == entry_hash(c[1])


@pytest.mark.parametrize("order, error", [
    ([0, 1, 3, 4], FeedGap),
    ([0, 1, 2, 3, 5], FeedGap),          # entry 4 missing, nothing later fills it
    ([0, 2, 1, 3, 4], FeedReorder),
    ([0, 1, 2, 2, 3], FeedReorder),      # repeated entry
    ([1, 0, 2], FeedReorder),
    ([2, 3, 4], FeedGap),                # truncated start: no trusted tip to link to
])
def test_verify_chain_rejects_gaps_and_reordering(order, error):
    c = chain(n=6)
    with pytest.raises(error):
        verify_chain([c[i] for i in order])


def test_verify_chain_rejects_forks():
    c = chain()
    # The owner signing a different entry 2: entry 3 no longer links to it.
    alt2 = make_entry(KEY, "jobs", 2, entry_hash(c[1]), "other", TS)
    with pytest.raises(FeedFork):
        verify_chain([c[0], c[1], alt2, c[3]])
    # A validly signed entry pointing at the wrong predecessor.
    stray = make_entry(KEY, "jobs", 2, PREV, "stray", TS)
    with pytest.raises(FeedFork):
        verify_chain([c[0], c[1], stray])
    # A slice checked against the wrong trusted tip.
    with pytest.raises(FeedFork):
        verify_chain(c[2:], entry_hash(c[0]))
    with pytest.raises(FeedReorder):
        verify_chain(c[2:], entry_hash(c[1]), start_index=3)


def test_verify_chain_rejects_bad_signatures():
    c = chain()
    tampered = dataclasses.replace(c[2], message=b'"evil"')
    with pytest.raises(BadFeedSignature):
        verify_chain([c[0], c[1], tampered])
    flipped = dataclasses.replace(c[2], signature=bytes([c[2].signature[0] ^ 1]) + c[2].signature[1:])
    with pytest.raises(BadFeedSignature):
        verify_chain(c[:2] + [flipped] + c[3:])
    retimed = dataclasses.replace(c[4], timestamp_ms=c[4].timestamp_ms + 1)
    with pytest.raises(BadFeedSignature):
        verify_chain(c[:4] + [retimed])
    with pytest.raises(BadFeedSignature):
        verify_entry(dataclasses.replace(c[0], subfeed="other"))


def test_verify_chain_rejects_the_wrong_feed_key():
    c = chain()
    # Signed by another key while claiming to be KEY's feed: every field right but the signer.
    sig = OTHER.sign(signable_bytes(KEY.feed_id, "jobs", 2, entry_hash(c[1]), TS, b'"x"'))
    impostor = FeedEntry(KEY.feed_id, "jobs", 2, entry_hash(c[1]), TS, b'"x"', sig)
    with pytest.raises(BadFeedSignature):
        verify_chain([c[0], c[1], impostor])
    # Another feed's honest entry mixed in: caught as a mismatch before anything else.
    with pytest.raises(FeedMismatch):
        verify_chain([c[0], chain(OTHER)[1]])
    with pytest.raises(FeedMismatch):
        verify_chain([c[0], chain(subfeed="other")[1]])
    # An all-zero "public key" is not a key.
    bogus = FeedEntry("00" * 32, "jobs", 0, ZERO_HASH, TS, b"1", bytes(64))
    with pytest.raises(BadFeedSignature):
        verify_entry(bogus)


def test_sign_entry_takes_canonical_bytes():
    e = sign_entry(KEY, "jobs", 0, ZERO_HASH, b"[1,2]", TS)
    assert e.value == [1, 2]
    with pytest.raises(InvalidFeedEntry):
        sign_entry(KEY, "jobs", 0, ZERO_HASH, b"[1, 2]", TS)


# ---- keys and URIs ---------------------------------------------------------------------------
def test_feed_key_file(tmp_path):
    key_dir = tmp_path / "feeds"
    path = FeedKey.generate().save(key_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    loaded = FeedKey.load(path)
    assert path.name == loaded.feed_id + ".key"
    assert [p.name for p in key_dir.iterdir()] == [path.name]  # no temp file left
    wrong = key_dir / (OTHER.feed_id + ".key")
    path.rename(wrong)
    with pytest.raises(KacheryError, match="another feed"):
        FeedKey.load(wrong)
    wrong.write_text("zz\n")
    with pytest.raises(KacheryError, match="corrupt"):
        FeedKey.load(wrong)


def test_feed_uris():
    assert feed_uri(PUB_HEX) == f"feed://{PUB_HEX}"
    assert feed_uri(PUB_HEX, "jobs") == f"feed://{PUB_HEX}/jobs"
    odd = "a b?c#d%é"
    assert parse_feed_uri(feed_uri(PUB_HEX, odd)) == FeedURI(PUB_HEX, odd)
    assert parse_feed_uri(f"feed://{PUB_HEX}") == FeedURI(PUB_HEX)
    for bad in ("sha1://" + "a" * 40, "feed://abc", f"feed://{PUB_HEX.upper()}", f"feed://{PUB_HEX}/a/b",
                f"feed://{PUB_HEX}/", f"feed://{PUB_HEX}/%2F", f"feed://{PUB_HEX}/%ff", None):
        with pytest.raises(InvalidFeedURI):
            parse_feed_uri(bad)


def test_error_classes_are_feed_errors():
    assert issubclass(TruncatedFeedEntry, InvalidFeedEntry) and issubclass(InvalidFeedEntry, FeedError)
    assert os.strerror(InvalidFeedEntry().errno)
