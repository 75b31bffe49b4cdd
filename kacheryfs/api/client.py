"""Talking to the running daemon's local API (api/messages.py): used by the CLI and the Python API."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Iterator

from ..errors import KacheryError, NoDaemon, ObjectNotFound
from . import messages


def request(config_dir: Path, op: str, timeout: float | None = None, fds: tuple[int, ...] = (),
            **fields) -> Iterator[dict]:
    """Send one request (``fds``: file descriptors passed along with it); yield each reply object
    (progress lines, then the final one). An error reply is raised as the error the daemon raised."""
    path = messages.socket_path(config_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(str(path)) from None
        line = messages.request(op, **fields)
        if fds:
            sent = socket.send_fds(sock, [line], list(fds))
            line = line[sent:]
        if line:  # (sending nothing to a daemon that already answered and closed is EPIPE)
            sock.sendall(line)
        with sock.makefile("rb") as lines:
            for line in lines:
                reply = json.loads(line)
                if "error" in reply:
                    raise messages.error_from_reply(reply)
                yield reply
    except OSError as exc:
        raise KacheryError(f"local API: {exc}") from None
    finally:
        sock.close()


def call(config_dir: Path, op: str, **fields) -> dict:
    """A request whose last reply is the answer."""
    last = None
    for last in request(config_dir, op, **fields):
        pass
    if last is None:
        raise KacheryError("the daemon closed the connection without answering")
    return last


def daemon_load_into(config_dir: Path, uri: str, dest_fd: int, on_progress=None) -> tuple[str, bool]:
    """Ask the daemon to fetch ``uri`` into the store and into the open, empty file ``dest_fd``;
    returns (the local path, whether the daemon filled ``dest_fd``: an older daemon does not)."""
    for reply in request(config_dir, "load", fds=(dest_fd,), uri=uri, dest=True):
        if "progress" in reply and on_progress is not None:
            on_progress(reply["progress"], reply["total"])
        if reply.get("ok"):
            return reply["path"], bool(reply.get("dest"))
    raise KacheryError("the daemon closed the connection without answering")


def daemon_load(config_dir: Path, uri: str, on_progress=None) -> str:
    """Ask the daemon to fetch ``uri`` into the store; returns the local path."""
    for reply in request(config_dir, "load", uri=uri):
        if "progress" in reply and on_progress is not None:
            on_progress(reply["progress"], reply["total"])
        if reply.get("ok"):
            return reply["path"]
    raise KacheryError("the daemon closed the connection without answering")


def not_held(sha1: str, store_root) -> ObjectNotFound:
    """What a client says when an object is not held here and no daemon runs to fetch it."""
    return ObjectNotFound(f"{sha1} is not in the local store {store_root}, and no kacheryfs daemon is "
                          "running to fetch it (start `kacheryfs mount` or `kacheryfs daemon`)")


def fetch_into_store(config_dir: Path, parsed, store_root, progress: bool | None = None) -> str:
    """The daemon fetches the object of ``parsed`` (a parsed sha1:// URI) into its store, with a
    progress bar (``progress``: as ByteProgress); returns its local path."""
    from ..progress import ByteProgress

    try:
        with ByteProgress(parsed.name or parsed.sha1[:12], progress) as bar:
            return daemon_load(config_dir, str(parsed), bar)
    except NoDaemon:
        raise not_held(parsed.sha1, store_root) from None
