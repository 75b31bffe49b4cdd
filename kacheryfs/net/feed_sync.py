"""Feed replication over the node's sessions: serve entries to channel members, follow feeds
from peers, push new entries to subscribers the moment they are stored, wake local watchers.

Any holder can serve a feed (entries are signed, so the owner may be offline). Entries from a peer
are verified against the stored chain before they are kept; a peer that sends bad ones is logged.
Pushes of one subfeed travel in order on a session and are handled in order (inline in the
receive loop), so a follower sees a gap only if it missed something, and then re-subscribes from
its tip.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import trio

from ..config import DEFAULT_FIND_TIMEOUT
from ..errors import FeedChainError, FeedGap, KacheryError, PeerGone, UnknownFeed
from ..feeds import FeedEntry, FeedStore, decode_entry, encode_entry
from ..protocol.messages import (
    ErrorResponse, FeedEntries, FeedInfo, FeedQuery, FeedSubscribe, FeedSubscribed, Message,
)
from .interfaces import FeedSyncHost
from .session import PeerSession

log = logging.getLogger(__name__)

BATCH = 500  # entries per push
Where = tuple[str, str]  # (feed id, subfeed)


def pack_entries(entries: list[FeedEntry]) -> bytes:
    out = []
    for e in entries:
        raw = encode_entry(e)
        out.append(len(raw).to_bytes(4, "big") + raw)
    return b"".join(out)


def unpack_entries(payload: bytes) -> list[FeedEntry]:
    entries, pos = [], 0
    while pos < len(payload):
        if pos + 4 > len(payload):
            raise KacheryError("truncated entry list")
        n = int.from_bytes(payload[pos:pos + 4], "big")
        entries.append(decode_entry(payload[pos + 4:pos + 4 + n]))
        pos += 4 + n
    return entries


class FeedSync:
    def __init__(self, node: FeedSyncHost, feeds: FeedStore, *, find_timeout: float = DEFAULT_FIND_TIMEOUT):
        self.node = node
        self.feeds = feeds
        self.find_timeout = find_timeout  # how long discover() waits for peers to answer
        self.subscribers: dict[Where, set[PeerSession]] = defaultdict(set)
        self.followed: set[Where] = set()
        self.followed_feeds: set[str] = set()  # every subfeed, including ones that appear later
        self._changed: dict[Where, trio.Event] = defaultdict(trio.Event)
        self._subscribed: set[tuple[int, Where]] = set()  # (id(session), where)
        self.rejected = 0
        self._backlogs: dict[str, dict[str, int]] = {}  # feed id -> subfeed -> count a peer had (discover)
        # Replicas held here stay live across restarts: follow them from the first session on
        # (they were followed only once something read them, so a restarted replica never caught up).
        self.followed_feeds.update(f for f in feeds.feed_ids() if not feeds.owns(f))
        node.register(FeedQuery, self._query)
        node.register(FeedSubscribe, self._subscribe_request)
        node.register(FeedEntries, self.on_entries, inline=True)  # in order, as pushed
        node.watch_sessions(opened=self.on_session, closed=self.on_session_closed)

    # ---- who may get what ------------------------------------------------------------------------
    def may_serve(self, session: PeerSession, feed_id: str) -> bool:
        """Own feeds are shared on all our channels; replicas on the channels they came from.
        Blocking (the store index): call it from a worker thread."""
        if not session.channel_ids:
            return False
        if self.feeds.owns(feed_id):
            return True
        return bool(session.channel_ids & self.node.store.feed_channels_of(feed_id))

    async def _may_serve(self, session: PeerSession, feed_id: str) -> bool:
        return await trio.to_thread.run_sync(self.may_serve, session, feed_id)

    # ---- local changes ---------------------------------------------------------------------------
    def _wake(self, where: Where) -> None:
        self._changed.pop(where, trio.Event()).set()

    async def wait_for_more(self, feed_id: str, subfeed: str, count: int, timeout: float) -> int:
        """Until the subfeed holds more than ``count`` entries or ``timeout`` passes; returns the count."""
        where = (feed_id, subfeed)
        with trio.move_on_after(timeout):
            while self.feeds.num_messages(*where) <= count:
                await self._changed[where].wait()
        return self.feeds.num_messages(*where)

    async def append(self, feed_id: str, subfeed: str, messages: list) -> list[int]:
        indices = await trio.to_thread.run_sync(self.feeds.append, feed_id, subfeed, messages)
        if indices:
            await self._publish((feed_id, subfeed), indices[0], origin=None)
        return indices

    async def _publish(self, where: Where, start: int, origin: PeerSession | None) -> None:
        self._wake(where)
        targets = [s for s in self.subscribers.get(where, ()) if s is not origin and not s.closed.is_set()]
        if not targets:
            return
        entries = await trio.to_thread.run_sync(lambda: self.feeds.get_entries(*where, start=start))
        for batch_start in range(0, len(entries), BATCH):
            msg = FeedEntries(feed_id=where[0], subfeed=where[1],
                              payload=pack_entries(entries[batch_start:batch_start + BATCH]))
            for session in targets:
                try:
                    await session.send(msg)
                except PeerGone:
                    self.subscribers[where].discard(session)

    # ---- following peers -------------------------------------------------------------------------
    def follow(self, feed_id: str, subfeed: str | None = None) -> None:
        """Replicate this subfeed (or every subfeed of the feed) from channel peers, live."""
        if subfeed is None:
            self.followed_feeds.add(feed_id)
        else:
            self.followed.add((feed_id, subfeed))
        for session in self.node.channel_peers():
            self.node.start_soon(self._subscribe_all, session)

    async def on_session(self, session: PeerSession) -> None:
        """A new peer: subscribe to what we follow."""
        if session.channel_ids and (self.followed or self.followed_feeds):
            await self._subscribe_all(session)

    def on_session_closed(self, session: PeerSession) -> None:
        for subs in self.subscribers.values():
            subs.discard(session)
        self._subscribed = {k for k in self._subscribed if k[0] != id(session)}

    async def _subscribe_all(self, session: PeerSession) -> None:
        try:
            for feed_id in list(self.followed_feeds):
                info = await session.request(FeedQuery(req=session.next_req(), feed_id=feed_id), 10)
                if isinstance(info, FeedInfo) and info.found:
                    for subfeed in info.subfeeds:
                        if isinstance(subfeed, str):
                            await self._subscribe(session, (feed_id, subfeed))
            for where in list(self.followed):
                await self._subscribe(session, where)
        except (KacheryError, trio.TooSlowError) as exc:
            log.debug("subscribing at %r: %s", session, exc)

    async def _subscribe(self, session: PeerSession, where: Where, force: bool = False) -> None:
        key = (id(session), where)
        if key in self._subscribed and not force:
            return
        self._subscribed.add(key)
        start = self.feeds.num_messages(*where)
        try:
            await session.request(FeedSubscribe(req=session.next_req(), feed_id=where[0], subfeed=where[1],
                                                start=start), 10)
        except (KacheryError, trio.TooSlowError):
            self._subscribed.discard(key)

    async def discover(self, feed_id: str, timeout: float | None = None) -> bool:
        """Ask channel peers for a feed not known here; follow it if one has it."""
        timeout = self.find_timeout if timeout is None else timeout
        found = trio.Event()

        async def ask(session: PeerSession) -> None:
            try:
                info = await session.request(FeedQuery(req=session.next_req(), feed_id=feed_id), timeout)
            except (KacheryError, trio.TooSlowError):
                return
            if isinstance(info, FeedInfo) and info.found:
                backlog = self._backlogs.setdefault(feed_id, {})
                for name, count in info.subfeeds.items():
                    if isinstance(name, str) and isinstance(count, int):
                        backlog[name] = max(backlog.get(name, 0), count)
                found.set()

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for session in self.node.channel_peers():
                    nursery.start_soon(ask, session)
                await found.wait()
                nursery.cancel_scope.cancel()
        if found.is_set():
            self.feeds.add_feed(feed_id)
            self.follow(feed_id)
        return found.is_set()

    async def wait_for_backlog(self, feed_id: str, timeout: float | None = None) -> None:
        """After ``discover``: until the entries the peer said it had have arrived (or ``timeout``),
        so a first read of a feed new here is not empty."""
        timeout = self.find_timeout if timeout is None else timeout
        backlog = self._backlogs.pop(feed_id, {})
        with trio.move_on_after(timeout):
            for subfeed, count in backlog.items():
                await self.wait_for_more(feed_id, subfeed, count - 1, timeout)

    # ---- messages from peers ---------------------------------------------------------------------
    async def _query(self, session: PeerSession, msg: FeedQuery) -> Message:
        def counts() -> dict[str, int] | None:  # SQLite: in a worker thread
            if not self.may_serve(session, msg.feed_id) or not self.feeds.has_feed(msg.feed_id):
                return None
            return {name: self.feeds.num_messages(msg.feed_id, name) for name in self.feeds.subfeeds(msg.feed_id)}

        found = await trio.to_thread.run_sync(counts)
        if found is None:
            return FeedInfo(req=msg.req, feed_id=msg.feed_id, found=False)
        return FeedInfo(req=msg.req, feed_id=msg.feed_id, found=True, subfeeds=found)

    async def _subscribe_request(self, session: PeerSession, msg: FeedSubscribe) -> Message:
        if not await self._may_serve(session, msg.feed_id):
            log.info("refused feed %s to %s: not shared with it", msg.feed_id[:12], session.peer_id[:12])
            return ErrorResponse(req=msg.req, code="not-found", message="no such feed here")
        where = (msg.feed_id, msg.subfeed)
        sent = msg.start
        while True:  # the backlog (read in a worker thread), then register with no await in between
            batch = await trio.to_thread.run_sync(lambda: self.feeds.get_entries(*where, start=sent, limit=BATCH))
            if not batch:  # confirmed here, on the trio thread, so no append slips in before registering
                batch = self.feeds.get_entries(*where, start=sent, limit=BATCH)
            if not batch:
                self.subscribers[where].add(session)
                break
            await session.send(FeedEntries(feed_id=where[0], subfeed=where[1], payload=pack_entries(batch)))
            sent += len(batch)
        return FeedSubscribed(req=msg.req, count=sent)

    async def on_entries(self, session: PeerSession, msg: FeedEntries) -> None:
        """Pushed entries (in order, inline in the session's receive loop)."""
        where = (msg.feed_id, msg.subfeed)
        if where not in self.followed and msg.feed_id not in self.followed_feeds:
            return  # we did not ask for it
        before = self.feeds.num_messages(*where)
        try:
            entries = unpack_entries(msg.payload)
            if any((e.feed_id, e.subfeed) != where for e in entries):
                raise KacheryError("entries of another subfeed in the batch")
            added = await trio.to_thread.run_sync(self.feeds.add_entries, entries)
        except FeedGap as exc:  # we missed some: ask again from our tip
            added = exc.added
            self.node.start_soon(self._subscribe, session, where, True)
        except (FeedChainError, KacheryError) as exc:
            added = getattr(exc, "added", 0)
            self.rejected += 1
            log.warning("rejected feed entries of %s/%s from %s: %s", msg.feed_id[:12], msg.subfeed,
                        session.peer_id[:12], exc)
        await trio.to_thread.run_sync(self.node.store.add_feed_channels, msg.feed_id, session.channel_ids)
        if added:
            self.followed.add(where)
            await self._publish(where, before, origin=session)

    def require_known(self, feed_id: str) -> None:
        if not self.feeds.has_feed(feed_id):
            raise UnknownFeed(feed_id)
