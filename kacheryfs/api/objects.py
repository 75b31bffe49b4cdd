"""The synchronous Python calls for objects, named as in kachery-p2p: ``store_*`` return URIs,
``load_*`` take them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import (
    CorruptObject, InvalidURI, IsADirectory, KacheryError, NotADirectory, NotADirectoryManifest,
)
from ..running import located_config
from ..store import (
    MAX_MANIFEST_BYTES, Directory, FileEntry, LocalStore, format_dir_uri, is_dir_uri, parse_dir_uri, parse_uri,
)
from ..store.local import fsync_dir

COPY_BLOCK = 8 << 20  # load_dir copies this much at a time
_stores: dict[Path, LocalStore] = {}
_stores_lock = threading.Lock()


def _config(storage_dir=None, config_dir=None) -> Config:
    """The dirs to use: a running daemon's (its storage too, unless one is given; kacheryfs/running.py),
    else flags, environment and defaults."""
    return located_config(storage_dir, config_dir)


def _store(storage_dir: str | os.PathLike | None = None, config_dir: str | os.PathLike | None = None) -> LocalStore:
    root = _config(storage_dir, config_dir).storage_dir
    with _stores_lock:
        store = _stores.get(root)
        if store is None:
            store = _stores[root] = LocalStore(root)
        return store


def _put_bytes_named(data: bytes, name: str, storage_dir, config_dir=None) -> str:
    return _store(storage_dir, config_dir).put_bytes(data).uri(name)


# Every store_* and load_* takes storage_dir= and config_dir= (the commands' --storage and
# --config-dir). Without them, a running mount or daemon is found and its store used.
def store_file(path: str | os.PathLike, *, storage_dir: str | os.PathLike | None = None,
               config_dir: str | os.PathLike | None = None, progress: bool | None = None) -> str:
    """Store a local file; returns ``sha1://<hash>/<basename>[?manifest=...]``. A progress bar
    shows for files that take a while (on a terminal or in Jupyter; ``progress=False``: never)."""
    from ..progress import ByteProgress

    with ByteProgress(Path(path).name, progress, delay=0.5) as bar:
        return _store(storage_dir, config_dir).put_file(path, on_progress=bar).uri(Path(path).name)


def store_text(text: str, *, name: str = "file.txt", storage_dir=None, config_dir=None) -> str:
    return _put_bytes_named(text.encode("utf-8"), name, storage_dir, config_dir)


def store_object(obj: Any, *, name: str = "file.json", storage_dir=None, config_dir=None) -> str:
    """Store a JSON-serialisable object."""
    try:
        data = json.dumps(obj).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise KacheryError(f"object is not JSON-serialisable: {exc}") from None
    return _put_bytes_named(data, name, storage_dir, config_dir)


def store_npy(array, *, name: str = "file.npy", storage_dir=None, config_dir=None) -> str:
    """Store a numpy array in .npy format, streamed into the store (no in-memory copy of the file)."""
    import numpy as np

    store = _store(storage_dir, config_dir)
    with store.writer() as writer:
        np.save(_WriterFile(writer), np.asanyarray(array), allow_pickle=False)
        return writer.commit().uri(name)


class _WriterFile(io.RawIOBase):
    """Just enough of a file for np.save to stream into an ObjectWriter."""

    def __init__(self, writer):
        self._writer = writer

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._writer.write(data)


def store_dir(path: str | os.PathLike, *, label: str | None = None, storage_dir=None, config_dir=None) -> str:
    """Store every file under a local directory and the directory's manifest; returns
    ``sha1dir://<hash>.<label>`` (label: the directory's name). A file inside it is then
    ``sha1dir://<hash>.<label>/path/in/dir``, for load_* and the mount's sha1dir/<hash>/."""
    obj, _directory = _store(storage_dir, config_dir).put_dir(path)
    return format_dir_uri(obj.sha1, Path(path).resolve().name if label is None else label)


def read_dir(uri: str, *, recursive: bool = True, storage_dir=None, config_dir=None,
             progress: bool | None = None) -> dict:
    """A stored directory's listing, as kachery's read_dir: ``{"files": {name: {"sha1", "size"
    [, "manifest"]}}, "dirs": {name: {...}}}`` (subdirectories empty unless ``recursive``)."""
    entry = dir_entry(uri, storage_dir, config_dir, progress)
    if not isinstance(entry, Directory):
        raise NotADirectory(f"{uri} is a file (load it with load_file)")
    return entry.listing(recursive)


def load_dir(uri: str, dest: str | os.PathLike, *, storage_dir=None, config_dir=None,
             progress: bool | None = None, link: bool = False) -> str:
    """Copy a stored directory (or a subdirectory: ``sha1dir://<hash>/sub``) to ``dest``, which must
    not exist yet; files not held here come from channel peers. Returns ``dest``.

    ``link=True``: each file is a hard link to the store's read-only copy instead (on disk once, as
    ``load_file(..., link=True)``); where ``dest`` is on another filesystem they are copied."""
    from .dest import can_link, link_object

    entry = dir_entry(uri, storage_dir, config_dir, progress)
    if not isinstance(entry, Directory):
        raise NotADirectory(f"{uri} is a file (load it with load_file)")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True)
    except FileExistsError:
        raise KacheryError(f"{dest} already exists (load_dir writes a new directory)") from None
    except OSError as exc:
        raise KacheryError(f"could not create {dest}: {exc.strerror}") from None
    store = _store(storage_dir, config_dir)
    link = link and can_link(dest, store.root)
    made = [dest]  # directories whose names to make durable (links are names only)
    for rel, item in entry.walk():
        target = dest / rel
        try:
            if isinstance(item, Directory):
                target.mkdir(exist_ok=True)
                made.append(target)
                continue
            held = store.use(item.sha1) if link else None  # a copy held before is checked before it is linked
            load_file(item.uri(target.name), storage_dir=storage_dir, config_dir=config_dir, progress=progress)
            if link and link_object(store, item.sha1, target, held):
                continue
            with open(target, "wb") as out:  # each chunk checked as it is copied: a stored copy may have rotted
                for offset in range(0, item.size, COPY_BLOCK):
                    out.write(store.integrity.read_range(item.sha1, offset, COPY_BLOCK))
        except OSError as exc:
            raise KacheryError(f"could not write {target}: {exc.strerror}") from None
    if link:
        for directory in made:
            fsync_dir(directory)
    return str(dest)


def dir_entry(uri: str, storage_dir, config_dir, progress) -> Directory | FileEntry:
    """What a ``sha1dir://`` URI names; the directory manifest is fetched from peers if need be."""
    parsed = parse_dir_uri(uri)
    load_file(parsed.sha1, storage_dir=storage_dir, config_dir=config_dir, progress=progress)
    store = _store(storage_dir, config_dir)
    size = store.require(parsed.sha1).size
    if size > MAX_MANIFEST_BYTES:
        raise NotADirectoryManifest(f"{parsed.sha1}: {size} bytes is too large for a directory manifest")
    # every chunk checked: a stored copy may have rotted (it is then quarantined: CorruptObject)
    return Directory.from_bytes(store.integrity.read_range(parsed.sha1, 0, size)).lookup(parsed.path)


def resolve_file_uri(uri: str, *, storage_dir=None, config_dir=None, progress: bool | None = None) -> str:
    """A ``sha1://`` URI for any file URI: a ``sha1dir://<hash>/path`` is looked up in its directory
    manifest (which carries the file's hash and chunk manifest)."""
    if not is_dir_uri(uri):
        return str(parse_uri(uri))
    entry = dir_entry(uri, storage_dir, config_dir, progress)
    if isinstance(entry, Directory):
        raise IsADirectory(f"{uri} (read_dir lists it; load_dir or `kacheryfs load --dest DIR` copies it)")
    return entry.uri(parse_dir_uri(uri).path.rpartition("/")[2])


def load_file(uri: str, *, dest: str | os.PathLike | None = None, storage_dir=None, config_dir=None,
              progress: bool | None = None, link: bool = False) -> str:
    """A local path holding the bytes of ``uri`` (read-only; do not modify it). While it comes from
    the network a progress bar shows (on a terminal or in Jupyter; ``progress=False``: never).
    ``uri`` may also name a file in a stored directory: ``sha1dir://<hash>/path/in/dir``.

    With ``dest``: the bytes are written to that file (created, or emptied) instead, and ``dest``
    is returned: a file of the caller's own, which they may change. Written once where possible
    (fetched: the daemon fills it as the chunks arrive; held: a reflink or an in-kernel copy), as
    ``kacheryfs load --dest`` (api/dest.py; BadDestination for the store's own copy and the like).
    With ``link=True`` as well, ``dest`` is instead a hard link to the store's read-only copy (on
    disk once; do not change it), or a copy where it is on another filesystem (``--link``)."""
    from .client import fetch_into_store

    if dest is not None:
        from .dest import link_into, load_into

        if link:
            link_into(uri, dest, _config(storage_dir, config_dir), progress)
            return str(dest)
        return load_into(uri, dest, _config(storage_dir, config_dir), progress)
    parsed = parse_uri(resolve_file_uri(uri, storage_dir=storage_dir, config_dir=config_dir, progress=progress))
    store = _store(storage_dir, config_dir)
    if store.info(parsed.sha1) is None:
        # fetched from channel peers through the running daemon
        return fetch_into_store(_config(storage_dir, config_dir).config_dir, parsed, store.root, progress)
    store.touch(parsed.sha1)
    store.flush_touches()  # a script may exit without closing the store
    return str(store.object_path(parsed.sha1))


def load_bytes(uri: str, *, storage_dir=None, config_dir=None, progress: bool | None = None) -> bytes:
    """The bytes of ``uri``, checked against its hash (a stored copy may have rotted on disk)."""
    data = Path(load_file(uri, storage_dir=storage_dir, config_dir=config_dir, progress=progress)).read_bytes()
    sha1 = parse_uri(resolve_file_uri(uri, storage_dir=storage_dir, config_dir=config_dir)).sha1
    if hashlib.sha1(data).hexdigest() != sha1:
        _store(storage_dir, config_dir).integrity.verify(sha1, 0, max(len(data), 1))  # quarantines it and raises...
        raise CorruptObject(f"{sha1} in the local store")  # ...unless this process checked it before
    return data


def load_text(uri: str, *, storage_dir=None, config_dir=None, progress: bool | None = None) -> str:
    return load_bytes(uri, storage_dir=storage_dir, config_dir=config_dir, progress=progress).decode("utf-8")


def load_object(uri: str, *, storage_dir=None, config_dir=None, progress: bool | None = None) -> Any:
    try:
        return json.loads(load_bytes(uri, storage_dir=storage_dir, config_dir=config_dir, progress=progress))
    except ValueError as exc:
        raise KacheryError(f"{uri} is not JSON: {exc}") from None


def load_npy(uri: str, *, mmap_mode: str | None = None, storage_dir=None, config_dir=None,
             progress: bool | None = None):
    import numpy as np

    path = load_file(uri, storage_dir=storage_dir, config_dir=config_dir, progress=progress)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as exc:
        raise KacheryError(f"{uri} is not a .npy array: {exc}") from None


__all__ = [
    "store_file", "store_text", "store_object", "store_npy", "store_dir",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "read_dir", "load_dir", "InvalidURI",
]
