"""The protocol core without sockets: handshake, frames, messages, fed whole and byte by byte."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kacheryfs.crypto import NodeKey, channel_id, channel_key
from kacheryfs.protocol import Connection, HandshakeComplete, MessageReceived, ProtocolError
from kacheryfs.protocol.connection import INITIATOR, MAGIC, MAX_FRAME, RESPONDER, ConnectionClosed
from kacheryfs.protocol.messages import (
    Auth, ChunkData, ChunkRequest, FindRequest, FindResponse, LocalProtocolError, PeersResponse, Register,
    RemoteProtocolError, decode_message,
)

KX, KY = channel_key("x"), channel_key("y")
KPRIV = channel_key("x", b"secret")
KEY_A, KEY_B = NodeKey.generate(), NodeKey.generate()


def channels(*keys):
    return {channel_id(k): k for k in keys}


def deliver(src: Connection, dst: Connection, byte_by_byte: bool = False) -> list:
    data = src.data_to_send()
    pieces = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
    events = []
    for piece in pieces:
        dst.receive_data(piece)
        while (event := dst.next_event()) is not None:
            events.append(event)
    return events


def connect(a_channels=(KX,), b_channels=(KX,), byte_by_byte=False, expected=None):
    a = Connection(INITIATOR, KEY_A, channels(*a_channels), addrs=("127.0.0.1:1",), expected_peer=expected)
    b = Connection(RESPONDER, KEY_B, channels(*b_channels))
    events_b = deliver(a, b, byte_by_byte)      # hello
    events_a = deliver(b, a, byte_by_byte)      # hello reply -> a sends Auth
    events_b += deliver(a, b, byte_by_byte)     # b verifies a, sends its Auth
    events_a += deliver(b, a, byte_by_byte)
    return a, b, events_a, events_b


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_handshake_and_messages(byte_by_byte):
    a, b, ea, eb = connect(a_channels=(KX, KY), b_channels=(KX, KPRIV), byte_by_byte=byte_by_byte,
                           expected=KEY_B.node_id)
    assert ea == [HandshakeComplete(KEY_B.node_id, frozenset({channel_id(KX)}), (), "kacheryfs")]
    assert eb == [HandshakeComplete(KEY_A.node_id, frozenset({channel_id(KX)}), ("127.0.0.1:1",), "kacheryfs")]
    msgs = [FindRequest(req=1, sha1="a" * 40), ChunkData(req=2, payload=os.urandom(100_000)),
            FindResponse(req=3, sha1="b" * 40, found=True, size=5, manifest_sha1=None)]
    for m in msgs:
        b.receive_data(a.send(m)) if not byte_by_byte else None
        if byte_by_byte:
            data = a.send(m)
            for i in range(len(data)):
                b.receive_data(data[i:i + 1])
        assert b.next_event() == MessageReceived(m)
    a.receive_data(b.send(msgs[0]))
    assert a.next_event() == MessageReceived(msgs[0])
    b.receive_data(b"")
    assert isinstance(b.next_event(), ConnectionClosed)


def test_no_shared_channel_still_authenticates():
    _a, _b, ea, eb = connect(a_channels=(KY,), b_channels=(KX,))
    assert ea[0].channel_ids == frozenset() and eb[0].channel_ids == frozenset()


def test_private_channel_needs_the_secret():
    _a, _b, ea, eb = connect(a_channels=(KX,), b_channels=(KPRIV,))  # same name, no secret
    assert eb[0].channel_ids == frozenset()
    _a, _b, ea, eb = connect(a_channels=(KPRIV,), b_channels=(KPRIV,))
    assert eb[0].channel_ids == frozenset({channel_id(KPRIV)})


def test_channel_names_and_keys_never_travel():
    name = "flatiron-ephys-lab-2026"
    key = channel_key(name)
    a = Connection(INITIATOR, KEY_A, channels(key))
    b = Connection(RESPONDER, KEY_B, channels(key))
    wire = b""
    for src, dst in ((a, b), (b, a), (a, b), (b, a)):
        data = src.data_to_send()
        wire += data
        dst.receive_data(data)
        while dst.next_event() is not None:
            pass
    assert a.peer.channel_ids == {channel_id(key)}
    for secret in (name.encode(), key, channel_id(key).encode(), bytes.fromhex(channel_id(key))):
        assert secret not in wire


def test_wrong_expected_peer_is_rejected():
    with pytest.raises(ProtocolError, match="expected node"):
        connect(expected=NodeKey.generate().node_id)


def test_bad_signature_is_rejected(monkeypatch):
    a = Connection(INITIATOR, KEY_A, channels(KX))
    b = Connection(RESPONDER, KEY_B, channels(KX))
    impostor = NodeKey.generate()
    real_auth = a._auth

    def forged():  # claims to be A but signs with another key
        auth = real_auth()
        bad = impostor.sign(b"not the transcript").hex()
        return Auth(node=auth.node, signature=bad, proofs=auth.proofs, addrs=auth.addrs)

    monkeypatch.setattr(a, "_auth", forged)
    deliver(a, b)
    deliver(b, a)
    with pytest.raises(ProtocolError, match="signature"):
        deliver(a, b)
    assert b.state == "closed"


def test_replayed_handshake_is_rejected():
    a, b, _ea, _eb = connect()
    recorded = b""  # what an eavesdropper saw from A, replayed to a fresh responder
    a2 = Connection(INITIATOR, KEY_A, channels(KX))
    b2 = Connection(RESPONDER, KEY_B, channels(KX))
    recorded += a2.data_to_send()
    b2.receive_data(recorded)
    b2.next_event()
    a2.receive_data(b2.data_to_send())
    a2.next_event()
    recorded += a2.data_to_send()
    victim = Connection(RESPONDER, KEY_B, channels(KX))
    victim.receive_data(recorded)
    with pytest.raises(ProtocolError):
        while victim.next_event() is not None:
            pass


def test_bad_magic_and_oversized_frame():
    b = Connection(RESPONDER, KEY_B, channels(KX))
    b.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 40)
    with pytest.raises(ProtocolError, match="magic"):
        b.next_event()
    a, b, _ea, _eb = connect()
    b.receive_data((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="out of bounds"):
        b.next_event()


def test_before_auth_only_small_frames_are_accepted():
    """An unauthenticated peer cannot make the node buffer a chunk-sized frame."""
    from kacheryfs.protocol.connection import MAX_AUTH_FRAME

    for length in (MAX_AUTH_FRAME + 1, 4 << 20, 2 << 30):
        b = Connection(RESPONDER, KEY_B, channels(KX))
        b.receive_data(Connection(INITIATOR, KEY_A, channels(KX)).data_to_send())
        assert b.next_event() is None  # hello answered, waiting for the Auth frame
        b.receive_data(length.to_bytes(4, "big"))
        with pytest.raises(ProtocolError, match="out of bounds"):
            b.next_event()
    a, b, _ea, _eb = connect()  # once open, chunk-sized frames are fine
    a_to_b = a.send(ChunkData(req=1, payload=b"z" * (4 << 20)))
    b.receive_data(a_to_b)
    assert isinstance(b.next_event(), MessageReceived)


def test_tampered_frame_is_rejected():
    a, b, _ea, _eb = connect()
    data = bytearray(a.send(FindRequest(req=1, sha1="a" * 40)))
    data[10] ^= 1
    b.receive_data(bytes(data))
    with pytest.raises(ProtocolError, match="authentication"):
        b.next_event()


def test_send_before_open_is_local_error():
    a = Connection(INITIATOR, KEY_A, channels(KX))
    with pytest.raises(LocalProtocolError):
        a.send(FindRequest(req=1, sha1="a" * 40))


@pytest.mark.parametrize("raw", [
    b"", b"\x02", b"\x02\x00\x00\x00\x10{}", b"\xff\x00\x00\x00\x02{}", b"\x02\x00\x00\x00\x02[]",
    b"\x02\x00\x00\x00\x02{}", b'\x02\x00\x00\x00\x17{"req":1,"sha1":"zz"}',
    b'\x02\x00\x00\x00\x1a{"req":"1","sha1":"' + b"a" * 40 + b'"}',
    b'\x04\x00\x00\x00\x00', b'\x02\x00\x00\x00\x02{}payload',
])
def test_malformed_messages(raw):
    with pytest.raises(RemoteProtocolError):
        decode_message(raw)


def test_message_limits():
    with pytest.raises(RemoteProtocolError):
        decode_message(ChunkRequest(req=1, sha1="a" * 40, offset=0, length=64 << 20).encode())
    with pytest.raises(RemoteProtocolError):
        decode_message(Register(channel_ids=["x"], addrs=[]).encode())
    assert decode_message(PeersResponse(req=1, peers=[{"node": "n"}]).encode()).peers == [{"node": "n"}]


VALID = [m.encode() for m in (FindRequest(req=7, sha1="c" * 40), ChunkData(req=1, payload=b"abc"),
                              Register(channel_ids=["0" * 32], addrs=["127.0.0.1:5"]))]


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from(VALID), st.integers(0, 60), st.integers(0, 255)).map(
                     lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])))
def test_fuzzed_messages_only_raise_protocol_errors(raw):
    try:
        decode_message(raw)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_fuzzed_wire_bytes_only_raise_protocol_errors(noise):
    for role in (RESPONDER, INITIATOR):
        c = Connection(role, KEY_B, channels(KX))
        c.receive_data(MAGIC + noise if noise[0] % 2 else noise)
        try:
            while c.next_event() not in (None,):
                if c.state == "closed":
                    break
        except ProtocolError:
            pass
