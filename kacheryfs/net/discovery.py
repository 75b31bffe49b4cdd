"""Discovery clients: the sources that tell a node which channel peers exist. Each hands what it
finds to the dialer (``maybe_dial``); a new source (a DHT, say) is one more service here.

- bootstrap (``--bootstrap``): register our channel ids and addresses, ask for the channel's
  peers, then hear at once of each node that registers later (``PeersJoined``, pushed by the
  bootstrap); ask again every BOOTSTRAP_REFRESH_SECONDS (peers we gave up on for a while, pushes
  lost with a session); reconnect with exponential backoff. A bootstrap we registered with may relay
  to us.
- same machine, no server: a shared rendezvous directory (local_discovery.py).
- LAN, no server: multicast beacons (lan_discovery.py).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Awaitable, Callable

import trio

from ..errors import KacheryError
from ..protocol.messages import PeersJoined, PeersRequest, PeersResponse, Register
from . import lan_discovery
from . import local_discovery as ld
from .dialing import MAX_BACKOFF
from .interfaces import DiscoveryHost

log = logging.getLogger(__name__)

PEER_POLL_SECONDS = 1.0  # the rendezvous directory of nodes on one machine
BOOTSTRAP_REFRESH_SECONDS = 10.0  # new peers are pushed at once; this only catches up
BOOTSTRAP_REQUEST_TIMEOUT = 10.0
FIRST_BACKOFF = 0.5

Service = Callable[[], Awaitable[None]]


class Discovery:
    def __init__(self, node: DiscoveryHost, *, bootstraps: tuple[tuple[str, int], ...] = (),
                 discovery_dir: Path | None = None, lan: bool = False):
        self.node = node
        self.bootstraps = bootstraps
        self.discovery_dir = discovery_dir
        self.lan = lan
        self._bootstrap_sessions: set = set()  # only these may push peers to us
        node.register(PeersJoined, self._peers_joined)

    def services(self) -> list[Service]:
        """The loops to run, once the node listens (they publish its addresses)."""
        node = self.node
        out: list[Service] = [functools.partial(self.bootstrap_loop, h, p) for h, p in self.bootstraps]
        if self.discovery_dir is not None and node.channel_keys:
            out.append(self.local_loop)
        if self.lan and node.channel_keys and node.listen_addrs:
            port = int(node.listen_addrs[0].rpartition(":")[2])
            out.append(functools.partial(lan_discovery.run, node, port))
        return out

    async def bootstrap_loop(self, host: str, port: int) -> None:
        node = self.node
        backoff = FIRST_BACKOFF
        while True:
            try:
                session = await node.connect_bootstrap(host, port)
                backoff = FIRST_BACKOFF
                log.info("registered with bootstrap %s:%d", host, port)
                node.trust_relay(session)
                self._bootstrap_sessions.add(session)
                while not session.closed.is_set():
                    await session.send(Register(channel_ids=sorted(node.channel_keys),
                                                addrs=node.local_addrs(session), observed=node.observed_addrs()))
                    reply = await session.request(PeersRequest(req=session.next_req(),
                                                               channel_ids=sorted(node.channel_keys)),
                                                  BOOTSTRAP_REQUEST_TIMEOUT)
                    for peer in reply.peers if isinstance(reply, PeersResponse) else []:
                        node.maybe_dial(peer, via=session)
                    with trio.move_on_after(BOOTSTRAP_REFRESH_SECONDS):
                        await session.closed.wait()
            except (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.info("bootstrap %s:%d unreachable (%r); retrying in %.1fs", host, port, exc, backoff)
            finally:
                self._bootstrap_sessions = {s for s in self._bootstrap_sessions if not s.closed.is_set()}
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _peers_joined(self, session, msg: PeersJoined) -> None:
        """A bootstrap we registered with tells us of a node that just registered in our channels."""
        if session not in self._bootstrap_sessions:
            return
        for peer in msg.peers:
            if isinstance(peer, dict):
                self.node.maybe_dial(peer, via=session)

    async def local_loop(self) -> None:
        node, path = self.node, self.discovery_dir
        ld.ensure_dir(path)
        addrs = ld.loopback_addrs(node.listen_addrs)
        channel_ids = list(node.channel_keys)
        seen: dict = {}  # ld.scan's cache: entries parsed, by file version
        published = -ld.REFRESH_SECONDS
        try:
            while True:
                # a node that accepts no connections can only dial
                if addrs and trio.current_time() - published >= ld.REFRESH_SECONDS:
                    published = trio.current_time()
                    await trio.to_thread.run_sync(ld.publish, path, channel_ids, node.node_id, addrs)
                peers = await trio.to_thread.run_sync(ld.scan, path, channel_ids, node.node_id, seen)
                for peer in peers:
                    node.maybe_dial(peer)
                await trio.sleep(PEER_POLL_SECONDS)
        finally:
            ld.withdraw(path, channel_ids, node.node_id)
