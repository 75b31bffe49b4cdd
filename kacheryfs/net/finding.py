"""Finding who holds an object: ask every channel peer at once, keep the first answers, cache them
briefly; and announcing what this node stored, which also drops a stale cached answer at peers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from ..config import DEFAULT_FIND_TIMEOUT
from ..errors import KacheryError
from ..protocol.messages import Announce, FindRequest, FindResponse
from .interfaces import Peers, Routes
from .session import PeerGone, PeerSession

FIND_GRACE = 0.015  # after the first "found", wait this long for more providers (they also join later)
FIND_CACHE_SECONDS = 5.0


@dataclass
class Provider:
    session: PeerSession
    size: int
    manifest_sha1: str | None


class Finder:
    def __init__(self, routes: Routes, peers: Peers, *, in_a_channel: bool, timeout: float = DEFAULT_FIND_TIMEOUT):
        self.peers = peers
        self.in_a_channel = in_a_channel  # in no channel there is nobody to ask
        self.timeout = timeout
        self._cache: dict[str, tuple[float, list[Provider]]] = {}
        routes.register(Announce, self._announced)

    async def find(self, sha1: str, timeout: float | None = None) -> list[Provider]:
        """Ask every channel peer at once; first answers win, bounded wait; cached briefly."""
        cached = self._cache.get(sha1)
        if cached and time.monotonic() - cached[0] < FIND_CACHE_SECONDS and \
                all(not p.session.closed.is_set() for p in cached[1]):
            return cached[1]
        timeout = self.timeout if timeout is None else timeout
        if not self.in_a_channel:
            return []
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
                        for session in self.peers.channel_peers():
                            if session.peer_id not in asked:
                                asked.add(session.peer_id)
                                nursery.start_soon(ask, session)
                        await self.peers.wait_peers_changed()

                nursery.start_soon(watch_new_peers)
                await first.wait()
                with trio.move_on_after(FIND_GRACE):
                    await everyone.wait()
                nursery.cancel_scope.cancel()
        if found:
            self._cache[sha1] = (time.monotonic(), found)
        return found

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None:
        for session in self.peers.channel_peers():
            try:
                await session.send(Announce(sha1=sha1, size=size, manifest_sha1=manifest_sha1))
            except PeerGone:
                pass

    async def _announced(self, session: PeerSession, msg: Announce) -> None:
        self._cache.pop(msg.sha1, None)
