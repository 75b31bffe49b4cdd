"""The bootstrap: a node of its own kind that introduces channel peers and relays between them.

It is in no channel and holds no content. Nodes register their channel ids (hashes: it never
learns channel names) and addresses; a node asking for peers gets the registered, connected
nodes of its channel ids. A node may open a relay circuit to a registered, connected node; the
circuit carries the two nodes' own encrypted session (net/relay.py), within the RelayTable's limits.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Container

import trio

from ..crypto import NodeKey
from ..protocol.messages import (
    ErrorResponse, Message, Observed, PeersJoined, PeersRequest, PeersResponse, PunchReply, PunchRequest, PunchSync,
    Register, RelayClose, RelayData, RelayIncoming, RelayOpen, RelayOpened,
)
from .admission import Limits
from .host import HostedNode, SessionHost, send_quietly, session_status
from .punch_service import PunchService, observed_addr
from .relay import RelayLimitExceeded, RelayLimits, RelayTable
from .session import PeerSession

log = logging.getLogger(__name__)

AGENT = "kacheryfs-bootstrap"
MAX_CHANNELS_ASKED = 256
MAX_PEERS_ANSWERED = 512


@dataclass
class Registration:
    addrs: list[str]  # where to dial it, best first
    observed: str  # where this bootstrap saw its registration come from ("" if unknown)
    nat: bool  # its address is translated: dial it only from behind the same NAT, else punch
    seen: float


class BootstrapRegistry:
    """channel id -> the nodes registered in it, with the addresses they can be dialled at. Pure."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, Registration]] = defaultdict(dict)
        self.nodes: dict[str, Registration] = {}

    def register(self, node: str, channel_ids, addrs, observed: str, now: float | None = None,
                 reported: list[str] = ()) -> Registration:
        """``addrs``: where the node says it listens (local addresses); ``observed``: "host:port"
        the registration came from; ``reported``: addresses other bootstraps observed for it.
        A node that dialled us from its listening port is reachable (if at all from outside) at
        the observed address: it goes first; a wildcard listener is listed at the observed host.
        The node is behind NAT when the observed address is not one of its own."""
        obs_host, _, obs_port = observed.rpartition(":")
        own = []
        for addr in addrs:
            host, _, port = addr.rpartition(":")
            if host in ("0.0.0.0", "::", "[::]") and obs_host:
                own.append(f"{obs_host}:{port}")
            own.append(addr)
        listed = ([observed] if observed and addrs and obs_port in {a.rpartition(":")[2] for a in addrs} else [])
        listed = list(dict.fromkeys(listed + own + ([r for r in reported if isinstance(r, str)] if addrs else [])))
        entry = Registration(listed, observed, bool(addrs) and bool(observed) and observed not in own,
                             time.monotonic() if now is None else now)
        self.nodes[node] = entry
        for cid in channel_ids:
            self.channels[cid][node] = entry
        return entry

    def entries(self, node: str, recipients: Container[str]) -> dict[str, list[dict]]:
        """recipient -> ``node``'s peer entries for it (one per channel id both registered in), for
        the registered ``recipients`` sharing a channel id with ``node``."""
        entry = self.nodes.get(node)
        out: dict[str, list[dict]] = defaultdict(list)
        if entry is None:
            return out
        for cid, nodes in self.channels.items():
            if nodes.get(node) is not entry:
                continue
            for other in nodes:
                if other != node and other in recipients and other in self.nodes:
                    out[other].append({"node": node, "addrs": entry.addrs, "channel_id": cid,
                                       "observed": entry.observed, "nat": entry.nat})
        return out

    def is_registered(self, node: str) -> bool:
        return node in self.nodes

    def share_channel(self, a: str, b: str) -> bool:
        """Both registered under one channel id (the only pairs a punch is coordinated for)."""
        return any(a in nodes and b in nodes for nodes in self.channels.values())

    def forget(self, node: str) -> None:
        self.nodes.pop(node, None)

    def peers(self, channel_ids, asking: str, connected: Container[str]) -> list[dict]:
        """The connected nodes registered in ``channel_ids``, other than the one asking."""
        out = []
        for cid in list(channel_ids)[:MAX_CHANNELS_ASKED]:
            for node, entry in self.channels.get(cid, {}).items():
                if node != asking and node in connected:
                    out.append({"node": node, "addrs": entry.addrs, "channel_id": cid,
                                "observed": entry.observed, "nat": entry.nat})
        return out[:MAX_PEERS_ANSWERED]


class BootstrapNode(HostedNode):
    def __init__(self, key: NodeKey, *, listen: tuple[str, int] | None, relay_limits: RelayLimits | None = None,
                 limits: Limits | None = None):
        self.host = SessionHost(key, {}, listen=listen, agent=AGENT, limits=limits)
        self.registry = BootstrapRegistry()
        self.relay_table = RelayTable(relay_limits or RelayLimits())  # circuits between two registered nodes
        self.punches = PunchService(self.host.sessions, self.registry.is_registered, self.registry.share_channel)
        host = self.host
        host.register(Register, self._register, inline=True)  # Observed goes out before any later reply
        host.register(PeersRequest, self._peers)
        host.register(RelayOpen, self._open_circuit)
        host.register(RelayData, self._forward, inline=True)
        host.register(RelayClose, self._close_circuit, inline=True)
        host.register(PunchRequest, self.punches.on_request)
        host.register(PunchReply, self.punches.on_reply)
        host.register(PunchSync, self.punches.on_sync, inline=True)
        host.watch_sessions(closed=self._session_closed)

    # what the local API asks of a node (kacheryfs status on the bootstrap's machine)
    channel_keys: dict = {}

    async def find(self, sha1: str) -> list:
        return []

    def services(self):
        return [self._expire_circuits]

    def status(self) -> dict:
        return {"node_id": self.node_id, "listen": self.listen_addrs, "bootstrap": True,
                "registered": len(self.registry.nodes),
                "channels": [],
                "peers": [session_status(s, "node", []) for s in self.sessions.values()],
                "relay": self.relay_table.status(), "punch": self.punches.status(),
                "served_bytes": {}, "fetched_bytes": 0}

    # ---- introducing ---------------------------------------------------------------------------
    async def _register(self, session: PeerSession, msg: Register) -> Message | None:
        observed = observed_addr(session) or ""
        before = self.registry.nodes.get(session.peer_id)
        new_channel = any(session.peer_id not in self.registry.channels.get(c, {}) for c in msg.channel_ids)
        entry = self.registry.register(session.peer_id, msg.channel_ids, msg.addrs, observed, reported=msg.observed)
        if before is None or new_channel or (before.addrs, before.observed) != (entry.addrs, entry.observed):
            self._push_joined(session.peer_id)
        return Observed(addr=observed) if observed else None  # the node learns its public mapping

    def _push_joined(self, node: str) -> None:
        """Tell the connected nodes sharing a channel id with ``node`` about it at once, so the one
        that should dial (or punch: the smaller id, protocol.md §5b) does not wait for its next poll."""
        connected = {n for n, s in self.host.sessions.items() if not s.closed.is_set()}
        for recipient, entries in self.registry.entries(node, connected).items():
            session = self.host.sessions.get(recipient)
            if session is not None:
                self.host.start_soon(send_quietly, session, PeersJoined(peers=entries[:MAX_PEERS_ANSWERED]))

    async def _peers(self, session: PeerSession, msg: PeersRequest) -> Message:
        return PeersResponse(req=msg.req, peers=self.registry.peers(msg.channel_ids, session.peer_id,
                                                                     self.host.sessions))

    # ---- relaying ------------------------------------------------------------------------------
    async def _open_circuit(self, session: PeerSession, msg: RelayOpen) -> Message:
        target = self.host.sessions.get(msg.target)
        if target is None or target.closed.is_set():
            return ErrorResponse(req=msg.req, code="unreachable", message="target not connected here")
        try:
            circuit = self.relay_table.open(session, target, trio.current_time())
        except RelayLimitExceeded as exc:
            log.info("refused a circuit %s -> %s: %s", session.peer_id[:12], msg.target[:12], exc.message)
            return ErrorResponse(req=msg.req, code="relay-limit", message=exc.message)
        await target.send(RelayIncoming(circuit=circuit, peer=session.peer_id))
        log.info("relaying %s <-> %s (circuit %d)", session.peer_id[:12], msg.target[:12], circuit)
        return RelayOpened(req=msg.req, circuit=circuit)

    async def _forward(self, session: PeerSession, msg: RelayData) -> None:
        try:
            other = self.relay_table.route(session, msg.circuit, len(msg.payload), trio.current_time())
        except RelayLimitExceeded as exc:
            log.info("relay circuit %d closed: %s", msg.circuit, exc.message)
            for end in exc.ends:  # both ends learn which limit ended it
                await send_quietly(end, RelayClose(circuit=msg.circuit, reason=exc.message))
            return
        if other is None:
            await send_quietly(session, RelayClose(circuit=msg.circuit, reason="no such circuit"))
        else:
            await send_quietly(other, msg)

    async def _close_circuit(self, session: PeerSession, msg: RelayClose) -> None:
        circuit = self.relay_table.circuits.get(msg.circuit)
        if circuit is not None and session in circuit.ends:
            self.relay_table.close(msg.circuit)
            await send_quietly(circuit.other(session), msg)

    async def _expire_circuits(self) -> None:
        """Circuits past --relay-circuit-seconds are closed even when idle."""
        while True:
            await trio.sleep(min(5.0, self.relay_table.limits.circuit_seconds / 4))
            for cid, circuit, reason in self.relay_table.expired(trio.current_time()):
                log.info("relay circuit %d closed: %s", cid, reason)
                for end in circuit.ends:
                    await send_quietly(end, RelayClose(circuit=cid, reason=reason))

    def _session_closed(self, session: PeerSession) -> None:
        if self.host.sessions.get(session.peer_id) in (None, session):
            self.registry.forget(session.peer_id)
            self.punches.forget(session)
        for circuit, other in self.relay_table.drop_end(session):
            self.host.start_soon(send_quietly, other, RelayClose(circuit=circuit, reason="peer left"))


def build_bootstrap(config) -> BootstrapNode:
    """The bootstrap from the configuration: its key, where it listens, its relay limits."""
    from .dialing import parse_hostport

    return BootstrapNode(NodeKey.load_or_create(config.config_dir),
                         listen=parse_hostport(config.listen) if config.listen else None,
                         relay_limits=config.relay_limits, limits=Limits.from_config(config))
