"""The thin pyfuse3 edge: converts types and maps errors; all behaviour lives in tree.py."""

from __future__ import annotations

import errno
import functools
import logging
import os

import pyfuse3

from ..errors import KacheryError
from .tree import Attr, VirtualTree

log = logging.getLogger(__name__)


def _entry(attr: Attr) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attr.ino
    entry.generation = 0
    entry.entry_timeout = attr.timeout
    entry.attr_timeout = attr.timeout
    entry.st_mode = attr.mode
    entry.st_nlink = 2 if attr.is_dir else 1
    entry.st_uid = os.getuid()
    entry.st_gid = os.getgid()
    entry.st_size = attr.size
    entry.st_blksize = attr.blksize
    entry.st_blocks = (attr.size + 511) // 512
    entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attr.mtime_ns
    return entry


def _fuse_errors(fn):
    """KacheryError and OSError become FUSEError(errno); anything else is logged and becomes EIO."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except KacheryError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODATA):
                log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class KacheryOperations(pyfuse3.Operations):
    enable_writeback_cache = False  # writes must come through the handle that owns them

    def __init__(self, tree: VirtualTree):
        super().__init__()
        self.tree = tree

    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return _entry(await self.tree.lookup_or_locate(parent_inode, os.fsdecode(name)))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.tree.forget(ino, count)

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return _entry(await self.tree.agetattr(inode))

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            return _entry(await self.tree.truncate(inode, attr.st_size, fh))
        # mode, owner and times are fixed by the store; accept the call so `cp -p` works.
        return _entry(await self.tree.agetattr(inode))

    @_fuse_errors
    async def opendir(self, inode, ctx):
        return await self.tree.aopendir(inode)

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        for name, attr, next_id in self.tree.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), _entry(attr), next_id):
                break
            # the kernel now holds the entry (readdirplus) as if looked up: count it, or the inode
            # could be dropped while the kernel still uses it (ENODATA/ENOENT on a later call)
            self.tree.inodes.remember(attr.ino)

    async def releasedir(self, fh):
        self.tree.releasedir(fh)

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        fh, keep_cache = await self.tree.open_or_fetch(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=self.tree.is_direct_io(fh))

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, attr = self.tree.create(parent_inode, os.fsdecode(name), flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=self.tree.is_direct_io(fh)), _entry(attr)

    @_fuse_errors
    async def read(self, fh, off, size):
        return await self.tree.aread(fh, off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return await self.tree.write(fh, off, buf)

    @_fuse_errors
    async def flush(self, fh):
        await self.tree.flush(fh)

    @_fuse_errors
    async def fsync(self, fh, datasync):
        await self.tree.flush(fh)

    @_fuse_errors
    async def release(self, fh):
        await self.tree.release(fh)

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        await self.tree.aunlink(parent_inode, os.fsdecode(name))

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:  # RENAME_EXCHANGE / RENAME_NOREPLACE are not supported
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.tree.arename(parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new))

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return _entry(await self.tree.amkdir(parent_inode, os.fsdecode(name)))

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self.tree.armdir(parent_inode, os.fsdecode(name))

    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        return await self.tree.agetxattr(inode, os.fsdecode(name))

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in await self.tree.alistxattr(inode)]

    @_fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_fuse_errors
    async def statfs(self, ctx):
        st = self.tree.statfs()
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, field, getattr(st, field))
        out.f_namemax = 255
        return out
