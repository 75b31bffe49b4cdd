"""The connection state machine (sans-I/O, in the manner of h11): bytes in, events and bytes out.

    hello:  initiator -> MAGIC | X25519 ephemeral (40 bytes, clear)
            responder -> MAGIC | X25519 ephemeral (40 bytes, clear)
    auth:   initiator -> frame(Auth)   signature over the transcript + channel proofs
            responder -> frame(Auth)   only after the initiator's verified
    open:   frames of messages, both ways
A frame is: u32 big-endian ciphertext length | AEGIS-256 ciphertext (the length is the AAD).
Any violation raises RemoteProtocolError and the connection is dead.

Input comes either as bytes (``receive_data``) or, to spare the bulk path a copy, straight into a
buffer the connection hands out (``get_buffer`` / ``buffer_updated``, as asyncio's BufferedProtocol):
a large frame (a chunk) is received into a buffer of its own and decrypted in place, so a chunk's
bytes are copied once, by the kernel, between the socket and the buffer that is verified and written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..crypto import (
    AEAD_TAG_BYTES, CryptoError, Ephemeral, FrameCipher, NodeKey, auth_message, channel_proof,
    session_keys, transcript_hash, verify_signature,
)
from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .messages import Auth, Message, decode_message

MAGIC = b"KACHFS01"
HELLO_BYTES = len(MAGIC) + 32
MAX_FRAME = (4 << 20) + 4096  # a 4 MiB chunk plus its header and tag
# The Auth frame (at most 256 proofs and 32 addresses) fits easily; an unauthenticated peer must
# not make us buffer megabytes before it has proved anything.
MAX_AUTH_FRAME = 64 << 10
INITIATOR, RESPONDER = b"initiator", b"responder"
SCRATCH_BYTES = 64 << 10  # small frames (requests, finds) arrive here, several per receive
DIRECT_FRAME = 16 << 10  # a frame at least this long, not yet complete, is received into its own buffer


class PreparedFrame:
    """A message whose payload is written straight into the buffer it will be encrypted and sent
    from: fill ``payload`` (any thread may; ``shrink`` if fewer bytes came), then pass the frame
    to ``Connection.send``, which seals it in place. A served chunk is then copied once in Python's
    hands (page cache into this buffer) instead of three times (read, join, encrypt into a new
    buffer). Building one uses no connection state: the nonce is taken when it is sealed."""

    def __init__(self, msg: Message, payload_size: int):
        prefix = msg.encode_parts()[0]  # type | header length | header; the payload comes after
        self._start = 4 + len(prefix)
        self.message = msg
        self.frame = bytearray(self._start + payload_size + AEAD_TAG_BYTES)
        self.frame[4:self._start] = prefix
        self.payload = memoryview(self.frame)[self._start:self._start + payload_size]

    def shrink(self, payload_size: int) -> None:
        """Only the first ``payload_size`` bytes of the payload were filled."""
        if payload_size < len(self.payload):
            self.payload.release()
            del self.frame[self._start + payload_size:len(self.frame) - AEAD_TAG_BYTES]
            self.payload = memoryview(self.frame)[self._start:self._start + payload_size]

    def take(self) -> bytearray:
        self.payload.release()
        return self.frame


@dataclass(frozen=True)
class HandshakeComplete:
    peer_id: str
    channel_ids: frozenset[str]  # channels both sides proved
    addrs: tuple[str, ...]
    agent: str


@dataclass(frozen=True)
class MessageReceived:
    message: Message


@dataclass(frozen=True)
class ConnectionClosed:
    pass


class Connection:
    def __init__(self, role: bytes, node_key: NodeKey, channel_keys: dict[str, bytes],
                 addrs: tuple[str, ...] = (), expected_peer: str | None = None, agent: str = "kacheryfs"):
        if role not in (INITIATOR, RESPONDER):
            raise ValueError("role must be INITIATOR or RESPONDER")
        self.role = role
        self.peer_role = RESPONDER if role == INITIATOR else INITIATOR
        self._key = node_key
        self._channel_keys = dict(channel_keys)
        self._addrs = tuple(addrs)
        self._agent = agent
        self.expected_peer = expected_peer
        self.state = "hello"
        self.peer: HandshakeComplete | None = None
        self._eph = Ephemeral.generate()
        self._inbuf = bytearray()
        self._scratch = bytearray(SCRATCH_BYTES)
        self._direct: bytearray | None = None  # a large frame's ciphertext being received in place
        self._direct_header = b""
        self._direct_fill = 0
        self._out: list[bytes] = []
        self._eof = False
        self._transcript = b""
        self._send_cipher: FrameCipher | None = None
        self._recv_cipher: FrameCipher | None = None
        if role == INITIATOR:
            self._out.append(MAGIC + self._eph.public)

    # ---- I/O-facing API -------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the transport; b"" means the peer closed."""
        if not data:
            self._eof = True
            return
        view = memoryview(data).cast("B")
        frame = self._direct
        if frame is not None and self._direct_fill < len(frame):
            take = min(len(view), len(frame) - self._direct_fill)
            frame[self._direct_fill:self._direct_fill + take] = view[:take]
            self._direct_fill += take
            view = view[take:]
        if len(view):
            self._inbuf += view

    def get_buffer(self) -> memoryview:
        """Where the transport should put the next bytes it receives (then call ``buffer_updated``).
        Call ``next_event`` until it returns None first: a frame it completed is consumed there."""
        frame = self._direct
        if frame is not None and self._direct_fill < len(frame):
            return memoryview(frame)[self._direct_fill:]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer``; 0 means the peer closed."""
        if nbytes <= 0:
            self._eof = True
            return
        frame = self._direct
        if frame is not None and self._direct_fill < len(frame):
            self._direct_fill += nbytes
        else:
            self._inbuf += memoryview(self._scratch)[:nbytes]

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self):
        """The next event, or None when more bytes are needed. Raises ProtocolError on bad input."""
        if self.state == "closed":
            return ConnectionClosed()
        try:
            event = self._step()
        except (RemoteProtocolError, CryptoError) as exc:
            self.state = "closed"
            detail = exc.detail if isinstance(exc, RemoteProtocolError) and exc.detail else str(exc)
            raise ProtocolError(detail) from None
        if event is None and self._eof:
            self.state = "closed"
            return ConnectionClosed()
        return event

    def send(self, msg: "Message | PreparedFrame") -> bytes:
        """Frame and encrypt a message; returns the bytes to write."""
        if self.state != "open":
            raise LocalProtocolError(f"cannot send in state {self.state}")
        if isinstance(msg, PreparedFrame):
            frame = msg.take()
            if len(frame) - 4 > MAX_FRAME:
                raise LocalProtocolError("message larger than the maximum frame")
            return self._send_cipher.seal_in_place(frame)
        parts = msg.encode_parts()
        return self._frame(parts[0] if len(parts) == 1 else b"".join(parts))

    # ---- internals --------------------------------------------------------------------------
    def _frame(self, plaintext) -> bytearray:
        if len(plaintext) + AEAD_TAG_BYTES > MAX_FRAME:
            raise LocalProtocolError("message larger than the maximum frame")
        return self._send_cipher.seal_frame(plaintext)

    def _read_frame(self):
        frame = self._direct
        if frame is not None:  # received in place: decrypted in place, the plaintext a view of it
            if self._direct_fill < len(frame):
                return None
            self._direct = None
            return self._recv_cipher.open_frame_in_place(self._direct_header, frame)
        if len(self._inbuf) < 4:
            return None
        length = int.from_bytes(self._inbuf[:4], "big")
        if length < AEAD_TAG_BYTES or length > (MAX_FRAME if self.state == "open" else MAX_AUTH_FRAME):
            raise ProtocolError(f"frame length {length} out of bounds")
        if len(self._inbuf) < 4 + length:
            if length >= DIRECT_FRAME:  # the rest goes straight into the frame's own buffer
                self._direct_header = bytes(self._inbuf[:4])
                self._direct = bytearray(length)
                have = len(self._inbuf) - 4
                self._direct[:have] = self._inbuf[4:]
                self._direct_fill = have
                del self._inbuf[:]
            return None
        header = bytes(self._inbuf[:4])
        with memoryview(self._inbuf) as view:  # decrypt in place of a copy; released before the del
            plaintext = self._recv_cipher.open_frame(header, view[4:4 + length])
        del self._inbuf[:4 + length]
        return plaintext

    def _auth(self) -> Auth:
        proofs = [channel_proof(k, self._transcript, self.role, self._key.public).hex()
                  for k in self._channel_keys.values()]
        signature = self._key.sign(auth_message(self._transcript, self.role, self._key.public))
        return Auth(node=self._key.node_id, signature=signature.hex(), proofs=proofs,
                    addrs=list(self._addrs), agent=self._agent)

    def _step(self):
        if self.state == "hello":
            if len(self._inbuf) < HELLO_BYTES:
                return None
            hello = bytes(self._inbuf[:HELLO_BYTES])
            del self._inbuf[:HELLO_BYTES]
            if hello[:len(MAGIC)] != MAGIC:
                raise ProtocolError("not a kacheryfs peer (bad magic)")
            peer_eph = hello[len(MAGIC):]
            shared = self._eph.shared(peer_eph)
            if self.role == INITIATOR:
                self._transcript = transcript_hash(self._eph.public, peer_eph)
            else:
                self._transcript = transcript_hash(peer_eph, self._eph.public)
                self._out.append(MAGIC + self._eph.public)
            i2r, r2i = session_keys(shared, self._transcript)
            send_key, recv_key = (i2r, r2i) if self.role == INITIATOR else (r2i, i2r)
            self._send_cipher, self._recv_cipher = FrameCipher(send_key), FrameCipher(recv_key)
            self.state = "auth"
            if self.role == INITIATOR:
                self._out.append(self._frame(self._auth().encode()))
            return self._step()
        if self.state == "auth":
            plaintext = self._read_frame()
            if plaintext is None:
                return None
            auth = decode_message(plaintext)
            if not isinstance(auth, Auth):
                raise ProtocolError("expected Auth")
            peer_public = bytes.fromhex(auth.node)
            verify_signature(peer_public, auth_message(self._transcript, self.peer_role, peer_public),
                             bytes.fromhex(auth.signature))
            if self.expected_peer is not None and auth.node != self.expected_peer:
                raise ProtocolError(f"expected node {self.expected_peer[:12]}, got {auth.node[:12]}")
            if auth.node == self._key.node_id:
                raise ProtocolError("connected to myself")
            proofs = set(auth.proofs)
            shared_channels = frozenset(
                cid for cid, key in self._channel_keys.items()
                if channel_proof(key, self._transcript, self.peer_role, peer_public).hex() in proofs)
            if self.role == RESPONDER:
                self.state = "open"
                self._out.append(self._frame(self._auth().encode()))
            self.state = "open"
            self.peer = HandshakeComplete(auth.node, shared_channels, tuple(auth.addrs), auth.agent)
            return self.peer
        if self.state == "open":
            plaintext = self._read_frame()
            if plaintext is None:
                return None
            return MessageReceived(decode_message(plaintext))
        return None
