"""Serving what this node holds: answers to "who has" (FindRequest) and chunk requests.

The rule is checked here, on the serving side, per request: the peer must have proved a channel,
and the object must be stored here (shared on all our channels) or a cached copy that came from
one of the peer's proved channels. Bytes served and refusals are counted per peer.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..protocol.messages import ChunkData, ChunkRequest, ErrorResponse, FindRequest, FindResponse, Message
from ..store import LocalStore, ObjectRecord
from .interfaces import Routes
from .session import PeerSession

log = logging.getLogger(__name__)

READ_THREADS = 4


@dataclass
class NodeCounters:
    served_bytes: Counter = field(default_factory=Counter)  # peer id -> bytes of content sent
    refused: Counter = field(default_factory=Counter)  # peer id -> requests refused
    fetched_bytes: int = 0  # content bytes received from peers (verified or not)


class Server:
    def __init__(self, routes: Routes, store: LocalStore, counters: NodeCounters,
                 read_range: Callable[[str, int, int], bytes], rate_limit: float | None = None):
        self.store = store
        self.counters = counters
        self.read_range = read_range  # blocking; runs in a worker thread
        self.rate_limit = rate_limit  # bytes/s, for benchmarks that need equal, capped seeders
        self._free_at = 0.0
        self._limiter = trio.CapacityLimiter(READ_THREADS)
        routes.register(FindRequest, self._find)
        routes.register(ChunkRequest, self._chunk)

    def servable(self, session: PeerSession, sha1: str) -> ObjectRecord | None:
        """The object's record if this peer may have it, else None. Stored objects are shared on all
        our channels; cached copies on the channels they came from."""
        if not session.channel_ids:
            return None
        record = self.store.info(sha1)
        if record is None or record.pinned:
            return record
        return record if session.channel_ids & self.store.channels_of(sha1) else None

    async def _find(self, session: PeerSession, msg: FindRequest) -> Message:
        record = self.servable(session, msg.sha1)
        if record is None:
            if not session.channel_ids:
                self.counters.refused[session.peer_id] += 1
                log.info("refused find %s from %s: no shared channel", msg.sha1[:12], session.peer_id[:12])
            return FindResponse(req=msg.req, sha1=msg.sha1, found=False)
        self.store.touch(msg.sha1)  # serving keeps a cached copy warm
        return FindResponse(req=msg.req, sha1=msg.sha1, found=True, size=record.size,
                            manifest_sha1=record.manifest_sha1)

    async def _chunk(self, session: PeerSession, msg: ChunkRequest) -> Message:
        if self.servable(session, msg.sha1) is None:
            self.counters.refused[session.peer_id] += 1
            log.info("refused chunk of %s to %s: not shared with it", msg.sha1[:12], session.peer_id[:12])
            return ErrorResponse(req=msg.req, code="not-found", message="no such object here")
        if self.rate_limit:
            now = trio.current_time()
            start = max(now, self._free_at)
            self._free_at = start + msg.length / self.rate_limit
            await trio.sleep(self._free_at - now)
        data = await trio.to_thread.run_sync(self.read_range, msg.sha1, msg.offset, msg.length,
                                             limiter=self._limiter)
        self.counters.served_bytes[session.peer_id] += len(data)
        log.debug("sent %d bytes of %s to %s", len(data), msg.sha1[:12], session.peer_id[:12])
        return ChunkData(req=msg.req, payload=data)
