"""Dialing the peers that discovery finds: one attempt at a time per peer, a list of ways to reach
it tried in order (directly at its addresses, then through the relay that introduced it; a
hole-punch step slots in between), and exponential backoff for peers that could not be reached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from ..errors import KacheryError
from .host import SessionHost
from .interfaces import PeerHint
from .session import PeerSession

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
DIAL_ERRORS = (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError)


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise KacheryError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class DialTarget:
    node: str
    addrs: tuple[str, ...]  # where it says it listens (may be empty)
    via: PeerSession | None  # the bootstrap that introduced it, which can relay to it


Way = Callable[[DialTarget], Awaitable[bool]]  # True once a session is up; logs its own failures


class Dialer:
    def __init__(self, host: SessionHost):
        self.host = host
        self.ways: list[Way] = [self.direct]
        self._dialing: set[str] = set()
        self._backoff: dict[str, tuple[float, float]] = {}  # node -> (retry not before, delay)

    def maybe_dial(self, hint: PeerHint, via: PeerSession | None = None) -> None:
        """Dial a peer a discovery source named, unless connected, being dialled, or backing off."""
        node = hint.get("node")
        host = self.host
        if not isinstance(node, str) or node == host.node_id or node in host.sessions or node in self._dialing:
            return
        not_before, _delay = self._backoff.get(node, (0.0, 0.0))
        if trio.current_time() < not_before:
            return  # it failed recently: retry later, with exponential backoff
        addrs = tuple(a for a in hint.get("addrs", []) if isinstance(a, str))
        if not addrs and (via is None or host.listen_addrs or host.node_id > node):
            # It accepts no connections: if we do, it dials us; if neither does, the smaller id
            # opens the relay circuit, so one circuit is made, not two.
            return
        self._dialing.add(node)
        host.start_soon(self._dial, DialTarget(node, addrs, via))

    async def _dial(self, target: DialTarget) -> None:
        try:
            for way in self.ways:
                if await way(target):
                    self._backoff.pop(target.node, None)
                    return
            _not_before, delay = self._backoff.get(target.node, (0.0, 0.0))
            delay = min(max(1.0, delay * 2), MAX_BACKOFF)
            self._backoff[target.node] = (trio.current_time() + delay, delay)
        finally:
            self._dialing.discard(target.node)

    async def direct(self, target: DialTarget) -> bool:
        for addr in target.addrs:
            try:
                host, port = parse_hostport(addr)
                await self.host.connect(host, port, expected_peer=target.node)
                return True
            except DIAL_ERRORS as exc:
                log.info("could not reach %s at %s: %r", target.node[:12], addr, exc)
        return False
