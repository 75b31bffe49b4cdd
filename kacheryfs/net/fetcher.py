"""What the filesystem, the local API and the Python API need from the network: locate, fetch
whole, or read lazily through a shared download per object."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import trio

from ..errors import KacheryError, ObjectNotFound, StorageFull, from_os_error
from ..store import clone
from .interfaces import FetcherHost
from .pipeline import Sink, close_all
from .transfer import Download, fetch_small_into_store, locate_manifest  # at start, not at the first open

log = logging.getLogger(__name__)


class RemoteReader:
    """A handle's view of a lazily fetched object: reads wait only for the chunks they cover;
    sequential reading widens a read-ahead window up to bulk download."""

    MAX_AHEAD = 256  # chunks: ~1 s of a bulk download, so a sequential reader never waits on a window

    def __init__(self, fetcher: "NetworkFetcher", sha1: str, running: "_RunningDownload"):
        self.fetcher = fetcher
        self.sha1 = sha1
        self.running = running
        download = self.download = running.download
        self.size = download.manifest.size
        self._next_offset = -1
        self._ahead = 0
        self._streak = 0  # bytes read sequentially so far
        self._wanted_until = 0  # chunks before this were asked for by this reader's read-ahead

    @property
    def installed(self) -> bool:
        """The download has completed: the object is in the store."""
        return self.download.result is not None

    async def read(self, offset: int, size: int) -> bytes:
        download = self.download
        if download.result is not None:  # complete and installed: read the object
            return await self._read_installed(offset, size)
        self._streak = self._streak + size if offset == self._next_offset else size
        # Read ahead only once a reader has gone sequentially through more than the kernel's own
        # read-ahead would (a header read, an mmap fault) -- then double up to bulk download.
        if self._streak > 2 * download.manifest.chunk_size:
            self._ahead = min(max(2, self._ahead * 2), self.MAX_AHEAD)
            covered = download.manifest.chunks_covering(offset, size)
            first = (covered[-1] + 1) if len(covered) else offset // download.manifest.chunk_size
            last = min(first + self._ahead, len(download.manifest.chunk_sha1s))
            if last > self._wanted_until:  # only the new end of the window: a read per 128 KiB-1 MiB
                download.want(range(max(first, self._wanted_until), last))  # need not re-walk 256 chunks
                self._wanted_until = last
        else:
            self._ahead = 0  # random access stays lazy
            self._wanted_until = 0
        self._next_offset = offset + size
        try:
            return await download.read(offset, size)
        except KacheryError:
            # The partial file may have just been completed and moved into the store under us.
            with trio.move_on_after(30):
                await download.settled.wait()
            if download.result is not None:
                return await self._read_installed(offset, size)
            raise

    async def _read_installed(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(self.fetcher.node.store.read_range, self.sha1, offset, size)

    def close(self) -> None:
        self.fetcher.release(self.sha1, self.running)


@dataclass
class _RunningDownload:
    download: object
    scope: trio.CancelScope
    refs: int = 0
    dropped: bool = False


class NetworkFetcher:
    """What the filesystem, the local API and the Python API need from the network.

    There is at most one download per object: whole fetches (``fetch``) and lazy readers
    (``open_remote``) of the same object share it, so a chunk is never fetched twice.
    """

    def __init__(self, node: FetcherHost):
        self.node = node
        self._downloads: dict[str, _RunningDownload] = {}
        self._opening: dict[str, trio.Lock] = defaultdict(trio.Lock)
        self._restoring: set[str] = set()

    async def locate(self, sha1: str) -> int | None:
        """The size of ``sha1`` if a channel peer holds it (bounded wait), else None."""
        providers = await self.node.find(sha1)
        return providers[0].size if providers else None

    async def _acquire(self, sha1: str, manifest_sha1: str | None = None) -> _RunningDownload | None:
        """The running download of ``sha1`` (started if need be, one more user), or None once the
        object is local (one-chunk objects are fetched whole right here)."""
        lock = self._opening[sha1]
        try:
            async with lock:
                return await self._acquire_locked(sha1, manifest_sha1)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._opening.pop(sha1, None)  # one lock per object ever opened would only grow

    async def _acquire_locked(self, sha1: str, manifest_sha1: str | None) -> _RunningDownload | None:
        if await self._held(sha1) is not None:
            return None
        running = self._downloads.get(sha1)
        if running is None or running.download.settled.is_set():
            if running is not None:  # a failed one: start afresh, resuming its chunks
                self._drop(sha1, running)
            timeline = {"asked": time.monotonic()}  # monotonic: comparable across processes (benchmarks)
            providers, manifest, fetched = await locate_manifest(self.node, sha1, manifest_sha1, timeline)
            if manifest is None:
                await fetch_small_into_store(self.node, providers, sha1)
                return None
            download = await Download.start(self.node, manifest, providers, fetched)
            download.timeline = {**timeline, **download.timeline}
            self.node.swarm.add(download)  # its verified chunks are served while it runs
            if self.node.swarm.enabled:
                self.node.provide(sha1)  # in the DHT too, as a BitTorrent leecher announces itself
            scope = await self.node.start(self._run_download, download)
            running = self._downloads[sha1] = _RunningDownload(download, scope)
        running.refs += 1
        return running

    async def _held(self, sha1: str):
        """The object's record if it is here (the index, off the trio thread)."""
        return await trio.to_thread.run_sync(self.node.store.info, sha1)

    async def fetch(self, sha1: str, manifest_sha1: str | None = None, progress=None,
                    dest_fd: int | None = None) -> None:
        """The whole object, verified, into the store; with ``dest_fd`` (an empty file opened by the
        user, ``load --dest``) into that file too, each byte written once where the filesystem
        allows (store/clone.py): reflinked from the installed object, or else streamed from each
        verified chunk's buffer while the store's copy is written (never copied afterwards)."""
        if dest_fd is not None:  # every call on the user's file off the trio thread: it may be on a
            store = self.node.store  # slow filesystem, or another node's FUSE mount
            await trio.to_thread.run_sync(
                clone.check_dest, dest_fd, [store.object_path(sha1), store.partial_dir / f"{sha1}.part"])
        running = await self._acquire(sha1, manifest_sha1)
        if running is None:
            if progress is not None:
                size = (await self._held(sha1)).size
                progress(size, size)
            if dest_fd is not None:
                await self._copy_out(sha1, dest_fd)
            return
        download = running.download
        sink = None
        if progress is not None:
            download.progress.append(progress)
        try:
            try:
                await self._check_room(download)
            except StorageFull:
                if running.refs == 1 and download.partial.present_bytes() == 0:
                    download.partial.abort()  # nothing in it, nobody else reading: leave no trace
                raise
            if dest_fd is not None and not await trio.to_thread.run_sync(
                    clone.can_reflink, self.node.store.tmp_dir, dest_fd):
                sink = await trio.to_thread.run_sync(Sink, dest_fd)  # (opens it again, O_DIRECT)
                sink.closer = functools.partial(self._close_later, sink)
                await download.pipeline.add_sink(sink)
            download.want(range(len(download.manifest.chunk_sha1s)))
            await download.wait_complete()
            if sink is not None and sink.error is not None:
                raise sink.error
            if dest_fd is not None and sink is None:
                await self._copy_out(sha1, dest_fd)
        finally:
            if sink is not None:
                download.pipeline.remove_sink(sink)
                if sink.error is None:  # closed before the answer: on a FUSE mount, dest is
                    await sink.closed.wait()  # committed by its daemon when the last descriptor closes
            if progress is not None:
                download.progress.remove(progress)
            self.release(sha1, running)

    def _close_later(self, sink: Sink, fds: list[int]) -> None:
        """Close a sink's descriptors in a worker thread: dest may be on a FUSE mount (another
        node's), whose daemon answers the flush of every close; the trio thread must not wait."""
        async def close() -> None:
            try:
                await trio.to_thread.run_sync(close_all, fds)
            finally:
                sink.closed.set()

        try:
            self.node.start_soon(close)
        except RuntimeError:  # shutting down: close them here
            close_all(fds)
            sink.closed.set()

    async def _copy_out(self, sha1: str, dest_fd: int) -> None:
        """A held object into the user's file: its chunks checked first (bit rot; free for what this
        daemon verified on arrival), then reflinked or copied in the kernel."""
        store = self.node.store

        def copy() -> None:
            record = store.require(sha1)
            store.integrity.verify(sha1, 0, max(record.size, 1), record=record)
            try:
                fd = os.open(store.object_path(sha1), os.O_RDONLY)
            except FileNotFoundError:
                raise ObjectNotFound(f"{sha1} (evicted while it was being copied out: load it again)") from None
            try:
                clone.copy_into(fd, dest_fd, record.size)
            except OSError as exc:
                raise from_os_error(exc, "writing the destination file") from None
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(copy)

    async def _check_room(self, download) -> None:
        """A whole fetch that cannot fit, even after evicting every cached copy, fails at once
        (a lazy reader may still read parts of it, so open_remote does not check)."""
        store = self.node.store
        need = download.manifest.size - download.partial.present_bytes()
        free, cached = await trio.to_thread.run_sync(
            lambda: (store.disk_usage().free, sum(size for _s, size, _m in store.index.cached_by_age())))
        if free + cached < need:  # evicting would not help: keep the cache
            raise StorageFull(f"{download.manifest.sha1} needs {need} bytes; {free} are free in {store.root} "
                              f"and cached copies that could be evicted take {cached}")
        await trio.to_thread.run_sync(store.evict_bytes, need)

    async def open_remote(self, sha1: str, manifest_sha1: str | None = None) -> RemoteReader | None:
        """For a read through the mount: a lazy reader, or None once the object is local. A manifest
        hash from the reader's URI is tried before the ones providers name."""
        running = await self._acquire(sha1, manifest_sha1)
        return None if running is None else RemoteReader(self, sha1, running)

    async def _run_download(self, download, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sha1 = download.manifest.sha1
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await download.run()
                running = self._downloads.get(sha1)
                if running is not None and running.download is download and running.refs <= 0:
                    self._drop(sha1, running)  # its last user left while it installed
        finally:
            if download.result is not None:
                self.node.swarm.finish(sha1)  # interested peers learn we hold it all
                self.node.provide(sha1)
            else:
                self.node.swarm.drop(sha1, download)

    def _drop(self, sha1: str, running: _RunningDownload) -> None:
        if self._downloads.get(sha1) is running:
            del self._downloads[sha1]
        if not running.dropped:
            running.dropped = True
            self.node.swarm.drop(sha1, running.download)  # no longer served from its partial file
            running.scope.cancel()  # what was fetched stays in the partial file, for resuming
            running.download.close()

    def release(self, sha1: str, running: _RunningDownload) -> None:
        """One user of this download is done (the one it acquired, even if since replaced)."""
        running.refs -= 1
        if running.refs <= 0:
            if running.download.partial.is_complete() and not running.download.settled.is_set():
                # Every chunk is here: let it install (hash, fsync, rename, index) rather than
                # cancel it half way, which left a complete object in partial/, not served.
                return
            self._drop(sha1, running)

    def rot_handler(self):
        """What store.integrity.on_rotten should be: restore(), callable from the worker thread that
        found the rot (run on the trio thread, soon)."""
        token = trio.lowlevel.current_trio_token()

        def handler(record) -> None:
            try:
                token.run_sync_soon(self.restore, record)
            except trio.RunFinishedError:
                pass

        return handler

    def restore(self, record) -> None:
        """A stored object turned out rotten and was quarantined (store/integrity.py): fetch a good
        copy from channel peers, in the background, and pin it again if it was stored here."""
        if record.sha1 in self._restoring:
            return
        try:
            self.node.start_soon(self._restore, record)
            self._restoring.add(record.sha1)
        except RuntimeError as exc:  # shutting down
            log.debug("restore of %s skipped: %s", record.sha1[:12], exc)

    async def _restore(self, record) -> None:
        try:
            await self.fetch(record.sha1, record.manifest_sha1)
        except KacheryError as exc:
            log.error("could not restore quarantined object %s from peers: %s", record.sha1, exc)
            return
        finally:
            self._restoring.discard(record.sha1)
        await trio.to_thread.run_sync(self.node.store.integrity.restored, record)
        log.warning("restored quarantined object %s from peers", record.sha1)

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None:
        """Tell channel peers, in the background: a slow peer must not delay close(), and a
        failed announce must never fail the write, which is already stored."""
        try:
            self.node.start_soon(self.node.announce, sha1, size, manifest_sha1)
        except RuntimeError as exc:  # the node is not running, or shutting down
            log.debug("announce of %s skipped: %s", sha1[:12], exc)

    def stats(self) -> dict:
        return self.node.status()
