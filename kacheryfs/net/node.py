"""A kacheryfs node: listens, dials, serves what it holds to channel members, finds and fetches.

Every task lives in the node's nursery. Serving rules are checked on the serving side: a request
is answered only for a peer that proved a channel through which this node shares the object.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..crypto import NodeKey
from ..errors import KacheryError
from ..protocol import Connection, ProtocolError
from ..protocol.connection import INITIATOR, RESPONDER
from ..protocol.messages import (
    Announce, ChunkData, ChunkRequest, ErrorResponse, FindRequest, FindResponse, Message,
    FeedEntries, FeedQuery, FeedSubscribe, PeersRequest, PeersResponse, Ping, Pong, Register,
    RelayClose, RelayData, RelayIncoming, RelayOpen, RelayOpened,
)
from .relay import RelayLimitExceeded, RelayStream, RelayTable
from ..store import LocalStore
from .session import PeerGone, PeerSession, handshake

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
FIND_TIMEOUT = 3.0
FIND_GRACE = 0.015  # after the first "found", wait this long for more providers (they also join later)
FIND_CACHE_SECONDS = 5.0
PEER_POLL_SECONDS = 1.0
MAX_BACKOFF = 30.0
SERVE_LIMIT_PER_PEER = 32


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise KacheryError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Provider:
    session: PeerSession
    size: int
    manifest_sha1: str | None


@dataclass
class NodeCounters:
    served_bytes: Counter = field(default_factory=Counter)  # peer id -> bytes of content sent
    refused: Counter = field(default_factory=Counter)  # peer id -> requests refused
    fetched_bytes: int = 0  # content bytes received from peers (verified or not)


class Node:
    def __init__(self, key: NodeKey, store: LocalStore, channel_keys: dict[str, bytes], *,
                 listen: tuple[str, int] | None = ("0.0.0.0", 0), bootstraps: tuple[tuple[str, int], ...] = (),
                 bootstrap_mode: bool = False, find_timeout: float = FIND_TIMEOUT,
                 discovery_dir: Path | None = None, serve_rate_limit: float | None = None,
                 lan_discovery: bool = False, cache_size: int | None = None, feeds=None):
        self.key = key
        self.store = store
        self.channel_keys = dict(channel_keys)
        self.listen = listen
        self.bootstraps = bootstraps
        self.bootstrap_mode = bootstrap_mode
        self.find_timeout = find_timeout
        self.discovery_dir = discovery_dir
        self.lan_discovery = lan_discovery
        self.cache_size = cache_size
        self.feed_sync = None
        if feeds is not None:
            from .feed_sync import FeedSync

            self.feed_sync = FeedSync(self, feeds)
        self.serve_rate_limit = serve_rate_limit  # bytes/s, for benchmarks that need equal, capped seeders
        self._serve_free_at = 0.0
        self.listen_addrs: list[str] = []
        self.sessions: dict[str, PeerSession] = {}
        self.counters = NodeCounters()
        self.registry: dict[str, dict[str, tuple[list[str], float]]] = defaultdict(dict)
        self._dialing: set[str] = set()
        self._dial_backoff: dict[str, tuple[float, float]] = {}  # node -> (retry not before, delay)
        self.relay_table = RelayTable()  # bootstrap side: circuits between two registered nodes
        self._relay_streams: dict[tuple[int, int], RelayStream] = {}  # (id(relay session), circuit)
        self.bootstrap_sessions: list[PeerSession] = []
        self._find_cache: dict[str, tuple[float, list[Provider]]] = {}
        self._limiter = trio.CapacityLimiter(4)
        self._nursery: trio.Nursery | None = None
        self.peers_changed = trio.Event()

    @property
    def node_id(self) -> str:
        return self.key.node_id

    # ---- running ------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.listen is not None:
                host, port = self.listen
                listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle_inbound, port, host=host))
                for listener in listeners:
                    bound_host, bound_port = listener.socket.getsockname()[:2]
                    self.listen_addrs.append(f"{bound_host}:{bound_port}")
                log.info("node %s listening on %s", self.node_id[:12], ", ".join(self.listen_addrs))
            else:
                log.info("node %s is not accepting connections (--listen none)", self.node_id[:12])
            for host, port in self.bootstraps:
                nursery.start_soon(self._bootstrap_loop, host, port)
            if self.discovery_dir is not None and self.channel_keys and not self.bootstrap_mode:
                nursery.start_soon(self._local_discovery_loop)
            if self.lan_discovery and self.channel_keys and self.listen_addrs and not self.bootstrap_mode:
                from . import lan_discovery

                port = int(self.listen_addrs[0].rpartition(":")[2])
                nursery.start_soon(lan_discovery.run, self, port)
            if self.cache_size is not None:
                nursery.start_soon(self._evict_loop)
            task_status.started(self)

    async def _evict_loop(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.store.evict_cached, self.cache_size, limiter=self._limiter)
            await trio.sleep(30)

    def cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _conn(self, role: bytes, expected_peer: str | None = None) -> Connection:
        return Connection(role, self.key, self.channel_keys, addrs=tuple(self.listen_addrs),
                          expected_peer=expected_peer, agent="kacheryfs-bootstrap" if self.bootstrap_mode else "kacheryfs")

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            remote = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            remote = "?"
        await self._accept(stream, remote)

    async def _accept(self, stream: trio.abc.Stream, remote: str) -> None:
        conn = self._conn(RESPONDER)
        try:
            info = await handshake(stream, conn)
        except (ProtocolError, PeerGone, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.warning("rejected connection from %s: %r", remote, exc)
            await trio.aclose_forcefully(stream)
            return
        await self._run_session(PeerSession(stream, conn, info, "inbound", remote))

    async def connect(self, host: str, port: int, expected_peer: str | None = None) -> PeerSession:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
        conn = self._conn(INITIATOR, expected_peer)
        try:
            info = await handshake(stream, conn)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        session = PeerSession(stream, conn, info, "outbound", f"{host}:{port}")
        await self._nursery.start(self._run_session, session)
        return session

    async def _run_session(self, session: PeerSession, task_status=trio.TASK_STATUS_IGNORED) -> None:
        primary = session.peer_id not in self.sessions or self.sessions[session.peer_id].closed.is_set()
        if primary:
            self.sessions[session.peer_id] = session
            self._wake_peers()
        task_status.started()  # connect() returns once the session is registered
        log.info("connected %r, shared channels: %d", session, len(session.channel_ids))
        limiter = trio.CapacityLimiter(SERVE_LIMIT_PER_PEER)
        try:
            async with trio.open_nursery() as handlers:
                if self.feed_sync is not None:
                    handlers.start_soon(self.feed_sync.on_session, session)

                async def on_message(sess: PeerSession, msg: Message) -> None:
                    if isinstance(msg, (RelayData, RelayClose, RelayIncoming)):
                        await self._relay_message(sess, msg)  # inline: circuit bytes stay in order
                        return
                    if isinstance(msg, FeedEntries):
                        if self.feed_sync is not None:
                            await self.feed_sync.on_entries(sess, msg)  # inline: entries stay in order
                        return
                    token = object()  # backpressure: at most SERVE_LIMIT_PER_PEER requests at once
                    await limiter.acquire_on_behalf_of(token)
                    handlers.start_soon(self._handle_message, sess, msg, limiter, token)

                await session.receive_loop(on_message)
                handlers.cancel_scope.cancel()
        finally:
            if self.sessions.get(session.peer_id) is session:
                del self.sessions[session.peer_id]
                self._wake_peers()
            if self.feed_sync is not None:
                self.feed_sync.on_session_closed(session)
            for circuit, other in self.relay_table.drop_end(session):
                self._nursery.start_soon(self._send_quietly, other, RelayClose(circuit=circuit, reason="peer left"))
            for key in [k for k in self._relay_streams if k[0] == id(session)]:
                self._relay_streams.pop(key).remote_closed()
            log.info("disconnected %r", session)

    async def _send_quietly(self, session: PeerSession, msg: Message) -> None:
        try:
            await session.send(msg)
        except PeerGone:
            pass

    # ---- relay ----------------------------------------------------------------------------------
    async def _relay_message(self, session: PeerSession, msg: Message) -> None:
        if self.bootstrap_mode:  # forward between the two ends of a circuit
            if isinstance(msg, RelayData):
                try:
                    other = self.relay_table.route(session, msg.circuit, len(msg.payload), trio.current_time())
                except RelayLimitExceeded as exc:
                    log.info("relay circuit %d closed: %s", msg.circuit, exc.message)
                    for end in exc.ends:
                        await self._send_quietly(end, RelayClose(circuit=msg.circuit, reason=exc.message))
                    return
                if other is None:
                    await self._send_quietly(session, RelayClose(circuit=msg.circuit, reason="no such circuit"))
                else:
                    await self._send_quietly(other, msg)
            elif isinstance(msg, RelayClose):
                circuit = self.relay_table.close(msg.circuit)
                if circuit is not None and session in circuit.ends:
                    await self._send_quietly(circuit.other(session), msg)
            return
        key = (id(session), msg.circuit)
        if isinstance(msg, RelayIncoming):
            if session not in self.bootstrap_sessions:
                return  # only our own bootstraps may relay to us
            stream = self._relay_streams[key] = RelayStream(session, msg.circuit, self._forget_stream)
            self._nursery.start_soon(self._accept, stream, f"relay:{session.remote}")
        elif isinstance(msg, RelayData):
            stream = self._relay_streams.get(key)
            if stream is not None:
                stream.feed(msg.payload)
        elif isinstance(msg, RelayClose):
            stream = self._relay_streams.pop(key, None)
            if stream is not None:
                stream.remote_closed()

    def _forget_stream(self, stream: RelayStream) -> None:
        self._relay_streams.pop((id(stream.relay), stream.circuit), None)

    async def connect_via_relay(self, relay: PeerSession, node: str) -> PeerSession:
        reply = await relay.request(RelayOpen(req=relay.next_req(), target=node), 10)
        if not isinstance(reply, RelayOpened):
            raise KacheryError("relay refused")
        stream = self._relay_streams[(id(relay), reply.circuit)] = RelayStream(relay, reply.circuit, self._forget_stream)
        conn = self._conn(INITIATOR, node)
        try:
            info = await handshake(stream, conn)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        session = PeerSession(stream, conn, info, "relayed", f"relay:{relay.remote}")
        await self._nursery.start(self._run_session, session)
        return session

    def _wake_peers(self) -> None:
        self.peers_changed.set()
        self.peers_changed = trio.Event()

    # ---- serving ------------------------------------------------------------------------------
    def servable(self, session: PeerSession, sha1: str):
        """The object's record if this peer may have it, else None. Stored objects are shared on all
        our channels; cached copies on the channels they came from."""
        if not session.channel_ids:
            return None
        record = self.store.info(sha1)
        if record is None or record.pinned:
            return record
        return record if session.channel_ids & self.store.index.channels_of(sha1) else None

    async def _handle_message(self, session: PeerSession, msg: Message, limiter: trio.CapacityLimiter,
                              token: object) -> None:
        try:
            reply = await self._answer(session, msg)
            if reply is not None:
                await session.send(reply)
        except PeerGone:
            pass
        except KacheryError as exc:
            log.warning("request %s from %r failed: %s", type(msg).__name__, session, exc)
        except Exception:  # a bug in serving one request must not take the node down
            log.exception("request %s from %r crashed", type(msg).__name__, session)
        finally:
            limiter.release_on_behalf_of(token)

    async def _answer(self, session: PeerSession, msg: Message) -> Message | None:
        if isinstance(msg, FindRequest):
            record = self.servable(session, msg.sha1)
            if record is None:
                if not session.channel_ids:
                    self.counters.refused[session.peer_id] += 1
                    log.info("refused find %s from %s: no shared channel", msg.sha1[:12], session.peer_id[:12])
                return FindResponse(req=msg.req, sha1=msg.sha1, found=False)
            self.store.index.touch(msg.sha1)  # serving keeps a cached copy warm
            return FindResponse(req=msg.req, sha1=msg.sha1, found=True, size=record.size,
                                manifest_sha1=record.manifest_sha1)
        if isinstance(msg, ChunkRequest):
            if self.servable(session, msg.sha1) is None:
                self.counters.refused[session.peer_id] += 1
                log.info("refused chunk of %s to %s: not shared with it", msg.sha1[:12], session.peer_id[:12])
                return ErrorResponse(req=msg.req, code="not-found", message="no such object here")
            if self.serve_rate_limit:
                now = trio.current_time()
                start = max(now, self._serve_free_at)
                self._serve_free_at = start + msg.length / self.serve_rate_limit
                await trio.sleep(self._serve_free_at - now)
            data = await trio.to_thread.run_sync(self._read_range, msg.sha1, msg.offset, msg.length,
                                                 limiter=self._limiter)
            self.counters.served_bytes[session.peer_id] += len(data)
            log.debug("sent %d bytes of %s to %s", len(data), msg.sha1[:12], session.peer_id[:12])
            return ChunkData(req=msg.req, payload=data)
        if isinstance(msg, (FeedQuery, FeedSubscribe)):
            if self.feed_sync is None:
                return ErrorResponse(req=msg.req, code="unsupported", message="no feeds here")
            return await self.feed_sync.answer(session, msg)
        if isinstance(msg, Announce):
            self._find_cache.pop(msg.sha1, None)
            return None
        if isinstance(msg, Ping):
            return Pong(req=msg.req)
        if isinstance(msg, Register) and self.bootstrap_mode:
            observed_host = session.remote.rpartition(":")[0]
            addrs = list(msg.addrs)
            for addr in msg.addrs:  # a node listening on 0.0.0.0 is reachable at the address we saw
                host, _, port = addr.rpartition(":")
                if host in ("0.0.0.0", "::") and observed_host:
                    addrs.insert(0, f"{observed_host}:{port}")
            for cid in msg.channel_ids:
                self.registry[cid][session.peer_id] = (addrs, time.monotonic())
            return None
        if isinstance(msg, RelayOpen) and self.bootstrap_mode:
            target = self.sessions.get(msg.target)
            if target is None or target.closed.is_set():
                return ErrorResponse(req=msg.req, code="unreachable", message="target not connected here")
            try:
                circuit = self.relay_table.open(session, target, trio.current_time())
            except RelayLimitExceeded as exc:
                return ErrorResponse(req=msg.req, code="relay-limit", message=exc.message)
            await target.send(RelayIncoming(circuit=circuit, peer=session.peer_id))
            log.info("relaying %s <-> %s (circuit %d)", session.peer_id[:12], msg.target[:12], circuit)
            return RelayOpened(req=msg.req, circuit=circuit)
        if isinstance(msg, PeersRequest) and self.bootstrap_mode:
            peers = []
            for cid in msg.channel_ids[:256]:
                for node, (addrs, _seen) in self.registry.get(cid, {}).items():
                    if node != session.peer_id and node in self.sessions:
                        peers.append({"node": node, "addrs": addrs, "channel_id": cid})
            return PeersResponse(req=msg.req, peers=peers[:512])
        if hasattr(msg, "req"):
            return ErrorResponse(req=msg.req, code="unsupported", message=type(msg).__name__)
        return None

    def _read_range(self, sha1: str, offset: int, length: int) -> bytes:
        with open(self.store.object_path(sha1), "rb") as f:
            return os.pread(f.fileno(), length, offset)

    # ---- discovery through bootstraps ---------------------------------------------------------
    async def _bootstrap_loop(self, host: str, port: int) -> None:
        backoff = 0.5
        while True:
            try:
                session = await self.connect(host, port)
                backoff = 0.5
                log.info("registered with bootstrap %s:%d", host, port)
                self.bootstrap_sessions.append(session)
                while not session.closed.is_set():
                    await session.send(Register(channel_ids=sorted(self.channel_keys), addrs=self.listen_addrs))
                    reply = await session.request(PeersRequest(req=session.next_req(),
                                                               channel_ids=sorted(self.channel_keys)), 10)
                    for peer in reply.peers if isinstance(reply, PeersResponse) else []:
                        self._maybe_dial(peer, via=session)
                    with trio.move_on_after(PEER_POLL_SECONDS):
                        await session.closed.wait()
            except (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.info("bootstrap %s:%d unreachable (%r); retrying in %.1fs", host, port,
                         exc, backoff)
            finally:
                self.bootstrap_sessions[:] = [s for s in self.bootstrap_sessions if not s.closed.is_set()]
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _local_discovery_loop(self) -> None:
        from . import local_discovery as ld

        ld.ensure_dir(self.discovery_dir)
        addrs = ld.loopback_addrs(self.listen_addrs)
        try:
            while True:
                if addrs:  # a node that accepts no connections can only dial
                    await trio.to_thread.run_sync(ld.publish, self.discovery_dir, list(self.channel_keys),
                                                  self.node_id, addrs)
                peers = await trio.to_thread.run_sync(ld.scan, self.discovery_dir, list(self.channel_keys),
                                                      self.node_id)
                for peer in peers:
                    self._maybe_dial(peer)
                await trio.sleep(PEER_POLL_SECONDS)
        finally:
            ld.withdraw(self.discovery_dir, list(self.channel_keys), self.node_id)

    def _maybe_dial(self, peer: dict, via: PeerSession | None = None) -> None:
        node = peer.get("node")
        if not isinstance(node, str) or node == self.node_id or node in self.sessions or node in self._dialing:
            return
        not_before, _delay = self._dial_backoff.get(node, (0.0, 0.0))
        if trio.current_time() < not_before:
            return  # it failed recently: retry later, with exponential backoff
        addrs = [a for a in peer.get("addrs", []) if isinstance(a, str)]
        if not addrs and (via is None or self.listen_addrs or self.node_id > node):
            # It accepts no connections: if we do, it dials us; if neither does, the smaller id
            # opens the relay circuit, so one circuit is made, not two.
            return
        self._dialing.add(node)
        self._nursery.start_soon(self._dial, node, addrs, via)

    async def _dial(self, node: str, addrs: list[str], via: PeerSession | None) -> None:
        errors = (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError)
        try:
            for addr in addrs:
                try:
                    host, port = parse_hostport(addr)
                    await self.connect(host, port, expected_peer=node)
                    self._dial_backoff.pop(node, None)
                    return
                except errors as exc:
                    log.info("could not reach %s at %s: %r", node[:12], addr, exc)
            if via is not None and not via.closed.is_set():
                try:
                    await self.connect_via_relay(via, node)
                    self._dial_backoff.pop(node, None)
                    return
                except errors as exc:
                    log.info("could not reach %s through the relay: %r", node[:12], exc)
            _not_before, delay = self._dial_backoff.get(node, (0.0, 0.0))
            delay = min(max(1.0, delay * 2), MAX_BACKOFF)
            self._dial_backoff[node] = (trio.current_time() + delay, delay)
        finally:
            self._dialing.discard(node)

    # ---- finding ------------------------------------------------------------------------------
    def channel_peers(self) -> list[PeerSession]:
        return [s for s in self.sessions.values() if s.channel_ids and not s.closed.is_set()]

    async def find(self, sha1: str, timeout: float | None = None) -> list[Provider]:
        """Ask every channel peer at once; first answers win, bounded wait; cached briefly."""
        cached = self._find_cache.get(sha1)
        if cached and time.monotonic() - cached[0] < FIND_CACHE_SECONDS and \
                all(not p.session.closed.is_set() for p in cached[1]):
            return cached[1]
        timeout = self.find_timeout if timeout is None else timeout
        if not self.channel_keys:
            return []  # in no channel: nobody to ask
        found: list[Provider] = []
        first = trio.Event()
        everyone = trio.Event()  # every peer asked so far has answered: no point in more grace
        asked: set[str] = set()
        answered = 0

        async def ask(session: PeerSession) -> None:
            nonlocal answered
            try:
                reply = await session.request(FindRequest(req=session.next_req(), sha1=sha1), timeout)
            except (KacheryError, trio.TooSlowError):
                return
            finally:
                answered += 1
                if answered == len(asked):
                    everyone.set()
            if isinstance(reply, FindResponse) and reply.found and reply.sha1 == sha1:
                found.append(Provider(session, reply.size, reply.manifest_sha1))
                first.set()

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                async def watch_new_peers():
                    while True:  # peers that connect while we wait are asked too
                        for session in self.channel_peers():
                            if session.peer_id not in asked:
                                asked.add(session.peer_id)
                                nursery.start_soon(ask, session)
                        await self.peers_changed.wait()

                nursery.start_soon(watch_new_peers)
                await first.wait()
                with trio.move_on_after(FIND_GRACE):
                    await everyone.wait()
                nursery.cancel_scope.cancel()
        if found:
            self._find_cache[sha1] = (time.monotonic(), found)
        return found

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None:
        for session in self.channel_peers():
            try:
                await session.send(Announce(sha1=sha1, size=size, manifest_sha1=manifest_sha1))
            except PeerGone:
                pass

    def status(self) -> dict:
        return {
            "node_id": self.node_id,
            "listen": self.listen_addrs,
            "peers": [{"node": s.peer_id, "remote": s.remote, "direction": s.direction,
                       "channels": len(s.channel_ids), "sent": s.stats.bytes_sent,
                       "received": s.stats.bytes_received,
                       "seconds": math.floor(time.monotonic() - s.stats.started)}
                      for s in self.sessions.values()],
            "served_bytes": dict(self.counters.served_bytes),
            "fetched_bytes": self.counters.fetched_bytes,
        }


def tune_malloc() -> None:
    """Keep freed chunk-sized buffers in the heap for reuse (glibc only; harmless elsewhere).

    By default glibc mmaps blocks of 128 KiB and more (raised to the largest freed one) and trims
    free heap tops above 128 KiB, and a buffer from a worker thread belongs to that thread's arena.
    So every 1 MiB chunk buffer lands on fresh pages: ~256 page faults each, and in these VMs a
    fresh page costs a host fault too. Measured on the serving node: ~580k faults per GiB served.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 8 << 20)  # frames up to MAX_FRAME come from the heap
        libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)  # keep up to 128 MiB of freed heap for reuse
    except (OSError, AttributeError):
        pass


def build_node(config, store: LocalStore, *, bootstrap_mode: bool = False) -> Node:
    """A node from the configuration: its key, channels, listen address and bootstraps."""
    tune_malloc()
    key = NodeKey.load_or_create(config.config_dir)
    channels = config.channel_keys()
    for cid, (name, _key) in channels.items():
        log.info("channel %s (id %s)", name, cid)
    listen = parse_hostport(config.listen) if config.listen else None
    feeds = None
    if not bootstrap_mode:
        from ..feeds import FeedStore

        feeds = FeedStore(config.storage_dir / "feeds.sqlite3", config.config_dir / "feeds")
    return Node(key, store, {cid: k for cid, (_n, k) in channels.items()}, listen=listen,
                bootstraps=tuple(parse_hostport(b) for b in config.bootstraps),
                bootstrap_mode=bootstrap_mode, find_timeout=config.find_timeout,
                discovery_dir=config.discovery_dir if not config.bootstraps else None,
                serve_rate_limit=config.serve_rate_limit,
                cache_size=config.cache_size, feeds=feeds,
                lan_discovery=config.lan_discovery and not config.bootstraps and listen is not None
                and not listen[0].startswith("127.") and listen[0] != "::1")
