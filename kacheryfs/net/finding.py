"""Finding who holds an object: ask channel peers a bounded batch at a time (FIND_FANOUT, the next
batch once the last has answered or after FIND_STEP), keep the first answers, cache them briefly;
when no connected peer has it, ask for more peers (``more_peers``: remembered peers beyond the
connection cap, the DHT). Announcing what this node stored also drops a stale cached answer at peers.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

import trio

from ..config import DEFAULT_FIND_TIMEOUT
from ..errors import KacheryError, PeerGone
from ..protocol.chunkset import ChunkSet
from ..protocol.messages import Announce, FindRequest, FindResponse
from .interfaces import Peers, Routes
from .session import PeerSession

FIND_GRACE = 0.015  # after the first "found", wait this long for more providers (they also join later)
FIND_CACHE_SECONDS = 5.0
FIND_FANOUT = 8  # peers asked at once
FIND_STEP = 0.2  # seconds before the next batch, if the last has not all answered
WIDEN_SECONDS = 0.5  # while nobody has it, ask for more peers this often
# "Not found" before the timeout: every channel peer has said no, no peer came or went for
# FIND_QUIET seconds (two rounds of widening), nothing that could bring one is under way (a dial, a
# DHT lookup: ``searching``), and the node has been up FIND_STARTUP seconds (its first peers are
# still being met before that). A lone node's open() of an unknown hash: ENOENT in ~1 s, not 3.
FIND_QUIET = 1.0
FIND_STARTUP = 5.0
CACHE_PRUNE_AT = 256  # entries: past this, expired ones are dropped when the next answer is cached


@dataclass
class Provider:
    session: PeerSession
    size: int
    manifest_sha1: str | None
    have: ChunkSet | None = None  # chunks it holds while it is still downloading; None: all


def prefer_direct(providers: list[Provider]) -> list[Provider]:
    """Relayed providers only when no direct (or hole-punched) one has the file: relayed bytes cost
    the bootstrap's bandwidth and are bounded by its limits."""
    direct = [p for p in providers if p.session.direction != "relayed"]
    return direct or providers


class Finder:
    def __init__(self, routes: Routes, peers: Peers, *, in_a_channel: bool, timeout: float = DEFAULT_FIND_TIMEOUT,
                 more_peers: Callable[[str], None] | None = None, searching: Callable[[str], bool] | None = None):
        self.peers = peers
        self.more_peers = more_peers
        self.searching = searching  # (sha1) -> whether a dial or lookup that may bring a holder is under way
        self.started = time.monotonic()  # (a node is built before trio runs)
        self.in_a_channel = in_a_channel  # in no channel there is nobody to ask
        self.timeout = timeout
        self._cache: dict[str, tuple[float, list[Provider]]] = {}
        self._finding: dict[str, list[Callable[[str], None]]] = {}  # sha1 -> finds under way: re-ask(peer id)
        routes.register(Announce, self._announced)

    async def find(self, sha1: str, timeout: float | None = None, *, whole: bool = False) -> list[Provider]:
        """Ask channel peers in batches; first answers win, bounded wait; cached briefly.
        ``whole``: fresh answers, and keep asking (and widening) until a provider of the whole
        object answers; partial providers met on the way are returned too."""
        cached = self._cache.get(sha1)
        if not whole and cached and time.monotonic() - cached[0] < FIND_CACHE_SECONDS and \
                all(not p.session.closed.is_set() for p in cached[1]):
            return cached[1]
        timeout = self.timeout if timeout is None else timeout
        if not self.in_a_channel:
            return []
        found: list[Provider] = []
        first = trio.Event()
        batch_done = trio.Event()  # every peer asked so far has answered
        asked: set[str] = set()
        answered = 0
        said_no: set[str] = set()
        waiting = trio.CancelScope()  # the wait for peers to change, between rounds of widening

        def reask(peer_id: str) -> None:
            """A peer that said no has begun fetching the object (its Have): ask it again now. In a
            crowd starting at once, everyone's first answer is "no"; without this a node whose
            peers all answered before their own downloads began would give up."""
            nonlocal answered
            if peer_id in said_no:
                said_no.discard(peer_id)
                asked.discard(peer_id)
                answered -= 1
                waiting.cancel()

        async def ask(session: PeerSession) -> None:
            nonlocal answered, batch_done
            try:
                reply = await session.request(FindRequest(req=session.next_req(), sha1=sha1), timeout)
            except (KacheryError, trio.TooSlowError):
                return
            finally:
                answered += 1
                if answered == len(asked):
                    batch_done.set()
            if isinstance(reply, FindResponse) and reply.found and reply.sha1 == sha1:
                found.append(Provider(session, reply.size, reply.manifest_sha1, reply.chunks))
                if not whole or reply.have is None:
                    first.set()
            else:
                said_no.add(session.peer_id)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                async def ask_in_batches():
                    nonlocal batch_done, waiting
                    quiet_since = None  # every peer asked has said no, and no peer came or went since
                    while True:
                        fresh = [s for s in self.peers.channel_peers() if s.peer_id not in asked]
                        random.shuffle(fresh)  # spread the finds of a crowd over the channel
                        if fresh:
                            quiet_since = None
                            batch_done = trio.Event()
                            for session in fresh[:FIND_FANOUT]:
                                asked.add(session.peer_id)
                                nursery.start_soon(ask, session)
                            with trio.move_on_after(FIND_STEP):
                                await batch_done.wait()
                            continue
                        if answered < len(asked):
                            await batch_done.wait()
                            continue
                        now = trio.current_time()
                        quiet_since = now if quiet_since is None else quiet_since
                        if not found and self._nobody_else(sha1, quiet_since, now):
                            nursery.cancel_scope.cancel()  # not found
                            return
                        if self.more_peers is not None:
                            self.more_peers(sha1)  # every peer asked said no: look further, again and again
                        waiting = trio.CancelScope(deadline=trio.current_time() + WIDEN_SECONDS)
                        with waiting:  # (a reask cancels it: the peer is asked again at once)
                            await self.peers.wait_peers_changed()  # peers that connect meanwhile are asked too
                            quiet_since = None

                finding = self._finding.setdefault(sha1, [])
                finding.append(reask)
                try:
                    nursery.start_soon(ask_in_batches)
                    await first.wait()
                    if answered < len(asked):
                        with trio.move_on_after(FIND_GRACE):
                            await batch_done.wait()
                    nursery.cancel_scope.cancel()
                finally:
                    finding.remove(reask)
                    if not finding:
                        self._finding.pop(sha1, None)
        found = prefer_direct(found)
        if found:
            now = time.monotonic()
            if len(self._cache) >= CACHE_PRUNE_AT:  # expired answers would hold closed sessions for ever
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < FIND_CACHE_SECONDS}
            self._cache[sha1] = (now, found)
        return found

    def heard_of(self, sha1: str, session: PeerSession) -> None:
        """``session`` sent a Have of ``sha1`` while we fetch nothing of it: if it said no to a find
        still under way here, it has begun fetching since, and is asked again."""
        for reask in list(self._finding.get(sha1, ())):
            reask(session.peer_id)

    def _nobody_else(self, sha1: str, quiet_since: float, now: float) -> bool:
        """Whether to stop looking before the timeout (FIND_QUIET)."""
        return (now - quiet_since >= FIND_QUIET and time.monotonic() - self.started >= FIND_STARTUP
                and not (self.searching is not None and self.searching(sha1)))

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None:
        for session in self.peers.channel_peers():
            try:
                await session.send(Announce(sha1=sha1, size=size, manifest_sha1=manifest_sha1))
            except PeerGone:
                pass

    async def _announced(self, session: PeerSession, msg: Announce) -> None:
        self._cache.pop(msg.sha1, None)
