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
from typing import Container

from ..crypto import NodeKey
from ..protocol.messages import (
    ErrorResponse, Message, PeersRequest, PeersResponse, Register, RelayClose, RelayData, RelayIncoming,
    RelayOpen, RelayOpened,
)
from .host import HostedNode, SessionHost, send_quietly
from .relay import RelayTable
from .session import PeerSession

log = logging.getLogger(__name__)

AGENT = "kacheryfs-bootstrap"
MAX_CHANNELS_ASKED = 256
MAX_PEERS_ANSWERED = 512


class BootstrapRegistry:
    """channel id -> the nodes registered in it, with the addresses they can be dialled at. Pure."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, tuple[list[str], float]]] = defaultdict(dict)

    def register(self, node: str, channel_ids, addrs, observed_host: str, now: float | None = None) -> None:
        """``observed_host``: the address the registration came from. A node listening on 0.0.0.0
        is reachable at the address we saw it at: that address goes first."""
        listed = list(addrs)
        for addr in addrs:
            host, _, port = addr.rpartition(":")
            if host in ("0.0.0.0", "::") and observed_host:
                listed.insert(0, f"{observed_host}:{port}")
        seen = time.monotonic() if now is None else now
        for cid in channel_ids:
            self.channels[cid][node] = (listed, seen)

    def peers(self, channel_ids, asking: str, connected: Container[str]) -> list[dict]:
        """The connected nodes registered in ``channel_ids``, other than the one asking."""
        out = []
        for cid in list(channel_ids)[:MAX_CHANNELS_ASKED]:
            for node, (addrs, _seen) in self.channels.get(cid, {}).items():
                if node != asking and node in connected:
                    out.append({"node": node, "addrs": addrs, "channel_id": cid})
        return out[:MAX_PEERS_ANSWERED]


class BootstrapNode(HostedNode):
    def __init__(self, key: NodeKey, *, listen: tuple[str, int] | None):
        self.host = SessionHost(key, {}, listen=listen, agent=AGENT)
        self.registry = BootstrapRegistry()
        self.relay_table = RelayTable()  # circuits between two registered nodes
        host = self.host
        host.register(Register, self._register)
        host.register(PeersRequest, self._peers)
        host.register(RelayOpen, self._open_circuit)
        host.register(RelayData, self._forward, inline=True)
        host.register(RelayClose, self._close_circuit, inline=True)
        host.watch_sessions(closed=self._session_closed)

    # ---- introducing ---------------------------------------------------------------------------
    async def _register(self, session: PeerSession, msg: Register) -> None:
        self.registry.register(session.peer_id, msg.channel_ids, msg.addrs, session.remote.rpartition(":")[0])

    async def _peers(self, session: PeerSession, msg: PeersRequest) -> Message:
        return PeersResponse(req=msg.req, peers=self.registry.peers(msg.channel_ids, session.peer_id,
                                                                     self.host.sessions))

    # ---- relaying ------------------------------------------------------------------------------
    async def _open_circuit(self, session: PeerSession, msg: RelayOpen) -> Message:
        target = self.host.sessions.get(msg.target)
        if target is None or target.closed.is_set():
            return ErrorResponse(req=msg.req, code="unreachable", message="target not connected here")
        circuit = self.relay_table.open(session, target)
        if circuit is None:
            return ErrorResponse(req=msg.req, code="busy", message="too many circuits")
        await target.send(RelayIncoming(circuit=circuit, peer=session.peer_id))
        log.info("relaying %s <-> %s (circuit %d)", session.peer_id[:12], msg.target[:12], circuit)
        return RelayOpened(req=msg.req, circuit=circuit)

    async def _forward(self, session: PeerSession, msg: RelayData) -> None:
        other = self.relay_table.route(session, msg.circuit, len(msg.payload))
        if other is None:
            await send_quietly(session, RelayClose(circuit=msg.circuit, reason="no such circuit"))
        else:
            await send_quietly(other, msg)

    async def _close_circuit(self, session: PeerSession, msg: RelayClose) -> None:
        circuit = self.relay_table.close(msg.circuit)
        if circuit is not None and session in circuit.ends:
            await send_quietly(circuit.other(session), msg)

    def _session_closed(self, session: PeerSession) -> None:
        for circuit, other in self.relay_table.drop_session(session):
            self.host.start_soon(send_quietly, other, RelayClose(circuit=circuit, reason="peer left"))


def build_bootstrap(config) -> BootstrapNode:
    """The bootstrap from the configuration: its key and where it listens."""
    from .dialing import parse_hostport

    return BootstrapNode(NodeKey.load_or_create(config.config_dir),
                         listen=parse_hostport(config.listen) if config.listen else None)
