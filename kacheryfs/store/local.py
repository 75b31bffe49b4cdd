"""The local content-addressed store: ``<root>/sha1/ab/cd/ef/<sha1>``, as kachery-p2p laid it out.

Objects are written to ``<root>/tmp/`` while being hashed, fsynced, and renamed into place, so a
reader never sees a half-written object and a crash leaves only temp files (removed at next start).
Files larger than one chunk also get a manifest object (see manifest.py).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ..errors import IsADirectory, KacheryError, NoSuchFile, ObjectNotFound, StorageFull, StoreFailed, from_os_error
from .direct import aligned_length, gather, open_direct, write_aligned
from .directory import Directory, FileEntry, build_directory
from .hashing import CHUNK_SIZE, ContentHasher, Digest
from .index import Index, NameRecord, ObjectRecord
from .manifest import Manifest
from .uri import format_uri, is_sha1_hex

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20
FINGERPRINT_BLOCK = 64 << 10
INDEX_FILE = "kacheryfs-index.sqlite3"


@dataclass(frozen=True)
class StoredObject:
    sha1: str
    size: int
    manifest_sha1: str | None = None

    def uri(self, name: str = "") -> str:
        return format_uri(self.sha1, name, self.manifest_sha1)


@dataclass(frozen=True)
class ListedObject:
    sha1: str
    size: int
    stored: bool  # stored on this node (shared on all its channels), else a cached copy from peers
    pinned: bool  # pinned by the user: never evicted
    last_access: float
    names: tuple[str, ...]  # its names under store/
    manifest_of: str | None  # when this object is the chunk manifest of another

    @property
    def evictable(self) -> bool:
        return not (self.stored or self.pinned)


def _load_sync_file_range():
    try:
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing [offset, offset + length) of ``fd`` to disk now, without
    waiting for it (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``). Dirty pages otherwise wait
    for the dirty thresholds (gigabytes here) or 30 s, so a large write would reach the disk only
    at its fsync, all at once, instead of while it streams. Best effort: a no-op where unsupported."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObjectWriter:
    """A temp file that becomes an object on ``commit``.

    Bytes written in order are hashed as they arrive (one pass). Any out-of-order write or
    truncate marks the running hash stale and ``commit`` re-reads the file instead.

    ``pwrite`` writes and hashes in the caller's thread. A pipelined writer (fs/write_pipeline.py)
    splits that: ``claim`` each block in order (cheap: decides whether it extends the running hash
    and sets ``size``), then, in worker threads and in any interleaving, ``write_pieces`` it (each
    byte range always by the same thread, in order) and, if claimed for hashing, feed it to
    ``hash_whole`` and ``hash_chunks`` (each lane in order); all of them must have finished before
    ``truncate``, ``mark_modified`` or ``commit``.

    ``write_pieces`` goes with O_DIRECT where the filesystem allows it (store/direct.py): no fresh
    page cache to fill (~2 CPU-s per GiB in these VMs) and nothing left for the commit's fsync but
    the device flush. The object is then not in the page cache when it is first read.
    """

    def __init__(self, store: "LocalStore", pinned: bool = True):
        self._store = store
        self.pinned = pinned
        self.path = store.tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}.part"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._direct_fd = -1  # see use_direct
        self._direct = False  # O_DIRECT writes allowed (until the filesystem refuses one)
        self._hasher: ContentHasher | None = ContentHasher()
        self._hash_end = 0  # bytes [0, _hash_end) are (or are being) hashed, in order
        self.size = 0
        self.closed = False

    # writing
    def write(self, data) -> int:
        return self.pwrite(self.size, data)

    def pwrite(self, offset: int, data) -> int:
        try:
            written = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            raise from_os_error(exc, "writing") from None
        if written != len(data):  # a short write: treat the file as unhashed from here on
            self._hasher = None
        elif self._hasher is not None and offset == self._hash_end:
            self._hasher.update(data)
            self._hash_end += written
        else:
            self._hasher = None
        self.size = max(self.size, offset + written)
        return written

    def claim(self, offset: int, length: int) -> bool:
        """Book a block that will be written with ``write_pieces``; True if it extends the running
        hash (then both hash lanes must be fed it). Call in the order the blocks were written."""
        self.size = max(self.size, offset + length)
        if self._hasher is not None and offset == self._hash_end:
            self._hash_end += length
            return True
        self._hasher = None
        return False

    def write_block(self, offset: int, data) -> None:
        """All of ``data`` at ``offset`` through the page cache (a short write is continued; no room
        is an error)."""
        view = memoryview(data).cast("B")
        try:
            while len(view):
                written = os.pwrite(self.fd, view, offset)
                if written == 0:
                    raise StorageFull("no room left for the temp file")
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise from_os_error(exc, "writing") from None

    def write_pieces(self, pieces: list[tuple[int, object]], coalesce: int = 8 << 20) -> None:
        """Write ``(offset, data)`` pieces in order. Contiguous pieces are gathered (up to
        ``coalesce`` bytes) into one aligned buffer and written with O_DIRECT; an unaligned start
        or tail, or a filesystem without O_DIRECT, goes through the page cache (writeback started)."""
        i = 0
        while i < len(pieces):
            offset = pieces[i][0]
            views, size = [], 0
            while i < len(pieces) and pieces[i][0] == offset + size and (not views or size < coalesce):
                view = memoryview(pieces[i][1]).cast("B")
                views.append(view)
                size += len(view)
                i += 1
            self._write_span(offset, views, size)

    def use_direct(self) -> None:
        """Let ``write_pieces`` use O_DIRECT (opens its descriptor; call before any write_pieces)."""
        if self._direct_fd < 0 and not self.closed:
            self._direct_fd = open_direct(self.path)
            self._direct = self._direct_fd >= 0

    def _write_span(self, offset: int, views: list[memoryview], size: int) -> None:
        aligned = aligned_length(offset, size) if self._direct else 0
        if aligned == 0:
            for view in views:
                self.write_block(offset, view)
                offset += len(view)
            self.start_writeback(offset - size, size)
            return
        bounce = gather(views, size)
        try:
            try:
                direct = write_aligned(self._direct_fd, bounce[:aligned], offset)
            except OSError as exc:
                raise from_os_error(exc, "writing") from None
            if not direct:  # refused: the page cache from now on (the fd closes with the writer)
                aligned, self._direct = 0, False
            if aligned < size:
                self.write_block(offset + aligned, bounce[aligned:])
                self.start_writeback(offset + aligned, size - aligned)
        finally:
            bounce.release()

    def start_writeback(self, offset: int, length: int) -> None:
        """Start writing [offset, offset + length) to disk now, without waiting (sync_file_range),
        so the fsync at commit waits only for the tail: the disk works while bytes still arrive."""
        start_writeback(self.fd, offset, length)

    def hash_whole(self, data) -> None:
        hasher = self._hasher
        if hasher is not None:
            hasher.update_whole(data)

    def hash_chunks(self, data) -> None:
        hasher = self._hasher
        if hasher is not None:
            hasher.update_chunks(data)

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise from_os_error(exc, "truncating") from None
        if self._hasher is None or size != self._hash_end:
            self._hasher = None
        self.size = size

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def mark_modified(self) -> None:
        """Bytes changed behind our back (an mmap write): re-hash on commit."""
        self._hasher = None
        self.size = os.fstat(self.fd).st_size

    # finishing
    def _digest(self) -> Digest:
        if self._hasher is not None and self._hash_end == self.size:
            return self._hasher.digest()
        hasher = ContentHasher()
        offset = 0
        while True:
            block = os.pread(self.fd, COPY_BLOCK, offset)
            if not block:
                break
            hasher.update(block)
            offset += len(block)
        return hasher.digest()

    def commit(self) -> StoredObject:
        """fsync, move into place and index. Blocking (fsync): call it from a worker thread."""
        if self.closed:
            raise StoreFailed("writer already closed")
        try:
            self.size = os.fstat(self.fd).st_size
            digest = self._digest()
            os.fsync(self.fd)
            self._close_direct()
            os.close(self.fd)
            self.closed = True
            return self._store._install(self.path, digest, self.pinned)
        except KacheryError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, "committing") from None

    def _close_direct(self) -> None:
        self._direct = False
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._direct_fd = -1

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._close_direct()
            try:
                os.close(self.fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ObjectWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed or exc_type is not None:
            self.abort()


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.objects_dir = self.root / "sha1"
        self.tmp_dir = self.root / "tmp"
        # Downloads in progress (partial.py). Kept out of tmp/ on purpose: reconcile() empties tmp/
        # of dead processes' files, but a partial download must survive a restart to be resumed.
        self.partial_dir = self.root / "partial"
        try:
            if not self.root.exists():
                self.root.parent.mkdir(parents=True, exist_ok=True)
                self.root.mkdir(mode=0o700, exist_ok=True)  # other local users see nothing inside
            for d in (self.objects_dir, self.tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
            self.index = Index(self.root / INDEX_FILE)  # private to the store: use the methods below
        except OSError as exc:
            raise from_os_error(exc, f"opening storage directory {self.root}") from None
        self._touched: dict[str, float] = {}  # sha1 -> last access not yet written to the index
        self._touched_lock = threading.Lock()
        # Objects between their rename into place and their index row (this process): not adopted
        # by ``info`` meanwhile, which would make a downloaded copy look stored here, manifest-less.
        self._installing: set[str] = set()

    def close(self) -> None:
        try:
            self.flush_touches()
        except KacheryError as exc:  # only the eviction order suffers
            log.warning("last-access times not saved: %s", exc)
        self.index.close()

    # layout
    def object_path(self, sha1: str) -> Path:
        return self.objects_dir / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1

    def has(self, sha1: str) -> bool:
        return self.object_path(sha1).exists()

    def info(self, sha1: str) -> ObjectRecord | None:
        """The index record of an object held here (None if not held)."""
        record = self.index.get_object(sha1)
        if record is not None:
            return record
        # An object that reached the disk before a crash but not the index: adopt it.
        path = self.object_path(sha1)
        if is_sha1_hex(sha1) and sha1 not in self._installing and path.exists():
            self.index.add_object(sha1, path.stat().st_size, None, True)
            return self.index.get_object(sha1)
        return None

    def require(self, sha1: str) -> ObjectRecord:
        record = self.info(sha1)
        if record is None:
            raise ObjectNotFound(sha1)
        return record

    def list_objects(self) -> list[ObjectRecord]:
        return self.index.all_objects()

    def use(self, sha1: str) -> ObjectRecord | None:
        """The record of an object about to be read (None if not held); a cached copy is touched."""
        record = self.info(sha1)
        if record is not None and not record.pinned:
            self.touch(sha1)
        return record

    def totals(self, files_only: bool = False) -> tuple[int, int]:
        """(number of objects, their total size in bytes); ``files_only``: without the chunk
        manifests of large files (bookkeeping a user never stored)."""
        return self.index.object_totals(files_only)

    # last access, for evicting cached copies least recently used first
    def touch(self, sha1: str) -> None:
        """A cached copy was used. Kept in memory, no SQLite write: reading must never wait for
        another process's write. Written by ``flush_touches``: before evicting, and at close."""
        with self._touched_lock:
            self._touched[sha1] = time.time()

    def flush_touches(self) -> None:
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        if touched:
            self.index.touch_many(touched)

    # the channels a cached copy came from: it is served on those only
    def channels_of(self, sha1: str) -> frozenset[str]:
        return self.index.channels_of(sha1)

    def add_channels(self, sha1: str, channel_ids) -> None:
        self.index.add_channels(sha1, channel_ids)

    # the channels a replicated feed came from: it is served on those only
    def feed_channels_of(self, feed_id: str) -> frozenset[str]:
        return self.index.feed_channels_of(feed_id)

    def add_feed_channels(self, feed_id: str, channel_ids) -> None:
        self.index.add_feed_channels(feed_id, channel_ids)

    # writing
    def writer(self, pinned: bool = True) -> ObjectWriter:
        try:
            return ObjectWriter(self, pinned)
        except OSError as exc:
            raise from_os_error(exc, "creating a temp file") from None

    def _install(self, temp_path: Path, digest: Digest, pinned: bool) -> StoredObject:
        dest = self.object_path(digest.sha1)
        with self._touched_lock:
            self._installing.add(digest.sha1)
        try:
            if dest.exists():
                os.unlink(temp_path)  # same content is already here
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(temp_path, 0o444)  # objects are immutable
                os.rename(temp_path, dest)
                fsync_dir(dest.parent)
            manifest_sha1 = None
            if digest.size > digest.chunk_size:
                manifest = Manifest.from_digest(digest)
                manifest_sha1 = self.put_bytes(manifest.to_bytes(), pinned=pinned).sha1
            if digest.chunk_sums and digest.chunk_size == CHUNK_SIZE:
                self.index.put_chunk_sums(digest.sha1, digest.chunk_sums)
            self.index.add_object(digest.sha1, digest.size, manifest_sha1, pinned)
        finally:
            with self._touched_lock:
                self._installing.discard(digest.sha1)
        return StoredObject(digest.sha1, digest.size, manifest_sha1)

    def install_verified(self, path: Path, digest: Digest, pinned: bool) -> StoredObject:
        """Move a file into the store as an object (a finished download, say).

        The caller vouches that the file's bytes match ``digest``, are fsynced, and that it sits on
        the store's filesystem; the file is consumed (renamed, or unlinked if the object exists).
        """
        try:
            return self._install(Path(path), digest, pinned)
        except OSError as exc:
            raise from_os_error(exc, "installing a downloaded object") from None

    def put_bytes(self, data: bytes, pinned: bool = True) -> StoredObject:
        with self.writer(pinned) as w:
            w.write(data)
            return w.commit()

    def put_file(self, path: str | os.PathLike, on_progress=None) -> StoredObject:
        """Copy a file into the store, hashing as it streams; an unchanged file is not re-hashed.
        ``on_progress(bytes copied, size)`` is called as blocks go in."""
        path = Path(path)
        try:
            with open(path, "rb") as src:
                st = os.fstat(src.fileno())
                cached = self._from_stat_cache(src, st)
                if cached is not None:
                    return cached
                with self.writer() as w:
                    while block := src.read(COPY_BLOCK):
                        w.write(block)
                        if on_progress is not None:
                            on_progress(w.size, st.st_size)
                    obj = w.commit()
                self.index.put_stat(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                    _fingerprint(src, st.st_size), obj.sha1, obj.manifest_sha1)
                return obj
        except KacheryError:
            raise
        except IsADirectoryError:
            raise IsADirectory(f"{path} (store a directory with put_dir / `kacheryfs store -r`)") from None
        except FileNotFoundError:
            raise NoSuchFile(str(path)) from None
        except OSError as exc:
            raise from_os_error(exc, str(path)) from None

    def put_dir(self, path: str | os.PathLike, on_file=None) -> tuple[StoredObject, Directory]:
        """Store every file under a local directory and its directory manifest (the object a
        ``sha1dir://`` URI names). Symbolic links to files are stored as the files they point to;
        anything else that is not a file or a directory is refused before anything is stored.
        ``on_file(relative path, StoredObject)`` is called after each file."""
        root = Path(path)
        if not root.is_dir():
            raise NoSuchFile(f"{root} (not a directory)") if not root.exists() else StoreFailed(f"{root} is not a directory")
        files, dirs = _scan_dir(root)
        entries = {}
        for rel in files:
            obj = self.put_file(root / rel)
            entries[rel] = FileEntry(obj.sha1, obj.size, obj.manifest_sha1)
            if on_file is not None:
                on_file(rel, obj)
        directory = build_directory(entries, dirs)
        return self.put_bytes(directory.to_bytes()), directory

    def _from_stat_cache(self, src, st: os.stat_result) -> StoredObject | None:
        hit = self.index.get_stat(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if hit is None:
            return None
        fingerprint, sha1, manifest_sha1 = hit
        if fingerprint != _fingerprint(src, st.st_size) or not self.has(sha1):
            return None
        self.index.add_object(sha1, st.st_size, manifest_sha1, True)
        return StoredObject(sha1, st.st_size, manifest_sha1)

    # reading
    def read_range(self, sha1: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of an object from ``offset`` (blocking: cold disk)."""
        with open(self.object_path(sha1), "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def read_bytes(self, sha1: str) -> bytes:
        self.require(sha1)
        return self.object_path(sha1).read_bytes()

    def manifest_of(self, sha1: str) -> Manifest | None:
        record = self.require(sha1)
        if record.manifest_sha1 is None:
            return None
        return Manifest.from_bytes(self.read_bytes(record.manifest_sha1), record.manifest_sha1)

    # names under store/
    def set_name(self, name: str, obj: StoredObject) -> NameRecord:
        record = NameRecord(name, obj.sha1, obj.size, obj.manifest_sha1, time.time_ns())
        self.index.set_name(*(getattr(record, f) for f in ("name", "sha1", "size", "manifest_sha1", "mtime_ns")))
        return record

    def get_name(self, name: str) -> NameRecord | None:
        return self.index.get_name(name)

    def list_names(self) -> list[NameRecord]:
        return self.index.all_names()

    def remove_name(self, name: str) -> bool:
        return self.index.remove_name(name)

    def rename(self, old: str, new: str) -> bool:
        return self.index.rename(old, new)

    # directories under store/ (a name may be a path: 'proj/data/x.npy')
    def list_dirs(self) -> list[str]:
        return self.index.all_dirs()

    def add_dir(self, path: str) -> None:
        self.index.add_dir(path)

    def remove_dir(self, path: str) -> None:
        self.index.remove_dir(path)

    def rename_dir(self, old: str, new: str) -> None:
        self.index.rename_dir(old, new)

    # cache control (kacheryfs ls / pin / unpin / gc)
    def pin(self, sha1: str) -> ObjectRecord:
        """Keep a cached copy whatever the cache size (stored-here objects are kept anyway)."""
        record = self.require(sha1)
        self.index.pin([sha1])
        return record

    def unpin(self, sha1: str) -> bool:
        """False if it was not pinned."""
        return self.index.unpin([sha1]) > 0

    def listing(self) -> list["ListedObject"]:
        """Every object held here with what `kacheryfs ls` shows, most recently used first."""
        pins = self.index.pinned_sha1s()
        manifests = self.index.manifest_sha1s()
        names: dict[str, list[str]] = {}
        for record in self.index.all_names():
            names.setdefault(record.sha1, []).append(record.name)
        out = [ListedObject(r.sha1, r.size, r.pinned, r.sha1 in pins, r.last_access,
                            tuple(names.get(r.sha1, ())), manifests.get(r.sha1))
               for r in self.index.all_objects()]
        out.sort(key=lambda o: o.last_access, reverse=True)
        return out

    def cached_total(self) -> int:
        """Bytes of cached copies (what --cache-size caps), pinned ones included."""
        return self.index.cached_total()

    def evict_cached(self, limit_bytes: int) -> list[str]:
        """Delete least recently used cached copies (never stored-here objects) until the cache
        fits in ``limit_bytes``; a manifest goes with its object. Returns the evicted hashes."""
        self.flush_touches()
        total = self.index.cached_total()
        evicted: list[str] = []
        unindexed: list[str] = []
        for sha1, size, manifest_sha1 in self.index.cached_by_age():
            if total <= limit_bytes:
                break
            for victim in (sha1, manifest_sha1):
                record = self.index.get_object(victim) if victim else None
                if record is None or record.pinned:
                    continue
                try:  # the file first: on a full disk the index needs the room to change
                    os.unlink(self.object_path(victim))  # open maps keep their pages until unmapped
                except FileNotFoundError:
                    pass
                try:
                    self.index.remove_object(victim)
                except StorageFull:
                    unindexed.append(victim)
                total -= record.size
                evicted.append(victim)
        for victim in unindexed:  # with some room now
            self.index.remove_object(victim)
        if evicted:
            log.info("evicted %d cached objects to keep the cache under %d bytes", len(evicted), limit_bytes)
        return evicted

    def evict_bytes(self, needed: int) -> list[str]:
        """Evict least recently used cached copies until ``needed`` more bytes are free on the
        storage filesystem (or no cached copy is left). Returns the evicted hashes."""
        short = needed - self.disk_usage().free
        if short <= 0:
            return []
        return self.evict_cached(max(0, self.index.cached_total() - short))

    # start-up housekeeping
    def reconcile(self) -> dict[str, int]:
        """Remove temp files of dead writers and make the index agree with the objects on disk."""
        removed_tmp = 0
        for entry in os.scandir(self.tmp_dir):
            pid_text = entry.name.split("-", 1)[0]
            if not pid_text.isdigit() or not _pid_alive(int(pid_text)):
                try:
                    os.unlink(entry.path)
                    removed_tmp += 1
                except OSError:
                    pass
        on_disk: dict[str, int] = {}
        for dirpath, _dirs, files in os.walk(self.objects_dir):
            for name in files:
                if is_sha1_hex(name):
                    on_disk[name] = os.stat(os.path.join(dirpath, name)).st_size
        dropped = added = 0
        for record in self.index.all_objects():
            if record.sha1 not in on_disk:
                self.index.remove_object(record.sha1)
                dropped += 1
        for sha1, size in on_disk.items():
            if self.index.get_object(sha1) is None:
                self.index.add_object(sha1, size, None, True)
                added += 1
        if removed_tmp or dropped or added:
            log.info("reconciled store: %d temp files removed, %d index rows dropped, %d added",
                     removed_tmp, dropped, added)
        return {"tmp_removed": removed_tmp, "index_dropped": dropped, "index_added": added}

    def disk_usage(self):
        """(total, used, free) bytes of the storage directory's filesystem."""
        return shutil.disk_usage(self.root)

    @functools.cached_property
    def integrity(self):
        """Checks stored bytes before they leave this node; quarantines rotten objects (integrity.py)."""
        from .integrity import Integrity

        return Integrity(self)


def _scan_dir(root: Path) -> tuple[list[str], list[str]]:
    """Relative paths of the files and of the directories under ``root`` (symlinks to directories
    are not followed). Raises before anything is stored if something cannot be stored."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        base = Path(dirpath).relative_to(root)
        for name in list(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink():
                raise StoreFailed(f"{full} is a symbolic link to a directory: not stored (store its target)")
            dirs.append(str(base / name))
        for name in filenames:
            full = Path(dirpath) / name
            if not full.is_file():  # a fifo, socket, device, or a dangling link
                raise StoreFailed(f"{full} is not a regular file: nothing was stored")
            files.append(str(base / name))
    return sorted(files), sorted(dirs)


def hash_local_dir(root: str | os.PathLike) -> StoredObject:
    """What ``put_dir`` would store for ``root``, by hashing (nothing is stored): its manifest's
    hash and size."""
    from .hashing import sha1_hex

    root = Path(root)
    files, dirs = _scan_dir(root)
    entries = {}
    for rel in files:
        hasher = ContentHasher()
        try:
            with open(root / rel, "rb") as f:
                while block := f.read(COPY_BLOCK):
                    hasher.update(block)
        except OSError as exc:
            raise from_os_error(exc, str(root / rel)) from None
        digest = hasher.digest()
        manifest = Manifest.from_digest(digest).manifest_sha1 if digest.size > digest.chunk_size else None
        entries[rel] = FileEntry(digest.sha1, digest.size, manifest)
    data = build_directory(entries, dirs).to_bytes()
    return StoredObject(sha1_hex(data), len(data))


def _raise(exc: OSError) -> None:
    raise from_os_error(exc, exc.filename or "reading a directory")


def _fingerprint(src, size: int) -> str:
    """xxh3 of the head and tail blocks: catches edits that keep size and mtime (rare, cheap)."""
    h = xxhash.xxh3_128()
    h.update(size.to_bytes(8, "little"))
    h.update(os.pread(src.fileno(), FINGERPRINT_BLOCK, 0))
    if size > FINGERPRINT_BLOCK:
        h.update(os.pread(src.fileno(), FINGERPRINT_BLOCK, max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK)))
    return h.hexdigest()


def open_mmap(path: Path) -> mmap.mmap | None:
    """A read-only map of an object (None for an empty file, which cannot be mapped)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


__all__ = ["LocalStore", "ListedObject", "ObjectWriter", "StoredObject", "CHUNK_SIZE", "open_mmap", "hash_local_dir"]
