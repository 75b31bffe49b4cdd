"""Every error kacheryfs raises on purpose, all defined here.

Each class's docstring is the message a user sees; ``errno`` is what the FUSE layer returns.
The CLI prints ``str(error)`` as one line and exits non-zero, never a traceback. The local API
carries an error's class and errno to the client (api/messages.py), which raises the same class.
"""

from __future__ import annotations

import errno as _errno
from contextlib import contextmanager
from typing import Iterator


class KacheryWarning(UserWarning):
    """Something works, but likely not as meant (e.g. a store other than the running daemon's)"""


class KacheryError(Exception):
    """kacheryfs failed"""

    errno: int = _errno.EIO

    def __init__(self, detail: str | None = None):
        self.detail = detail
        super().__init__(self.message())

    def message(self) -> str:
        headline = (self.__doc__ or "").strip().splitlines()[0]
        if type(self) is KacheryError and self.detail:
            return self.detail  # the generic headline adds nothing to a specific message
        return f"{headline}: {self.detail}" if self.detail else headline


class InvalidURI(KacheryError):
    """Not a valid kachery URI (expected sha1://<40 hex>[/name][?manifest=<40 hex>], sha1dir://<40 hex>[/path], or a bare 40-hex hash)"""

    errno = _errno.EINVAL


class InvalidName(KacheryError):
    """Invalid file name (no '/', no NUL, not '.' or '..', at most 255 bytes)"""

    errno = _errno.EINVAL


class BadDestination(KacheryError):
    """The destination file cannot receive the object"""

    errno = _errno.EINVAL


class NameTooLong(InvalidName):
    """File name longer than 255 bytes"""

    errno = _errno.ENAMETOOLONG


class NotFound(KacheryError):
    """Not found"""

    errno = _errno.ENOENT


class ObjectNotFound(NotFound):
    """No object with this hash is in the local store"""


class NoSuchFile(NotFound):
    """No such file or directory"""


class AlreadyExists(KacheryError):
    """File exists"""

    errno = _errno.EEXIST


class IsADirectory(KacheryError):
    """Is a directory"""

    errno = _errno.EISDIR


class DirectoryNotEmpty(KacheryError):
    """Directory not empty"""

    errno = _errno.ENOTEMPTY


class ReadOnly(KacheryError):
    """Read-only: content under sha1/ is immutable"""

    errno = _errno.EROFS


class NotPermitted(KacheryError):
    """Operation not permitted here"""

    errno = _errno.EACCES


class StorageFull(KacheryError):
    """No space left in the storage directory; nothing was committed"""

    errno = _errno.ENOSPC


class StoreFailed(KacheryError):
    """Could not commit the file to the store; nothing was committed"""

    errno = _errno.EIO


class CorruptObject(KacheryError):
    """Stored bytes do not match their hash"""

    errno = _errno.EIO


class NotADirectoryManifest(CorruptObject):
    """This object is not a kacheryfs directory (expected {"dirs": {...}, "files": {...}})"""

    errno = _errno.ENOTDIR


class CorruptChunk(KacheryError):
    """A downloaded chunk does not match its hash in the manifest; it was not stored"""

    errno = _errno.EIO


class ChunkNotPresent(KacheryError):
    """This part of the file has not been downloaded yet"""

    errno = _errno.EIO


class NotOpenForReading(KacheryError):
    """File not open for reading"""


class NotOpenForWriting(KacheryError):
    """File not open for writing"""


class NotADirectory(KacheryError):
    """Not a directory"""

    errno = _errno.ENOTDIR


class BadFileHandle(KacheryError):
    """Bad file handle"""


class UnmountError(KacheryError):
    """Could not unmount"""


class ListenError(KacheryError):
    """Cannot listen for peers"""


class MountError(KacheryError):
    """Could not mount"""

    errno = _errno.EIO


class NoSuchAttribute(KacheryError):
    """No such extended attribute"""

    errno = _errno.ENODATA


# ---- configuration and keys --------------------------------------------------------------------
class ConfigError(KacheryError):
    """Invalid configuration"""


class CryptoError(KacheryError):
    """Authentication failed"""


# ---- the wire protocol ---------------------------------------------------------------------------
class RemoteProtocolError(KacheryError):
    """The peer broke the protocol"""


class LocalProtocolError(KacheryError):
    """Tried to send something the protocol does not allow"""


class ProtocolError(RemoteProtocolError):
    """The peer broke the protocol"""


# ---- peers and transfers -------------------------------------------------------------------------
class PeerGone(KacheryError):
    """The peer disconnected"""


class RequestFailed(KacheryError):
    """The peer could not answer"""


class PeerBusy(RequestFailed):
    """The peer declined: it has sent this chunk to enough others, ask one of them"""


class FetchFailed(KacheryError):
    """Could not fetch the file from any peer"""


class PunchError(KacheryError):
    """The hole punch failed"""


# ---- the daemon and its local API ----------------------------------------------------------------
class DaemonAlreadyRunning(KacheryError):
    """Another kacheryfs daemon is running with this config directory"""


class NoDaemon(KacheryError):
    """No kacheryfs daemon is running for this config directory (start `kacheryfs mount` or `kacheryfs daemon`)"""


class GatewayError(KacheryError):
    """The HTTP gateway could not start"""


# ---- feeds (signed append-only logs) ---------------------------------------------------------
class FeedError(KacheryError):
    """Feed operation failed"""

    errno = _errno.EIO


class InvalidFeedURI(InvalidURI, FeedError):
    """Not a valid feed URI (expected feed://<64 hex feed id>[/subfeed])"""

    errno = _errno.EINVAL


class InvalidFeedId(FeedError):
    """Not a valid feed id (64 lowercase hex digits: an ed25519 public key)"""

    errno = _errno.EINVAL


class InvalidFeedLabel(FeedError):
    """Invalid feed label (1 to 255 bytes of UTF-8, no '/', no NUL, not '.' or '..', not a feed id)"""

    errno = _errno.EINVAL


class FeedLabelTaken(FeedError):
    """Another feed already has this label"""

    errno = _errno.EEXIST


class InvalidSubfeedName(FeedError):
    """Invalid subfeed name (1 to 255 bytes of UTF-8, no '/', no NUL, not '.' or '..')"""

    errno = _errno.EINVAL


class InvalidFeedMessage(FeedError):
    """A feed message must be a JSON value (at most 1 MiB once encoded)"""

    errno = _errno.EINVAL


class InvalidFeedEntry(FeedError):
    """Malformed feed entry"""

    errno = _errno.EINVAL


class TruncatedFeedEntry(InvalidFeedEntry):
    """Feed entry is truncated"""


class FeedChainError(FeedError):
    """Feed entries do not form a valid signed chain"""

    errno = _errno.EIO
    added: int = 0  # FeedStore.add_entries: how many entries before the rejected one were stored


class FeedGap(FeedChainError):
    """Feed entries are missing (gap in the log)"""


class FeedReorder(FeedChainError):
    """Feed entries are out of order or repeated"""


class FeedFork(FeedChainError):
    """Feed entry does not link to the previous entry (fork)"""


class FeedMismatch(FeedChainError):
    """Feed entry belongs to another feed or subfeed"""


class BadFeedSignature(FeedChainError):
    """Feed entry is not signed by the feed's key"""


class FeedNotOwned(FeedError, NotPermitted):
    """Only the owner of a feed (holder of its private key) can append to it"""

    errno = _errno.EACCES


class UnknownFeed(FeedError, NotFound):
    """No such feed here"""

    errno = _errno.ENOENT


class NotAnAppend(NotPermitted):
    """Feeds are append-only: only writes at the end of a subfeed are allowed"""


@contextmanager
def sqlite_errors(what: str, failure: type[KacheryError]) -> Iterator[None]:
    """SQLite errors become kacheryfs errors: a full disk must read as one, not as a crash."""
    import sqlite3  # here: a plain `kacheryfs load` (entry.py) never imports SQLite

    try:
        yield
    except sqlite3.Error as exc:
        if "full" in str(exc):
            raise StorageFull(f"the {what} could not be updated") from None
        raise failure(f"{what}: {exc}") from None


def from_os_error(exc: OSError, context: str) -> KacheryError:
    """Translate an OSError met while writing into the store into a user-facing error."""
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return StorageFull(context)
    err = StoreFailed(f"{context}: {exc.strerror or exc}")
    if exc.errno:
        err.errno = exc.errno
    return err
