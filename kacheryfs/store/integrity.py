"""Bit rot in our own store: verify stored bytes before they leave, quarantine what fails, scrub.

An object was hashed when it was written or fetched, but disks, bugs and people can change a file
afterwards. The daemon therefore checks every chunk of a local object the first time it reads that
chunk for anyone (a read through the mount, a chunk served to a peer). The check is the chunk's
xxh3-128 against the one recorded in the index when the bytes were written (bit rot is not an
adversary, and xxh3 costs ~0.04 ms per MiB where SHA-1 costs ~0.5-1); where none was recorded, or
they disagree, SHA-1 against the manifest (the object's own SHA-1 for one chunk) decides, and the
xxh3 sums are recorded as chunks pass. What it has checked is remembered for the life of the
process (a bit per chunk, for the most recently used objects), so a chunk is checked once per run.

A chunk that fails makes the object *rotten*: it is moved to ``<storage>/quarantine/`` (kept for
inspection, never served), its index row is dropped, the read fails with EIO (a peer gets
"not-found" and asks elsewhere), and ``on_rotten`` is told so the daemon can fetch a good copy from
its channel peers (re-pinned if it was stored here). ``scrub`` re-hashes the whole store for
``kacheryfs verify [--repair]``. Blocking: call from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CorruptObject, ObjectNotFound
from .hashing import CHUNK_SIZE, ContentHasher, chunk_sum
from .index import ObjectRecord
from .manifest import Manifest

log = logging.getLogger(__name__)

SUM_BYTES = 16  # one xxh3-128 per chunk
MEMO_OBJECTS = 65536  # objects whose verified chunks are remembered (least recently used forgotten)
READ_BLOCK = 1 << 20


class RottenObject(CorruptObject):
    """Stored bytes do not match their hash; the object was quarantined"""

    def __init__(self, record: ObjectRecord, detail: str):
        self.record = record
        super().__init__(detail)


@dataclass
class ScrubReport:
    objects: int = 0
    bytes: int = 0
    rotten: list[ObjectRecord] = field(default_factory=list)
    missing: list[ObjectRecord] = field(default_factory=list)  # indexed, but no file


class Integrity:
    def __init__(self, store):
        self.store = store
        self.quarantine_dir: Path = store.root / "quarantine"
        self.on_rotten: Callable[[ObjectRecord], None] | None = None  # any thread may call it
        self._lock = threading.Lock()
        self._verified: OrderedDict[str, bytearray] = OrderedDict()  # sha1 -> a bit per chunk
        self._manifests: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # sha1 -> chunk hashes
        self._learning: OrderedDict[str, list[bytes | None]] = OrderedDict()  # sums being collected
        self._sums: OrderedDict[str, bytes] = OrderedDict()  # recorded sums of recently checked objects

    # ---- the memo ----------------------------------------------------------------------------------
    def _chunks(self, size: int, offset: int, length: int) -> range:
        if length <= 0 or offset >= size:
            return range(0)
        end = min(offset + length, size)
        return range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1)

    def unverified(self, sha1: str, size: int, offset: int, length: int) -> list[int]:
        """Chunks under [offset, offset + length) not yet checked by this process. Cheap."""
        with self._lock:
            bits = self._verified.get(sha1)
            if bits is not None:
                self._verified.move_to_end(sha1)
            return [c for c in self._chunks(size, offset, length)
                    if bits is None or not bits[c >> 3] >> (c & 7) & 1]

    def _mark(self, sha1: str, size: int, chunks) -> None:
        with self._lock:
            bits = self._verified.get(sha1)
            if bits is None:
                bits = self._verified[sha1] = bytearray((max(1, -(-size // CHUNK_SIZE)) + 7) // 8)
                while len(self._verified) > MEMO_OBJECTS:
                    self._verified.popitem(last=False)
            for c in chunks:
                bits[c >> 3] |= 1 << (c & 7)

    def mark_verified(self, sha1: str, size: int) -> None:
        """Every chunk of this object was just hashed by this process from the bytes it wrote (a
        download it verified on arrival, a write it hashed as it streamed): no need to check them
        again on their first read in this run."""
        self._mark(sha1, size, range(_num_chunks(size)))

    def forget(self, sha1: str) -> None:
        with self._lock:
            self._verified.pop(sha1, None)
            self._manifests.pop(sha1, None)
            self._sums.pop(sha1, None)

    # ---- checking ------------------------------------------------------------------------------------
    def _chunk_hashes(self, record: ObjectRecord) -> tuple[str, ...] | None:
        """The chunk hashes of an object (its SHA-1 alone for one chunk), or None if its manifest is
        missing or rotten (then the whole object is hashed instead, and its manifest rebuilt)."""
        if record.size <= CHUNK_SIZE:
            return (record.sha1,)
        with self._lock:
            cached = self._manifests.get(record.sha1)
        if cached is not None:
            return cached
        if record.manifest_sha1 is None:
            return None
        try:
            raw = self.store.object_path(record.manifest_sha1).read_bytes()
            manifest = Manifest.from_bytes(raw, record.manifest_sha1)
        except FileNotFoundError:
            return None
        except CorruptObject as exc:
            manifest_record = self.store.index.get_object(record.manifest_sha1)
            if manifest_record is not None:
                self._quarantine(manifest_record, None, f"manifest {record.manifest_sha1}: {exc}")
            return None
        if manifest.sha1 != record.sha1 or manifest.size != record.size or manifest.chunk_size != CHUNK_SIZE:
            return None
        with self._lock:
            self._manifests[record.sha1] = manifest.chunk_sha1s
            while len(self._manifests) > 1024:
                self._manifests.popitem(last=False)
        return manifest.chunk_sha1s

    def verify(self, sha1: str, offset: int, length: int, source=None, inode: int | None = None,
               record: ObjectRecord | None = None) -> None:
        """Check the chunks under [offset, offset + length) not checked yet; raises RottenObject
        (after quarantining the object) or ObjectNotFound. ``source``: a buffer holding the object's
        bytes (the reader's mmap, a chunk just read), indexed by object offset, taken from the file
        with inode ``inode``; without one the object file is read."""
        record = record or self.store.index.get_object(sha1)
        if record is None:
            raise ObjectNotFound(sha1)
        todo = self.unverified(sha1, record.size, offset, length)
        if not todo:
            return
        try:
            with _Reader(self.store.object_path(sha1), source, inode) as read:
                sums = self._sums_of(record)
                hashes: tuple[str, ...] | None = None
                for c in todo:
                    start = c * CHUNK_SIZE
                    want = min(CHUNK_SIZE, record.size - start)
                    data = read(start, want)
                    if len(data) != want:
                        raise RottenObject(record, f"chunk {c} is short")
                    checksum = chunk_sum(data)
                    if sums is not None and sums[c * SUM_BYTES:(c + 1) * SUM_BYTES] == checksum:
                        continue  # the fast check (xxh3, ~26 GB/s) agrees with what was written
                    # No recorded sums, or they disagree: SHA-1 against the manifest decides.
                    if hashes is None:
                        hashes = self._chunk_hashes(record)
                        if hashes is None:
                            if read.source is None:
                                self._verify_whole(record, read)
                            else:  # the buffer holds only the range asked for: hash the file
                                with _Reader(self.store.object_path(sha1)) as whole:
                                    self._verify_whole(record, whole)
                            return
                    if hashlib.sha1(data).hexdigest() != hashes[c]:
                        raise RottenObject(record, f"chunk {c} does not match its hash")
                    if sums is not None:  # the object is right, the recorded sums are not
                        log.warning("checksums of %s in the index were wrong: recorded again", sha1)
                        self.store.index.remove_chunk_sums(sha1)
                        with self._lock:
                            self._sums.pop(sha1, None)
                        sums = None
                    self._learn(record, c, checksum)
        except FileNotFoundError:
            raise ObjectNotFound(sha1) from None
        except RottenObject as exc:
            self._quarantine(record, read.inode, str(exc.detail))
            raise
        self._mark(sha1, record.size, todo)

    def _sums_of(self, record: ObjectRecord) -> bytes | None:
        with self._lock:
            sums = self._sums.get(record.sha1)
        if sums is None:
            sums = self.store.index.chunk_sums(record.sha1)
            if sums is None or len(sums) != _num_chunks(record.size) * SUM_BYTES:
                return None
            with self._lock:
                self._sums[record.sha1] = sums
                while len(self._sums) > 1024:
                    self._sums.popitem(last=False)
        return sums

    def cheap(self, record: ObjectRecord) -> bool:
        """Checksums are recorded for this object: checking a chunk costs ~0.05 ms of hashing
        (plus reading it, which a read does anyway), less than a hop to a worker thread."""
        return self._sums_of(record) is not None

    def _learn(self, record: ObjectRecord, chunk: int, checksum: bytes) -> None:
        """An object stored before checksums were recorded: collect them as its chunks are
        verified by SHA-1, and record them once every chunk has been seen."""
        n = _num_chunks(record.size)
        with self._lock:
            learning = self._learning.get(record.sha1)
            if learning is None:
                learning = self._learning[record.sha1] = [None] * n
                while len(self._learning) > 1024:
                    self._learning.popitem(last=False)
            learning[chunk] = checksum
            if any(x is None for x in learning):
                return
            del self._learning[record.sha1]
        self.store.index.put_chunk_sums(record.sha1, b"".join(learning))

    def _verify_whole(self, record: ObjectRecord, read: "_Reader") -> None:
        """No usable manifest: hash the whole object; if right, rebuild a missing manifest."""
        hasher = ContentHasher()
        offset = 0
        while offset < record.size:
            block = read(offset, min(READ_BLOCK, record.size - offset))
            if not block:
                break
            hasher.update(block)
            offset += len(block)
        digest = hasher.digest()
        if digest.sha1 != record.sha1 or digest.size != record.size:
            raise RottenObject(record, f"it hashes to {digest.sha1}")
        self.store.index.put_chunk_sums(record.sha1, digest.chunk_sums)
        manifest_lost = record.manifest_sha1 is None or not self.store.object_path(record.manifest_sha1).exists()
        if digest.size > CHUNK_SIZE and manifest_lost and self.store.index.get_object(record.sha1) is not None:
            stored = self.store.put_bytes(Manifest.from_digest(digest).to_bytes(), pinned=record.pinned)
            self.store.add_channels(stored.sha1, self.store.channels_of(record.sha1))
            self.store.index.add_object(record.sha1, record.size, stored.sha1, record.pinned)
        self._mark(record.sha1, record.size, range(max(1, -(-record.size // CHUNK_SIZE))))

    def read_range(self, sha1: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` of a stored object, every chunk under them verified.
        The chunks are read once and checked from that buffer: a chunk-aligned request (what peers
        send) costs no extra read and no copy."""
        record = self.store.index.get_object(sha1)
        if record is None:
            raise ObjectNotFound(sha1)
        if not self.unverified(sha1, record.size, offset, length):
            return self.store.read_range(sha1, offset, length)
        chunks = self._chunks(record.size, offset, length)
        start, end = chunks[0] * CHUNK_SIZE, min(record.size, (chunks[-1] + 1) * CHUNK_SIZE)
        try:
            with open(self.store.object_path(sha1), "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                data = os.pread(f.fileno(), end - start, start)
        except FileNotFoundError:
            raise ObjectNotFound(sha1) from None
        self.verify(sha1, start, end - start, _Shifted(memoryview(data), start), inode, record)
        if start == offset and end - start <= length:
            return data
        return data[offset - start:offset - start + length]

    def read_into(self, sha1: str, offset: int, view, record: ObjectRecord | None = None) -> int:
        """``read_range`` into a caller's buffer (the frame a chunk is sent from): up to
        ``len(view)`` bytes from ``offset``, every chunk under them verified; returns the count.
        With ``record`` (from the caller's cache) no index query is made."""
        record = record or self.store.index.get_object(sha1)
        if record is None:
            raise ObjectNotFound(sha1)
        n = max(0, min(len(view), record.size - offset))
        if n == 0:
            return 0
        todo = self.unverified(sha1, record.size, offset, n)
        if todo and (offset % CHUNK_SIZE or ((offset + n) % CHUNK_SIZE and offset + n != record.size)):
            data = self.read_range(sha1, offset, n)  # unaligned: whole chunks are read and checked
            view[:len(data)] = data
            return len(data)
        try:
            fd = os.open(self.store.object_path(sha1), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(sha1) from None
        try:
            got = os.preadv(fd, [view[:n]], offset)
            inode = os.fstat(fd).st_ino if todo else None
        finally:
            os.close(fd)
        if todo:
            self.verify(sha1, offset, n, _Shifted(view[:got], offset), inode, record)
        return got

    # ---- quarantine ----------------------------------------------------------------------------------
    def _quarantine(self, record: ObjectRecord, inode: int | None, why: str) -> None:
        """Move a rotten object aside (unless the file there is already another, newer copy)."""
        path = self.store.object_path(record.sha1)
        moved = False
        try:
            if inode is None or os.stat(path).st_ino == inode:
                self.quarantine_dir.mkdir(exist_ok=True)
                os.replace(path, self.quarantine_dir / record.sha1)
                moved = True
        except FileNotFoundError:
            pass
        if moved or not path.exists():
            self.store.index.remove_object(record.sha1)
        self.forget(record.sha1)
        if moved:
            note = {"sha1": record.sha1, "size": record.size, "manifest_sha1": record.manifest_sha1,
                    "pinned": record.pinned, "why": why, "time": time.time()}
            try:
                (self.quarantine_dir / f"{record.sha1}.json").write_text(json.dumps(note))
            except OSError:
                pass  # the copy is aside already; the note only helps restoring it later
            log.error("stored object %s is corrupt (%s): quarantined in %s", record.sha1, why, self.quarantine_dir)
            if self.on_rotten is not None:
                try:
                    self.on_rotten(record)
                except Exception:  # restoring is best effort; the read has failed cleanly already
                    log.exception("could not start restoring %s", record.sha1)

    def quarantined(self) -> list[ObjectRecord]:
        """Objects in quarantine with no good copy back in the store yet."""
        out = []
        try:
            notes = sorted(self.quarantine_dir.glob("*.json"))
        except OSError:
            return out
        for note in notes:
            try:
                doc = json.loads(note.read_text())
                record = ObjectRecord(doc["sha1"], int(doc["size"]), doc.get("manifest_sha1"), bool(doc["pinned"]), 0.0)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self.store.index.get_object(record.sha1) is None:
                out.append(record)
        return out

    def restored(self, record: ObjectRecord) -> None:
        """A good copy is back: pin it again if it was stored here; drop the rotten one."""
        if record.pinned:
            self.store.index.add_object(record.sha1, record.size, record.manifest_sha1, True)
        for path in (self.quarantine_dir / record.sha1, self.quarantine_dir / f"{record.sha1}.json"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # ---- the whole store -----------------------------------------------------------------------------
    def scrub(self, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> ScrubReport:
        """Re-hash every object in the store. ``repair``: quarantine what is rotten (missing files
        lose their index rows). Objects are checked whole, so manifests need not be intact."""
        records = self.store.index.all_objects()
        total = sum(r.size for r in records)
        report = ScrubReport()
        for record in records:
            path = self.store.object_path(record.sha1)
            try:
                with open(path, "rb") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    hasher = hashlib.sha1()
                    sums = []
                    size = 0
                    while block := f.read(CHUNK_SIZE):
                        hasher.update(block)
                        sums.append(chunk_sum(block))
                        size += len(block)
                    if not sums:
                        sums.append(chunk_sum(b""))
            except FileNotFoundError:
                report.missing.append(record)
                if repair:
                    self.store.index.remove_object(record.sha1)
                continue
            report.objects += 1
            report.bytes += size
            if hasher.hexdigest() != record.sha1 or size != record.size:
                report.rotten.append(record)
                if repair:
                    self._quarantine(record, inode, f"hashes to {hasher.hexdigest()}, {size} bytes")
            else:
                self._mark(record.sha1, record.size, range(_num_chunks(record.size)))
                if self._sums_of(record) != b"".join(sums):
                    self.store.index.put_chunk_sums(record.sha1, b"".join(sums))
            if progress is not None:
                progress(report.bytes, total)
        return report


def _num_chunks(size: int) -> int:
    return max(1, -(-size // CHUNK_SIZE))


class _Shifted:
    """A buffer holding the object's bytes from ``base`` on, indexed by object offsets."""

    def __init__(self, view: memoryview, base: int):
        self.view = view
        self.base = base

    def __getitem__(self, s: slice):
        return self.view[s.start - self.base:s.stop - self.base]


class _Reader:
    """read(offset, size) from a buffer (an mmap, a chunk just read) or else from the file;
    ``inode`` is the file's, so a quarantine never moves a newer copy put there since."""

    def __init__(self, path: Path, source=None, inode: int | None = None):
        self.path = path
        self.source = source
        self.inode = inode
        self._f = None

    def __enter__(self):
        if self.source is None:
            self._f = open(self.path, "rb")
            self.inode = os.fstat(self._f.fileno()).st_ino
        return self

    def __call__(self, offset: int, size: int):
        if self.source is not None:
            return self.source[offset:offset + size]
        return os.pread(self._f.fileno(), size, offset)

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
