"""Sessions and routing: listen, accept, connect, keep the registry of live sessions, and hand each
incoming message to the handler its type is registered for (net/dispatch.py).

Both kinds of node (net/node.py, net/bootstrap.py) are built on one SessionHost; their roles
register message handlers and session watchers on it. Every session and handler task lives in the
host's nursery.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections import Counter
from typing import Any, Awaitable, Callable

import trio

from ..crypto import NodeKey
from ..errors import KacheryError, ListenError, PeerGone, ProtocolError
from ..protocol import Connection
from ..protocol.connection import INITIATOR, RESPONDER
from ..protocol.messages import Message, Ping, Pong
from .admission import Admission, Limits, LogThrottle, Ticket
from .dispatch import SERVE_LIMIT_PER_PEER, Dispatch, Handler
from .session import PeerSession, handshake
from .sockets import connect_from, format_addr, open_shared_listener

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
RETIRE_GRACE = 20.0  # a session replaced by a better path is closed once idle, or after this long


def _rank(session: PeerSession) -> int:
    """Better paths replace worse ones as a peer's session: direct or punched over relayed."""
    return 0 if session.direction == "relayed" else 1

Opened = Callable[[PeerSession], Awaitable[None]]  # runs while the session lives, cancelled when it ends
Closed = Callable[[PeerSession], None]


class SessionHost:
    def __init__(self, key: NodeKey, channel_keys: dict[str, bytes], *,
                 listen: tuple[str, int] | None, agent: str = "kacheryfs", limits: Limits | None = None,
                 listen_fallback: bool = False):
        self.key = key
        self.channel_keys = dict(channel_keys)
        self.listen = listen
        self.listen_fallback = listen_fallback  # the default port taken: any free port instead
        self.agent = agent
        self.listen_addrs: list[str] = []
        self.listen_local: tuple[str, int] | None = None  # the bound listener, to dial from (punching)
        self.sessions: dict[str, PeerSession] = {}  # peer id -> its primary session
        self.max_inbound: int | None = None  # sessions beyond which a new inbound peer is turned away
        # Takes an inbound connection that is the other end of a hole punch under way (True: taken,
        # and held until its session ends, since the listener closes the stream when we return).
        self.claim_inbound: Callable[[trio.SocketStream, str], Awaitable[bool]] | None = None
        self.dispatch = Dispatch()
        self._opened: list[Opened] = []
        self._closed: list[Closed] = []
        self._nursery: trio.Nursery | None = None
        self._peers_changed = trio.Event()
        self.admission = Admission(limits or Limits())
        self.rejected: Counter = Counter()  # inbound connections that never became sessions, by why
        self._reject_log = LogThrottle()
        self.register(Ping, self._pong)

    @property
    def limits(self) -> Limits:
        return self.admission.limits

    @property
    def node_id(self) -> str:
        return self.key.node_id

    # ---- what roles register ---------------------------------------------------------------------
    def register(self, msg_type: type[Message], handler: Handler, *, inline: bool = False) -> None:
        self.dispatch.register(msg_type, handler, inline=inline)

    def watch_sessions(self, *, opened: Opened | None = None, closed: Closed | None = None) -> None:
        if opened is not None:
            self._opened.append(opened)
        if closed is not None:
            self._closed.append(closed)

    async def _pong(self, session: PeerSession, msg: Ping) -> Message:
        return Pong(req=msg.req)

    # ---- tasks -----------------------------------------------------------------------------------
    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(fn, *args)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        return await self._nursery.start(fn, *args)

    def cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---- peers -----------------------------------------------------------------------------------
    def channel_peers(self) -> list[PeerSession]:
        return [s for s in self.sessions.values() if s.channel_ids and not s.closed.is_set()]

    async def wait_peers_changed(self) -> None:
        await self._peers_changed.wait()

    def _wake_peers(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    # ---- running ---------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen (unless ``listen`` is None) and host sessions until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.listen is not None:
                listener = await self._open_listener(*self.listen)
                await nursery.start(trio.serve_listeners, self._handle_inbound, [listener])
                bound_host, bound_port = listener.socket.getsockname()[:2]
                self.listen_local = (bound_host, bound_port)
                self.listen_addrs.append(f"{bound_host}:{bound_port}")
                log.info("node %s listening on %s", self.node_id[:12], ", ".join(self.listen_addrs))
            else:
                log.info("node %s is not accepting connections (--listen none)", self.node_id[:12])
            task_status.started()
            await trio.sleep_forever()

    async def _open_listener(self, host: str, port: int) -> trio.SocketListener:
        """SO_REUSEPORT: connections to the bootstrap and hole punches leave from this port. A port
        that is taken is one clear error, or, for the default port, any free one and a warning."""
        try:
            return await open_shared_listener(host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and self.listen_fallback:
                log.warning("port %d is taken (another kacheryfs daemon here?): listening on a free port "
                            "instead; give --listen HOST:PORT to choose one", port)
                return await self._open_listener(host, 0)
            taken = " (another kacheryfs daemon, or another program, has it)" if exc.errno == errno.EADDRINUSE else ""
            raise ListenError(f"{format_addr(host, port)}: {exc.strerror}{taken}; choose another address "
                              "with --listen HOST:PORT (PORT 0: any free port)") from None

    def _connection(self, role: bytes, expected_peer: str | None = None) -> Connection:
        return Connection(role, self.key, self.channel_keys, addrs=tuple(self.listen_addrs),
                          expected_peer=expected_peer, agent=self.agent)

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            ip, port = stream.socket.getpeername()[:2]
        except OSError:
            ip, port = "?", 0
        if self.claim_inbound is not None and await self.claim_inbound(stream, format_addr(ip, port)):
            return  # the other end of a hole punch, caught by our listener (net/punch.py)
        ticket = self.admission.admit(ip)
        if isinstance(ticket, str):
            self.rejected["refused"] += 1
            self._log_rejection("refused connection from %s:%s: %s", ip, port, ticket)
            await trio.aclose_forcefully(stream)
            return
        try:
            await self.accept(stream, f"{ip}:{port}", ticket=ticket)
        finally:
            ticket.release()

    def _log_rejection(self, fmt: str, *args) -> None:
        skipped = self._reject_log.allow(trio.current_time())
        if skipped is not None:
            log.warning(fmt + ("" if not skipped else f" ({skipped} more not logged)"), *args)

    async def accept(self, stream: trio.abc.Stream, remote: str, direction: str = "inbound",
                     ticket: Ticket | None = None) -> None:
        """Answer the handshake on an incoming stream (TCP or a relay circuit), then host the session."""
        conn = self._connection(RESPONDER)
        try:
            info = await handshake(stream, conn, self.limits.handshake_timeout)
        except (ProtocolError, PeerGone, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            why = "bad" if isinstance(exc, ProtocolError) else "timeout" if isinstance(exc, trio.TooSlowError) else "cut"
            self.rejected[why] += 1
            self._log_rejection("rejected connection from %s: %r", remote, exc)
            await trio.aclose_forcefully(stream)
            return
        if ticket is not None:
            ticket.authenticated()
        if self.max_inbound is not None and info.peer_id not in self.sessions and len(self.sessions) >= self.max_inbound:
            log.info("turned away %s from %s: %d peers already", info.peer_id[:12], remote, len(self.sessions))
            await trio.aclose_forcefully(stream)
            return
        await self._run_session(PeerSession(stream, conn, info, direction, remote))

    async def answer_session(self, stream: trio.abc.Stream, remote: str, direction: str,
                             expected_peer: str) -> PeerSession:
        """Run the handshake as responder, expecting ``expected_peer`` (a hole punch's other end);
        returns once the session is registered. Raises on a failed handshake."""
        return await self._start_session(RESPONDER, stream, remote, direction, expected_peer)

    async def connect(self, host: str, port: int, expected_peer: str | None = None) -> PeerSession:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
        return await self.open_session(stream, f"{host}:{port}", "outbound", expected_peer)

    async def connect_from_listener(self, host: str, port: int, expected_peer: str | None = None) -> PeerSession:
        """Like connect, but from the listening port, so the NAT mapping the other side sees is the
        one of the port we accept on (for a bootstrap: our observed address). Falls back to an
        ordinary connection when we do not listen or the port cannot be shared."""
        if self.listen_local is None:
            return await self.connect(host, port, expected_peer)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await connect_from(self.listen_local, host, port)
        except OSError as exc:
            log.info("cannot dial %s:%d from the listening port (%r); dialling from any port", host, port, exc)
            return await self.connect(host, port, expected_peer)
        return await self.open_session(stream, f"{host}:{port}", "outbound", expected_peer)

    async def open_session(self, stream: trio.abc.Stream, remote: str, direction: str,
                           expected_peer: str | None = None) -> PeerSession:
        """Run the handshake as initiator over ``stream``; returns once the session is registered."""
        return await self._start_session(INITIATOR, stream, remote, direction, expected_peer)

    async def _start_session(self, role: bytes, stream: trio.abc.Stream, remote: str, direction: str,
                             expected_peer: str | None) -> PeerSession:
        conn = self._connection(role, expected_peer)
        try:
            info = await handshake(stream, conn, self.limits.handshake_timeout)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        session = PeerSession(stream, conn, info, direction, remote)
        await self.start(self._run_session, session)
        return session

    async def _run_session(self, session: PeerSession, task_status=trio.TASK_STATUS_IGNORED) -> None:
        current = self.sessions.get(session.peer_id)
        primary = current is None or current.closed.is_set() or _rank(session) > _rank(current)
        if primary:
            self.sessions[session.peer_id] = session
            self._wake_peers()
            if current is not None and not current.closed.is_set():
                log.info("%r replaces %r", session, current)
                self.start_soon(self._retire, current)
        task_status.started()  # open_session() returns once the session is registered
        log.info("connected %r, shared channels: %d", session, len(session.channel_ids))
        limiter = trio.CapacityLimiter(SERVE_LIMIT_PER_PEER)
        try:
            async with trio.open_nursery() as handlers:
                for opened in self._opened:
                    handlers.start_soon(opened, session)

                async def on_message(sess: PeerSession, msg: Message) -> None:
                    route = self.dispatch.route(msg)
                    if route is None:
                        return
                    if route.inline:  # in the receive loop: messages of one stream stay in order
                        await self._answer(sess, msg, route.handler)
                        return
                    token = object()  # backpressure: at most SERVE_LIMIT_PER_PEER handlers at once
                    await limiter.acquire_on_behalf_of(token)
                    handlers.start_soon(self._answer_in_task, sess, msg, route.handler, limiter, token)

                await session.receive_loop(on_message)
                handlers.cancel_scope.cancel()
        finally:
            if self.sessions.get(session.peer_id) is session:
                del self.sessions[session.peer_id]
                self._wake_peers()
            for closed in self._closed:
                closed(session)
            log.info("disconnected %r", session)

    async def _retire(self, session: PeerSession) -> None:
        """Close a session that a better one replaced, once it is drained: none of our requests
        waiting and no bytes either way for a second (the peer answers what it was asked, then
        both sides fall quiet). The peer retires its end the same way; the first to close ends it."""
        with trio.move_on_after(RETIRE_GRACE):
            quiet_since, last = trio.current_time(), None
            while not session.closed.is_set():
                counts = (session.stats.bytes_sent, session.stats.bytes_received)
                if session.busy or counts != last:
                    quiet_since, last = trio.current_time(), counts
                elif trio.current_time() - quiet_since >= 1.0:
                    break
                await trio.sleep(0.1)
        log.info("closing %r: replaced by a better path", session)
        await session.close()

    async def _answer(self, session: PeerSession, msg: Message, handler: Handler) -> None:
        try:
            reply = await handler(session, msg)
            if reply is not None:
                await session.send(reply)
        except PeerGone:
            pass
        except KacheryError as exc:
            log.warning("request %s from %r failed: %s", type(msg).__name__, session, exc)
        except Exception:  # a bug in handling one message must not take the node down
            log.exception("request %s from %r crashed", type(msg).__name__, session)

    async def _answer_in_task(self, session: PeerSession, msg: Message, handler: Handler,
                              limiter: trio.CapacityLimiter, token: object) -> None:
        try:
            await self._answer(session, msg, handler)
        finally:
            limiter.release_on_behalf_of(token)


class HostedNode:
    """What both kinds of node (net/node.py, net/bootstrap.py) share: one SessionHost, run with
    the node's background services."""

    host: SessionHost
    _nursery: trio.Nursery | None = None  # the node's: its host and its services

    @property
    def node_id(self) -> str:
        return self.host.node_id

    @property
    def listen_addrs(self) -> list[str]:
        return self.host.listen_addrs

    @property
    def sessions(self) -> dict[str, PeerSession]:
        return self.host.sessions

    def services(self) -> list[Callable[[], Awaitable[None]]]:
        """Loops to start once the host listens."""
        return []

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.host.run)
            for service in self.services():
                nursery.start_soon(service)
            task_status.started(self)

    def cancel(self) -> None:
        """Stop every task of the node: its sessions and its services."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def session_status(s: PeerSession, role: str, channels: list[str]) -> dict:
    """One session in `kacheryfs status`: who, how reached, shared channels, bytes and current rates."""
    now = time.monotonic()
    return {"node": s.peer_id, "role": role, "remote": s.remote, "direction": s.direction, "path": s.path,
            "channels": channels, "sent": s.stats.bytes_sent, "received": s.stats.bytes_received,
            "rate_in": round(s.stats.received_rate.rate(now)), "rate_out": round(s.stats.sent_rate.rate(now)),
            "seconds": math.floor(now - s.stats.started)}


async def send_quietly(session: PeerSession, msg: Message) -> None:
    """Send, or nothing if the peer has gone."""
    try:
        await session.send(msg)
    except PeerGone:
        pass
