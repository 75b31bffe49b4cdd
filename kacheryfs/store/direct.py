"""Writes that bypass the page cache (O_DIRECT) from a page-aligned bounce buffer.

Why: in these VMs every fresh page of page cache costs a host fault (docs/benchmarks.md, "Fresh-
memory tax"): filling a GiB of new page cache cost the receiver ~2 CPU-s, and a copy written through
the page cache is written to the disk again at the next sync or fsync anyway. Bytes that nobody
will read back soon (the user's copy of ``load --dest``) can go straight to the disk instead. (The
store's copy of a whole download written this way too measured no faster, and leaves the object
out of the page cache for whoever reads it next: not kept.)

O_DIRECT wants the buffer address, the file offset and the length aligned (DIRECT_ALIGN covers every
logical block size in use); a chunk inside a received frame is not aligned, so it is copied into
the calling thread's bounce buffer (an anonymous mmap: page-aligned, and reused, so it pays the
fresh-page fault once). Callers write the unaligned tail through an ordinary descriptor.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

DIRECT_ALIGN = 4096
_local = threading.local()


def _bounce_buffer(size: int) -> mmap.mmap:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = mmap.mmap(-1, max(size, 1 << 20))
    return buf


def open_direct(path, flags: int = os.O_WRONLY) -> int:
    """``path`` opened with O_DIRECT (for a descriptor: ``/proc/self/fd/<n>``), or -1 where refused."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return -1


def aligned_length(offset: int, length: int) -> int:
    """How many of ``length`` bytes at ``offset`` can go with O_DIRECT (0 if the offset is unaligned)."""
    return 0 if offset % DIRECT_ALIGN else length - length % DIRECT_ALIGN


def pwrite_direct(fd: int, view: memoryview, offset: int) -> bool:
    """Write ``view`` (a multiple of DIRECT_ALIGN long, at an aligned ``offset``) through the O_DIRECT
    descriptor ``fd``. False if the filesystem refuses O_DIRECT writes (EINVAL on the first one):
    the caller then writes through the page cache. Other errors (ENOSPC, EIO) are raised."""
    bounce = gather([view], len(view))
    try:
        return write_aligned(fd, bounce, offset)
    finally:
        bounce.release()


def gather(views: list, size: int) -> memoryview:
    """``views`` (``size`` bytes in all) copied back to back into the calling thread's bounce buffer:
    one aligned buffer for one O_DIRECT write. Release the view before the next call."""
    bounce = memoryview(_bounce_buffer(size))[:size]
    at = 0
    for view in views:
        bounce[at:at + len(view)] = view
        at += len(view)
    return bounce


def write_aligned(fd: int, bounce: memoryview, offset: int) -> bool:
    """The O_DIRECT write of an aligned buffer (see ``pwrite_direct``)."""
    done = 0
    while done < len(bounce):
        try:
            written = os.pwrite(fd, bounce[done:], offset + done)
        except OSError as exc:
            if exc.errno == errno.EINVAL and done == 0:
                return False
            raise
        if written <= 0 or written % DIRECT_ALIGN:
            raise OSError(errno.EIO, f"short O_DIRECT write ({written} bytes)")
        done += written
    return True
