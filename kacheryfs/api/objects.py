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
from ..errors import CorruptObject, InvalidURI, KacheryError, NoDaemon, ObjectNotFound
from ..store import LocalStore, parse_uri

_stores: dict[Path, LocalStore] = {}
_stores_lock = threading.Lock()


def _store(storage_dir: str | os.PathLike | None = None) -> LocalStore:
    root = Config.from_env(storage_dir=storage_dir).storage_dir
    with _stores_lock:
        store = _stores.get(root)
        if store is None:
            store = _stores[root] = LocalStore(root)
        return store


def _put_bytes_named(data: bytes, name: str, storage_dir) -> str:
    return _store(storage_dir).put_bytes(data).uri(name)


def store_file(path: str | os.PathLike, *, storage_dir: str | os.PathLike | None = None,
               progress: bool | None = None) -> str:
    """Store a local file; returns ``sha1://<hash>/<basename>[?manifest=...]``. A progress bar
    shows for files that take a while (on a terminal or in Jupyter; ``progress=False``: never)."""
    from ..progress import ByteProgress

    with ByteProgress(Path(path).name, progress, delay=0.5) as bar:
        return _store(storage_dir).put_file(path, on_progress=bar).uri(Path(path).name)


def store_text(text: str, *, name: str = "file.txt", storage_dir=None) -> str:
    return _put_bytes_named(text.encode("utf-8"), name, storage_dir)


def store_object(obj: Any, *, name: str = "file.json", storage_dir=None) -> str:
    """Store a JSON-serialisable object."""
    try:
        data = json.dumps(obj).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise KacheryError(f"object is not JSON-serialisable: {exc}") from None
    return _put_bytes_named(data, name, storage_dir)


def store_npy(array, *, name: str = "file.npy", storage_dir=None) -> str:
    """Store a numpy array in .npy format, streamed into the store (no in-memory copy of the file)."""
    import numpy as np

    store = _store(storage_dir)
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


def load_file(uri: str, *, storage_dir=None, progress: bool | None = None) -> str:
    """A local path holding the bytes of ``uri`` (read-only; do not modify it). While it comes from
    the network a progress bar shows (on a terminal or in Jupyter; ``progress=False``: never)."""
    from ..progress import ByteProgress
    from .client import daemon_load

    parsed = parse_uri(uri)
    store = _store(storage_dir)
    if store.info(parsed.sha1) is None:
        try:  # fetch from channel peers through the running daemon
            with ByteProgress(parsed.name or parsed.sha1[:12], progress) as bar:
                return daemon_load(Config.from_env(storage_dir=storage_dir).config_dir, str(parsed), bar)
        except NoDaemon:
            raise ObjectNotFound(f"{parsed.sha1} is not in the local store {store.root}, and no kacheryfs "
                                 "daemon is running to fetch it") from None
    store.touch(parsed.sha1)
    store.flush_touches()  # a script may exit without closing the store
    return str(store.object_path(parsed.sha1))


def load_bytes(uri: str, *, storage_dir=None, progress: bool | None = None) -> bytes:
    """The bytes of ``uri``, checked against its hash (a stored copy may have rotted on disk)."""
    data = Path(load_file(uri, storage_dir=storage_dir, progress=progress)).read_bytes()
    sha1 = parse_uri(uri).sha1
    if hashlib.sha1(data).hexdigest() != sha1:
        _store(storage_dir).integrity.verify(sha1, 0, max(len(data), 1))  # quarantines it and raises...
        raise CorruptObject(f"{sha1} in the local store")  # ...unless this process checked it before
    return data


def load_text(uri: str, *, storage_dir=None, progress: bool | None = None) -> str:
    return load_bytes(uri, storage_dir=storage_dir, progress=progress).decode("utf-8")


def load_object(uri: str, *, storage_dir=None, progress: bool | None = None) -> Any:
    try:
        return json.loads(load_bytes(uri, storage_dir=storage_dir, progress=progress))
    except ValueError as exc:
        raise KacheryError(f"{uri} is not JSON: {exc}") from None


def load_npy(uri: str, *, mmap_mode: str | None = None, storage_dir=None, progress: bool | None = None):
    import numpy as np

    path = load_file(uri, storage_dir=storage_dir, progress=progress)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as exc:
        raise KacheryError(f"{uri} is not a .npy array: {exc}") from None


__all__ = [
    "store_file", "store_text", "store_object", "store_npy",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "InvalidURI",
]
