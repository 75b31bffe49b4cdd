"""Fetching an object from several providers at once, every chunk verified before it is kept.

Small objects (one chunk) come in one request and are checked against their SHA-1. Larger ones
need their manifest (from the URI, else from a provider: it is itself an object, verified against
the manifest hash the provider announced). Each chunk is checked against the manifest before it is
written; the whole-file SHA-1 is checked at the end. A provider that sends bytes failing
verification is dropped for this file and logged.
"""

from __future__ import annotations

import contextlib

import hashlib
import logging
import random
import time
from typing import Callable

import trio

from ..errors import (
    CorruptChunk, CorruptObject, FetchFailed, KacheryError, ObjectNotFound, PeerBusy, PeerGone, RequestFailed,
    StorageFull, StoreFailed,
)
from ..protocol.chunkset import ChunkSet
from ..protocol.messages import Cancel, ChunkData, ChunkRequest, FindRequest, FindResponse
from ..store import CHUNK_SIZE, LocalStore, Manifest, StoredObject
from ..store.partial import PartialObject
from .finding import Provider
from .interfaces import TransferHost
from .pipeline import ChunkPipeline
from .provider_set import BENCH_SECONDS, MAX_ACTIVE, ActiveView, CandidateView, plan
from .scheduler import ENDGAME_CHUNKS, ChunkScheduler

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 20.0  # a manifest's or small object's request: the next provider is tried after it
# A download's chunk request. Long on purpose: the scheduler gives a request up after 10 s when
# another peer holds the chunk (ChunkScheduler.expired), but a chunk only one peer holds can only
# wait in that peer's queue: a capped seeder facing 49 leechers is minutes behind, and a request
# given up and sent again goes to the back (tests/swarm_sim.py, 49 leechers, 32 chunks, seeder at
# 0.5 MB/s: never finished with 20 s, 1.006 uploads with 120 s). A peer that is gone closes its session.
CHUNK_REQUEST_TIMEOUT = 120.0
LATE_REPLY_SECONDS = 2.0  # a cancelled request's reply is still taken if it arrives this soon
MAX_SMALL_OBJECT = 64 << 20
PROVIDER_REFRESH_SECONDS = 2.0
# How often the active provider set is reviewed (net/provider_set.py). Measured: with 0.5 s a
# leecher of a 50-node crowd spent ~1 s in all with nothing in flight, its 8 providers holding
# nothing it needed while candidates that did waited for the review.
REPLAN_SECONDS = 0.25


def endgame_chunks(num_chunks: int) -> int:
    """Chunks left when the endgame may duplicate requests: a quarter of the object, 2 to 8. With 8
    for any size, half of a 16 MiB object was raced: in a 50-node crowd, starved of CPU (noisy
    rates), a leecher duplicated 6 of its 16 chunks and 1.3-1.6x the needed bytes were sent. (An
    eighth, 2 of 16, made the simulated crowd's tail 7% longer: tests/swarm_sim.py; a quarter
    finished as 8 did.)"""
    return max(2, min(ENDGAME_CHUNKS, num_chunks // 4))


CHUNKS_PER_REQUEST = 4  # consecutive chunks per ChunkRequest: one request, hop and frame per 4 MiB in bulk


def _runs(chunks: list[int], longest: int) -> list[list[int]]:
    """Group chunk indices into runs of consecutive ones, each at most ``longest`` long."""
    runs: list[list[int]] = []
    for c in chunks:
        if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < longest:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs  # manifests and small files are fetched whole, in 1 MiB requests

Progress = Callable[[int, int], None]  # (bytes done, total)


def _channels_of(providers: list[Provider]) -> frozenset[str]:
    """A fetched copy is re-served on the channels it came through."""
    return frozenset().union(*(p.session.channel_ids for p in providers))


async def _request_range(provider: Provider, sha1: str, offset: int, length: int, node: TransferHost,
                         req: int | None = None, timeout: float = REQUEST_TIMEOUT) -> bytes:
    session = provider.session
    req = session.next_req() if req is None else req
    reply = await session.request(ChunkRequest(req=req, sha1=sha1, offset=offset, length=length), timeout)
    if not isinstance(reply, ChunkData):
        raise RequestFailed("unexpected reply")
    node.note_fetched(len(reply.payload))
    return reply.payload


async def fetch_small(node: TransferHost, providers: list[Provider], sha1: str, size: int) -> bytes:
    """A whole object of at most MAX_SMALL_OBJECT bytes, verified against its SHA-1, from the first
    provider that gets it right."""
    if size > MAX_SMALL_OBJECT:
        raise FetchFailed(f"{sha1} is too large to fetch without a manifest")
    for provider in providers:
        try:
            parts = []
            for offset in range(0, max(size, 1), CHUNK_SIZE):
                parts.append(await _request_range(provider, sha1, offset, min(CHUNK_SIZE, size - offset), node))
            data = b"".join(parts)
        except (KacheryError, trio.TooSlowError) as exc:
            log.info("fetching %s from %s failed: %s", sha1[:12], provider.session.peer_id[:12], exc)
            continue
        if hashlib.sha1(data).hexdigest() == sha1 and len(data) == size:
            return data
        log.warning("peer %s sent bytes that do not hash to %s: dropped for this file",
                    provider.session.peer_id[:12], sha1[:12])
    raise FetchFailed(sha1)


async def locate_manifest(node: TransferHost, sha1: str, manifest_sha1: str | None = None,
                          timeline: dict | None = None):
    """(providers, manifest or None for a one-chunk object, fetched): ``fetched`` is (manifest
    sha1, bytes) of a manifest that came from a peer and is not stored yet (the Download keeps it,
    beside its first chunks), else None. Raises ObjectNotFound / FetchFailed. ``timeline`` gets the
    (monotonic) times the find and the manifest were done."""
    timeline = {} if timeline is None else timeline
    providers = await node.find(sha1)
    timeline["found"] = time.monotonic()
    if not providers:
        raise ObjectNotFound(f"{sha1} was not found on any peer of this node's channels")
    size = providers[0].size
    if size <= CHUNK_SIZE:
        return providers, None, None
    manifest, fetched = await _get_manifest(node, providers, sha1, size, manifest_sha1)
    timeline["manifest"] = time.monotonic()
    return providers, manifest, fetched


async def fetch_small_into_store(node: TransferHost, providers: list[Provider], sha1: str) -> StoredObject:
    """A one-chunk object: fetched in one request, checked against its SHA-1, stored as a cached copy
    (re-served on the channels it came from)."""
    data = await fetch_small(node, providers, sha1, providers[0].size)
    return await trio.to_thread.run_sync(_keep_copy, node.store, sha1, data, _channels_of(providers))


def _keep_copy(store: LocalStore, sha1: str, data: bytes, channel_ids: frozenset[str]) -> StoredObject:
    """Store fetched bytes as a cached copy, re-served on the channels it came through (blocking).
    Channels first: an installed cached copy is servable at once, never briefly refused."""
    store.add_channels(sha1, channel_ids)
    return store.put_bytes(data, pinned=False)


def _held_bytes(store: LocalStore, sha1: str) -> bytes | None:
    return store.read_bytes(sha1) if store.info(sha1) is not None else None


async def _get_manifest(node: TransferHost, providers: list[Provider], sha1: str, size: int,
                        manifest_sha1: str | None) -> tuple[Manifest, tuple[str, bytes] | None]:
    candidates = [manifest_sha1] if manifest_sha1 else []
    candidates += [p.manifest_sha1 for p in providers if p.manifest_sha1 and p.manifest_sha1 not in candidates]
    for candidate in candidates:
        raw = await trio.to_thread.run_sync(_held_bytes, node.store, candidate)
        held = raw is not None
        if raw is None:
            # The providers that named this manifest hold it: ask them first (no second lookup);
            # its size is unknown until it arrives, so ask for a whole chunk's worth.
            naming = [p for p in providers if p.manifest_sha1 == candidate]
            for provider in naming:
                try:
                    data = await _request_range(provider, candidate, 0, CHUNK_SIZE, node)
                except (KacheryError, trio.TooSlowError):
                    continue
                if hashlib.sha1(data).hexdigest() == candidate:
                    raw = bytes(data)
                    break
            if raw is None:  # a manifest over 1 MiB, or nobody answered: look it up
                holders = await node.find(candidate)
                if not holders:
                    continue
                try:
                    raw = await fetch_small(node, holders, candidate, holders[0].size)
                except FetchFailed:
                    continue
        try:
            manifest = Manifest.from_bytes(raw, candidate)
        except CorruptObject as exc:
            log.warning("manifest %s of %s is unusable: %s", candidate[:12], sha1[:12], exc)
            continue
        if manifest.sha1 != sha1 or manifest.size != size:
            log.warning("manifest %s does not describe %s", candidate[:12], sha1[:12])
            continue
        return manifest, None if held else (candidate, raw)
    raise FetchFailed(f"no usable manifest for {sha1}")


class Download:
    """One large object coming from several providers, chunk by chunk, each verified on arrival.

    ``want`` says which chunks are needed (all of them for ``kacheryfs load``; those a reader touches,
    plus read-ahead, for a lazy read through the mount). ``run`` keeps every provider's window full
    until the object is complete, then installs it in the store.
    """

    def __init__(self, node: TransferHost, manifest: Manifest, partial: PartialObject, providers: list[Provider],
                 fetched_manifest: tuple[str, bytes] | None = None):
        self.node = node
        self.manifest = manifest
        # (sha1, bytes) of the manifest as it came from a peer, until the store keeps it: stored beside
        # the first chunks (its write and two fsyncs off a first read's path), else by _install.
        self._unkept_manifest = fetched_manifest
        self.manifest_sha1 = manifest.manifest_sha1  # hashed once: partial providers name it in finds
        self.partial = partial
        self.progress: list[Progress] = []  # callbacks of those waiting for the whole file
        self.chunk_listeners: list[Callable[[int], None]] = []  # told of each chunk verified and written
        # Every provider known (what each holds, kept current by finds and Haves); at most
        # MAX_ACTIVE of them are asked at a time: the scheduler's peers (net/provider_set.py).
        self.by_peer = {p.session.peer_id: p for p in providers}
        self.channel_ids = _channels_of(providers)
        # A deep window on a fast link (slack_seconds of data at the measured rate), a shallow one at
        # a slow or crowded provider; the initial 32 chunks are shared among the first providers.
        self.scheduler = ChunkScheduler(len(manifest.chunk_sha1s), [], initial_window=32, min_initial_window=2,
                                        slack_chunks=2, slack_seconds=0.1,
                                        endgame_chunks=endgame_chunks(len(manifest.chunk_sha1s)))
        self.max_active = MAX_ACTIVE
        self._joined: dict[str, float] = {}  # active peer -> when it joined the set
        self._benched: dict[str, float] = {}  # peer -> not taken back into the set before then
        self.ever_active: set[str] = set()
        self.replaced = 0  # active providers replaced (stalled, or holding nothing needed)
        self.late_replies = 0  # replies to cancelled requests that came anyway and were used
        self._random = random.Random()
        now = trio.current_time()
        _drop, chosen = plan({}, self._candidate_views(now), now, limit=self.max_active, rng=self._random)
        for peer in chosen:
            self._joined[peer] = now
            self.ever_active.add(peer)
        # The initial window budget is shared as among every provider known, not only those asked
        # first: in a crowd's start only the seeder is useful, and 49 leechers queuing the whole
        # object there at once would only be cancelled again as leechers gain chunks.
        share = max(self.scheduler.min_initial_window, self.scheduler.initial_window // max(1, len(self.by_peer)))
        for peer in chosen:
            self.scheduler.add_peer(peer, self._have_arg(self.by_peer[peer]), window=share)
        self.chunks_from: dict[str, int] = {}  # peer -> chunks it delivered (the swarm view in status)
        self.result: StoredObject | None = None
        self.error: KacheryError | None = None
        self._local_failure: KacheryError | None = None  # our disk failed, not a peer: give up
        self._changed = trio.Event()
        self.settled = trio.Event()  # run() has ended: result or error is final
        self.pipeline = ChunkPipeline(partial)  # verifies and writes chunks, off the trio thread
        self._limiter = trio.CapacityLimiter(2)  # threads reading for lazy readers
        # (peer, chunk) -> the request asking that peer for it (one request carries a run of chunks)
        self._requests: dict[tuple[str, int], trio.CancelScope] = {}
        self._run_of: dict[trio.CancelScope, list[int]] = {}  # a request -> its chunks
        self._refreshing = False
        self.started = time.monotonic()
        # What a benchmark needs to see where the time goes (monotonic, comparable across processes):
        # asked / found / manifest (set by the fetcher), started, first_chunk, complete, installed.
        self.timeline: dict[str, float] = {"started": self.started}
        self.failures: dict[str, int] = {}  # requests that failed, by why (refused, timeout, gone, ...)
        self.idle_seconds = 0.0  # time with chunks still needed and no request in flight

    @classmethod
    async def start(cls, node: TransferHost, manifest: Manifest, providers: list[Provider],
                    fetched_manifest: tuple[str, bytes] | None = None) -> "Download":
        partial = await trio.to_thread.run_sync(PartialObject.open, node.store, manifest)
        return cls(node, manifest, partial, providers, fetched_manifest)

    def close(self) -> None:
        self.partial.close()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def have(self) -> ChunkSet:
        """The chunks verified and on disk here."""
        return ChunkSet.from_bitmap(self.partial.bitmap())

    def peer_has(self, session, chunks: ChunkSet | None) -> None:
        """A peer holds ``chunks`` of this object now (None: all of it), from a Have or a find: it
        becomes a provider if it was not one (asked at once if the active set has room)."""
        peer = session.peer_id
        known = self.by_peer.get(peer)
        if known is None or known.session.closed.is_set():
            if known is not None and peer in self._joined:
                self._leave(peer)  # the old session's requests are gone with it
            self.by_peer[peer] = Provider(session, self.manifest.size, None, chunks)
            self._take_if_room(peer)
            return
        if known.have is not None:  # (a new Provider: finders' cached answers share the old one)
            merged = None if chunks is None else known.have | chunks
            self.by_peer[peer] = Provider(known.session, known.size, known.manifest_sha1, merged)
        if peer not in self._joined:
            self._take_if_room(peer)
        elif chunks is None:
            self.scheduler.peer_has_all(peer)
            self._wake()
        elif self.scheduler.peer_has(peer, iter(chunks)):
            self._wake()

    # --- the active provider set (net/provider_set.py)

    @property
    def active_peers(self):
        """The providers asked now (at most max_active)."""
        return self._joined.keys()

    @staticmethod
    def _have_arg(provider: Provider):
        return None if provider.have is None else iter(provider.have)

    def _held(self) -> ChunkSet:
        return ChunkSet.from_bitmap(self.partial.bitmap())

    def _useful(self, provider: Provider, held: ChunkSet) -> int:
        if provider.have is None:
            return len(self.manifest.chunk_sha1s) - len(held)
        return len(provider.have - held)

    def _candidate_views(self, now: float) -> dict[str, CandidateView]:
        held, banned = self._held(), self.scheduler.dropped
        return {peer: CandidateView(p.have is None, self._useful(p, held), self._benched.get(peer, float("-inf")))
                for peer, p in self.by_peer.items()
                if peer not in self._joined and peer not in banned and not p.session.closed.is_set()}

    def _take_if_room(self, peer: str) -> None:
        """A provider not in the active set joins it now if there is room (and it is useful)."""
        provider = self.by_peer[peer]
        now = trio.current_time()
        self._sync_joined()
        if peer in self.scheduler.dropped or self._benched.get(peer, float("-inf")) > now:
            return
        if len(self._joined) >= self.max_active:
            return  # (the next review may swap it in for an active provider holding nothing needed)
        if provider.have is not None and not self._useful(provider, self._held()):
            return
        self._join(peer, now)

    def _join(self, peer: str, now: float) -> None:
        self._joined[peer] = now
        self.ever_active.add(peer)
        self.scheduler.add_peer(peer, self._have_arg(self.by_peer[peer]),
                                window=self.scheduler.share_of_initial_window())
        self._wake()

    def _leave(self, peer: str) -> None:
        """Out of the active set: its requests go back to the queue and are cancelled at it."""
        self._joined.pop(peer, None)
        self.scheduler.remove_peer(peer)
        for asked, chunk in [key for key in self._requests if key[0] == peer]:
            self._cancel(asked, chunk)

    def _sync_joined(self) -> bool:
        """Forget active peers the scheduler dropped (banned, gone); True if there were any."""
        current = set(self.scheduler.peers)
        gone = [peer for peer in self._joined if peer not in current]
        for peer in gone:
            del self._joined[peer]
        return bool(gone)

    def _replan(self, now: float) -> None:
        """Replace stalled or useless active providers, fill free places (net/provider_set.py)."""
        self._sync_joined()
        held = self._held()
        active = {}
        for peer, joined in self._joined.items():
            in_flight, last_ok = self.scheduler.progress(peer)
            active[peer] = ActiveView(self.by_peer[peer].have is None, self._useful(self.by_peer[peer], held),
                                      in_flight, joined if last_ok is None else max(last_ok, joined))
        drop, add = plan(active, self._candidate_views(now), now, limit=self.max_active, rng=self._random)
        for peer in drop:
            self._leave(peer)
            if active[peer].in_flight:  # stalled: not again for a while
                self._benched[peer] = now + BENCH_SECONDS
            self.replaced += 1
        for peer in add:
            self._join(peer, now)

    def want(self, chunks, urgent: bool = False) -> None:
        missing = [c for c in chunks if not self.partial.has_chunk(c)]
        if missing:
            self.scheduler.want(missing)
            if urgent:
                self.scheduler.prioritize(missing)
            self._wake()
        # chunks already on disk from an earlier (resumed) download count as verified
        for c in chunks:
            if self.partial.has_chunk(c) and not self.scheduler.is_verified(c):
                self.scheduler.want([c])
                self.scheduler.on_chunk_ok("", c, 0, trio.current_time())

    async def wait_chunks(self, chunks) -> None:
        """Until every chunk in ``chunks`` is verified and on disk (or the download failed)."""
        chunks = list(chunks)
        self.want(chunks, urgent=True)
        while not all(self.partial.has_chunk(c) for c in chunks):
            if self.error is not None:
                raise self.error
            await self._changed.wait()

    async def wait_complete(self) -> StoredObject:
        while self.result is None:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return self.result

    async def read(self, offset: int, size: int) -> bytes:
        chunks = self.manifest.chunks_covering(offset, size)
        await self.wait_chunks(chunks)
        if size <= (256 << 10):
            return self.partial.read(offset, size)
        return await trio.to_thread.run_sync(self.partial.read, offset, size, limiter=self._limiter)

    async def _keep_manifest(self) -> None:
        """Store the manifest that came from a peer, as cached copies are (re-served on the channels
        it came through). If this fails, _install tries again and fails the download if it must."""
        sha1, raw = self._unkept_manifest
        try:
            await trio.to_thread.run_sync(_keep_copy, self.node.store, sha1, raw, self.channel_ids)
        except (OSError, KacheryError) as exc:
            log.warning("could not store manifest %s yet: %s", sha1[:12], exc)
            return
        self._unkept_manifest = None

    def _install(self) -> StoredObject:
        """Note where it came from, check the whole file, move it into the store (blocking). Channels
        first: an installed cached copy is servable at once, never briefly refused. An object is
        never installed without its manifest held too (peers ask us for it)."""
        if self._unkept_manifest is not None:
            _keep_copy(self.node.store, *self._unkept_manifest, self.channel_ids)
            self._unkept_manifest = None
        self.node.store.add_channels(self.manifest.sha1, self.channel_ids)
        obj = self.partial.finish()
        # Every chunk passed its SHA-1 and the whole file its own, from the bytes written: reads of
        # it in this run need not check them again (store/integrity.py).
        self.node.store.integrity.mark_verified(obj.sha1, obj.size)
        return obj

    def _start_run(self, nursery: trio.Nursery, peer: str, run: list[int]) -> None:
        """Issue the request for ``run``. It is registered here, not when its task first runs: a
        request for the same chunks ending meanwhile must not take this one's entries for its own."""
        scope = trio.CancelScope()
        for index in run:
            self._requests[(peer, index)] = scope
        self._run_of[scope] = run
        nursery.start_soon(self._get_run, peer, run, scope)

    async def _get_run(self, peer: str, run: list[int], scope: trio.CancelScope) -> None:
        """Consecutive chunks in one request (fewer messages and hops per byte); each chunk of the
        reply is verified on its own. Once none of its chunks is wanted from this peer any more
        (each came from elsewhere, moved to a faster peer, or the peer left the set: ``_cancel``),
        the peer is told to drop it."""
        start = self.manifest.chunk_range(run[0])[0]
        end = self.manifest.chunk_range(run[-1])[1]
        pending = list(run)
        provider = self.by_peer[peer]
        req = provider.session.next_req()
        try:
            with scope:
                data = await _request_range(provider, self.manifest.sha1, start, end - start, self.node, req,
                                            CHUNK_REQUEST_TIMEOUT)
            if scope.cancelled_caught:
                try:
                    await provider.session.send(Cancel(req=req))
                except PeerGone:
                    return
                if all(self.scheduler.is_verified(index) for index in run):
                    return  # (an endgame duplicate that lost: nothing it could bring)
                # The reply may be on its way already (the peer was sending it when the Cancel
                # came: it goes out whole). If it comes soon, the chunks still missing here are
                # kept rather than dropped, and their requests elsewhere cancelled in turn.
                late = await provider.session.late_reply(req, LATE_REPLY_SECONDS)
                if not isinstance(late, ChunkData):
                    return
                data = late.payload
                self.node.note_fetched(len(data))
                self.late_replies += 1
            view = memoryview(data)
            self.timeline.setdefault("first_chunk", time.monotonic())
            queued = {}  # every chunk of the reply goes to the lanes at once; their results in order
            for index in run:
                if not self.partial.has_chunk(index):
                    a, b = self.manifest.chunk_range(index)
                    chunk = view[a - start:b - start]
                    queued[index] = (chunk, self.pipeline.submit(index, chunk))
            for index in run:
                a, b = self.manifest.chunk_range(index)
                fresh = index in queued
                if fresh:
                    await self._write_chunk(index, *queued[index])
                self.chunks_from[peer] = self.chunks_from.get(peer, 0) + 1
                for other in self.scheduler.on_chunk_ok(peer, index, b - a, trio.current_time()):
                    self._cancel(other, index)  # an endgame duplicate that lost the race
                pending.remove(index)
                if fresh:
                    for listener in self.chunk_listeners:
                        listener(index)
            for report in self.progress:
                report(self.partial.present_bytes(), self.manifest.size)
        except CorruptChunk:
            log.warning("peer %s sent a corrupt chunk %d of %s: dropped for this file",
                        peer[:12], pending[0], self.manifest.sha1[:12])
            self.scheduler.drop_peer(peer, "corrupt chunk")
        except (StorageFull, StoreFailed) as exc:  # our disk, not the peer: no use asking others
            if self._local_failure is None:
                self._local_failure = exc
        except PeerBusy:  # the peer sent these chunks to enough others: ask them first
            self.failures["busy"] = self.failures.get("busy", 0) + len(pending)
            for index in pending:
                self.scheduler.on_chunk_declined(peer, index, trio.current_time())
        except PeerGone:
            current = self.node.session_for(peer)
            if current is not None and current is not provider.session:
                # the old path of an upgraded peer closed under this request: ask again on the new one
                for index in pending:
                    self.scheduler.on_chunk_failed(peer, index, trio.current_time())
            else:
                self.scheduler.remove_peer(peer)
        except (KacheryError, trio.TooSlowError) as exc:
            why = type(exc).__name__
            self.failures[why] = self.failures.get(why, 0) + len(pending)
            for index in pending:
                self.scheduler.on_chunk_failed(peer, index, trio.current_time())
            if isinstance(exc, trio.TooSlowError):
                # We stopped waiting; a reply would now be dropped here. Without a Cancel, a busy
                # provider (a capped seeder facing a crowd) would still send it later, in the time of
                # requests that are still wanted: past a point it served only abandoned requests.
                with contextlib.suppress(PeerGone):
                    await provider.session.send(Cancel(req=req))
        finally:
            # Chunks still this request's that did not come go back to the queue: "in flight" at
            # this peer with nothing asking for them, they would hold the download forever when no
            # other peer holds them (such requests never expire).
            for index in run:
                if self._requests.get((peer, index)) is scope:
                    del self._requests[(peer, index)]
                    self.scheduler.on_request_ended(peer, index)
            del self._run_of[scope]
            self._wake()

    def _cancel(self, peer: str, chunk: int) -> None:
        """``chunk`` is no longer wanted from ``peer`` (the scheduler has already released it).
        Its request is cancelled once none of its chunks is: a run that lost one chunk to an
        endgame duplicate still brings the others, rather than losing them all to a re-request."""
        scope = self._requests.pop((peer, chunk), None)
        if scope is not None and not any(self._requests.get((peer, c)) is scope for c in self._run_of[scope]):
            scope.cancel()

    async def _write_chunk(self, index: int, data, queued=None) -> None:
        """Verify and store a chunk (``queued``: already submitted to the pipeline); on a full disk,
        evict least recently used cached copies (never files stored here) to fit what is still
        wanted of this download, and retry."""
        try:
            await self.pipeline.result(queued if queued is not None else self.pipeline.submit(index, data))
        except StorageFull:
            chunk = self.manifest.chunk_size
            still = sum(1 for c in self.scheduler.needed if not self.partial.has_chunk(c)) * chunk
            evicted = len(await trio.to_thread.run_sync(self.node.store.evict_bytes, max(still, chunk),
                                                        limiter=self._limiter))
            if not evicted:
                raise
            log.info("disk full while fetching %s: evicted %d cached copies to make room",
                     self.manifest.sha1[:12], evicted)
            await self.pipeline.store(index, data)

    def _follow_upgrade(self, peer: str) -> None:
        """The peer's session was replaced (a hole punch upgraded a relayed one): new requests go
        to the new session; those in flight finish on the old one, which then closes."""
        provider = self.by_peer[peer]
        current = self.node.session_for(peer)
        if current is not None and current is not provider.session and current.channel_ids:
            self.by_peer[peer] = Provider(current, provider.size, provider.manifest_sha1, provider.have)

    async def _refresh_providers(self) -> None:
        """Providers that appeared since the download started (or came back) join it. While some
        needed chunks are held by no provider we know (all of them partial), the find asks for
        fresh answers and goes on until it meets a whole provider; and the partial providers are
        asked what they hold now (their Have messages reach a bounded number of peers)."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            await self._refresh(self.scheduler.unavailable() > 0)
        finally:
            self._refreshing = False

    async def _refresh(self, starving: bool) -> None:
        if starving:  # the partial providers asked, and a few candidates (what we know of them may be old)
            candidates = [p for p in self.by_peer if p not in self._joined]
            self._random.shuffle(candidates)
            async with trio.open_nursery() as nursery:
                for peer in list(self._joined) + candidates[:self.max_active]:
                    provider = self.by_peer[peer]
                    if provider.have is not None and not provider.session.closed.is_set():
                        nursery.start_soon(self._ask_holdings, provider.session)
        try:
            providers = await self.node.find(self.manifest.sha1, whole=starving)
        except KacheryError:
            return
        for provider in providers:
            self.peer_has(provider.session, provider.have)

    async def _ask_holdings(self, session) -> None:
        try:
            reply = await session.request(FindRequest(req=session.next_req(), sha1=self.manifest.sha1), 5.0)
        except (KacheryError, trio.TooSlowError):
            return
        if isinstance(reply, FindResponse) and reply.found:
            self.peer_has(session, reply.chunks)

    def summary(self) -> dict:
        """Where this download's time went and where its chunks came from (status, benchmarks)."""
        stats = self.scheduler.stats
        return {"sha1": self.manifest.sha1, "size": self.manifest.size, "chunks": len(self.manifest.chunk_sha1s),
                "timeline": dict(self.timeline), "chunks_from": dict(self.chunks_from),
                "failures": dict(self.failures), "idle_s": round(self.idle_seconds, 4),
                "requests": stats.requests, "moves": stats.moves, "duplicates": stats.duplicates,
                "providers": len(self.ever_active), "known_providers": len(self.by_peer),
                "replaced": self.replaced, "late_replies": self.late_replies}

    async def run(self) -> None:
        """Fetch what is wanted, as it is wanted, until the object is complete; then install it.
        Failures end up in ``self.error`` for the waiters."""
        scheduler = self.scheduler
        try:
            failure = None
            refreshed = replanned = trio.current_time()
            idle_since = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.pipeline.run)
                if self._unkept_manifest is not None:
                    nursery.start_soon(self._keep_manifest)
                while not self.partial.is_complete():
                    now = trio.current_time()
                    if idle_since is not None:
                        self.idle_seconds += now - idle_since
                        idle_since = None
                    if now - refreshed > PROVIDER_REFRESH_SECONDS and not self.scheduler.done():
                        refreshed = now
                        nursery.start_soon(self._refresh_providers)
                    for peer, index in scheduler.expired(now):
                        log.info("chunk %d of %s from %s timed out", index, self.manifest.sha1[:12], peer[:12])
                    left = self._sync_joined()
                    for peer in scheduler.peers:
                        if self.by_peer[peer].session.closed.is_set():
                            self._follow_upgrade(peer)
                        if self.by_peer[peer].session.closed.is_set():
                            self._leave(peer)
                            left = True
                    if left or now - replanned >= REPLAN_SECONDS:
                        replanned = now
                        self._replan(now)
                    for peer in scheduler.peers:
                        self._follow_upgrade(peer)
                        for run in _runs(scheduler.next_requests(peer, now), CHUNKS_PER_REQUEST):
                            self._start_run(nursery, peer, run)
                    for peer, index in scheduler.take_cancelled():
                        self._cancel(peer, index)
                    if self._local_failure is not None:
                        failure = self._local_failure
                        break
                    if scheduler.stalled():
                        # kept, not raised, inside the nursery: it would come out as an ExceptionGroup
                        reasons = sorted({p.session.close_reason for p in self.by_peer.values()
                                          if p.session.closed.is_set() and p.session.close_reason})
                        failure = FetchFailed(
                            f"all providers of {self.manifest.sha1[:12]} failed or left "
                            f"({self.partial.present_bytes()} of {self.manifest.size} bytes kept for resuming)"
                            + "".join(f"; {reason}" for reason in reasons))
                        break
                    if not scheduler.requests_in_flight() and not scheduler.done():
                        idle_since = trio.current_time()  # waiting for a Have, a provider, a reader
                    with trio.move_on_after(1.0):
                        await self._changed.wait()
                last_chunk = time.monotonic()
                hashed_at_last = self.partial.hashed_chunks()
                if failure is None:  # the hash stage holds the last chunks' bytes: let it finish
                    with trio.move_on_after(REQUEST_TIMEOUT):
                        await self.pipeline.hashed.wait()
                nursery.cancel_scope.cancel()  # endgame duplicates still in flight
            hashed = time.monotonic()
            self.timeline["complete"] = hashed
            if isinstance(failure, StorageFull):
                # Full even after evicting cached copies: give the space back rather than keep a
                # partial that cannot complete (it would keep the disk full for everything else).
                await trio.to_thread.run_sync(self.partial.abort)
                raise StorageFull(f"fetching {self.manifest.sha1[:12]} ({self.manifest.size} bytes) into "
                                  f"{self.node.store.root}; the partial download was discarded")
            if failure is not None:
                raise failure
            self.result = await trio.to_thread.run_sync(self._install)
            installed = time.monotonic()
            self.timeline["installed"] = installed
            elapsed = installed - self.started
            stats = self.scheduler.stats
            self.node.note_download(self.summary())
            log.info("fetched %s: %d bytes in %.2fs (%.0f MB/s) from %d peers (chunks from each: %s; "
                     "%d requests moved, %d endgame duplicates; after the last chunk: whole-file hash "
                     "%.2fs from chunk %d of %d, install %.2fs)", self.manifest.sha1[:12],
                     self.manifest.size, elapsed, self.manifest.size / max(elapsed, 1e-6) / 1e6, len(self.by_peer),
                     " ".join(f"{p[:6]}:{n}" for p, n in sorted(self.chunks_from.items(), key=lambda i: -i[1])),
                     stats.moves, stats.duplicates, hashed - last_chunk, hashed_at_last, self.partial.num_chunks,
                     installed - hashed)
        except KacheryError as exc:
            self.error = exc  # waiters raise it; run itself returns, so nurseries see no error group
        except Exception as exc:  # a bug must fail this download, not take the daemon down
            log.exception("download of %s crashed", self.manifest.sha1[:12])
            self.error = KacheryError(f"internal error while fetching {self.manifest.sha1[:12]}: {exc!r}")
        finally:
            self.settled.set()
            self._wake()
