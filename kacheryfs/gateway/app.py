"""The gateway's ASGI application: objects by hash and feeds, for browsers and web tools.

    GET|HEAD /sha1/<hash>[/<name>][?manifest=<hash>]
                                      the object (Range, ETag, immutable caching, CORS); the
                                      manifest, as in a URI, is tried before those peers name
    GET|HEAD /sha1dir/<hash>[/<path>] a file of a directory (``sha1dir://``): as /sha1/; a
                                      directory: its listing as JSON (kachery's read_dir shape,
                                      ?recursive=1 for the whole tree)
    GET      /feeds/<feed id>          {"feed_id", "subfeeds": {name: count}}
    GET      /feeds/<feed id>/<sub>    JSON Lines, one message per line (?start=N)
             ...?follow=1              Server-Sent Events: every message from ?start (or
                                       Last-Event-ID + 1) on, then live; id = message index
Anything else is 404; a malformed hash or parameter is 400. Errors are one line of text.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from urllib.parse import parse_qs

import trio

from ..errors import KacheryError, NotADirectoryManifest, NotFound, UnknownFeed
from ..feeds.entry import is_feed_id
from ..store import is_sha1_hex
from ..store.directory import Directory, FileEntry
from .objects import BLOCK, object_size, open_source, read_directory
from .ranges import Unsatisfiable, parse_range

log = logging.getLogger(__name__)

CORS = [(b"access-control-allow-origin", b"*"),
        (b"access-control-expose-headers", b"content-length, content-range, accept-ranges, etag")]
IMMUTABLE = b"public, max-age=31536000, immutable"
KEEPALIVE_SECONDS = 15.0


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class ClientGone(Exception):
    """The client disconnected: stop sending."""


class Request:
    def __init__(self, scope, receive, send):
        self.scope = scope
        self.method = scope["method"]
        self.path = scope["path"]
        self.query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self._receive = receive
        self._send = send
        self.started = False

    async def start(self, status: int, headers: list) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": [*CORS, *headers]})

    async def body(self, data: bytes, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def wait_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def param_int(self, name: str, default: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        if not values[-1].isdigit():
            raise HttpError(400, f"{name} must be a non-negative integer")
        return int(values[-1])

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["0"])[-1].lower() in ("1", "true", "yes", "")


class GatewayApp:
    """``store`` and ``fetcher`` as the mount uses them; ``feed_sync`` may be None (no feeds).
    ``allowed_hosts``: Host headers accepted (set once bound to loopback: a web page that
    rebinds its own DNS name to 127.0.0.1 then gets nothing), or None for any."""

    def __init__(self, store, fetcher, feed_sync, stopping: trio.Event):
        self.store = store
        self.fetcher = fetcher
        self.feed_sync = feed_sync
        self.stopping = stopping
        self.allowed_hosts: set[str] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, receive, send)
        error = None
        # The client may leave mid-stream: stop at once (the cancellation releases what the
        # response held, a lazy download among them).
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                await request.wait_disconnect()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await self._route(request)
            except Exception as exc:  # kept, not raised in the nursery: it would come out as a group
                error = exc
            nursery.cancel_scope.cancel()
        if error is None:
            return
        try:
            raise error
        except HttpError as exc:
            await self._error(request, exc.status, str(exc), exc.headers)
        except NotFound as exc:  # ObjectNotFound among them
            await self._error(request, 404, str(exc))
        except NotADirectoryManifest as exc:
            await self._error(request, 400, str(exc))
        except UnknownFeed as exc:
            await self._error(request, 404, str(exc))
        except KacheryError as exc:
            await self._error(request, 502, str(exc))
        except Exception:  # a bug costs one request, never the daemon, and shows no traceback
            log.exception("gateway: %s %s failed", request.method, request.path)
            await self._error(request, 500, "internal error (see the daemon's log)")

    async def _error(self, request: Request, status: int, message: str, headers: list | None = None) -> None:
        if request.started:  # mid-body: nothing to say but to cut the response short
            log.info("gateway: %s %s cut short: %s", request.method, request.path, message)
            return
        body = (message.splitlines() or [""])[0].encode() + b"\n"
        await request.start(status, [(b"content-type", b"text/plain; charset=utf-8"),
                                     (b"content-length", str(len(body)).encode()), *(headers or [])])
        await request.body(b"" if request.method == "HEAD" else body)

    async def _route(self, request: Request) -> None:
        if self.allowed_hosts is not None and request.headers.get("host", "").lower() not in self.allowed_hosts:
            raise HttpError(403, "this gateway answers only to its own loopback address")
        parts = request.path.split("/", 3)  # ['', 'sha1', hash, name] / ['', 'feeds', id, subfeed]
        kind = parts[1] if len(parts) > 1 else ""
        if kind not in ("sha1", "sha1dir", "feeds") or len(parts) < 3 or not parts[2]:
            raise HttpError(404, "not found (try /sha1/<hash>, /sha1dir/<hash>/<path> or /feeds/<feed id>/<subfeed>)")
        if request.method == "OPTIONS":  # CORS preflight (a Range header makes a request non-simple)
            await request.start(204, [(b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                                      (b"access-control-allow-headers", b"range, if-none-match, if-range, last-event-id"),
                                      (b"access-control-max-age", b"86400"), (b"content-length", b"0")])
            await request.body(b"")
            return
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405, "only GET, HEAD and OPTIONS", [(b"allow", b"GET, HEAD, OPTIONS")])
        if kind == "sha1":
            await self._object(request, parts[2].lower(), parts[3] if len(parts) > 3 else "")
        elif kind == "sha1dir":
            await self._directory(request, parts[2].lower(), parts[3] if len(parts) > 3 else "")
        elif len(parts) == 3 or not parts[3]:
            await self._feed_info(request, parts[2])
        else:
            await self._subfeed(request, parts[2], parts[3])

    # ---- objects ------------------------------------------------------------------------------------
    async def _directory(self, request: Request, sha1: str, path: str) -> None:
        """A file or directory inside a directory manifest (fetched whole from peers if need be,
        every chunk checked against its hash before it is parsed)."""
        if not is_sha1_hex(sha1):
            raise HttpError(400, f"not a SHA-1 hash (40 hex digits): {sha1[:80]!r}")
        entry = (await read_directory(self.store, self.fetcher, sha1)).lookup(path)
        if isinstance(entry, FileEntry):
            # the file's chunk manifest comes from the directory: trusted through its hash
            await self._object(request, entry.sha1, path.rsplit("/", 1)[-1], entry.manifest_sha1)
            return
        assert isinstance(entry, Directory)
        body = json.dumps(entry.listing(recursive=request.flag("recursive"))).encode()
        etag = f'"{sha1}/{path.strip("/")}"'.encode()
        await request.start(200, [(b"content-type", b"application/json"), (b"etag", etag),
                                  (b"cache-control", IMMUTABLE), (b"content-length", str(len(body)).encode())])
        await request.body(b"" if request.method == "HEAD" else body)

    async def _object(self, request: Request, sha1: str, name: str, manifest: str | None = None) -> None:
        if not is_sha1_hex(sha1):
            raise HttpError(400, f"not a SHA-1 hash (40 hex digits): {sha1[:80]!r}")
        if manifest is None:  # as in a URI: sha1://<hash>/x?manifest=<m>
            manifest = request.query.get("manifest", [None])[-1]
        if manifest is not None and not is_sha1_hex(manifest):
            raise HttpError(400, f"manifest must be a SHA-1 hash (40 hex digits): {manifest[:80]!r}")
        etag = f'"{sha1}"'
        headers = [(b"etag", etag.encode()), (b"cache-control", IMMUTABLE), (b"accept-ranges", b"bytes"),
                   (b"x-content-type-options", b"nosniff"),
                   (b"content-type", ((mimetypes.guess_type(name)[0] if name else None)
                                      or "application/octet-stream").encode())]
        match = request.headers.get("if-none-match")
        if match is not None and (match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in match.split(",")]):
            await object_size(self.store, self.fetcher, sha1)  # 304 only for what exists
            await request.start(304, headers[:2])
            await request.body(b"")
            return
        if request.method == "HEAD":
            size = await object_size(self.store, self.fetcher, sha1)  # no fetch for a HEAD
            byte_range = self._range(request, etag, size, headers)
            length = size if byte_range is None else byte_range.length
            await self._start_object(request, size, byte_range, length, headers)
            await request.body(b"")
            return
        source = await open_source(self.store, self.fetcher, sha1, manifest)
        try:
            byte_range = self._range(request, etag, source.size, headers)
            start, length = (0, source.size) if byte_range is None else (byte_range.start, byte_range.length)
            await self._start_object(request, source.size, byte_range, length, headers)
            end = start + length
            offset = start
            while offset < end:
                n = min(BLOCK - offset % BLOCK, end - offset)  # chunk-aligned reads after the first
                data = await source.read(offset, n)
                if len(data) != n:
                    raise KacheryError(f"short read of {sha1} at {offset}")
                offset += n
                await request.body(data, more=offset < end)
            if length == 0:
                await request.body(b"")
        finally:
            with trio.CancelScope(shield=True):
                await source.aclose()

    def _range(self, request: Request, etag: str, size: int, headers: list):
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            return None  # the client's copy is of something else: send the whole object
        try:
            return parse_range(request.headers.get("range"), size)
        except Unsatisfiable:
            raise HttpError(416, f"range not satisfiable: the object has {size} bytes",
                            [(b"content-range", f"bytes */{size}".encode()), *headers[:3]]) from None

    async def _start_object(self, request: Request, size: int, byte_range, length: int, headers: list) -> None:
        extra = [(b"content-length", str(length).encode())]
        if byte_range is not None:
            extra.append((b"content-range", byte_range.content_range(size).encode()))
        await request.start(206 if byte_range is not None else 200, [*headers, *extra])

    # ---- feeds --------------------------------------------------------------------------------------
    async def _resolve_feed(self, feed_id: str) -> str:
        sync = self.feed_sync
        if sync is None:
            raise HttpError(404, "this node keeps no feeds")
        if not is_feed_id(feed_id):
            raise HttpError(400, f"not a feed id: {feed_id[:80]!r}")
        if not await trio.to_thread.run_sync(sync.feeds.has_feed, feed_id):
            if not await sync.discover(feed_id):
                raise UnknownFeed(f"{feed_id} is not known here nor held by any channel peer")
            await sync.wait_for_backlog(feed_id)
        elif not await trio.to_thread.run_sync(sync.feeds.owns, feed_id):
            sync.follow(feed_id)  # keep the replica live while someone reads it
        return feed_id

    async def _feed_info(self, request: Request, feed_id: str) -> None:
        feed_id = await self._resolve_feed(feed_id)
        feeds = self.feed_sync.feeds

        def info() -> dict:  # SQLite queries: in a worker thread, off the event loop
            return {"feed_id": feed_id, "owned": feeds.owns(feed_id),
                    "subfeeds": {n: feeds.num_messages(feed_id, n) for n in feeds.subfeeds(feed_id)}}

        body = json.dumps(await trio.to_thread.run_sync(info)).encode()
        await request.start(200, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                  (b"cache-control", b"no-cache")])
        await request.body(b"" if request.method == "HEAD" else body)

    async def _subfeed(self, request: Request, feed_id: str, subfeed: str) -> None:
        follow = request.flag("follow")
        start = request.param_int("start", 0)
        last_id = request.headers.get("last-event-id", "").strip()
        if follow and last_id:  # an EventSource reconnecting: resume after what it has seen
            if not last_id.isdigit():
                raise HttpError(400, "Last-Event-ID must be a message index")
            start = int(last_id) + 1
        feed_id = await self._resolve_feed(feed_id)
        feeds = self.feed_sync.feeds
        if not follow:
            if subfeed not in await trio.to_thread.run_sync(feeds.subfeeds, feed_id):
                raise HttpError(404, f"feed {feed_id[:12]}... has no subfeed {subfeed[:80]!r}")
            entries = await trio.to_thread.run_sync(lambda: feeds.get_entries(feed_id, subfeed, start=start))
            lines = [e.message + b"\n" for e in entries]
            body = b"".join(lines)
            await request.start(200, [(b"content-type", b"application/jsonl; charset=utf-8"),
                                      (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-cache")])
            await request.body(b"" if request.method == "HEAD" else body)
            return
        await request.start(200, [(b"content-type", b"text/event-stream; charset=utf-8"),
                                  (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")])
        if request.method == "HEAD":
            await request.body(b"")
            return
        await request.body(b"retry: 1000\n\n", more=True)
        position = start
        while not self.stopping.is_set():
            entries = await trio.to_thread.run_sync(
                lambda: feeds.get_entries(feed_id, subfeed, start=position, limit=1000))
            if entries:
                out = b"".join(b"id: %d\ndata: %s\n\n" % (e.index, e.message) for e in entries)
                position = entries[-1].index + 1
                await request.body(out, more=True)
                continue
            count = await self.feed_sync.wait_for_more(feed_id, subfeed, position, KEEPALIVE_SECONDS)
            if count <= position:
                await request.body(b": keepalive\n\n", more=True)
        await request.body(b"")
