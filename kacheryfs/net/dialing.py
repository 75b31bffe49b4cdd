"""Dialing the peers that discovery finds: one attempt at a time per peer, a list of ways to reach
it tried in order (directly at its addresses, then through the relay that introduced it; a
hole-punch step slots in between), and exponential backoff for peers that could not be reached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from ..config import DEFAULT_MAX_PEERS  # sessions a node opens by itself; beyond, hints are remembered
from ..config import parse_hostport  # noqa: F401 (what the dialer's addresses are parsed with)
from ..errors import KacheryError
from .host import SessionHost
from .interfaces import PeerHint
from .session import PeerSession

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
HARD_MAX_PEERS = 128  # not even a find that widens its search dials past this
TURNED_AWAY_SECONDS = 2.0  # a session that ends this soon after opening: the peer is full, back off
DIAL_ERRORS = (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError)


@dataclass(frozen=True)
class DialTarget:
    node: str
    addrs: tuple[str, ...]  # where it says it listens (may be empty)
    via: PeerSession | None  # the bootstrap that introduced it, which can relay to it
    observed: str = ""  # where that bootstrap sees it
    nat: bool = False  # its address is translated (protocol.md §5b)


def _host(addr: str) -> str:
    return addr.rpartition(":")[0]


Way = Callable[[DialTarget], Awaitable[bool]]  # True once a session is up; logs its own failures


class Dialer:
    """Peer selection: a node dials discovered peers until it has ``max_peers`` sessions (others
    dial it too, so a channel of N nodes has about N * max_peers sessions, not N squared); the
    peers it did not dial are remembered, and ``widen`` dials some of them when a find needs
    more peers to ask."""

    def __init__(self, host: SessionHost, observed: Callable[[], list[str]] = list,
                 behind_nat: Callable[[], bool] = lambda: False, max_peers: int = DEFAULT_MAX_PEERS):
        self.host = host
        self.observed = observed  # where bootstraps see us
        self.behind_nat = behind_nat
        self.max_peers = max_peers
        self.ways: list[Way] = [self.direct]
        self._dialing: set[str] = set()
        self._backoff: dict[str, tuple[float, float]] = {}  # node or "addr:HOST:PORT" -> (retry not before, delay)
        self._known: dict[str, tuple[PeerHint, PeerSession | None]] = {}  # discovered, not dialled (cap)
        self._by_addr: dict[str, str] = {}  # address dialled without a node id (DHT) -> node found there

    def _full(self, widening: bool = False) -> bool:
        return len(self.host.sessions) + len(self._dialing) >= (HARD_MAX_PEERS if widening else self.max_peers)

    def dialing(self) -> bool:
        """Whether a dial is under way (a peer may be about to join)."""
        return bool(self._dialing)

    def widen(self, count: int) -> int:
        """Dial up to ``count`` remembered peers we are not connected to; returns how many."""
        started = 0
        for node, (hint, via) in list(self._known.items()):
            if started >= count or self._full(widening=True):
                break
            if node in self.host.sessions or node in self._dialing:
                continue
            if self._start(hint, via, force=True):
                started += 1
        return started

    def maybe_dial(self, hint: PeerHint, via: PeerSession | None = None) -> None:
        """Dial a peer a discovery source named, unless connected, being dialled, backing off, or
        this node has enough peers (then it is remembered for ``widen``)."""
        self._start(hint, via)

    def _start(self, hint: PeerHint, via: PeerSession | None, force: bool = False) -> bool:
        node = hint.get("node")
        host = self.host
        if not isinstance(node, str) or node == host.node_id or node in host.sessions or node in self._dialing:
            return False
        if not force and self._full():
            self._known[node] = (hint, via)
            if len(self._known) > 4 * HARD_MAX_PEERS:
                self._known.pop(next(iter(self._known)))
            return False
        not_before, _delay = self._backoff.get(node, (0.0, 0.0))
        if trio.current_time() < not_before:
            return False  # it failed recently: retry later, with exponential backoff
        addrs = tuple(a for a in hint.get("addrs", []) if isinstance(a, str))
        if not addrs and (via is None or host.listen_addrs or host.node_id > node):
            # It accepts no connections: if we do, it dials us; if neither does, the smaller id
            # opens the relay circuit, so one circuit is made, not two.
            return False
        observed = hint.get("observed") if isinstance(hint.get("observed"), str) else ""
        target = DialTarget(node, addrs, via, observed, hint.get("nat") is True)
        if (via is not None and target.nat and addrs and self.behind_nat() and not self.direct_addrs(target)
                and host.listen_addrs and host.node_id > node):
            return False  # both behind NATs: the smaller id opens the relay and the punch, not both
        self._known.pop(node, None)
        self._dialing.add(node)
        host.start_soon(self._dial, target)
        return True

    def hold_off(self, node: str, seconds: float) -> None:
        """Do not dial ``node`` for a while (a relay limit closed our circuit to it)."""
        self._backoff[node] = (trio.current_time() + seconds, seconds)

    def direct_addrs(self, target: DialTarget) -> tuple[str, ...]:
        """Which of its addresses can be dialled directly. One behind NAT only from behind the same
        NAT (its LAN addresses: few routers hairpin); else punch."""
        if not target.nat or target.via is None:
            return target.addrs
        theirs = _host(target.observed)
        if theirs and theirs in {_host(a) for a in self.observed()}:
            return tuple(a for a in target.addrs if _host(a) != theirs)
        return ()

    def maybe_dial_address(self, host_name: str, port: int, widening: bool = False) -> None:
        """Dial an address found with no node id (the DHT), unless it is a peer we have, a dial
        under way, backing off, or we have enough peers (``widening``: a find that found nobody
        looked this provider up, and may go past the cap like ``widen``). The handshake says who
        is there."""
        addr = f"{host_name}:{port}"
        key = "addr:" + addr
        node = self._by_addr.get(addr)
        if (node is not None and node in self.host.sessions) or key in self._dialing or self._full(widening):
            return
        if trio.current_time() < self._backoff.get(key, (0.0, 0.0))[0]:
            return
        self._dialing.add(key)
        self.host.start_soon(self._dial_address, host_name, port, key)

    async def _dial_address(self, host_name: str, port: int, key: str) -> None:
        try:
            session = await self.host.connect(host_name, port)
            self._by_addr[key[5:]] = session.peer_id
            self._backoff.pop(key, None)
        except DIAL_ERRORS as exc:
            log.info("could not reach %s: %r", key[5:], exc)
            _not_before, delay = self._backoff.get(key, (0.0, 0.0))
            delay = min(max(1.0, delay * 2), MAX_BACKOFF)
            self._backoff[key] = (trio.current_time() + delay, delay)
        finally:
            self._dialing.discard(key)

    async def _dial(self, target: DialTarget) -> None:
        try:
            for way in self.ways:
                if await way(target):
                    self._dialing.discard(target.node)
                    session = self.host.sessions.get(target.node)
                    if session is not None:
                        with trio.move_on_after(TURNED_AWAY_SECONDS):
                            await session.closed.wait()
                        if not session.closed.is_set():
                            self._backoff.pop(target.node, None)
                            return
                    break  # turned away at once (the peer is full): back off like a failure
            _not_before, delay = self._backoff.get(target.node, (0.0, 0.0))
            delay = min(max(1.0, delay * 2), MAX_BACKOFF)
            self._backoff[target.node] = (trio.current_time() + delay, delay)
        finally:
            self._dialing.discard(target.node)

    async def direct(self, target: DialTarget) -> bool:
        for addr in self.direct_addrs(target):
            try:
                host, port = parse_hostport(addr)
                await self.host.connect(host, port, expected_peer=target.node)
                return True
            except DIAL_ERRORS as exc:
                log.info("could not reach %s at %s: %r", target.node[:12], addr, exc)
        return False
