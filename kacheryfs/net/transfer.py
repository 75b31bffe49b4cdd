"""Fetching an object from several providers at once, every chunk verified before it is kept.

Small objects (one chunk) come in one request and are checked against their SHA-1. Larger ones
need their manifest (from the URI, else from a provider: it is itself an object, verified against
the manifest hash the provider announced). Each chunk is checked against the manifest before it is
written; the whole-file SHA-1 is checked at the end. A provider that sends bytes failing
verification is dropped for this file and logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

import trio

from ..errors import CorruptObject, KacheryError, ObjectNotFound
from ..protocol.messages import ChunkData, ChunkRequest
from ..store import CHUNK_SIZE, Manifest, StoredObject
from ..store.partial import CorruptChunk, PartialObject
from .scheduler import ChunkScheduler
from .session import PeerGone, RequestFailed

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 20.0
MAX_SMALL_OBJECT = 64 << 20  # manifests and small files are fetched whole, in 1 MiB requests

Progress = Callable[[int, int], None]  # (bytes done, total)


class FetchFailed(KacheryError):
    """Could not fetch the file from any peer"""


async def _request_range(provider, sha1: str, offset: int, length: int, node) -> bytes:
    session = provider.session
    reply = await session.request(ChunkRequest(req=session.next_req(), sha1=sha1, offset=offset, length=length),
                                  REQUEST_TIMEOUT)
    if not isinstance(reply, ChunkData):
        raise RequestFailed("unexpected reply")
    node.counters.fetched_bytes += len(reply.payload)
    return reply.payload


async def fetch_small(node, providers, sha1: str, size: int) -> bytes:
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


async def fetch(node, sha1: str, manifest_sha1: str | None = None, progress: Progress | None = None) -> StoredObject:
    """Fetch ``sha1`` into the local store as a cached copy (re-served on the channels it came from)."""
    providers = await node.find(sha1)
    if not providers:
        raise ObjectNotFound(f"{sha1} was not found on any peer of this node's channels")
    size = providers[0].size
    channel_ids = frozenset().union(*(p.session.channel_ids for p in providers))
    if size <= CHUNK_SIZE:
        data = await fetch_small(node, providers, sha1, size)
        obj = await trio.to_thread.run_sync(lambda: node.store.put_bytes(data, pinned=False))
        node.store.index.add_channels(sha1, channel_ids)
        if progress:
            progress(size, size)
        return obj
    manifest = await _get_manifest(node, providers, sha1, size, manifest_sha1)
    obj = await _fetch_chunks(node, providers, manifest, progress)
    node.store.index.add_channels(sha1, channel_ids)
    node.store.index.add_channels(manifest.manifest_sha1, channel_ids)
    return obj


async def _get_manifest(node, providers, sha1: str, size: int, manifest_sha1: str | None) -> Manifest:
    candidates = [manifest_sha1] if manifest_sha1 else []
    candidates += [p.manifest_sha1 for p in providers if p.manifest_sha1 and p.manifest_sha1 not in candidates]
    for candidate in candidates:
        if node.store.info(candidate) is not None:
            raw = node.store.read_bytes(candidate)
        else:
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
        await trio.to_thread.run_sync(lambda: node.store.put_bytes(raw, pinned=False))
        return manifest
    raise FetchFailed(f"no usable manifest for {sha1}")


async def _fetch_chunks(node, providers, manifest: Manifest, progress: Progress | None) -> StoredObject:
    partial = await trio.to_thread.run_sync(PartialObject.open, node.store, manifest)
    try:
        scheduler = ChunkScheduler(len(manifest.chunk_sha1s), partial.missing_chunks())
        by_peer = {p.session.peer_id: p for p in providers}
        for peer in by_peer:
            scheduler.add_peer(peer)
        changed = trio.Event()
        limiter = trio.CapacityLimiter(4)  # threads verifying and writing chunks
        started = time.monotonic()

        def wake() -> None:
            nonlocal changed
            changed.set()
            changed = trio.Event()

        async def get_chunk(peer: str, index: int) -> None:
            start, end = manifest.chunk_range(index)
            try:
                data = await _request_range(by_peer[peer], manifest.sha1, start, end - start, node)
                if not partial.has_chunk(index):
                    await trio.to_thread.run_sync(partial.write_chunk, index, data, limiter=limiter)
                scheduler.on_chunk_ok(peer, index, len(data), trio.current_time())
                if progress:
                    progress(partial.present_bytes(), manifest.size)
            except CorruptChunk:
                log.warning("peer %s sent a corrupt chunk %d of %s: dropped for this file",
                            peer[:12], index, manifest.sha1[:12])
                scheduler.drop_peer(peer, "corrupt chunk")
            except PeerGone:
                scheduler.remove_peer(peer)
            except (KacheryError, trio.TooSlowError):
                scheduler.on_chunk_failed(peer, index, trio.current_time())
            finally:
                wake()

        async with trio.open_nursery() as nursery:
            while not scheduler.done():
                now = trio.current_time()
                for peer, index in scheduler.expired(now):
                    log.info("chunk %d of %s from %s timed out", index, manifest.sha1[:12], peer[:12])
                for peer in list(scheduler.peers):
                    if by_peer[peer].session.closed.is_set():
                        scheduler.remove_peer(peer)
                        continue
                    for index in scheduler.next_requests(peer, now):
                        nursery.start_soon(get_chunk, peer, index)
                if scheduler.stalled():
                    raise FetchFailed(f"all providers of {manifest.sha1[:12]} failed or left "
                                      f"({partial.present_bytes()} of {manifest.size} bytes kept for resuming)")
                with trio.move_on_after(1.0):
                    await changed.wait()
        obj = await trio.to_thread.run_sync(partial.finish)
        elapsed = time.monotonic() - started
        log.info("fetched %s: %d bytes in %.2fs (%.0f MB/s) from %d peers", manifest.sha1[:12], manifest.size,
                 elapsed, manifest.size / max(elapsed, 1e-6) / 1e6, len(by_peer))
        return obj
    finally:
        partial.close()
