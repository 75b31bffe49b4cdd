"""Partially downloaded objects: chunks of a remote file land here, each verified against the
manifest before it is written, and survive a restart so a download resumes from what it has.

Layout, next to tmp/ (not in it: ``LocalStore.reconcile`` empties tmp/ of dead processes' files,
and a partial must outlive its process):

    <root>/partial/<sha1>.part     the file at its final size, sparse; chunk i at i * chunk_size
    <root>/partial/<sha1>.bitmap   header naming the manifest, then one bit per chunk (1 = present)

Durability: a set bit is only a hint. ``open`` re-verifies every marked chunk (read + SHA-1 at
~1.9 GB/s, paid once per resume) and clears the bits that fail. So no write needs an fsync or an
ordering barrier: kill -9 loses nothing (the page cache survives the process), and a power cut
that tears the data or the bitmap costs at most a re-download of the torn chunks, never a wrong
byte. The alternative, fdatasync before each mark, would put a disk flush on every chunk of every
download to protect the rare crash. The bitmap is updated one byte in place (no temp + rename per
chunk) because a torn or stale bitmap is harmless for the same reason. The bitmap still earns its
keep: without it a resume would have to hash the whole file, holes included.

Whole-file SHA-1: a running hash advances over the contiguous prefix of present chunks as they
arrive (reading back chunks that arrived early, from the page cache), so ``finish`` normally has
nothing left to hash and an in-order download never reads its bytes back at all. ``store_chunks``
(verify + write, from several threads at once) and ``advance_hash`` (the in-order hash, from one)
are separate so a download can run them as separate stages on both cores (net/pipeline.py);
``write_chunk`` does both for one chunk.

Writes start their own writeback (``sync_file_range``), so the disk works while the download runs
and the fsync before install finds little left to write.

Only one PartialObject per object at a time, across processes: the .part file is flock'ed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

from ..errors import ChunkNotPresent, CorruptChunk, CorruptObject, KacheryError, StoreFailed, from_os_error
from .hashing import Digest, chunk_sum
from .local import LocalStore, StoredObject, start_writeback
from .manifest import Manifest
from .uri import is_sha1_hex

_MAGIC = b"kacheryfs-partial-v1 "


def _header(manifest: Manifest) -> bytes:
    # Names the manifest, so a bitmap written for another chunking of the same sha1 is not trusted.
    return _MAGIC + manifest.manifest_sha1.encode() + b"\n"


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:  # the .part file is kept at full size: a short read means it was cut
        raise StoreFailed(f"partial file shorter than expected at offset {offset}")
    return data


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class PartialObject:
    """Chunks of a remote object as they arrive; verified chunk by chunk; resumable after a restart.

    ``write_chunk`` may be called from several threads at once (different or equal chunks).
    ``open`` and ``finish`` read and hash, so run them in a worker thread too.
    """

    def __init__(self, store: LocalStore, manifest: Manifest, fd: int, bitmap_fd: int,
                 part_path: Path, bitmap_path: Path):
        self.store = store
        self.manifest = manifest
        self.sha1 = manifest.sha1
        self.size = manifest.size
        self.num_chunks = len(manifest.chunk_sha1s)
        self.part_path = part_path
        self.bitmap_path = bitmap_path
        self._fd = fd
        self._bitmap_fd = bitmap_fd
        self._bits_offset = len(_header(manifest))
        self._bits = bytearray((self.num_chunks + 7) // 8)
        self._present_count = 0
        self._present_bytes = 0
        self._closed = False
        # _lock guards the bitmap, the counters and the fds' lifetime; no I/O runs under it (readers
        # on the trio thread take it). I/O runs inside _io(), which keeps the fds open meanwhile (no
        # write to a closed, maybe reused, fd number); close waits for those to end.
        # _hash_lock serializes the running whole-file hash; _bitmap_lock orders bitmap writes.
        self._lock = threading.Lock()
        self._io_done = threading.Condition(self._lock)
        self._io_users = 0
        self._hash_lock = threading.Lock()
        self._bitmap_lock = threading.Lock()
        self._hasher = hashlib.sha1()
        self._hashed_chunks = 0
        self._sums: list[bytes | None] = [None] * self.num_chunks  # xxh3 of each verified chunk
        self._flush_error: OSError | None = None  # a failed flush behind (sync_data), for finish()

    # --- opening and resuming

    @classmethod
    def open(cls, store: LocalStore, manifest: Manifest) -> "PartialObject":
        """Create ``<root>/partial/<sha1>.part``, or resume it, keeping only chunks that re-verify."""
        _check_manifest(manifest)
        part_path = store.partial_dir / f"{manifest.sha1}.part"
        bitmap_path = store.partial_dir / f"{manifest.sha1}.bitmap"
        fd = bitmap_fd = -1
        try:
            store.partial_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreFailed(f"{manifest.sha1} is already being downloaded by another process") from None
            bitmap_fd = os.open(bitmap_path, os.O_RDWR | os.O_CREAT, 0o600)
            obj = cls(store, manifest, fd, bitmap_fd, part_path, bitmap_path)
            obj._resume()
            return obj
        except BaseException as exc:
            for f in (bitmap_fd, fd):
                if f >= 0:
                    os.close(f)
            if isinstance(exc, OSError):
                raise from_os_error(exc, f"opening partial download {manifest.sha1}") from None
            raise

    def _resume(self) -> None:
        header = _header(self.manifest)
        saved = os.pread(self._bitmap_fd, self._bits_offset + len(self._bits) + 1, 0)
        if saved[:self._bits_offset] == header and len(saved) == self._bits_offset + len(self._bits):
            marked = bytes(saved[self._bits_offset:])
        else:  # new, or written for another manifest, or torn: start from nothing
            marked = bytes(len(self._bits))
            os.ftruncate(self._fd, 0)  # frees the blocks of any stale data
            os.ftruncate(self._bitmap_fd, 0)
            _pwrite_all(self._bitmap_fd, header + marked, 0)
        if os.fstat(self._fd).st_size != self.size:
            os.ftruncate(self._fd, self.size)
        prefix = True  # every chunk so far verified: keep the whole-file hash going
        for i in range(self.num_chunks):
            if not marked[i >> 3] >> (i & 7) & 1:
                prefix = False
                continue
            start, end = self.manifest.chunk_range(i)
            data = _pread_exact(self._fd, end - start, start)
            if hashlib.sha1(data).hexdigest() != self.manifest.chunk_sha1s[i]:
                prefix = False  # lost or torn in a crash: the bit is dropped below
                continue
            self._sums[i] = chunk_sum(data)
            self._bits[i >> 3] |= 1 << (i & 7)
            self._present_count += 1
            self._present_bytes += end - start
            if prefix:
                self._hasher.update(data)
                self._hashed_chunks += 1
        if bytes(self._bits) != marked:
            _pwrite_all(self._bitmap_fd, self._bits, self._bits_offset)

    # --- state

    def _has(self, i: int) -> bool:
        return bool(self._bits[i >> 3] >> (i & 7) & 1)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreFailed(f"partial download {self.sha1} is closed")

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.num_chunks:
            raise ValueError(f"chunk {i} out of range (object has {self.num_chunks})")

    def has_chunk(self, i: int) -> bool:
        self._check_index(i)
        with self._lock:
            return self._has(i)

    def missing_chunks(self) -> list[int]:
        with self._lock:
            return [i for i in range(self.num_chunks) if not self._has(i)]

    def bitmap(self) -> bytes:
        """The chunks present: bit i of byte i // 8 (a copy)."""
        with self._lock:
            return bytes(self._bits)

    def present_bytes(self) -> int:
        with self._lock:
            return self._present_bytes

    def is_complete(self) -> bool:
        with self._lock:
            return self._present_count == self.num_chunks

    # --- writing

    class _IO:
        """While inside, the fds stay open (close waits); raises StoreFailed if already closed."""

        __slots__ = ("partial",)

        def __init__(self, partial: "PartialObject"):
            self.partial = partial

        def __enter__(self) -> None:
            p = self.partial
            with p._lock:
                p._check_open()
                p._io_users += 1

        def __exit__(self, *exc) -> None:
            p = self.partial
            with p._lock:
                p._io_users -= 1
                if p._io_users == 0:
                    p._io_done.notify_all()

    def _io(self) -> "_IO":
        return PartialObject._IO(self)

    def write_chunk(self, i: int, data) -> None:
        """Verify chunk ``i`` against the manifest, then store it; bad bytes raise CorruptChunk."""
        self.store_chunk(i, data)
        self.advance_hash({i: data})

    def store_chunks(self, chunks) -> list[KacheryError | None]:
        """Verify and store several ``(index, bytes)``; for each, None or the error (CorruptChunk,
        StorageFull, ...). The whole-file hash is left to ``advance_hash``. Blocking; any number of
        threads may call it at once."""
        results: list[KacheryError | None] = []
        for i, data in chunks:
            try:
                self.store_chunk(i, data)
                results.append(None)
            except KacheryError as exc:
                results.append(exc)
        return results

    def sync_data(self) -> None:
        """Make the chunks written so far durable (fdatasync; blocking), so the fsync before
        install waits only for the rest (store/flush_behind.py). Their bitmap bits are not synced:
        a bit lost in a crash costs a chunk fetched again, never a wrong byte."""
        with self._io():
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                # Kept for finish(): the kernel reports a writeback error once per descriptor, so the
                # fsync before install would not see it again and bad bytes could be installed.
                self._flush_error = exc
                raise

    def store_chunk(self, i: int, data) -> bool:
        """Verify chunk ``i`` against the manifest and write it (no whole-file hashing); False if it
        was here already. Bad bytes raise CorruptChunk and nothing is written."""
        self._check_index(i)
        start, end = self.manifest.chunk_range(i)
        if len(data) != end - start:
            raise CorruptChunk(f"chunk {i} of {self.sha1} is {len(data)} bytes, expected {end - start}")
        # Hashed outside every lock: verification is the costly part and runs on several cores.
        if hashlib.sha1(data).hexdigest() != self.manifest.chunk_sha1s[i]:
            raise CorruptChunk(f"chunk {i} of {self.sha1}")
        checksum = chunk_sum(data)
        with self._lock:
            self._check_open()
            if self._has(i):
                return False  # a duplicate (endgame, or a late reply): the bytes are already here
        with self._io():
            try:
                _pwrite_all(self._fd, data, start)
                start_writeback(self._fd, start, end - start)
            except OSError as exc:
                raise from_os_error(exc, f"writing chunk {i} of {self.sha1}") from None
            with self._lock:
                if self._has(i):
                    return False  # the same chunk, written meanwhile by another thread
                self._bits[i >> 3] |= 1 << (i & 7)
                self._present_count += 1
                self._present_bytes += end - start
                self._sums[i] = checksum
            with self._bitmap_lock:  # the byte as it is now: a later write never undoes a bit
                try:
                    _pwrite_all(self._bitmap_fd, self._bits[i >> 3:(i >> 3) + 1], self._bits_offset + (i >> 3))
                except OSError:
                    pass  # the bitmap is a hint: a lost bit costs a re-download after a restart
        return True

    def hashed_chunks(self) -> int:
        """Chunks at the start of the object fed to the whole-file hash so far."""
        return self._hashed_chunks

    def advance_hash(self, blocks=None, limit: int | None = None) -> int:
        """Feed the running whole-file hash every present chunk that extends its prefix (up to chunk
        ``limit``, exclusive), taking a chunk's bytes from ``blocks`` (index -> bytes just written)
        when there, else reading it back. Returns the number of chunks hashed so far. Blocking; one
        thread at a time hashes."""
        blocks = blocks or {}
        stop = self.num_chunks if limit is None else min(limit, self.num_chunks)
        with self._hash_lock:
            while True:
                with self._lock:
                    k = self._hashed_chunks
                    if self._closed or k >= stop or not self._has(k):
                        return k
                block = blocks.get(k)
                if block is None:
                    start, end = self.manifest.chunk_range(k)
                    try:
                        with self._io():
                            block = _pread_exact(self._fd, end - start, start)
                    except StoreFailed:
                        return k  # closed meanwhile
                self._hasher.update(block)
                self._hashed_chunks = k + 1

    # --- reading

    def read_into(self, offset: int, view) -> int:
        """``read`` into a caller's buffer: ``len(view)`` bytes (clipped to the object) from
        ``offset``; every covered chunk must be present. Returns the count."""
        size = max(0, min(len(view), self.size - offset))
        covered = self.manifest.chunks_covering(offset, size)
        with self._lock:
            self._check_open()
            missing = [c for c in covered if not self._has(c)]
        if missing:
            raise ChunkNotPresent(f"chunks {missing[:8]} of {self.sha1}")
        if size == 0:
            return 0
        with self._io():
            try:
                got = os.preadv(self._fd, [view[:size]], offset)
            except OSError as exc:
                raise from_os_error(exc, f"reading partial {self.sha1}") from None
        if got != size:
            raise StoreFailed(f"partial file shorter than expected at offset {offset}")
        return got

    def read(self, offset: int, size: int) -> bytes:
        """Bytes at [offset, offset + size) clipped to the object; every covered chunk must be present."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        covered = self.manifest.chunks_covering(offset, size)
        with self._lock:
            self._check_open()
            missing = [c for c in covered if not self._has(c)]
        if missing:
            raise ChunkNotPresent(f"chunks {missing[:8]} of {self.sha1}")
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        with self._io():
            try:
                return _pread_exact(self._fd, end - offset, offset)
            except OSError as exc:
                raise from_os_error(exc, f"reading partial {self.sha1}") from None

    def copy_range_to(self, fd: int, offset: int, length: int) -> None:
        """Copy [offset, offset + length) of the partial file into ``fd`` at the same offset, in
        the kernel (``copy_file_range``); the caller checked the range is present."""
        with self._io():
            done = 0
            while done < length:
                n = os.copy_file_range(self._fd, fd, length - done, offset + done, offset + done)
                if n == 0:
                    raise StoreFailed(f"partial file shorter than expected at offset {offset + done}")
                done += n

    # --- finishing

    def finish(self, pinned: bool = False) -> StoredObject:
        """Check the whole-file SHA-1 and install the object (and its manifest) into the store.

        On a mismatch (a manifest whose chunks agree with each other but not with its ``sha1``) the
        partial is deleted and CorruptObject raised. Downloaded copies default to unpinned (evictable).
        """
        with self._lock:
            self._check_open()
            if self._present_count != self.num_chunks:
                raise ChunkNotPresent(f"{self.num_chunks - self._present_count} chunks of {self.sha1} missing")
        self.advance_hash()
        with self._hash_lock:
            hashed_all = self._hashed_chunks == self.num_chunks
            whole = self._hasher.hexdigest()
        if not hashed_all:  # every chunk is present, so only a concurrent close() stops the hash
            with self._lock:
                self._check_open()
        if whole != self.manifest.sha1:
            self.abort()
            raise CorruptObject(f"downloaded {self.sha1} hashes to {whole}; partial discarded")
        sums = b"" if any(x is None for x in self._sums) else b"".join(self._sums)
        digest = Digest(self.sha1, self.size, self.manifest.chunk_sha1s, self.manifest.chunk_size, sums)
        try:
            with self._io():  # not under _lock: readers on the trio thread must not wait for the disk
                os.fsync(self._fd)
            if self._flush_error is not None:
                raise self._flush_error
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, f"installing {self.sha1}") from None
        with self._lock:
            self._check_open()
            try:
                # Installed while still holding the flock, so no other process reopens the .part meanwhile.
                obj = self.store.install_verified(self.part_path, digest, pinned)
                os.unlink(self.bitmap_path)
            except KacheryError:
                self._close_locked(remove=True)
                raise
            except OSError as exc:
                self._close_locked(remove=True)
                raise from_os_error(exc, f"installing {self.sha1}") from None
            self._close_locked(remove=False)
            return obj

    def abort(self) -> None:
        """Delete the partial files (idempotent)."""
        with self._lock:
            self._close_locked(remove=True)

    def close(self) -> None:
        """Release the files and keep them, to resume later (idempotent)."""
        with self._lock:
            self._close_locked(remove=False)

    def _close_locked(self, remove: bool) -> None:
        while self._io_users:  # reads and writes in other threads end first (they are short)
            self._io_done.wait()
        if remove:  # unlink before closing: the flock is still ours
            for path in (self.part_path, self.bitmap_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if not self._closed:
            self._closed = True
            os.close(self._bitmap_fd)
            os.close(self._fd)

    def __enter__(self) -> "PartialObject":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def _check_manifest(manifest: Manifest) -> None:
    # The sha1 becomes a file name: insist on 40 hex digits. The chunk count must fit the size.
    if not is_sha1_hex(manifest.sha1):
        raise CorruptObject("manifest sha1 is not 40 hex digits")
    if manifest.size < 0 or manifest.chunk_size <= 0:
        raise CorruptObject("manifest size or chunk_size is invalid")
    expected = max(1, -(-manifest.size // manifest.chunk_size))
    if len(manifest.chunk_sha1s) != expected:
        raise CorruptObject(f"manifest lists {len(manifest.chunk_sha1s)} chunks, size implies {expected}")


__all__ = ["PartialObject"]
