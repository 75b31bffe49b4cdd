"""Copies of stored objects handed to the user (``kacheryfs load --dest``), written as few times as
the filesystem allows.

- **Reflink** (``FICLONE``: btrfs, XFS, bcachefs, ...): the user's file shares the object's extents;
  nothing is written, and writing to either file later makes the filesystem copy the blocks touched
  (copy-on-write), so the store's copy never changes through the user's file.
- Otherwise an **in-kernel copy** (``copy_file_range``): no pass through Python; on ext4 that is a
  second write of every byte, which is why a download that does not hold the object yet streams
  each verified chunk into the user's file as it writes the store's copy (net/pipeline.py ``Sink``)
  instead of copying after the fact.

Either way the user's file is a separate inode: modifying, truncating or deleting it leaves the
object in the store as it was (tests/test_load_dest.py).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat

from ..errors import BadDestination

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_PROBE_BYTES = 4096


def check_dest(fd: int, store_files: list[os.PathLike], empty: bool = True) -> None:
    """Refuse a destination descriptor (passed by a client, opened with its permissions) that is
    not a regular file (empty, unless ``empty`` is false) open for writing without O_APPEND (where ``pwrite`` would append), or
    that is one of ``store_files`` (the object's own copy or partial file): the store's copy must
    never be written through a destination."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BadDestination("not a regular file")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_ACCMODE == os.O_RDONLY or flags & os.O_APPEND:
        raise BadDestination("not open for writing at any offset (read-only, or O_APPEND)")
    for path in store_files:
        try:
            other = os.stat(path)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise BadDestination("it is the store's own copy of the object")
    if empty and st.st_size != 0:
        raise BadDestination("not empty")


def mount_of(fd: int) -> tuple[str, str] | None:
    """The mount point and filesystem type of the mount ``fd``'s file is on, from /proc alone: no
    call on that file's filesystem, which may be a FUSE mount served by the caller (a ``fstat``
    there would wait for the very thread making it). None where /proc does not say."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next((line.split()[1] for line in f if line.startswith("mnt_id:")), None)
        if mnt_id is None:
            return None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == mnt_id and "-" in fields:
                    point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                    return point, fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd``'s file share all of ``src_fd``'s extents; False where unsupported (another
    filesystem, or one without reflinks)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError:
        return False


def can_reflink(tmp_dir: os.PathLike, dst_fd: int) -> bool:
    """Whether objects in the store (whose temp dir is ``tmp_dir``) could be reflinked into the
    (empty) file ``dst_fd``: a small probe file is cloned into it, then it is emptied again."""
    path = os.path.join(tmp_dir, f"{os.getpid()}-{secrets.token_hex(8)}.probe")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False
    try:
        os.unlink(path)
        os.write(fd, b"\0" * _PROBE_BYTES)
        if not reflink(fd, dst_fd):
            return False
        os.ftruncate(dst_fd, 0)
        return True
    finally:
        os.close(fd)


def copy_into(src_fd: int, dst_fd: int, size: int) -> str:
    """``dst_fd`` becomes a copy of the first ``size`` bytes of ``src_fd``: "reflink" if its extents
    are shared, else "copy" (``copy_file_range``, falling back to read/write). Blocking."""
    if reflink(src_fd, dst_fd):
        return "reflink"
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except OSError:  # e.g. EXDEV on older kernels across filesystems
        while offset < size:
            block = os.pread(src_fd, min(8 << 20, size - offset), offset)
            if not block:
                break
            view = memoryview(block)
            while len(view):
                written = os.pwrite(dst_fd, view, offset)
                view, offset = view[written:], offset + written
    if offset != size:
        raise OSError(f"source ended after {offset} of {size} bytes")
    return "copy"
