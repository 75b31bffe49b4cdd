"""A file loaded into a destination the user names (``kacheryfs load --dest``, ``load_file(dest=)``,
kachery_p2p's ``load_file(uri, dest)``): a separate file (the store's copy never changes through
it), each byte written once where possible.

- Held here: its chunks checked, then reflinked or copied in the kernel (store/clone.py).
- Fetched: the open destination goes to the daemon with the request (SCM_RIGHTS), and the daemon
  fills it as it fetches (net/pipeline.py ``Sink``) or reflinks it from the installed object.
- Inside the daemon's *own* mount (``<mount>/store/x``): the daemon never writes through its own
  FUSE filesystem (a blocking call on that descriptor from the thread serving the mount waits for
  itself). The daemon fetches into the store, and this process copies the verified object into
  dest through the mount, as ``cp`` would; the mount's store/ then hashes and stores it (the same
  object: nothing new is kept). Elsewhere in that mount (sha1/, feeds/) nothing can be written:
  refused before anything is created. Another node's mount is an ordinary destination.

Bad destinations (the store's own copy, a directory, a file open read-only...) are refused before
anything is truncated (BadDestination); a failure removes a half-written file.

``link_into`` (``--link``) is the other choice: dest becomes a hard link to the store's copy (as
git-annex's locked files), so each byte is on disk once (half the space, and a load writes every
byte once: on a filesystem without reflinks a copy cannot do that). The file is the store's own,
read-only (0444): changing it (after a ``chmod``) would change the object the store serves. The
store checks each chunk it serves or reads on its first read in a run (store/integrity.py), so
such a change is found, the object quarantined and never served; but a change made after a
chunk's check in this run would be served to a peer, which checks the chunk's SHA-1 and drops us.
Where the store's filesystem is not dest's (or has no hard links) the file is copied instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..config import Config
from ..errors import BadDestination, KacheryError, NoDaemon
from ..running import running_daemons
from ..store import LocalStore, ObjectRecord, clone, parse_uri
from ..store.local import fsync_dir


def daemon_mountpoint(config: Config) -> Path | None:
    """The mountpoint of the running daemon with this config dir, if it has one."""
    for daemon in running_daemons(config.running_dir):
        if daemon.config_dir == config.config_dir and daemon.mountpoint:
            return Path(daemon.mountpoint)
    return None


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def load_into(uri: str, dest: str | os.PathLike, config: Config, progress: bool | None = None) -> str:
    """Write the file ``uri`` (a ``sha1://`` URI, or a file of a stored directory) to ``dest``,
    fetched by the running daemon if it is not held here; returns ``dest``. OSErrors are raised as
    KacheryError ("could not write <dest>: <reason>")."""
    try:
        _load_into(uri, Path(dest), config, progress)
    except OSError as exc:
        raise KacheryError(f"could not write {dest}: {exc.strerror or exc}") from None
    return str(dest)


def _load_into(uri: str, dest: Path, config: Config, progress: bool | None) -> None:
    from ..progress import ByteProgress
    from .client import daemon_load, daemon_load_into, not_held
    from .objects import resolve_file_uri

    parsed = parse_uri(resolve_file_uri(uri, storage_dir=config.storage_dir, config_dir=config.config_dir,
                                        progress=progress))
    own_mount = _own_mount_of(dest, config)
    local = LocalStore(config.storage_dir)
    try:
        if dest.resolve().is_relative_to(local.root.resolve()):
            raise BadDestination(f"{dest} is inside the store {local.root}")
        created = not dest.exists()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o666)  # not O_TRUNC before the checks below
    except BaseException:
        local.close()
        raise
    try:  # a file of the store (even by a hard link) is refused before anything is truncated
        clone.check_dest(fd, [local.object_path(parsed.sha1), local.partial_dir / f"{parsed.sha1}.part"],
                         empty=False)
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        if created:
            dest.unlink(missing_ok=True)
        local.close()
        raise
    try:
        record = local.use(parsed.sha1)
        path = None
        if record is None:
            try:
                with ByteProgress(parsed.name or parsed.sha1[:12], progress) as bar:
                    if own_mount:  # the daemon fetches; this process copies (module docstring)
                        path = daemon_load(config.config_dir, str(parsed), bar)
                    else:
                        path, filled = daemon_load_into(config.config_dir, str(parsed), fd, bar)
                        if filled:
                            return
                        # an older daemon: copy what it fetched (its bytes verified on arrival)
            except NoDaemon:
                raise not_held(parsed.sha1, local.root) from None
        if path is None:  # held here: its chunks may have rotted since they were stored
            local.integrity.verify(parsed.sha1, 0, max(record.size, 1), record=record)
            path = local.object_path(parsed.sha1)
        with open(path, "rb") as src:
            clone.copy_into(src.fileno(), fd, os.fstat(src.fileno()).st_size)
    except BaseException:
        os.close(fd)
        fd = -1
        dest.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        local.close()


# a hard link cannot be made there: another filesystem, or one without hard links
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK}


def link_into(uri: str, dest: str | os.PathLike, config: Config, progress: bool | None = None) -> bool:
    """Make ``dest`` a hard link to the store's copy of ``uri`` (fetched by the running daemon if
    it is not held here), replacing what ``dest`` was. True if linked; False if it could not be
    (another filesystem...), and the file was copied to ``dest`` (``load_into``) instead."""
    dest = Path(dest)
    try:
        linked = _link_into(uri, dest, config, progress)
    except OSError as exc:
        raise KacheryError(f"could not write {dest}: {exc.strerror or exc}") from None
    if not linked:
        load_into(uri, dest, config, progress)
    return linked


def _link_into(uri: str, dest: Path, config: Config, progress: bool | None) -> bool:
    from .client import fetch_into_store
    from .objects import resolve_file_uri

    parsed = parse_uri(resolve_file_uri(uri, storage_dir=config.storage_dir, config_dir=config.config_dir,
                                        progress=progress))
    local = LocalStore(config.storage_dir)
    try:
        if dest.resolve().is_relative_to(local.root.resolve()):
            raise BadDestination(f"{dest} is inside the store {local.root}")
        if dest.is_dir():
            raise BadDestination(f"{dest} is a directory")
        if not can_link(dest.parent, local.root):
            return False  # (before fetching: a copy is made as the chunks arrive)
        record = local.use(parsed.sha1)
        if record is None:
            fetch_into_store(config.config_dir, parsed, local.root, progress)
        if not link_object(local, parsed.sha1, dest, record):
            return False
        fsync_dir(dest.parent)  # the name is durable too (the object was fsynced when installed)
        return True
    finally:
        local.close()


def can_link(directory: str | os.PathLike, store_root: str | os.PathLike) -> bool:
    """Whether files in ``directory`` can be hard links to the store's copies (same filesystem)."""
    return os.stat(directory).st_dev == os.stat(store_root).st_dev


def link_object(local: LocalStore, sha1: str, dest: Path, record: ObjectRecord | None) -> bool:
    """Make ``dest`` (replaced if it exists) a hard link to the store's copy of ``sha1``, which is
    held. ``record``: the copy's index record if it was held before this load, to check against
    bit rot first; None for a copy just fetched (verified as it came). False where no hard link can
    be made (another filesystem...): nothing was changed. The caller fsyncs ``dest``'s directory."""
    if record is not None:
        local.integrity.verify(sha1, 0, max(record.size, 1), record=record)
    # a new name beside dest, then renamed over it: dest is the old file or the link, never missing
    temp = dest.with_name(f".{dest.name}.kacheryfs-{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        os.link(local.object_path(sha1), temp)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    os.replace(temp, dest)
    return True


def _own_mount_of(dest: Path, config: Config) -> Path | None:
    """The daemon's mountpoint if ``dest`` is in its store/ (refused anywhere else in the mount)."""
    mountpoint = daemon_mountpoint(config)
    if mountpoint is None:
        return None
    parent = Path(os.path.realpath(dest.parent))  # (lookups in the mount: served by the daemon)
    mountpoint = Path(os.path.realpath(mountpoint))
    if not _inside(parent, mountpoint):
        return None
    if not _inside(parent, mountpoint / "store"):
        raise BadDestination(f"{dest} is inside the kacheryfs mount {mountpoint}, where only store/ takes "
                             "new files (sha1/, sha1dir/ and feeds/ are read-only)")
    return mountpoint
