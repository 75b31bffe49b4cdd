"""Application messages: frozen dataclasses with a byte encoding.

Plaintext layout (inside an encrypted frame):
    u8 type | u32 header length (big-endian) | header: UTF-8 JSON object | payload: the rest
Only CHUNK_DATA carries a payload. Unknown types and malformed headers raise RemoteProtocolError.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

from ..errors import LocalProtocolError, RemoteProtocolError
from .chunkset import ChunkSet


MESSAGE_TYPES: dict[int, type["Message"]] = {}


def message(code: int, *, reply: bool = False):
    """Register a message type under its wire code; ``reply``: it answers a request (same ``req``)."""
    def register(cls):
        cls.TYPE = code
        cls.IS_REPLY = reply
        MESSAGE_TYPES[code] = cls
        return dataclass(frozen=True)(cls)
    return register


class Message:
    TYPE: ClassVar[int]
    IS_REPLY: ClassVar[bool] = False  # goes to the request waiting for its ``req``, never to a handler
    HAS_PAYLOAD: ClassVar[bool] = False

    def encode(self) -> bytes:
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "payload"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        payload = getattr(self, "payload", b"") if self.HAS_PAYLOAD else b""
        return bytes([self.TYPE]) + len(raw).to_bytes(4, "big") + raw + payload

    def encode_parts(self) -> list[bytes]:
        """Like encode, but the payload stays a separate buffer (no copy of a 1 MiB chunk)."""
        if not self.HAS_PAYLOAD:
            return [self.encode()]
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "payload"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        return [bytes([self.TYPE]) + len(raw).to_bytes(4, "big") + raw, self.payload]


_FIELD_TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}


def decode_message(data: bytes) -> Message:
    if len(data) < 5:
        raise RemoteProtocolError("message shorter than its header")
    cls = MESSAGE_TYPES.get(data[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {data[0]}")
    size = int.from_bytes(data[1:5], "big")
    if 5 + size > len(data):
        raise RemoteProtocolError("message header length exceeds the frame")
    try:
        header = json.loads(bytes(data[5:5 + size]))  # (data may be a memoryview of a frame)
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("message header is not JSON") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError("message header is not an object")
    payload = memoryview(data)[5 + size:]  # a view, not a copy of a 1 MiB chunk
    if payload and not cls.HAS_PAYLOAD:
        raise RemoteProtocolError(f"{cls.__name__} carries no payload")
    kwargs = {}
    for f in fields(cls):
        if f.name == "payload":
            continue
        if f.name not in header:
            if f.default is not MISSING or f.default_factory is not MISSING:  # has a default
                continue
            raise RemoteProtocolError(f"{cls.__name__} lacks {f.name!r}")
        value = header[f.name]
        expected = f.type if isinstance(f.type, str) else f.type.__name__
        base = expected.split("|")[0].strip().split("[")[0]
        optional = "None" in expected
        if value is None and optional:
            kwargs[f.name] = None
            continue
        want = _FIELD_TYPES.get(base)
        if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise RemoteProtocolError(f"{cls.__name__}.{f.name} has the wrong type")
        kwargs[f.name] = value
    if cls.HAS_PAYLOAD:
        kwargs["payload"] = payload
    try:
        msg = cls(**kwargs)
        msg.validate()
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {cls.__name__}: {exc}") from None
    return msg


def _check_hex(value: str, n: int, what: str) -> None:
    if len(value) != n or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{what} must be {n} lowercase hex digits")


class _Validating(Message):
    def validate(self) -> None:
        for name in ("sha1", "manifest_sha1"):
            value = getattr(self, name, None)
            if isinstance(value, str):
                _check_hex(value, 40, name)
        for name in ("req", "offset", "length", "size"):
            value = getattr(self, name, None)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} is negative")


@message(1)
class Auth(_Validating):
    """Handshake: who I am (signed) and which channels I can prove."""
    node: str
    signature: str
    proofs: list = field(default_factory=list)
    addrs: list = field(default_factory=list)
    agent: str = "kacheryfs"

    def validate(self) -> None:
        _check_hex(self.node, 64, "node")
        _check_hex(self.signature, 128, "signature")
        if len(self.proofs) > 256 or len(self.addrs) > 32:
            raise ValueError("too many proofs or addresses")
        for p in self.proofs:
            if not isinstance(p, str):
                raise ValueError("proof must be hex")
            _check_hex(p, 64, "proof")
        if not all(isinstance(a, str) and len(a) < 300 for a in self.addrs):
            raise ValueError("bad address")


@message(2)
class FindRequest(_Validating):
    req: int
    sha1: str


class _HasChunks(_Validating):
    """A message with ``have``: the chunks the sender holds (ChunkSet wire form), None = all of them."""

    def validate(self) -> None:
        super().validate()
        if self.have is not None:
            object.__setattr__(self, "_chunks", ChunkSet.decode(self.have))

    @property
    def chunks(self) -> ChunkSet | None:
        """The chunks held, decoded (None: the whole object)."""
        if self.have is None:
            return None
        cached = getattr(self, "_chunks", None)
        if cached is None:
            cached = ChunkSet.decode(self.have)
            object.__setattr__(self, "_chunks", cached)
        return cached


@message(3, reply=True)
class FindResponse(_HasChunks):
    """``have`` is None from a provider holding the whole object; a node still downloading it
    answers with the chunks it has verified so far (maybe none yet), and then sends Have updates."""
    req: int
    sha1: str
    found: bool
    size: int = 0
    manifest_sha1: str | None = None
    have: str | None = None


@message(4)
class ChunkRequest(_Validating):
    """Bytes [offset, offset+length) of an object; length at most MAX_CHUNK_REQUEST."""
    req: int
    sha1: str
    offset: int
    length: int

    def validate(self) -> None:
        super().validate()
        if self.length > MAX_CHUNK_REQUEST:
            raise ValueError("chunk request too long")


@message(5, reply=True)
class ChunkData(_Validating):
    req: int
    HAS_PAYLOAD = True
    payload: bytes = b""


@message(6, reply=True)
class ErrorResponse(_Validating):
    req: int
    code: str
    message: str = ""


@message(7)
class Announce(_Validating):
    sha1: str
    size: int
    manifest_sha1: str | None = None


@message(8)
class Register(_Validating):
    """To a bootstrap: the channel ids (hashes) I am in, where I listen (local addresses), and
    where other bootstraps observed me (protocol.md §5b)."""
    channel_ids: list
    addrs: list
    observed: list = field(default_factory=list)

    def validate(self) -> None:
        if len(self.channel_ids) > 256 or len(self.addrs) > 32:
            raise ValueError("too many channel ids or addresses")
        for c in self.channel_ids:
            if not isinstance(c, str):
                raise ValueError("channel id must be hex")
            _check_hex(c, 32, "channel id")
        if not all(isinstance(a, str) and len(a) < 300 for a in self.addrs):
            raise ValueError("bad address")
        _check_addrs(self.observed, "observed")


@message(9)
class PeersRequest(_Validating):
    req: int
    channel_ids: list


@message(10, reply=True)
class PeersResponse(_Validating):
    req: int
    peers: list  # [{"node": hex, "addrs": [...], "channel_ids": [...]}]


@message(11)
class Ping(_Validating):
    req: int


@message(12, reply=True)
class Pong(_Validating):
    req: int


@message(13)
class Goodbye(_Validating):
    reason: str = ""


@message(14)
class RelayOpen(_Validating):
    """To a bootstrap: open a circuit to ``target`` (a node registered there)."""
    req: int
    target: str

    def validate(self) -> None:
        super().validate()
        _check_hex(self.target, 64, "target")


@message(15, reply=True)
class RelayOpened(_Validating):
    req: int
    circuit: int


@message(16)
class RelayIncoming(_Validating):
    """From a bootstrap: ``peer`` opened circuit ``circuit`` to you; a handshake follows inside it."""
    circuit: int
    peer: str


@message(17)
class RelayData(_Validating):
    """Bytes of an end-to-end encrypted session, carried through the relay."""
    circuit: int
    HAS_PAYLOAD = True
    payload: bytes = b""


@message(18)
class RelayClose(_Validating):
    circuit: int
    reason: str = ""


@message(19)
class FeedQuery(_Validating):
    """Which subfeeds of this feed do you hold (and how many entries in each)?"""
    req: int
    feed_id: str

    def validate(self) -> None:
        super().validate()
        _check_hex(self.feed_id, 64, "feed_id")


@message(20, reply=True)
class FeedInfo(_Validating):
    req: int
    feed_id: str
    found: bool
    subfeeds: dict = field(default_factory=dict)  # name -> number of entries


@message(21)
class FeedSubscribe(_Validating):
    """Send me the entries of this subfeed from ``start`` on, and push new ones as they come.
    The entries arrive as FeedEntries pushes; the FeedSubscribed reply follows them."""
    req: int
    feed_id: str
    subfeed: str
    start: int = 0

    def validate(self) -> None:
        super().validate()
        _check_hex(self.feed_id, 64, "feed_id")
        if not 0 < len(self.subfeed.encode()) <= 255 or "/" in self.subfeed or "\0" in self.subfeed:
            raise ValueError("bad subfeed name")
        if self.start < 0:
            raise ValueError("negative start")


@message(22, reply=True)
class FeedSubscribed(_Validating):
    req: int
    count: int  # entries the server holds now


@message(23)
class FeedEntries(_Validating):
    """Entries of one subfeed, in order: payload = (u32 big-endian length, encoded entry)*."""
    feed_id: str
    subfeed: str
    HAS_PAYLOAD = True
    payload: bytes = b""


@message(24)
class Have(_HasChunks):
    """To peers interested in an object (they asked us for it): chunks newly verified here since the
    last Have (batched), or ``have`` None once the whole object is held."""
    sha1: str
    have: str | None = None


@message(25)
class Cancel(_Validating):
    """The sender no longer wants the answer to its request ``req`` (a chunk it now gets elsewhere):
    the server drops the request if it has not begun sending it, and then sends no reply."""
    req: int


# ---- NAT traversal (protocol.md §5b): the bootstrap coordinates a hole punch ----------------
MAX_PUNCH_ADDRS = 4


def _check_addrs(addrs: list, what: str = "addrs") -> None:
    """Each a "HOST:PORT" of at most 64 characters, an IPv4 or bracketed IPv6 literal."""
    import ipaddress

    if len(addrs) > MAX_PUNCH_ADDRS:
        raise ValueError(f"too many {what}")
    for a in addrs:
        if not isinstance(a, str) or len(a) > 64:
            raise ValueError(f"bad address in {what}")
        host, sep, port = a.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or len(port) > 5:
            raise ValueError(f"bad port in {what}")
        try:
            ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        except ValueError:
            raise ValueError(f"{what} must be IP literals") from None


@message(40)
class Observed(_Validating):
    """From a bootstrap, after Register: the address it sees this session coming from (the node's
    public mapping when it dials from its listening port)."""
    addr: str

    def validate(self) -> None:
        _check_addrs([self.addr], "addr")


@message(41)
class PunchRequest(_Validating):
    """To a bootstrap: coordinate a hole punch to ``target``; ``addrs`` are where it should dial me
    (each must be an address the bootstrap observed for me)."""
    req: int
    target: str
    addrs: list

    def validate(self) -> None:
        super().validate()
        _check_hex(self.target, 64, "target")
        if not self.addrs:
            raise ValueError("no addresses to punch to")
        _check_addrs(self.addrs)


@message(42)
class PunchIncoming(_Validating):
    """From a bootstrap: ``peer`` wants a punch; dial ``addrs`` when the sync comes."""
    punch: int
    peer: str
    addrs: list

    def validate(self) -> None:
        if self.punch < 1:
            raise ValueError("punch ids start at 1")
        _check_hex(self.peer, 64, "peer")
        _check_addrs(self.addrs)


@message(43)
class PunchReply(_Validating):
    """To a bootstrap, answering PunchIncoming: my addresses (observed by the bootstrap), or
    ``accept: false``."""
    punch: int
    addrs: list
    accept: bool = True

    def validate(self) -> None:
        if self.punch < 1:
            raise ValueError("punch ids start at 1")
        if self.accept and not self.addrs:
            raise ValueError("no addresses to punch to")
        _check_addrs(self.addrs)


@message(44, reply=True)
class PunchReady(_Validating):
    """From a bootstrap, the reply to PunchRequest: the target's addresses. The requester measures
    the round trip request -> ready, sends PunchSync and dials half that time later."""
    req: int
    punch: int
    addrs: list

    def validate(self) -> None:
        super().validate()
        if self.punch < 1:
            raise ValueError("punch ids start at 1")
        _check_addrs(self.addrs)


@message(45)
class PunchSync(_Validating):
    """Requester -> bootstrap -> target: dial now (attempt 1, 2, ...)."""
    punch: int
    attempt: int

    def validate(self) -> None:
        if self.punch < 1 or not 1 <= self.attempt <= 16:
            raise ValueError("bad punch id or attempt")


@message(46)
class PeersJoined(_Validating):
    """From a bootstrap, pushed at once: nodes that registered (or changed their addresses) in a
    channel id the receiver registered in; entries as in PeersResponse (protocol.md §5c)."""
    peers: list

    def validate(self) -> None:
        if len(self.peers) > 512:
            raise ValueError("too many peers")


MAX_CHUNK_REQUEST = 4 << 20

__all__ = [
    "Message", "decode_message", "RemoteProtocolError", "LocalProtocolError", "MAX_CHUNK_REQUEST",
    "Auth", "FindRequest", "FindResponse", "ChunkRequest", "ChunkData", "ErrorResponse", "Announce",
    "Register", "PeersRequest", "PeersResponse", "Ping", "Pong", "Goodbye",
    "RelayOpen", "RelayOpened", "RelayIncoming", "RelayData", "RelayClose",
    "FeedQuery", "FeedInfo", "FeedSubscribe", "FeedSubscribed", "FeedEntries", "Have", "Cancel", "ChunkSet",
    "Observed", "PunchRequest", "PunchIncoming", "PunchReply", "PunchReady", "PunchSync",
    "PeersJoined",
]
