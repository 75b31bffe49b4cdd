"""The local API's messages, shared by its two ends (client.py, server.py). Pure: no I/O.

A Unix socket ``<config dir>/api.sock`` (directory 0700, socket 0600): only the same user can ask
the running daemon. One request per connection, a JSON object on one line: ``{"op": OP, ...}``.
Replies are JSON objects, one per line, until the last:

- ``{"progress": done, "total": size}``: a load under way
- ``{"data": base64}``: bytes of a read, in order
- ``{"index": i, "message": value}``: an entry of a feed read
- ``{"ok": true, ...}``: the answer

A ``load`` with ``"dest": true`` carries an open file descriptor (SCM_RIGHTS, sent with the request
line): the user's empty destination file, opened by the client with the client's permissions. The
daemon fills it (reflinked, or streamed chunk by verified chunk while the store's copy is written)
and answers ``{"ok": true, "path": ..., "dest": true}``; a daemon that does not (an older version)
answers without ``"dest"`` and the client copies from ``path`` itself.
- ``{"error": message, "kind": class, "errno": n, "detail": detail}``: the request failed;
  the client raises the same class of errors.py, with the same errno and message.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import errors
from ..config import API_SOCKET
from ..errors import KacheryError

SOCKET_NAME = API_SOCKET
MAX_REQUEST = 64 << 10  # bytes of a request line
MAX_FDS = 1  # file descriptors a request may carry
OPS = ("status", "find", "load", "cache", "read", "feed_create", "feed_append", "feed_read", "feed_ls")


def socket_path(config_dir: Path) -> Path:
    return Path(config_dir) / SOCKET_NAME


def encode(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def request(op: str, **fields) -> bytes:
    return encode({"op": op, **fields})


def decode_request(line: bytes) -> dict:
    """A request line: a JSON object with a known op (ValueError if it is not JSON)."""
    request = json.loads(line)
    if not isinstance(request, dict):
        raise KacheryError("request must be a JSON object")
    if request.get("op") not in OPS:
        raise KacheryError(f"unknown op {request.get('op')!r}")
    return request


def error_reply(exc: KacheryError) -> dict:
    return {"error": str(exc), "kind": type(exc).__name__, "errno": exc.errno, "detail": exc.detail}


def error_from_reply(reply: dict) -> KacheryError:
    """The error a reply carries, as the class the daemon raised (a plain KacheryError if the class
    is not one of errors.py's, say from another version)."""
    cls = getattr(errors, str(reply.get("kind")), None)
    if isinstance(cls, type) and issubclass(cls, KacheryError):
        exc = cls(reply.get("detail"))
        if str(exc) != reply.get("error"):  # a message built some other way: keep the daemon's
            exc.args = (reply.get("error"),)
    else:
        exc = KacheryError(str(reply.get("error")))
    if isinstance(reply.get("errno"), int):
        exc.errno = reply["errno"]
    return exc
