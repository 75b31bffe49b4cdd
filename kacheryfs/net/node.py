"""A peer node: the roles of a channel member wired together over one SessionHost.

- sessions and routing (host.py): listen, accept, connect, the session registry, the dispatch table
- dialing (dialing.py) with backoff, directly or through a relay (relay_client.py), then upgraded
  by a hole punch (punch.py) when the peer is behind NAT
- serving (serving.py): what this node holds, to channel members only, per request
- finding (finding.py): who holds an object; announcing what this node stored
- discovery (discovery.py): bootstrap client, same-machine and LAN discovery; the mainline DHT
  (dht.py, dht_discovery.py) when on
- swarming (swarm.py): objects being downloaded are served chunk by verified chunk, with Have
  messages to the peers interested in them
- feed replication (feed_sync.py), when the node keeps feeds

Each role registers its message handlers itself, and reaches the rest of the node only through the
protocols of interfaces.py, which this class satisfies. The bootstrap is another kind of node
(bootstrap.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import trio

from ..config import DEFAULT_FIND_TIMEOUT, DEFAULT_MAX_PEERS
from ..crypto import NodeKey
from ..store import LocalStore
from .admission import Limits
from .dialing import Dialer, parse_hostport
from .discovery import Discovery
from .dispatch import Handler
from .finding import Finder, Provider
from .host import Closed, HostedNode, Opened, SessionHost, session_status
from .interfaces import PeerHint
from ..protocol.messages import Observed, PunchIncoming, PunchSync
from .dialing import DIAL_ERRORS, DialTarget
from .punch import PunchClient, PunchError
from ..protocol.punch import RETRY_DELAYS
from .relay_client import RelayClient
from .serving import NodeCounters, Server
from .session import PeerSession
from .swarm import Swarm
from .sockets import format_addr

log = logging.getLogger(__name__)

RELAY_LIMIT_HOLD_OFF = 60.0  # after a relay limit closed our circuit to a peer, do not reopen one at once

ALONE_WARNING_SECONDS = 10.0  # after start, a node with no peer in a channel says so

__all__ = ["Node", "NodeCounters", "Provider", "build_node", "parse_hostport"]


class Node(HostedNode):
    def __init__(self, key: NodeKey, store: LocalStore, channel_keys: dict[str, bytes], *,
                 listen: tuple[str, int] | None = ("0.0.0.0", 0), bootstraps: tuple[tuple[str, int], ...] = (),
                 find_timeout: float = DEFAULT_FIND_TIMEOUT, discovery_dir: Path | None = None,
                 serve_rate_limit: float | None = None, lan_discovery: bool = False, feeds=None,
                 limits: Limits | None = None, dht=None, max_peers: int = DEFAULT_MAX_PEERS,
                 swarming: bool = True, channel_names: Mapping[str, str] | None = None,
                 listen_fallback: bool = False, alone_warning_after: float = ALONE_WARNING_SECONDS):
        self.key = key
        self.channel_names = dict(channel_names or {})  # channel id -> name, for status
        self.alone_warning_after = alone_warning_after
        self.store = store
        self.find_timeout = find_timeout
        self.counters = NodeCounters()
        self.host = SessionHost(key, channel_keys, listen=listen, limits=limits, listen_fallback=listen_fallback)
        # With the dialer's cap every node's sessions are bounded; the 8 spare leave room for the
        # peers that dial us because a find of theirs widened to us.
        self.host.max_inbound = 2 * max_peers + 8
        self.swarm = Swarm(self, self, enabled=swarming)
        self.server = Server(self, store, self.counters, self._read_into, serve_rate_limit, swarm=self.swarm,
                             read_partial_into=self._read_partial_into)
        self.finder = Finder(self, self, in_a_channel=bool(channel_keys), timeout=find_timeout,
                             more_peers=self._more_peers, searching=self._still_searching)
        self.swarm.heard_of = self.finder.heard_of
        self.relay_client = RelayClient(self.host)
        self.punch = PunchClient(lambda: self.host.listen_local, self._punched, self.host.start_soon)
        self.host.claim_inbound = self.punch.claim_inbound
        self.dialer = Dialer(self.host, self.observed_addrs, self.behind_nat, max_peers)
        self.dht = dht  # net.dht.DhtNode (not started) or None
        self.dht_discovery = None
        self._dht_lookups: set[str] = set()  # objects being looked up in the DHT now
        self.dialer.ways.append(self._relay_then_punch)
        self.host.register(Observed, self._observed, inline=True)  # known before the PeersResponse after it (dial tie-break)
        self.host.register(PunchIncoming, self._punch_incoming)
        self.host.register(PunchSync, self._punch_sync, inline=True)
        self.host.watch_sessions(closed=self._session_closed)
        self.discovery = Discovery(self, bootstraps=bootstraps, discovery_dir=discovery_dir, lan=lan_discovery)
        self.feed_sync = None
        if feeds is not None:
            from .feed_sync import FeedSync

            self.feed_sync = FeedSync(self, feeds, find_timeout=find_timeout)

    @property
    def channel_keys(self) -> Mapping[str, bytes]:
        return self.host.channel_keys

    @property
    def serve_rate_limit(self) -> float | None:
        return self.server.rate_limit

    @serve_rate_limit.setter
    def serve_rate_limit(self, value: float | None) -> None:
        self.server.rate_limit = value

    def services(self):
        out = self.discovery.services() + [self.swarm.run, self._warn_while_alone]
        if self.dht is not None:
            out.append(self._run_dht)
        return out

    async def _run_dht(self) -> None:
        from .dht_discovery import DhtDiscovery

        port = int(self.listen_addrs[0].rpartition(":")[2]) if self.listen_addrs else None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dht.run)
            self.dht_discovery = await nursery.start(
                DhtDiscovery(self.dht, dict(self.channel_keys), port, self.dialer.maybe_dial_address).run)

    def _more_peers(self, sha1: str) -> None:
        """A find found nobody among our peers: dial some we know of but skipped, and ask the DHT."""
        self.dialer.widen(8)
        if self.dht_discovery is not None and sha1 not in self._dht_lookups:
            self._dht_lookups.add(sha1)
            self.host.start_soon(self._dht_providers, sha1)

    def _still_searching(self, sha1: str) -> bool:
        """A dial, or a DHT lookup of ``sha1``, is under way: a find waits for what it brings."""
        return self.dialer.dialing() or sha1 in self._dht_lookups

    async def _dht_providers(self, sha1: str) -> None:
        try:
            for host, port in await self.dht_discovery.find_object(sha1):
                self.dialer.maybe_dial_address(host, port, widening=True)  # past the cap, like widen()
        finally:
            self._dht_lookups.discard(sha1)

    def provide(self, sha1: str) -> None:
        if self.dht_discovery is not None:
            self.dht_discovery.announce_object(sha1)


    def channels_without_peers(self) -> list[str]:
        """Names of the joined channels no connected peer shares."""
        shared = {c for s in self.channel_peers() for c in s.channel_ids}
        return [self.channel_names.get(c, c) for c in self.channel_keys if c not in shared]

    async def _warn_while_alone(self) -> None:
        """A node that finds nobody shares nothing and fetches nothing: say so, and why it may be,
        some seconds after start (not at once: discovery takes a moment), and say when it ends."""
        await trio.sleep(self.alone_warning_after)
        if not self.channel_keys:
            log.warning("this node joined no channel: it shares and fetches nothing (give --channel NAME)")
            return
        alone = self.channels_without_peers()
        if not alone:
            return
        bootstraps = [f"{h}:{p}" for h, p in self.discovery.bootstraps]
        if not bootstraps:
            why = ("on one machine or LAN peers meet by themselves; across networks every node needs "
                   "--bootstrap HOST:PORT")
        elif not self.relay_client.relays:
            why = f"the bootstrap ({', '.join(bootstraps)}) cannot be reached"
        else:
            why = "the bootstrap knows no other member of it yet"
        log.warning("no peer in channel %s %.0f s after start: peers must join the same channel name "
                    "(and secret, for a private one); %s (see Connectivity in docs/user-guide.md)",
                    ", ".join(alone), self.alone_warning_after, why)
        while alone:
            await self.host.wait_peers_changed()
            now_alone = self.channels_without_peers()
            for name in alone:
                if name not in now_alone:
                    log.info("channel %s: a peer is connected now", name)
            alone = now_alone

    # ---- the protocols of interfaces.py, for the roles -----------------------------------------
    def register(self, msg_type, handler: Handler, *, inline: bool = False) -> None:
        self.host.register(msg_type, handler, inline=inline)

    def watch_sessions(self, *, opened: Opened | None = None, closed: Closed | None = None) -> None:
        self.host.watch_sessions(opened=opened, closed=closed)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.host.start_soon(fn, *args)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self.host.start(fn, *args)

    def channel_peers(self) -> list[PeerSession]:
        return self.host.channel_peers()

    async def wait_peers_changed(self) -> None:
        await self.host.wait_peers_changed()

    async def connect(self, host: str, port: int, expected_peer: str | None = None) -> PeerSession:
        return await self.host.connect(host, port, expected_peer)

    def maybe_dial(self, hint: PeerHint, via: PeerSession | None = None) -> None:
        self.dialer.maybe_dial(hint, via)

    def trust_relay(self, session: PeerSession) -> None:
        self.relay_client.trust(session)

    async def find(self, sha1: str, timeout: float | None = None, *, whole: bool = False) -> list[Provider]:
        return await self.finder.find(sha1, timeout, whole=whole)

    # ---- reachability: observed addresses, hole punching ----------------------------------------
    async def connect_bootstrap(self, host: str, port: int) -> PeerSession:
        return await self.host.connect_from_listener(host, port)

    def local_addrs(self, bootstrap: PeerSession) -> list[str]:
        """Where we listen, concretely: a wildcard listener at the address our connection to this
        bootstrap leaves from (the LAN address, behind a NAT)."""
        local = self.host.listen_local
        if local is None:
            return []
        host, port = local
        if host in ("0.0.0.0", "::"):
            try:
                host = bootstrap.stream.socket.getsockname()[0]
            except (AttributeError, OSError):
                return list(self.listen_addrs)
        return [format_addr(host, port)]

    def observed_addrs(self) -> list[str]:
        return self.punch.observed_addrs()

    def behind_nat(self) -> bool:
        """A bootstrap sees us at an address that is not ours."""
        observed = self.observed_addrs()
        if not observed:
            return False
        own = {a for b in self.relay_client.relays for a in self.local_addrs(b)}
        return any(addr not in own for addr in observed)

    async def _observed(self, session: PeerSession, msg: Observed) -> None:
        if session in self.relay_client.relays:  # only our bootstraps tell us where they see us
            self.punch.on_observed(session, msg)

    async def _punch_incoming(self, session: PeerSession, msg: PunchIncoming) -> None:
        if session in self.relay_client.relays:
            await self.punch.on_incoming(session, msg)

    async def _punch_sync(self, session: PeerSession, msg: PunchSync) -> None:
        if session in self.relay_client.relays:
            self.punch.on_sync(session, msg)

    async def _punched(self, stream, remote: str, peer: str, initiator: bool) -> PeerSession:
        """A punched TCP connection: the requester runs the handshake as initiator."""
        if initiator:
            return await self.host.open_session(stream, remote, "punched", expected_peer=peer)
        return await self.host.answer_session(stream, remote, "punched", expected_peer=peer)

    async def _relay_then_punch(self, target: DialTarget) -> bool:
        """A way of dialing: a relayed session at once (bytes can flow), then a hole punch in the
        background, retried while the session stays relayed; a punched session replaces the relayed
        one (host.py)."""
        relayed = await self.relay_client.dial(target)
        if target.via is not None and target.addrs and target.observed and self.punch.can_punch(target.via):
            if relayed:
                self.host.start_soon(self._punch_until_direct, target)
            else:
                return await self._try_punch(target)
        return relayed

    async def _punch_until_direct(self, target: DialTarget) -> None:
        """Punch; after a failure ask again after each of RETRY_DELAYS, as long as the peer's
        session is still the relayed one and the bootstrap is there (then the relay stays)."""
        relayed = self.host.sessions.get(target.node)
        for delay in (0.0, *RETRY_DELAYS):
            if delay:
                self.punch.stats["retries"] += 1
                log.info("hole punch to %s: trying again in %.0f s (the relay carries the session meanwhile)",
                         target.node[:12], delay)
                with trio.move_on_after(delay):
                    await relayed.closed.wait()
            current = self.host.sessions.get(target.node)
            if (relayed is None or relayed.direction != "relayed" or relayed.closed.is_set() or current is not relayed
                    or target.via.closed.is_set()
                    or not self.punch.can_punch(target.via)):
                return  # upgraded (perhaps by the peer's punch), gone, or no bootstrap to coordinate
            if await self._try_punch(target):
                return
        log.info("no hole punch to %s after %d tries: the session stays relayed", target.node[:12],
                 1 + len(RETRY_DELAYS))

    async def _try_punch(self, target: DialTarget) -> bool:
        try:
            await self.punch.punch(target.via, target.node)
            return True
        except (PunchError, *DIAL_ERRORS) as exc:
            log.info("no hole punch to %s: %s", target.node[:12], exc)
            return False

    def _session_closed(self, session: PeerSession) -> None:
        reason = session.close_reason
        if session.direction == "relayed" and reason and reason.startswith("relay limit"):
            log.warning("relayed session to %s ended: %s", session.peer_id[:12], reason)
            self.dialer.hold_off(session.peer_id, RELAY_LIMIT_HOLD_OFF)
        if session in self.relay_client.relays:
            self.punch.forget(session)

    def session_for(self, peer_id: str) -> PeerSession | None:
        session = self.sessions.get(peer_id)
        return session if session is not None and not session.closed.is_set() else None

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None:
        self.provide(sha1)
        await self.finder.announce(sha1, size, manifest_sha1)

    def note_fetched(self, nbytes: int) -> None:
        self.counters.fetched_bytes += nbytes

    def note_download(self, summary: dict) -> None:
        self.counters.downloads.append(summary)

    def _read_into(self, sha1: str, offset: int, view, record) -> int:
        """The bytes this node serves, read into the frame they are sent from (blocking), each
        chunk checked against its hash the first time (store/integrity.py). Tests override it to
        play a lying peer."""
        return self.store.integrity.read_into(sha1, offset, view, record)

    def _read_partial_into(self, partial, offset: int, view) -> int:
        """Bytes of an object still downloading here (blocking); raises for a chunk not verified here.
        Tests override it to play a peer that lies about a partial object."""
        return partial.read_into(offset, view)

    def status(self) -> dict:
        return {
            "node_id": self.node_id,
            "listen": self.listen_addrs,
            "listen_port": self.host.listen_local[1] if self.host.listen_local else None,
            "observed": self.observed_addrs(),
            "behind_nat": self.behind_nat(),
            "punch": dict(self.punch.stats),
            "channels": [self.channel_names.get(c, c) for c in self.channel_keys],
            "peers": [session_status(s, "bootstrap" if s in self.relay_client.relays else "peer",
                                     [self.channel_names.get(c, c) for c in sorted(s.channel_ids)])
                      for s in self.sessions.values()],
            "served_bytes": dict(self.counters.served_bytes),
            "declined": sum(self.counters.declined.values()),  # chunk requests answered "busy" (net/upload_queue.py)
            "fetched_bytes": self.counters.fetched_bytes,
            "downloads": list(self.counters.downloads),  # the last completed ones: timeline, sources
            **({"uploads": self.server.upload_status()} if self.server.rate_limit else {}),
            "swarm": self.swarm.status(),
            "dht": None if self.dht is None else {"port": self.dht.port, "nodes": self.dht.nodes},
            # inbound connections that never became sessions: refused by a limit, bad handshake
            # bytes, handshake timeout, or cut by the peer
            "rejected": dict(self.host.rejected),
        }


def build_node(config, store: LocalStore, feeds=None) -> Node:
    """A node from the configuration: its key, channels, listen address, bootstraps, discovery."""
    key = NodeKey.load_or_create(config.config_dir)
    channels = config.channel_keys()
    for cid, (name, _key) in channels.items():
        log.info("channel %s (id %s)", name, cid)
    listen = parse_hostport(config.listen) if config.listen else None
    dht = None
    if config.dht:
        from .dht import DhtNode

        dht = DhtNode(parse_hostport(config.dht_listen), config.dht_bootstrap, public_routers=not config.dht_bootstrap)
    return Node(key, store, {cid: k for cid, (_n, k) in channels.items()}, listen=listen,
                bootstraps=tuple(parse_hostport(b) for b in config.bootstraps),
                find_timeout=config.find_timeout,
                discovery_dir=config.discovery_dir if not config.bootstraps else None,
                serve_rate_limit=config.serve_rate_limit, feeds=feeds, limits=Limits.from_config(config),
                dht=dht, max_peers=config.max_peers, swarming=config.swarming,
                channel_names={cid: name for cid, (name, _k) in channels.items()},
                listen_fallback=config.listen_fallback,
                # beacons also with a bootstrap: peers on one LAN behind one NAT meet directly
                lan_discovery=config.lan_discovery and listen is not None
                and not listen[0].startswith("127.") and listen[0] != "::1")
