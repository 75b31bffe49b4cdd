"""Downloads as the swarm sees them: a node serves every chunk it has verified while it is still
downloading, and tells the peers interested in the object which chunks it gained.

- ``add`` / ``finish`` / ``drop``: the fetcher registers each running download here.
- ``partial(session, sha1)``: the download a peer may be served from: only on the channels the
  object came through (as for a cached copy), and only its verified chunks (the partial file
  refuses to read a chunk it does not hold, so unverified bytes never leave).
- Interest, in two lanes. Peers we trade chunks with -- those that request chunks of the object
  from us, and the partial providers in our download's active set (net/provider_set.py) -- get
  ``Have`` messages of new chunks batched every HAVE_INTERVAL (at most MAX_INTERESTED per object,
  the most recent). Peers that only asked us a find (they know us as a candidate) get what we
  gained every WATCH_INTERVAL, so their view of us stays roughly current at a fraction of the
  messages (at most MAX_WATCHERS). Both get a last ``Have`` (all) on completion. In a 50-node crowd
  every leecher used to tell 32 peers of every batch, and every Have woke the receiver's scheduler.
- ``Have`` from a peer: its chunks join what our download knows of it (it becomes a provider, and
  is asked at once if the active set has room).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..protocol.chunkset import ChunkSet
from ..protocol.messages import Have
from .host import send_quietly
from .interfaces import Routes, Tasks
from .session import PeerSession

log = logging.getLogger(__name__)

HAVE_INTERVAL = 0.1  # seconds between batches of Have messages to the peers we trade with
MAX_INTERESTED = 16  # such peers told about one object's new chunks
WATCH_INTERVAL = 0.5  # seconds between Have messages to peers that only asked a find
MAX_WATCHERS = 32
ASKED_SECONDS = 30.0  # a peer that asked for an object we did not have yet hears of it if we start
MAX_ASKED_OBJECTS = 256


@dataclass
class SwarmEntry:
    download: object  # net.transfer.Download
    interested: OrderedDict = field(default_factory=OrderedDict)  # peer id -> session, most recent last
    pending: set = field(default_factory=set)  # chunks verified since the last batch
    watchers: OrderedDict = field(default_factory=OrderedDict)  # peer id -> session (find askers)
    watch_pending: set = field(default_factory=set)  # chunks verified since the last watchers' batch
    watch_sent: float = float("-inf")

    @property
    def channel_ids(self) -> frozenset[str]:
        return self.download.channel_ids


class Swarm:
    def __init__(self, routes: Routes, tasks: Tasks, enabled: bool = True):
        self.tasks = tasks
        self.enabled = enabled  # off: downloads are neither served nor announced (a benchmark baseline)
        self.entries: dict[str, SwarmEntry] = {}
        # sha1 -> peer id -> (session, when): peers that asked us for an object we did not have.
        # A crowd starting at once asks each other before anyone has begun: when we begin, they
        # are told (a Have), so leechers find each other however their finds crossed.
        self._asked: OrderedDict[str, dict] = OrderedDict()
        self._flush_now = trio.Event()
        self.heard_of: Callable[[str, PeerSession], None] | None = None  # (sha1, peer): Haves of objects not fetched here
        routes.register(Have, self._have, inline=True)  # cheap, and keeps one peer's Haves in order

    # --- downloads

    def add(self, download) -> None:
        if not self.enabled:
            return
        sha1 = download.manifest.sha1
        entry = self.entries[sha1] = SwarmEntry(download)
        download.chunk_listeners.append(lambda index: self._verified(entry, index))
        for peer in download.scheduler.peers:  # an active partial provider wants our chunks
            provider = download.by_peer[peer]
            if provider.have is not None:
                self.interested(sha1, provider.session)
        now = trio.current_time()
        for session, when in self._asked.pop(sha1, {}).values():
            if now - when < ASKED_SECONDS and not session.closed.is_set():
                self.interested(sha1, session)
                self._send_soon(session, Have(sha1=sha1, have=download.have().encode()))

    def asked(self, sha1: str, session: PeerSession) -> None:
        """``session`` asked for ``sha1``, which we neither hold nor fetch: remember it for a while."""
        if not session.channel_ids or not self.enabled:
            return
        askers = self._asked.setdefault(sha1, {})
        self._asked.move_to_end(sha1)
        askers[session.peer_id] = (session, trio.current_time())
        if len(askers) > MAX_INTERESTED:
            askers.pop(next(iter(askers)))
        while len(self._asked) > MAX_ASKED_OBJECTS:
            self._asked.popitem(last=False)

    def _verified(self, entry: SwarmEntry, index: int) -> None:
        entry.pending.add(index)
        entry.watch_pending.add(index)
        self._flush_now.set()

    def finish(self, sha1: str) -> None:
        """The object is complete here: tell the interested peers, forget the download."""
        entry = self.entries.pop(sha1, None)
        if entry is None:
            return
        told = set()
        for session in [*entry.interested.values(), *entry.watchers.values()]:
            if session.peer_id not in told:
                told.add(session.peer_id)
                self._send_soon(session, Have(sha1=sha1, have=None))

    def drop(self, sha1: str, download) -> None:
        entry = self.entries.get(sha1)
        if entry is not None and entry.download is download:
            del self.entries[sha1]

    def partial(self, session: PeerSession, sha1: str):
        """The running download ``session`` may be served from, or None."""
        entry = self.entries.get(sha1)
        if entry is None or not session.channel_ids & entry.channel_ids:
            return None
        return entry.download

    def interested(self, sha1: str, session: PeerSession) -> None:
        """``session`` trades chunks of ``sha1`` with us: it hears of new chunks every batch."""
        entry = self.entries.get(sha1)
        if entry is None or not session.channel_ids & entry.channel_ids:
            return
        entry.watchers.pop(session.peer_id, None)
        _remember(entry.interested, session, MAX_INTERESTED)

    def watching(self, sha1: str, session: PeerSession) -> None:
        """``session`` asked us a find for ``sha1``: it hears of our chunks now and then."""
        entry = self.entries.get(sha1)
        if entry is None or not session.channel_ids & entry.channel_ids or session.peer_id in entry.interested:
            return
        _remember(entry.watchers, session, MAX_WATCHERS)

    # --- Have, both ways

    async def _have(self, session: PeerSession, msg: Have) -> None:
        entry = self.entries.get(msg.sha1)
        if entry is None:
            if self.heard_of is not None and session.channel_ids:
                self.heard_of(msg.sha1, session)  # a find under way here may ask it again
            return
        if not session.channel_ids & entry.channel_ids:
            return
        chunks = msg.chunks
        if chunks is not None and chunks.end() > len(entry.download.manifest.chunk_sha1s):
            log.info("Have from %s names chunks beyond %s: ignored", session.peer_id[:12], msg.sha1[:12])
            return
        entry.download.peer_has(session, chunks)
        if session.peer_id in entry.download.active_peers:  # we trade with it: it hears of ours
            self.interested(msg.sha1, session)

    def _send_soon(self, session: PeerSession, msg: Have) -> None:
        if session.closed.is_set():
            return
        try:
            self.tasks.start_soon(send_quietly, session, msg)
        except RuntimeError:
            pass  # the node is stopping

    async def run(self) -> None:
        """Send the batched Have messages."""
        while True:
            await self._flush_now.wait()
            self._flush_now = trio.Event()
            now = trio.current_time()
            watch_later = False
            for sha1, entry in list(self.entries.items()):
                if entry.pending:
                    self._send_all(entry.interested, Have(sha1=sha1, have=ChunkSet(entry.pending).encode()))
                    entry.pending.clear()
                if entry.watch_pending and entry.watchers:
                    if now - entry.watch_sent >= WATCH_INTERVAL:
                        self._send_all(entry.watchers, Have(sha1=sha1, have=ChunkSet(entry.watch_pending).encode()))
                        entry.watch_pending.clear()
                        entry.watch_sent = now
                    else:
                        watch_later = True
                elif not entry.watchers:
                    entry.watch_pending.clear()  # a watcher's find answer carries what we hold then
            if watch_later:
                self._flush_now.set()  # the watchers' batch is due later: come back for it
            await trio.sleep(HAVE_INTERVAL)

    def _send_all(self, sessions: OrderedDict, msg: Have) -> None:
        for peer, session in list(sessions.items()):
            if session.closed.is_set():
                del sessions[peer]
            else:
                self._send_soon(session, msg)

    def status(self) -> list[dict]:
        """The swarm view of each object being fetched: its providers and what came from each."""
        out = []
        for sha1, entry in self.entries.items():
            download = entry.download
            stats = download.scheduler.stats
            providers = []
            for peer, provider in download.by_peer.items():
                peer_stats = stats.peers.get(peer)
                providers.append({
                    "node": peer,
                    "holds": "all" if provider.have is None else len(provider.have),
                    "chunks_from": download.chunks_from.get(peer, 0),
                    "in_flight": 0 if peer_stats is None else peer_stats.in_flight,
                    "state": "banned" if peer in stats.dropped else (
                        "active" if peer_stats is not None else
                        "gone" if provider.session.closed.is_set() else "candidate"),
                })
            out.append({"sha1": sha1, "chunks": len(download.manifest.chunk_sha1s),
                        "have": len(download.have()), "interested": len(entry.interested),
                        "watchers": len(entry.watchers),
                        "moves": stats.moves, "duplicates": stats.duplicates, "providers": providers})
        return out


def _remember(sessions: OrderedDict, session: PeerSession, limit: int) -> None:
    """Most recent last; the least recent beyond ``limit`` forgotten."""
    sessions[session.peer_id] = session
    sessions.move_to_end(session.peer_id)
    while len(sessions) > limit:
        sessions.popitem(last=False)


__all__ = ["Swarm", "HAVE_INTERVAL", "MAX_INTERESTED", "WATCH_INTERVAL", "MAX_WATCHERS"]
