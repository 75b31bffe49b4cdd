"""The daemon's end of the local API (api/messages.py): a Unix socket in the config dir, so only
the same user can ask the running daemon to find, fetch, or read and append to feeds."""

from __future__ import annotations

import array
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Protocol

import trio

from ..errors import BadDestination, DaemonAlreadyRunning, KacheryError, UnknownFeed
from ..feeds import parse_feed_uri
from ..feeds.entry import is_feed_id
from ..store import LocalStore, clone, parse_uri
from . import messages
from .messages import MAX_FDS, MAX_REQUEST, socket_path

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2
REQUEST_TIMEOUT = 10.0  # to send the request line

Reply = Callable[[dict], Awaitable[None]]


class ApiHost(Protocol):
    """What the server needs from the node it serves (net.node.Node)."""

    store: LocalStore
    feed_sync: Any  # net.feed_sync.FeedSync | None

    @property
    def channel_keys(self) -> Mapping[str, bytes]: ...

    async def find(self, sha1: str) -> list: ...

    def status(self) -> dict: ...


def claim_socket(config_dir: Path) -> None:
    """Remove a stale API socket; refuse if a live daemon answers on it (one daemon per config
    dir: its node key is its identity)."""
    path = socket_path(config_dir)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise DaemonAlreadyRunning(f"{path} (one daemon per config dir: its node key is its identity)")


async def open_api_listener(config_dir: Path) -> trio.SocketListener:
    config_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config_dir, 0o700)
    claim_socket(config_dir)
    path = socket_path(config_dir)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    return trio.SocketListener(sock)


def _close_all(fds: list[int]) -> None:
    """Close descriptors a client passed (in a worker thread: closing a file on a FUSE mount asks
    its daemon to flush it, and that daemon may be this one, serving FUSE on the trio thread)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ApiServer:
    def __init__(self, node: ApiHost, fetcher, config_dir: Path, extra_status=None,
                 mountpoint: str | os.PathLike | None = None):
        self.node = node
        self.mountpoint = None if mountpoint is None else os.path.realpath(mountpoint)  # (resolved before mounting)
        self.fetcher = fetcher
        self.config_dir = config_dir
        self.extra_status = extra_status or (lambda: {})
        self._ops = {"status": self._status, "find": self._find, "load": self._load, "cache": self._cache,
                     "read": self._read, "feed_create": self._feed_create, "feed_append": self._feed_append,
                     "feed_read": self._feed_read, "feed_ls": self._feed_ls}
        assert set(self._ops) == set(messages.OPS)

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = await open_api_listener(self.config_dir)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, [listener])
                task_status.started()
        finally:
            socket_path(self.config_dir).unlink(missing_ok=True)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async def reply(obj: dict) -> None:
            await stream.send_all(messages.encode(obj))

        fds: list[int] = []
        extra: list[int] = []  # descriptors beyond MAX_FDS: closed unused
        try:
            buf = b""
            with trio.fail_after(REQUEST_TIMEOUT):
                while b"\n" not in buf:
                    data = await self._receive(stream, fds, extra)
                    if not data or len(buf) > MAX_REQUEST:
                        return
                    buf += data
            request = messages.decode_request(buf.split(b"\n", 1)[0])
            request["_fds"] = fds  # (not from JSON) descriptors passed with the request
            await self._ops[request["op"]](request, reply)
        except KacheryError as exc:
            await reply(messages.error_reply(exc))
        except (ValueError, TypeError, trio.TooSlowError):
            await reply(messages.error_reply(KacheryError("malformed request")))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug here must cost one request, not the daemon
            log.exception("local API request failed")
            try:
                await reply(messages.error_reply(KacheryError(f"internal error: {exc!r}")))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        finally:
            if fds or extra:  # ours from the moment they arrived, used or not
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close_all, fds + extra)
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _receive(stream: trio.SocketStream, fds: list[int], extra: list[int]) -> bytes:
        """Bytes of the request, and any descriptors sent with them (at most MAX_FDS kept; the
        rest go to ``extra``, to be closed)."""
        data, ancdata, _flags, _addr = await stream.socket.recvmsg(4096, socket.CMSG_SPACE(4 * MAX_FDS))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                for fd in got:
                    (fds if len(fds) < MAX_FDS else extra).append(fd)
        return data

    async def _status(self, request: dict, reply: Reply) -> None:
        await reply({"ok": True, "status": {**self.node.status(), **self.extra_status(), "pid": os.getpid()}})

    async def _find(self, request: dict, reply: Reply) -> None:
        uri = parse_uri(str(request.get("uri", "")))
        providers = await self.node.find(uri.sha1)
        await reply({"ok": True, "providers": [
            {"node": p.session.peer_id, "remote": p.session.remote, "direction": p.session.direction,
             "size": p.size} for p in providers]})

    async def _load(self, request: dict, reply: Reply) -> None:
        uri = parse_uri(str(request.get("uri", "")))
        last = 0.0

        async def send_progress(done: int, total: int) -> None:
            try:
                await reply({"progress": done, "total": total})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        progress_events: list[tuple[int, int]] = []

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL or done == total:
                last = now
                progress_events.append((done, total))

        error = None
        async with trio.open_nursery() as nursery:
            async def pump() -> None:
                while True:
                    while progress_events:
                        await send_progress(*progress_events.pop(0))
                    await trio.sleep(PROGRESS_INTERVAL / 2)

            nursery.start_soon(pump)
            dest_fd = request["_fds"][0] if request.get("dest") and request["_fds"] else None
            try:  # caught here: raised through the nursery it would arrive as an ExceptionGroup
                if dest_fd is not None:
                    self._refuse_own_mount(dest_fd)
                await self.fetcher.fetch(uri.sha1, uri.manifest_sha1, progress, dest_fd=dest_fd)
            except KacheryError as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if request["_fds"]:  # closed before the answer (on a FUSE mount: committed on the last close)
            await trio.to_thread.run_sync(_close_all, request["_fds"])
            request["_fds"].clear()
        answer = {"ok": True, "path": str(self.node.store.object_path(uri.sha1))}
        if dest_fd is not None:
            answer["dest"] = True
        await reply(answer)

    def _refuse_own_mount(self, dest_fd: int) -> None:
        """A destination in this daemon's own mount is refused (``load --dest`` copies into store/
        from the client instead: api/dest.py): writing it from here would make FUSE requests that
        only this process serves, from the thread that serves them or while it waits."""
        mount = clone.mount_of(dest_fd)
        if self.mountpoint is not None and mount is not None and mount[1].startswith("fuse") \
                and mount[0] == self.mountpoint:
            raise BadDestination(f"it is inside this daemon's own mount {self.mountpoint}, which the daemon "
                                 "cannot write through (copy it there from sha1/, or give a path outside the mount)")

    async def _cache(self, request: dict, reply: Reply) -> None:
        """Write the daemon's record of recent reads; with "to", evict down to that many bytes."""
        store, limit = self.node.store, request.get("to")
        evicted = []
        if limit is None:
            await trio.to_thread.run_sync(store.flush_touches)
        else:
            evicted = await trio.to_thread.run_sync(store.evict_cached, int(limit))
        await reply({"ok": True, "evicted": evicted})

    async def _read(self, request: dict, reply: Reply) -> None:
        """Bytes [start, end) of an object, fetching only the chunks they cover."""
        import base64

        from ..gateway.objects import BLOCK, open_source

        uri = parse_uri(str(request.get("uri", "")))
        start, end = int(request.get("start", 0)), request.get("end")
        if start < 0 or (end is not None and int(end) < start):
            raise KacheryError(f"bad byte range: start {start}, end {end}")
        source = await open_source(self.node.store, self.fetcher, uri.sha1, uri.manifest_sha1)
        try:
            end = source.size if end is None else min(int(end), source.size)
            offset = min(start, end)
            while offset < end:
                n = min(BLOCK - offset % BLOCK, end - offset)
                await reply({"data": base64.b64encode(await source.read(offset, n)).decode()})
                offset += n
        finally:
            with trio.CancelScope(shield=True):
                await source.aclose()
        await reply({"ok": True, "size": source.size})

    async def _resolve_feed(self, ref: str, discover: bool = True) -> str:
        """A feed id from an id, a feed:// URI or a local label; unknown ids are looked for on peers."""
        sync = self._sync()
        ref = str(ref)
        feed_id = parse_feed_uri(ref).feed_id if ref.startswith("feed://") else ref
        if not is_feed_id(feed_id):
            found = await trio.to_thread.run_sync(sync.feeds.find_by_label, ref)
            if found is None:
                raise UnknownFeed(f"{ref!r} is neither a feed id nor a label of a local feed")
            feed_id = found
        if not await trio.to_thread.run_sync(sync.feeds.has_feed, feed_id):
            if not discover or not await sync.discover(feed_id):
                raise UnknownFeed(f"{feed_id} is not known here nor held by any channel peer")
            await sync.wait_for_backlog(feed_id)
        elif not await trio.to_thread.run_sync(sync.feeds.owns, feed_id):
            sync.follow(feed_id)  # keep a replica live while someone reads it
        return feed_id

    def _sync(self):
        sync = self.node.feed_sync
        if sync is None:
            raise KacheryError("this node keeps no feeds")
        return sync

    async def _feed_create(self, request: dict, reply: Reply) -> None:
        feed_id = await trio.to_thread.run_sync(self._sync().feeds.create_feed, request.get("label"))
        await reply({"ok": True, "feed_id": feed_id})

    async def _feed_append(self, request: dict, reply: Reply) -> None:
        sync = self._sync()
        feed_id = await self._resolve_feed(request.get("feed", ""), discover=False)
        entries = request.get("messages")
        if not isinstance(entries, list):
            raise KacheryError("messages must be a list")
        indices = await sync.append(feed_id, str(request.get("subfeed", "")), entries)
        await reply({"ok": True, "indices": indices})

    async def _feed_read(self, request: dict, reply: Reply) -> None:
        sync = self._sync()
        feed_id = await self._resolve_feed(request.get("feed", ""))
        subfeed = str(request.get("subfeed", ""))
        position = max(int(request.get("start", 0)), 0)
        follow = bool(request.get("follow"))
        wait = min(float(request.get("wait_ms", 0)) / 1000, 3600.0)
        if wait > 0 and not follow:
            await sync.wait_for_more(feed_id, subfeed, position, wait)
        while True:
            batch = await trio.to_thread.run_sync(
                lambda: sync.feeds.get_entries(feed_id, subfeed, start=position, limit=1000))
            for entry in batch:
                await reply({"index": entry.index, "message": entry.value})
                position = entry.index + 1
            if not follow:
                break
            await sync.wait_for_more(feed_id, subfeed, position, 3600)
        await reply({"ok": True, "next": position})

    async def _feed_ls(self, request: dict, reply: Reply) -> None:
        feeds = self._sync().feeds
        ids = [await self._resolve_feed(request["feed"])] if request.get("feed") else None

        def listing() -> list[dict]:  # SQLite: in a worker thread
            return [{"feed_id": f, "label": feeds.label_of(f), "owned": feeds.owns(f),
                     "subfeeds": {name: feeds.num_messages(f, name) for name in feeds.subfeeds(f)}}
                    for f in (feeds.feed_ids() if ids is None else ids)]

        await reply({"ok": True, "feeds": await trio.to_thread.run_sync(listing)})
