"""The Python feed API, named as in kachery-p2p: ``create_feed``, ``load_feed``, subfeeds with
``append_message``, ``get_next_messages``, ``message_stream``...

With a daemon running (``kacheryfs mount`` / ``kacheryfs daemon``), calls go through its local API:
appends reach subscribers at once and unknown feeds are fetched from channel peers. Without one,
the local feed store is used directly (no network), and a feed it does not hold is an error
(UnknownFeed), never an empty read.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..config import Config
from ..running import located_config
from ..errors import NoDaemon, UnknownFeed
from ..feeds import FeedStore, feed_uri, parse_feed_uri
from ..feeds.entry import is_feed_id
from .client import call, request


class _Backend:
    def __init__(self, config: Config):
        self.config = config
        self._store: FeedStore | None = None

    def store(self) -> FeedStore:
        if self._store is None:
            self._store = FeedStore(self.config.feeds_db, self.config.feed_keys_dir)
        return self._store

    def call(self, op: str, **fields) -> dict | None:
        try:
            return call(self.config.config_dir, op, **fields)
        except NoDaemon:
            return None

    def resolve(self, ref: str) -> str:
        reply = self.call("feed_ls", feed=ref)
        if reply is not None:
            return reply["feeds"][0]["feed_id"]
        feed_id = parse_feed_uri(ref).feed_id if ref.startswith("feed://") else ref
        if is_feed_id(feed_id):
            if feed_id not in self.store().feed_ids():  # reading it would give nothing, silently
                raise UnknownFeed(f"{feed_id} is not in the local feed store, and no kacheryfs daemon is "
                                  "running to fetch it from channel peers (start `kacheryfs mount` or "
                                  "`kacheryfs daemon`)")
            return feed_id
        found = self.store().find_by_label(ref)
        if found is None:
            raise UnknownFeed(f"{ref!r} is neither a feed id nor a label of a local feed")
        return found


class Subfeed:
    def __init__(self, feed: "Feed", name: str):
        self.feed = feed
        self.name = name
        self._position = 0

    @property
    def _backend(self) -> _Backend:
        return self.feed._backend

    def get_uri(self) -> str:
        return feed_uri(self.feed.feed_id, self.name)

    def append_message(self, message: Any) -> int:
        return self.append_messages([message])[0]

    def append_messages(self, messages: list) -> list[int]:
        reply = self._backend.call("feed_append", feed=self.feed.feed_id, subfeed=self.name, messages=list(messages))
        if reply is not None:
            return reply["indices"]
        return self._backend.store().append(self.feed.feed_id, self.name, list(messages))

    def get_num_messages(self) -> int:
        reply = self._backend.call("feed_ls", feed=self.feed.feed_id)
        if reply is not None:
            return reply["feeds"][0]["subfeeds"].get(self.name, 0)
        return self._backend.store().num_messages(self.feed.feed_id, self.name)

    def set_position(self, position: int) -> None:
        self._position = max(int(position), 0)

    def get_position(self) -> int:
        return self._position

    def get_next_messages(self, wait_msec: float = 0, max_num_messages: int | None = None) -> list:
        """Messages from the current position on (waiting up to ``wait_msec`` for one to arrive);
        advances the position."""
        out = []
        try:
            for reply in request(self._backend.config.config_dir, "feed_read", feed=self.feed.feed_id,
                                 subfeed=self.name, start=self._position, wait_ms=wait_msec):
                if "index" in reply:
                    out.append(reply["message"])
        except NoDaemon:
            out = [e.value for e in self._backend.store().get_entries(self.feed.feed_id, self.name, self._position)]
        if max_num_messages is not None:
            out = out[:max_num_messages]
        self._position += len(out)
        return out

    def message_stream(self) -> Iterator[Any]:
        """Every message from the current position on, then new ones as they arrive (needs the daemon)."""
        for reply in request(self._backend.config.config_dir, "feed_read", feed=self.feed.feed_id,
                             subfeed=self.name, start=self._position, follow=True):
            if "index" in reply:
                self._position = reply["index"] + 1
                yield reply["message"]


class Feed:
    def __init__(self, feed_id: str, backend: _Backend):
        self.feed_id = feed_id
        self._backend = backend

    def __repr__(self) -> str:
        return f"Feed({self.feed_id})"

    def get_uri(self) -> str:
        return feed_uri(self.feed_id)

    def get_feed_id(self) -> str:
        return self.feed_id

    def get_subfeed(self, name: str) -> Subfeed:
        return Subfeed(self, name)


def create_feed(label: str | None = None, *, storage_dir=None, config_dir=None) -> Feed:
    backend = _Backend(located_config(storage_dir, config_dir))
    reply = backend.call("feed_create", label=label)
    feed_id = reply["feed_id"] if reply is not None else backend.store().create_feed(label)
    return Feed(feed_id, backend)


def load_feed(feed: str, *, storage_dir=None, config_dir=None) -> Feed:
    """By feed id, ``feed://`` URI or local label; fetched from channel peers if need be."""
    backend = _Backend(located_config(storage_dir, config_dir))
    return Feed(backend.resolve(feed), backend)
