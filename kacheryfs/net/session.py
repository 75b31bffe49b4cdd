"""One authenticated, encrypted connection to a peer, driven over a trio stream."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import trio

from ..errors import PeerBusy, PeerGone, ProtocolError, RequestFailed
from ..protocol import Connection, HandshakeComplete, MessageReceived
from ..protocol.connection import ConnectionClosed
from ..protocol.messages import ErrorResponse, Message
from .rates import RateMeter

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
RECEIVE_SIZE = 1 << 20  # whole 1 MiB frames per call: 256 KiB receives cost ~40% throughput


@dataclass
class TransferStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    started: float = field(default_factory=time.monotonic)
    sent_rate: RateMeter = field(init=False)
    received_rate: RateMeter = field(init=False)

    def __post_init__(self) -> None:
        self.sent_rate = RateMeter(self.started)
        self.received_rate = RateMeter(self.started)

    def sent(self, nbytes: int) -> None:
        self.bytes_sent += nbytes
        self.sent_rate.add(nbytes, time.monotonic())

    def received(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        self.received_rate.add(nbytes, time.monotonic())


async def handshake(stream: trio.abc.Stream, conn: Connection, timeout: float = HANDSHAKE_TIMEOUT) -> HandshakeComplete:
    """Run the handshake; raises ProtocolError, PeerGone, or trio.TooSlowError."""
    with trio.fail_after(timeout):
        while True:
            event = conn.next_event()
            out = conn.data_to_send()  # whatever processing that input produced goes out first
            if out:
                await stream.send_all(out)
            if isinstance(event, HandshakeComplete):
                return event
            if isinstance(event, ConnectionClosed):
                raise PeerGone("closed during the handshake")
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))


class PeerSession:
    """Requests with ids, answered out of order; a receive loop hands other messages to ``on_message``."""

    def __init__(self, stream: trio.abc.Stream, conn: Connection, info: HandshakeComplete,
                 direction: str, remote: str):
        self.stream = stream
        self.conn = conn
        self.peer_id = info.peer_id
        self.channel_ids = info.channel_ids
        self.addrs = info.addrs
        self.agent = info.agent
        self.direction = direction  # "inbound" / "outbound" / "relayed" / "punched"
        self.remote = remote
        self.stats = TransferStats()
        self._send_lock = trio.Lock()
        self._req_ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel] = {}
        self.closed = trio.Event()
        # Only the receive loop reads, so it may read the socket under the stream directly.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    def __repr__(self) -> str:
        return f"<peer {self.peer_id[:12]} {self.direction} {self.remote}>"

    @property
    def path(self) -> str:
        """How the bytes travel: "direct", "hole-punched" or "relayed" (kacheryfs status)."""
        return {"relayed": "relayed", "punched": "hole-punched"}.get(self.direction, "direct")

    @property
    def busy(self) -> bool:
        """Requests of ours still waiting for their answer."""
        return bool(self._pending)

    @property
    def close_reason(self) -> str | None:
        """Why the transport ended, when it said (a relay names the limit that closed a circuit)."""
        return getattr(self.stream, "close_reason", None)

    async def close(self) -> None:
        """End the session: its receive loop sees the end and the session is unregistered."""
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    def next_req(self) -> int:
        return next(self._req_ids)

    async def send(self, msg: Message) -> None:
        if self.closed.is_set():
            raise PeerGone(self.peer_id[:12])
        async with self._send_lock:
            if self.closed.is_set():
                raise PeerGone(self.peer_id[:12])
            data = self.conn.send(msg)
            try:
                # Once sealed, a frame must go out whole: a cancelled half-written frame (a request
                # moved to another peer, a download's end) would break the stream for good.
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closed.set()
                raise PeerGone(self.peer_id[:12]) from None
            self.stats.sent(len(data))

    async def late_reply(self, req: int, timeout: float) -> Message | None:
        """The reply to request ``req`` (given up on, cancelled) if it still comes within
        ``timeout``, else None: a reply already being sent when the Cancel came arrives anyway."""
        if self.closed.is_set():
            return None
        send, receive = trio.open_memory_channel(1)
        self._pending[req] = send
        try:
            with trio.move_on_after(timeout):
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    return None
            return None
        finally:
            if self._pending.get(req) is send:
                del self._pending[req]

    async def request(self, msg: Message, timeout: float) -> Message:
        """Send a request (its ``req`` must come from next_req) and wait for the matching answer."""
        send, receive = trio.open_memory_channel(1)
        self._pending[msg.req] = send
        try:
            await self.send(msg)
            with trio.fail_after(timeout):
                try:
                    reply = await receive.receive()
                except trio.EndOfChannel:
                    raise PeerGone(self.peer_id[:12]) from None
        finally:
            self._pending.pop(msg.req, None)
        if isinstance(reply, ErrorResponse):
            if reply.code == "busy":
                raise PeerBusy(reply.message)
            raise RequestFailed(f"{reply.code}: {reply.message}")
        return reply

    async def _receive(self) -> int:
        """Feed the connection what the transport has (0 bytes: it ended). Over TCP the bytes go
        straight from the socket into the connection's buffer (a chunk lands in the buffer it is
        decrypted, verified and written from); other streams (relay circuits) hand over bytes."""
        try:
            if self._socket is not None:
                with self.conn.get_buffer() as buffer:
                    received = await self._socket.recv_into(buffer)
                self.conn.buffer_updated(received)
                return received
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        self.conn.receive_data(data)
        return len(data)

    async def receive_loop(self, on_message) -> None:
        """Until the peer goes: replies go to their waiting request, the rest to ``on_message``."""
        try:
            while True:
                event = self.conn.next_event()
                if event is None:
                    self.stats.received(await self._receive())
                    continue
                if isinstance(event, ConnectionClosed):
                    return
                assert isinstance(event, MessageReceived)
                msg = event.message
                req = getattr(msg, "req", None)
                waiter = self._pending.get(req) if req is not None and msg.IS_REPLY else None
                if waiter is not None:
                    try:
                        waiter.send_nowait(msg)
                    except trio.WouldBlock:
                        pass
                else:
                    await on_message(self, msg)
        except ProtocolError as exc:
            log.warning("dropping %r: %s", self, exc)
        finally:
            self.closed.set()
            for waiter in self._pending.values():
                waiter.close()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

