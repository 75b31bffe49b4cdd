"""Chunk sets (have-bitmaps / have-ranges) and the messages that carry them: pure codec tests,
whole and byte by byte through a Connection, and fuzzed."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.protocol.chunkset import MAX_CHUNKS, ChunkSet
from kacheryfs.protocol.messages import FindResponse, Have, RemoteProtocolError, decode_message

from .test_protocol import connect

SHA = "ab" * 20
chunk_lists = st.lists(st.integers(0, 5000), max_size=300)


def raw(text: str) -> bytes:
    return base64.b64decode(text)


def wire(form: int, body: bytes) -> str:
    return base64.b64encode(bytes([form]) + body).decode()


def test_forms_exactly():
    assert raw(ChunkSet().encode()) == b"\x00"  # empty: the form byte alone
    assert raw(ChunkSet([0, 2, 9]).encode()) == b"\x00\x05\x02"  # bitmap, bit i of byte i // 8
    assert raw(ChunkSet(range(3, 1000)).encode()) == b"\x01\x03\xe5\x07"  # one run: gap 3, 997 (LEB128)
    assert raw(ChunkSet([1, 2, 3, 7]).encode()) == b"\x00\x8e"  # a bitmap byte beats two runs
    two_runs = ChunkSet(list(range(0, 100)) + list(range(200, 300)))
    assert raw(two_runs.encode()) == b"\x01\x00\x64\x64\x64"
    assert ChunkSet.decode(two_runs.encode()) == two_runs


def test_set_operations():
    a = ChunkSet([1, 2, 3])
    b = ChunkSet([3, 4])
    assert a | b == ChunkSet([1, 2, 3, 4])
    assert a - b == ChunkSet([1, 2])
    assert 2 in a and 4 not in a and -1 not in a
    assert len(a | b) == 4 and list(a | b) == [1, 2, 3, 4]
    assert ChunkSet.range(5, 8) == ChunkSet([5, 6, 7]) and ChunkSet.range(5, 8).runs() == [(5, 8)]
    assert ChunkSet.from_bitmap(b"\x05\x02") == ChunkSet([0, 2, 9])
    assert ChunkSet([0, 2, 9]).end() == 10 and ChunkSet().end() == 0 and not ChunkSet()
    with pytest.raises(ValueError):
        ChunkSet([MAX_CHUNKS])
    with pytest.raises(ValueError):
        ChunkSet([-1])


@pytest.mark.parametrize("text, why", [
    ("", "form byte"),
    ("!!!!", "base64"),
    ("AA", "base64"),  # missing padding
    (wire(0, b"\x01\x00"), "trailing zero"),
    (wire(1, b"\x00\x00"), "canonical"),  # a run of length 0
    (wire(1, b"\x00\x02\x00\x02"), "canonical"),  # two runs that touch
    (wire(1, b"\x00\x80"), "truncated"),
    (wire(1, b"\x00\x80\x00"), "minimal"),  # 0 written in two bytes
    (wire(1, b"\x00\x03"), "shortest"),  # [0, 3) is shorter as a bitmap
    (wire(0, b"\xff" * 10), "shortest"),  # 80 chunks in a row are shorter as one range
    (wire(1, b"\xff\xff\xff\xff\x0f\x01"), "varint too long|out of bounds"),
    (wire(1, b"\x80\x80\x80\x08\x01"), "out of bounds"),  # starts at 2**24
    (wire(7, b""), "unknown"),
])
def test_malformed_is_rejected(text, why):
    with pytest.raises(ValueError, match=why):
        ChunkSet.decode(text)


def test_oversized_is_rejected_before_decoding():
    with pytest.raises(ValueError, match="bounded"):
        ChunkSet.decode("A" * (4 * (MAX_CHUNKS // 8) + 100))


@given(chunk_lists)
def test_roundtrip(chunks):
    s = ChunkSet(chunks)
    text = s.encode()
    back = ChunkSet.decode(text)
    assert back == s and sorted(set(chunks)) == list(back)
    assert len(raw(text)) <= 1 + len(s.bitmap())  # never longer than the bitmap


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 300)), max_size=30))
def test_roundtrip_runs(runs):
    chunks, position = [], 0
    for gap, length in runs:
        chunks += range(position + gap, position + gap + length)
        position += gap + length
    s = ChunkSet(chunks)
    assert ChunkSet.decode(s.encode()) == s
    assert [b - a for a, b in s.runs()] == [b - a for a, b in ChunkSet(chunks).runs()]


@settings(max_examples=500, deadline=None)  # a timing bound is no part of a codec test (it failed on a loaded machine)
@given(st.binary(max_size=64))
def test_fuzz_arbitrary_bytes(data):
    text = base64.b64encode(data).decode()
    try:
        s = ChunkSet.decode(text)
    except ValueError:
        return
    assert s.encode() == text  # whatever decodes is the one encoding of its set


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_fuzz_arbitrary_text(text):
    try:
        s = ChunkSet.decode(text)
    except ValueError:
        return
    assert s.encode() == text


# --- the messages


@pytest.mark.parametrize("msg", [
    FindResponse(req=7, sha1=SHA, found=True, size=40 << 20, manifest_sha1="cd" * 20, have=None),
    FindResponse(req=8, sha1=SHA, found=True, size=40 << 20, manifest_sha1="cd" * 20, have=ChunkSet().encode()),
    FindResponse(req=9, sha1=SHA, found=True, size=5, have=ChunkSet([0, 3, 39]).encode()),
    Have(sha1=SHA, have=ChunkSet(range(1000, 2000)).encode()),
    Have(sha1=SHA, have=None),
])
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_messages_through_a_connection(msg, byte_by_byte):
    a, b, _ea, _eb = connect()
    data = a.send(msg)
    pieces = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
    events = []
    for piece in pieces:
        b.receive_data(piece)
        while (event := b.next_event()) is not None:
            events.append(event)
    assert [e.message for e in events] == [msg]
    got = events[0].message
    assert got.chunks == (None if msg.have is None else ChunkSet.decode(msg.have))


def test_message_codec_exact_bytes():
    msg = Have(sha1=SHA, have=ChunkSet([0, 2, 9]).encode())
    header = b'{"sha1":"' + SHA.encode() + b'","have":"AAUC"}'
    assert msg.encode() == bytes([24]) + len(header).to_bytes(4, "big") + header
    assert decode_message(msg.encode()) == msg
    assert decode_message(msg.encode()).chunks == ChunkSet([0, 2, 9])


@pytest.mark.parametrize("have", ["", "AAUCAA==", 5, ["AA=="], "AQAA"])
def test_message_with_a_bad_chunk_set_is_a_protocol_error(have):
    import json

    header = json.dumps({"sha1": SHA, "have": have}).encode()
    with pytest.raises(RemoteProtocolError):
        decode_message(bytes([24]) + len(header).to_bytes(4, "big") + header)


@settings(max_examples=300)
@given(chunk_lists, st.booleans())
def test_fuzz_messages(chunks, whole):
    have = None if whole else ChunkSet(chunks).encode()
    for msg in (Have(sha1=SHA, have=have), FindResponse(req=1, sha1=SHA, found=True, size=1, have=have)):
        data = msg.encode()
        assert decode_message(data) == msg
        for cut in (len(data) - 1, len(data) // 2):  # truncated: an error or, at worst, another valid message
            try:
                decode_message(data[:cut])
            except RemoteProtocolError:
                pass
