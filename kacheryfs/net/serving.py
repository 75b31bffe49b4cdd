"""Serving what this node holds: answers to "who has" (FindRequest) and chunk requests.

The index lookups of a request run in a worker thread, with the read for a chunk: a writer holding
the SQLite lock elsewhere delays no other request and never the node.

The rule is checked here, on the serving side, per request: the peer must have proved a channel,
and the object must be stored here (shared on all our channels) or a cached copy that came from
one of the peer's proved channels. Bytes served and refusals are counted per peer.

An object still being downloaded here is served too (net/swarm.py): on the channels it is coming
through, chunk by verified chunk; a find is answered with the chunks held (``have``), and a request
touching a chunk not held yet is refused. A ``Cancel`` drops a chunk request not yet being sent.

The bulk path: a chunk request costs one worker-thread hop, which reads the bytes from the page cache
straight into the frame they are encrypted (in place) and sent from (protocol.PreparedFrame), and
checks them (store/integrity.py, the first time). The decision "this peer may have this object" is
kept per session and object for ``SERVABLE_TTL`` seconds, so a bulk transfer makes one index query
per second, not two per chunk; eviction or quarantine meanwhile makes the read fail (answered
not-found), and a cached copy's channels only ever grow while it is held.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..errors import KacheryError, PeerBusy
from ..protocol.connection import PreparedFrame
from ..protocol.messages import Cancel, ChunkData, ChunkRequest, ErrorResponse, FindRequest, FindResponse, Message
from ..store import LocalStore, ObjectRecord
from .interfaces import Routes
from .session import PeerSession
from .upload_queue import SMALL, CappedLink, UploadQueue

log = logging.getLogger(__name__)

READ_THREADS = 4  # worker threads reading chunks and the index at once
SERVABLE_TTL = 1.0  # seconds a "this peer may have this object" decision is reused
ONE_READ_OBJECTS = 4096  # objects remembered as served whole in one request (manifests, small objects)
ENOUGH_COPIES = 2  # a capped node declines ("busy") a chunk it sent this often while others wait (upload_queue.py)


@dataclass
class NodeCounters:
    served_bytes: Counter = field(default_factory=Counter)  # peer id -> bytes of content sent
    refused: Counter = field(default_factory=Counter)  # peer id -> requests refused
    cancelled: Counter = field(default_factory=Counter)  # peer id -> chunk requests it cancelled in time
    declined: Counter = field(default_factory=Counter)  # peer id -> chunk requests answered "busy"
    fetched_bytes: int = 0  # content bytes received from peers (verified or not)
    downloads: deque = field(default_factory=lambda: deque(maxlen=16))  # summaries of the last completed ones


class Server:
    def __init__(self, routes: Routes, store: LocalStore, counters: NodeCounters,
                 read_into: Callable[[str, int, memoryview, ObjectRecord], int], rate_limit: float | None = None,
                 swarm=None, read_partial_into: Callable[[object, int, memoryview], int] | None = None):
        self.store = store
        self.counters = counters
        self.read_into = read_into  # blocking; runs in a worker thread
        self._link: CappedLink | None = None
        self.rate_limit = rate_limit  # bytes/s, for benchmarks that need equal, capped seeders
        self.swarm = swarm  # net.swarm.Swarm: objects being downloaded here, or None
        self.read_partial_into = read_partial_into or (lambda partial, offset, view: partial.read_into(offset, view))
        self._servable: dict[tuple[int, str], tuple[PeerSession, float, ObjectRecord]] = {}
        # With the rate cap, one upload at a time, as through a slow uplink; the waiting requests
        # take their turns in net/upload_queue.py's order (small ones, then the chunk uploaded the
        # fewest times: super-seeding). A cancelled request gives its turn up.
        self.upload_queue = UploadQueue("rarest", enough_copies=ENOUGH_COPIES)
        self._uploading = False
        self._one_read: OrderedDict[str, None] = OrderedDict()  # sha1s served whole in one request
        self._limiter = trio.CapacityLimiter(READ_THREADS)
        self._waiting: dict[tuple[int, int], trio.CancelScope] = {}  # (id(session), req) -> request not yet sent
        # With the rate cap (a benchmark knob): each capped upload as (arrived, began, ended, peer,
        # sha1, offset, bytes asked, bytes sent), monotonic times, so a benchmark can see where
        # the capped node's time went (idle gaps, copies of each chunk, small requests).
        self.capped_uploads: deque = deque(maxlen=20000)
        routes.register(FindRequest, self._find)
        routes.register(ChunkRequest, self._chunk)
        routes.register(Cancel, self._cancel, inline=True)

    def servable(self, session: PeerSession, sha1: str) -> ObjectRecord | None:
        """The object's record if this peer may have it, else None. Stored objects are shared on all
        our channels; cached copies on the channels they came from. Blocking (the index): call it
        from a worker thread."""
        if not session.channel_ids:
            return None
        record = self.store.info(sha1)
        if record is None or record.pinned:
            return record
        return record if session.channel_ids & self.store.channels_of(sha1) else None

    def _found(self, session: PeerSession, sha1: str) -> ObjectRecord | None:
        record = self.servable(session, sha1)
        if record is not None:
            self.store.touch(sha1)  # serving keeps a cached copy warm
        return record

    def _servable_cached(self, session: PeerSession, sha1: str) -> ObjectRecord | None:
        """``servable``, remembered per session and object for SERVABLE_TTL (blocking on a miss)."""
        key = (id(session), sha1)
        now = time.monotonic()
        hit = self._servable.get(key)
        if hit is not None and hit[0] is session and hit[1] > now:
            return hit[2]
        record = self.servable(session, sha1)
        if record is not None:
            if len(self._servable) > 4096:
                self._servable = {k: v for k, v in self._servable.items() if v[1] > now}
            self._servable[key] = (session, now + SERVABLE_TTL, record)
        return record

    def _frame_for(self, session: PeerSession, msg: ChunkRequest):
        """The reply's frame with the bytes in it, None if this peer may not have the object, or the
        error for a chunk of a partial object not verified here (blocking: the index, the disk)."""
        record = self._servable_cached(session, msg.sha1)
        if record is not None:
            return self._read_frame(msg, record)
        download = self.swarm.partial(session, msg.sha1) if self.swarm is not None else None
        if download is None:
            return None
        frame = PreparedFrame(ChunkData(req=msg.req), min(msg.length, max(0, download.manifest.size - msg.offset)))
        try:
            frame.shrink(self.read_partial_into(download.partial, msg.offset, frame.payload))  # refuses unverified chunks
            return frame
        except KacheryError as exc:
            record = self.store.info(msg.sha1)
            if record is not None:  # completed and installed meanwhile
                return self._read_frame(msg, record)
            return exc

    def _read_frame(self, msg: ChunkRequest, record: ObjectRecord) -> PreparedFrame:
        frame = PreparedFrame(ChunkData(req=msg.req), min(msg.length, max(0, record.size - msg.offset)))
        try:
            frame.shrink(self.read_into(msg.sha1, msg.offset, frame.payload, record))
        except BaseException:
            frame.take()
            raise
        return frame

    async def _find(self, session: PeerSession, msg: FindRequest) -> Message:
        record = await trio.to_thread.run_sync(self._found, session, msg.sha1, limiter=self._limiter)
        if record is None:
            download = self.swarm.partial(session, msg.sha1) if self.swarm is not None else None
            if download is not None:
                self.swarm.watching(msg.sha1, session)
                return FindResponse(req=msg.req, sha1=msg.sha1, found=True, size=download.manifest.size,
                                    manifest_sha1=download.manifest_sha1, have=download.have().encode())
            if not session.channel_ids:
                self.counters.refused[session.peer_id] += 1
                log.info("refused find %s from %s: no shared channel", msg.sha1[:12], session.peer_id[:12])
            elif self.swarm is not None:
                self.swarm.asked(msg.sha1, session)
            return FindResponse(req=msg.req, sha1=msg.sha1, found=False)
        return FindResponse(req=msg.req, sha1=msg.sha1, found=True, size=record.size,
                            manifest_sha1=record.manifest_sha1)

    async def _chunk(self, session: PeerSession, msg: ChunkRequest) -> Message | None:
        if self.swarm is not None:
            self.swarm.interested(msg.sha1, session)  # (only if we are fetching it, on its channels)
        key = (id(session), msg.req)
        with trio.CancelScope() as scope:
            self._waiting[key] = scope
            try:
                if self.rate_limit:
                    data = (await self._capped_read(session, msg))[-1]
                else:  # one worker-thread hop per request: the index check (cached) and the read together
                    data = await trio.to_thread.run_sync(self._frame_for, session, msg, limiter=self._limiter)
            except (KacheryError, OSError) as exc:  # rotten here (quarantined), or evicted meanwhile
                log.warning("could not serve %s to %s: %s", msg.sha1[:12], session.peer_id[:12], exc)
                self._servable.pop((id(session), msg.sha1), None)
                return ErrorResponse(req=msg.req, code="not-found", message="no such object here")
            finally:
                del self._waiting[key]
        if scope.cancelled_caught:
            self.counters.cancelled[session.peer_id] += 1
            return None  # the requester got this chunk elsewhere and does not wait for it
        if data is None:
            self.counters.refused[session.peer_id] += 1
            log.info("refused chunk of %s to %s: not shared with it", msg.sha1[:12], session.peer_id[:12])
            return ErrorResponse(req=msg.req, code="not-found", message="no such object here")
        if isinstance(data, PeerBusy):  # sent to enough others: the requester asks one of them
            self.counters.declined[session.peer_id] += 1
            return ErrorResponse(req=msg.req, code="busy", message=data.detail or "")
        if isinstance(data, KacheryError):  # a chunk of a partial object not held (yet)
            return ErrorResponse(req=msg.req, code="not-found", message=str(data))
        # Sent from here, not returned to the host: replies wait for the session's send lock behind
        # the ones before them, and a Cancel arriving meanwhile (the requester moved the request to
        # a faster peer) drops this one unsent. Returned, it went out anyway: in a 50-node crowd,
        # starved of CPU, 0.6 of the crowd's bytes were sent, encrypted and decrypted for nothing.
        nbytes = len(data.payload)  # (sending consumes the frame)
        with trio.CancelScope() as scope:
            self._waiting[key] = scope
            try:
                await session.send(data)  # the frame the bytes were read into
            finally:
                del self._waiting[key]
        if scope.cancelled_caught:
            self.counters.cancelled[session.peer_id] += 1
            return None
        self.counters.served_bytes[session.peer_id] += nbytes
        log.debug("sent %d bytes of %s to %s", nbytes, msg.sha1[:12], session.peer_id[:12])
        return None

    @property
    def rate_limit(self) -> float | None:
        return self._link.rate if self._link is not None else None

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        self._link = CappedLink(value) if value else None

    async def _capped_read(self, session: PeerSession, msg: ChunkRequest) -> list:
        """Wait for this request's turn, read, and send what was read at the capped rate, back to back
        with the replies before it (``CappedLink``: what is sent is charged, not what was asked: a
        manifest is asked for as a whole chunk's worth; a refusal costs nothing). The turn passes
        just before this reply has gone, so the next read overlaps its tail. Returns the
        capped_uploads record, the data (as _frame_for gives it) last."""
        arrived = time.monotonic()
        link = self._link
        key = SMALL if msg.sha1 in self._one_read else (msg.sha1, msg.offset)
        await self._take_turn(key)
        end = None
        try:
            began = time.monotonic()
            if self.upload_queue.decline(key, session.peer_id):
                data = PeerBusy(f"chunk at {msg.offset} of {msg.sha1[:12]} sent to enough peers")
            else:
                data = await trio.to_thread.run_sync(self._frame_for, session, msg, limiter=self._limiter)
            sent = 0 if data is None or isinstance(data, KacheryError) else len(data.payload)
            if sent and link is not None:
                now = trio.current_time()
                start, end = link.book(now, sent)
                began = time.monotonic() + (start - now)  # the slot's start (records: time.monotonic)
                if msg.offset == 0 and sent < msg.length:  # the whole object in one request
                    self._one_read[msg.sha1] = None
                    while len(self._one_read) > ONE_READ_OBJECTS:
                        self._one_read.popitem(last=False)
                if key is not SMALL:
                    self.upload_queue.uploaded(key)
                await trio.sleep_until(link.pass_turn_at(start, end))
        finally:
            self._pass_turn()
        if end is not None:
            await trio.sleep_until(end)  # the rest of this reply's slot: the next one reads meanwhile
        upload = [arrived, began, time.monotonic(), session.peer_id, msg.sha1, msg.offset, msg.length, sent, data]
        self.capped_uploads.append(upload[:-1])
        return upload

    async def _take_turn(self, key) -> None:
        if not self._uploading:
            self._uploading = True
            return
        turn = trio.Event()
        handle = self.upload_queue.push(key, turn)
        try:
            await turn.wait()
        except BaseException:  # cancelled: give the turn up, or pass it on if it just came
            if turn.is_set():
                self._pass_turn()
            else:
                self.upload_queue.remove(handle)
            raise

    def _pass_turn(self) -> None:
        """The next waiting request gets the turn (set and popped together: is_set means it has it)."""
        popped = self.upload_queue.pop()
        if popped is None:
            self._uploading = False
        else:
            popped[1].set()

    def upload_status(self) -> dict:
        """The capped uploads (benchmarks; empty without the rate cap)."""
        return {"rate_limit": self.rate_limit, "capped": [list(u) for u in self.capped_uploads]}

    async def _cancel(self, session: PeerSession, msg: Cancel) -> None:
        scope = self._waiting.get((id(session), msg.req))
        if scope is not None:
            scope.cancel()
