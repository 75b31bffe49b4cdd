"""Downloads as the swarm sees them: a node serves every chunk it has verified while it is still
downloading, and tells the peers interested in the object which chunks it gained.

- ``add`` / ``finish`` / ``drop``: the fetcher registers each running download here.
- ``partial(session, sha1)``: the download a peer may be served from: only on the channels the
  object came through (as for a cached copy), and only its verified chunks (the partial file
  refuses to read a chunk it does not hold, so unverified bytes never leave).
- Interest: a peer that asks us for an object we are downloading (find or chunk request), and every
  partial provider of it we know of, get ``Have`` messages: new chunks batched every HAVE_INTERVAL,
  at most MAX_INTERESTED peers per object (the most recent), and a last ``Have`` (all) on completion.
- ``Have`` from a peer: its chunks join our download of that object (it becomes a provider if it
  was not one).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from ..protocol.chunkset import ChunkSet
from ..protocol.messages import Have
from .host import send_quietly
from .interfaces import Routes, Tasks
from .session import PeerSession

log = logging.getLogger(__name__)

HAVE_INTERVAL = 0.05  # seconds between batches of Have messages
MAX_INTERESTED = 32  # peers told about one object's new chunks
ASKED_SECONDS = 30.0  # a peer that asked for an object we did not have yet hears of it if we start
MAX_ASKED_OBJECTS = 256


@dataclass
class SwarmEntry:
    download: object  # net.transfer.Download
    interested: OrderedDict = field(default_factory=OrderedDict)  # peer id -> session, most recent last
    pending: set = field(default_factory=set)  # chunks verified since the last batch

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
        routes.register(Have, self._have, inline=True)  # cheap, and keeps one peer's Haves in order

    # --- downloads

    def add(self, download) -> None:
        if not self.enabled:
            return
        sha1 = download.manifest.sha1
        entry = self.entries[sha1] = SwarmEntry(download)
        download.chunk_listeners.append(lambda index: self._verified(entry, index))
        for provider in download.by_peer.values():
            if provider.have is not None:  # a peer downloading it too wants our chunks
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
        self._flush_now.set()

    def finish(self, sha1: str) -> None:
        """The object is complete here: tell the interested peers, forget the download."""
        entry = self.entries.pop(sha1, None)
        if entry is None:
            return
        for session in entry.interested.values():
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
        entry = self.entries.get(sha1)
        if entry is None or not session.channel_ids & entry.channel_ids:
            return
        entry.interested[session.peer_id] = session
        entry.interested.move_to_end(session.peer_id)
        while len(entry.interested) > MAX_INTERESTED:
            entry.interested.popitem(last=False)

    # --- Have, both ways

    async def _have(self, session: PeerSession, msg: Have) -> None:
        entry = self.entries.get(msg.sha1)
        if entry is None or not session.channel_ids & entry.channel_ids:
            return
        chunks = msg.chunks
        if chunks is not None and chunks.end() > len(entry.download.manifest.chunk_sha1s):
            log.info("Have from %s names chunks beyond %s: ignored", session.peer_id[:12], msg.sha1[:12])
            return
        entry.download.peer_has(session, chunks)
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
            for sha1, entry in list(self.entries.items()):
                if not entry.pending:
                    continue
                msg = Have(sha1=sha1, have=ChunkSet(entry.pending).encode())
                entry.pending.clear()
                for peer, session in list(entry.interested.items()):
                    if session.closed.is_set():
                        del entry.interested[peer]
                    else:
                        self._send_soon(session, msg)
            await trio.sleep(HAVE_INTERVAL)

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
                    "holds": None if peer_stats is None else ("all" if peer_stats.holds is None else peer_stats.holds),
                    "chunks_from": download.chunks_from.get(peer, 0),
                    "in_flight": 0 if peer_stats is None else peer_stats.in_flight,
                    "state": "banned" if peer in stats.dropped else ("gone" if peer_stats is None else "active"),
                })
            out.append({"sha1": sha1, "chunks": len(download.manifest.chunk_sha1s),
                        "have": len(download.have()), "interested": len(entry.interested),
                        "moves": stats.moves, "duplicates": stats.duplicates, "providers": providers})
        return out


__all__ = ["Swarm", "HAVE_INTERVAL", "MAX_INTERESTED"]
