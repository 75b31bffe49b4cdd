"""kachery-p2p's Python API on kacheryfs, so ``import kachery_p2p as kp`` scripts run unchanged.

The names and argument shapes are kachery-p2p's: ``store_*`` return ``sha1://`` URIs (``basename=``
names the file in the URI); ``load_*`` return None when no channel peer has the file (kacheryfs's
own API raises instead); feeds are ``create_feed`` / ``load_feed`` / ``load_subfeed`` with subfeeds
that ``append_message(s)`` and ``get_next_messages``. Everything is done by kacheryfs: the local
store, and a running ``kacheryfs daemon`` / ``mount`` (or ``kachery-p2p-start-daemon``) for the network.
``from_node`` and ``from_channel`` are accepted and ignored: kacheryfs asks every channel peer.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from kacheryfs.api import feeds as _feeds
from kacheryfs.api import objects as _api
from kacheryfs.running import located_config
from kacheryfs.errors import KacheryError, NotFound, ObjectNotFound, UnknownFeed
from kacheryfs.store import format_uri, is_dir_uri, parse_uri

__version__ = "0.1.0"


class LoadFileError(KacheryError):
    """Could not load the file"""


def _named(uri: str, basename: str | None) -> str:
    if basename is None:
        return uri
    parsed = parse_uri(uri)
    return format_uri(parsed.sha1, basename, parsed.manifest_sha1)


# ---- storing --------------------------------------------------------------------------------------

def store_file(path: str, basename: str | None = None, *, progress: bool | None = None) -> str:
    return _named(_api.store_file(path, progress=progress), basename)


def store_text(text: str, basename: str | None = None) -> str:
    return _api.store_text(text, name=basename or "file.txt")


def store_json(object: Any, basename: str | None = None) -> str:
    return _api.store_object(object, name=basename or "file.json")


store_object = store_json


def store_npy(array, basename: str | None = None) -> str:
    return _api.store_npy(array, name=basename or "file.npy")


def store_pkl(x: Any, basename: str | None = None) -> str:
    """Python containers, numbers, strings and numpy arrays; load_pkl refuses anything else."""
    return _api._put_bytes_named(pickle.dumps(x, protocol=4), basename or "file.pkl", None)


# ---- loading --------------------------------------------------------------------------------------

def load_file(uri: str, dest: str | None = None, p2p: bool = True, from_node: str | None = None,
              from_channel: str | None = None, *, progress: bool | None = None) -> str | None:
    """The local path of the file (or ``dest``, a copy of the caller's own: written once where
    possible, as ``kacheryfs load --dest``); None if neither this node nor a channel peer has it.
    A path that is not a URI is taken as a local file, as in kachery-p2p."""
    if not str(uri).startswith(("sha1://", "sha1dir://")) and os.path.isfile(uri):
        path = str(uri)
    else:
        try:
            parsed = parse_uri(_api.resolve_file_uri(uri) if is_dir_uri(uri) else uri)
            if dest is not None and (p2p or _api._store().info(parsed.sha1) is not None):
                return _api.load_file(str(parsed), dest=dest, progress=progress)
            if p2p:
                path = _api.load_file(str(parsed), progress=progress)
            else:
                store = _api._store()
                if store.use(parsed.sha1) is None:
                    return None
                store.flush_touches()  # a script may exit without closing the store
                path = str(store.object_path(parsed.sha1))
        except NotFound:  # no such object, or no such path in a directory: None, as kachery-p2p
            return None
    if dest is None:
        return path
    shutil.copyfile(path, dest)
    return dest


def load_bytes(uri: str, start: int | None = None, end: int | None = None, write_to_stdout: bool = False,
               p2p: bool = True, from_node: str | None = None, from_channel: str | None = None) -> bytes | None:
    """Bytes [start, end) of a file (all of it without start/end); from peers only the chunks they
    cover are fetched. None if nobody has the file."""
    from kacheryfs.api.client import request
    from kacheryfs.errors import NoDaemon

    try:
        parsed = parse_uri(_api.resolve_file_uri(uri) if is_dir_uri(uri) else uri)
    except NotFound:
        return None
    start = int(start or 0)
    end = None if end is None else int(end)
    if start < 0 or (end is not None and end < start):
        raise KacheryError(f"bad byte range: start {start}, end {end}")
    store = _api._store()
    if store.use(parsed.sha1) is not None:
        store.flush_touches()  # a script may exit without closing the store
        with open(store.object_path(parsed.sha1), "rb") as f:
            f.seek(start)
            data = f.read(-1 if end is None else end - start)
    elif not p2p:
        return None
    else:
        import base64

        parts = []
        try:
            for reply in request(located_config().config_dir, "read", uri=str(parsed), start=start, end=end):
                if "data" in reply:
                    parts.append(base64.b64decode(reply["data"]))
        except (NoDaemon, ObjectNotFound):
            return None
        data = b"".join(parts)
    if write_to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return data


def _load_path(uri: str, p2p: bool, progress: bool | None) -> str | None:
    return load_file(uri, p2p=p2p, progress=progress)


def load_text(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
              *, progress: bool | None = None) -> str | None:
    path = _load_path(uri, p2p, progress)
    return None if path is None else Path(path).read_text()


def load_json(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
              *, progress: bool | None = None) -> Any:
    path = _load_path(uri, p2p, progress)
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_bytes())
    except ValueError as exc:
        raise KacheryError(f"{uri} is not JSON: {exc}") from None


load_object = load_json


def load_npy(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
             *, progress: bool | None = None):
    import numpy as np

    path = _load_path(uri, p2p, progress)
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise KacheryError(f"{uri} is not a .npy array: {exc}") from None


class _SafeUnpickler(pickle.Unpickler):
    """Only plain data: what came from a peer must not run code when loaded."""

    ALLOWED = {
        ("builtins", n) for n in ("list", "dict", "set", "frozenset", "tuple", "str", "bytes", "bytearray",
                                  "int", "float", "complex", "bool", "slice")
    } | {("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
         ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module == "numpy" and name.endswith("DType")):
            return super().find_class(module, name)
        raise KacheryError(f"load_pkl refuses {module}.{name}: only plain data and numpy arrays are loaded")


def load_pkl(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
             *, progress: bool | None = None) -> Any:
    path = _load_path(uri, p2p, progress)
    if path is None:
        return None
    with open(path, "rb") as f:
        try:
            return _SafeUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise KacheryError(f"{uri} is not a pickle: {exc}") from None


def read_dir(uri: str, recursive: bool = True) -> dict | None:
    """A stored directory's listing (``sha1dir://<hash>[/path]``): ``{"files": {name: {"sha1",
    "size"}}, "dirs": {name: {...}}}``; None if neither this node nor a channel peer has it."""
    try:
        return _api.read_dir(uri, recursive=recursive)
    except NotFound:
        return None


def store_dir(path: str, label: str | None = None) -> str:
    """Store a local directory tree; returns ``sha1dir://<hash>.<label>``."""
    return _api.store_dir(path, label=label)


# ---- the network ------------------------------------------------------------------------------------

def _daemon_call(op: str, **fields) -> dict:
    from kacheryfs.api.client import call

    return call(located_config().config_dir, op, **fields)


def find_file(uri: str, timeout_sec: float = 5) -> list[dict]:
    """The channel peers that hold the file, plus this node if it does."""
    parsed = parse_uri(uri)
    out = []
    store = _api._store()
    record = store.info(parsed.sha1)
    node_id = get_node_id()
    if record is not None:
        out.append({"node_id": node_id, "size": record.size, "local": True})
    for p in _daemon_call("find", uri=str(parsed))["providers"]:
        out.append({"node_id": p["node"], "size": p["size"], "local": False, "remote": p["remote"]})
    return out


def get_node_id() -> str:
    """The id (public key) of the running daemon's node."""
    return _daemon_call("status")["status"]["node_id"]


# ---- feeds ----------------------------------------------------------------------------------------

class Subfeed:
    def __init__(self, subfeed: _feeds.Subfeed, position: int = 0):
        self._sub = subfeed
        self._sub.set_position(position)

    def get_uri(self) -> str:
        return self._sub.get_uri()

    def get_subfeed_name(self) -> str:
        return self._sub.name

    def get_position(self) -> int:
        return self._sub.get_position()

    def set_position(self, position: int) -> None:
        self._sub.set_position(position)

    def get_num_messages(self) -> int:
        return self._sub.get_num_messages()

    def is_writeable(self) -> bool:
        return Feed(self._sub.feed).is_writeable()

    def get_next_messages(self, *, wait_msec: float = 10, signed: bool = False, max_num_messages: int = 0,
                          advance_position: bool = True) -> list:
        position = self._sub.get_position()
        messages = self._sub.get_next_messages(wait_msec=wait_msec, max_num_messages=max_num_messages or None)
        if not advance_position:
            self._sub.set_position(position)
        return messages

    def get_next_message(self, *, wait_msec: float, signed: bool = False, advance_position: bool = True):
        messages = self.get_next_messages(wait_msec=wait_msec, max_num_messages=1, advance_position=advance_position)
        return messages[0] if messages else None

    def message_stream(self, *, signed: bool = False):
        return self._sub.message_stream()

    def append_message(self, message: Any) -> None:
        self._sub.append_messages([message])

    def append_messages(self, messages: Iterable[Any]) -> None:
        self._sub.append_messages(list(messages))

    submit_message = append_message
    submit_messages = append_messages

    def print_messages(self) -> None:
        self.set_position(0)
        for message in self.get_next_messages(wait_msec=0):
            print(message)


class Feed:
    def __init__(self, feed: _feeds.Feed):
        self._feed = feed

    def __repr__(self) -> str:
        return f"Feed({self._feed.feed_id})"

    def get_feed_id(self) -> str:
        return self._feed.feed_id

    def get_uri(self) -> str:
        return self._feed.get_uri()

    def is_writeable(self) -> bool:
        backend = self._feed._backend
        reply = backend.call("feed_ls", feed=self._feed.feed_id)
        if reply is not None:
            return bool(reply["feeds"][0]["owned"])
        return backend.store().owns(self._feed.feed_id)

    def get_subfeed(self, subfeed_name: str, position: int = 0) -> Subfeed:
        return Subfeed(self._feed.get_subfeed(subfeed_name), position)


def create_feed(feed_name: str | None = None) -> Feed:
    return Feed(_feeds.create_feed(feed_name))


def load_feed(feed_name_or_uri: str, *, timeout_sec: float | None = None, create: bool = False) -> Feed:
    """By feed://URI, id or local name; ``create=True`` makes a named feed that does not exist yet."""
    try:
        return Feed(_feeds.load_feed(feed_name_or_uri))
    except UnknownFeed:
        if create and not str(feed_name_or_uri).startswith("feed://"):
            return create_feed(feed_name_or_uri)
        raise


def get_feed_id(feed_name: str, *, create: bool = False) -> str | None:
    try:
        return load_feed(feed_name, create=create).get_feed_id()
    except UnknownFeed:
        return None


def load_subfeed(subfeed_uri: str) -> Subfeed:
    """``feed://<feed id>/<subfeed name>``."""
    from kacheryfs.feeds import parse_feed_uri

    parsed = parse_feed_uri(subfeed_uri)
    if not parsed.subfeed:
        raise KacheryError(f"{subfeed_uri!r} names no subfeed (feed://<feed id>/<subfeed name>)")
    return load_feed(parsed.feed_id).get_subfeed(parsed.subfeed)


__all__ = [
    "store_file", "store_text", "store_json", "store_object", "store_npy", "store_pkl",
    "load_file", "load_bytes", "load_text", "load_json", "load_object", "load_npy", "load_pkl",
    "read_dir", "store_dir",
    "find_file", "get_node_id", "create_feed", "load_feed", "load_subfeed", "get_feed_id",
    "Feed", "Subfeed", "LoadFileError", "KacheryError",
]
