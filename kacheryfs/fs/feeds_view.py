"""``feeds/<feed id>/<subfeed>`` as files: a subfeed reads as JSON Lines (one message per line, in
order, each the entry's canonical JSON), grows as entries arrive, and takes appended lines as new
messages when this node owns the feed."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from ..errors import FeedNotOwned, InvalidFeedMessage, KacheryError, NotAnAppend, NotOpenForWriting
from .handles import Handle


@dataclass
class _Rendered:
    """Byte offsets of the lines rendered so far: ends[i] is where line i ends."""

    ends: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.ends[-1] if self.ends else 0


class FeedsView:
    def __init__(self, feed_sync):
        self.sync = feed_sync
        self.feeds = feed_sync.feeds
        self._rendered: dict[tuple[str, str], _Rendered] = {}

    def feed_ids(self) -> list[str]:
        return self.feeds.feed_ids()

    async def discover(self, feed_id: str) -> bool:
        """A feed not known here: ask the channel's peers (bounded wait) and follow it if found;
        then wait (bounded) for the entries they said they hold, so the first `ls` or `cat` of it
        is not empty."""
        if not await self.sync.discover(feed_id):
            return False
        await self.sync.wait_for_backlog(feed_id)
        return True

    def subfeeds(self, feed_id: str) -> list[str]:
        return self.feeds.subfeeds(feed_id)

    def _refresh(self, feed_id: str, subfeed: str) -> _Rendered:
        r = self._rendered.setdefault((feed_id, subfeed), _Rendered())
        if self.feeds.num_messages(feed_id, subfeed) > len(r.lines):
            for entry in self.feeds.get_entries(feed_id, subfeed, start=len(r.lines)):
                line = entry.message + b"\n"
                r.lines.append(line)
                r.ends.append(r.size + len(line))
        return r

    def size(self, feed_id: str, subfeed: str) -> int:
        return self._refresh(feed_id, subfeed).size

    def read(self, feed_id: str, subfeed: str, offset: int, size: int) -> bytes:
        r = self._refresh(feed_id, subfeed)
        if offset >= r.size or size <= 0:
            return b""
        first = bisect.bisect_right(r.ends, offset)
        out = []
        pos = r.ends[first - 1] if first else 0
        i = first
        end = offset + size
        while i < len(r.lines) and pos < end:
            out.append(r.lines[i])
            pos += len(r.lines[i])
            i += 1
        data = b"".join(out)
        start = offset - (r.ends[first - 1] if first else 0)
        return data[start:start + size]


class FeedWriter:
    """One open-for-writing handle: bytes become messages line by line."""

    def __init__(self, view: FeedsView, feed_id: str, subfeed: str, append_mode: bool):
        if not view.feeds.owns(feed_id):
            raise FeedNotOwned(f"{feed_id} is not owned by this node")
        self.view = view
        self.feed_id = feed_id
        self.subfeed = subfeed
        self.append_mode = append_mode
        self.pending = b""

    async def write(self, offset: int, data: bytes) -> int:
        expected = self.view.size(self.feed_id, self.subfeed) + len(self.pending)
        if not self.append_mode and offset != expected:
            raise NotAnAppend(f"write at {offset}, the subfeed ends at {expected}")
        text = self.pending + bytes(data)
        *lines, rest = text.split(b"\n")
        messages = [_parse_line(line) for line in lines if line.strip()]  # all checked before any is appended
        if messages:
            await self.view.sync.append(self.feed_id, self.subfeed, messages)
        self.pending = rest
        return len(data)

    async def flush(self) -> None:
        if self.pending.strip():
            line, self.pending = self.pending, b""
            await self.view.sync.append(self.feed_id, self.subfeed, [_parse_line(line)])
        self.pending = b""


class FeedHandle(Handle):
    """An open subfeed file: reads render the log; writes (owner only) append messages."""

    direct_io = True  # its content grows under readers: no stale page or size is served

    def __init__(self, view: FeedsView, ino: int, feed_id: str, subfeed: str, writer: FeedWriter | None):
        self.view = view
        self.ino = ino
        self.feed_id = feed_id
        self.subfeed = subfeed
        self.writer = writer

    async def read(self, offset: int, size: int):
        return self.view.read(self.feed_id, self.subfeed, offset, size)

    async def write(self, offset: int, data) -> int:
        if self.writer is None:
            raise NotOpenForWriting()
        return await self.writer.write(offset, data)

    async def flush(self) -> None:
        if self.writer is not None:
            await self.writer.flush()


def _parse_line(line: bytes):
    try:
        return json.loads(line)
    except ValueError as exc:
        raise InvalidFeedMessage(f"not a JSON line: {exc}") from None


__all__ = ["FeedsView", "FeedWriter", "FeedHandle", "NotAnAppend", "KacheryError"]
