"""What a kacheryfs node announces in, and looks up from, the mainline DHT.

- Channel membership: each channel's key (``crypto.dht_channel_infohash``) carries the listen
  ports of its members; members look it up and dial what they find.
- Object providers: a bounded set of objects this node holds (recently stored or fetched) is
  announced under per-channel object keys (``crypto.dht_object_infohash``); ``find_object`` looks
  them up when asking connected peers found nothing.

Keys rotate: each is derived from the channel key and a time bucket (``crypto.dht_epoch``, 6 h by
default), so an observer of the DHT cannot follow one channel's key for ever nor link its keys of
two buckets. A node announces under the current bucket's keys and the next one's (so peers whose
clock is already in the next bucket find it), and looks up the current and the previous (so it
finds peers whose clock is still behind); a clock error under one bucket is tolerated.

Announcements are repeated (soon after joining, then at growing intervals up to REANNOUNCE_SECONDS,
and at each bucket's start) since DHT entries expire. Lookups of channel members repeat at growing intervals too (from
LOOKUP_MIN_SECONDS to LOOKUP_MAX_SECONDS); every address any lookup or announce turns up under a
channel key is handed to ``dial`` at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable

import trio

from ..crypto import DHT_EPOCH_SECONDS, dht_channel_infohash, dht_epoch, dht_object_infohash
from .dht import DhtNode

log = logging.getLogger(__name__)

REANNOUNCE_SECONDS = 600.0  # mainline DHT nodes keep announcements ~30 min
LOOKUP_MIN_SECONDS = 0.5
LOOKUP_MAX_SECONDS = 30.0
LOOKUP_TIMEOUT = 5.0
MAX_ANNOUNCED_OBJECTS = 256


class DhtDiscovery:
    """``dial(host, port)`` is called (synchronously: it should start a dial and return) for each
    address found under a channel key; the node decides whether it is new."""

    def __init__(self, dht: DhtNode, channel_keys: dict[str, bytes], port: int | None,
                 dial: Callable[[str, int], None], *, clock: Callable[[], float] = time.time,
                 epoch_seconds: float = DHT_EPOCH_SECONDS):
        self.dht = dht
        self.channel_keys = dict(channel_keys)
        self.port = port
        self.dial = dial
        self.clock = clock  # Unix seconds (tests give a clock of their own)
        self.epoch_seconds = epoch_seconds
        self._objects: OrderedDict[str, None] = OrderedDict()  # announced, most recent last
        self._wake_lookup = trio.Event()
        self._watched: set[bytes] = set()

    def epoch(self) -> int:
        return dht_epoch(self.clock(), self.epoch_seconds)

    def announce_epochs(self) -> tuple[int, int]:
        """The buckets announced under: the current one and the next."""
        e = self.epoch()
        return e, e + 1

    def lookup_epochs(self) -> tuple[int, int]:
        """The buckets looked up: the current one and the previous."""
        e = self.epoch()
        return e, e - 1

    def _until_next_epoch(self) -> float:
        now = self.clock()
        return (dht_epoch(now, self.epoch_seconds) + 1) * self.epoch_seconds - now

    def _is_self(self, address: tuple[str, int]) -> bool:
        return address[1] == self.port and address[0] in ("127.0.0.1", "::1", "0.0.0.0", "::")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self._lookup_loop)
            task_status.started(self)

    def _announce_all(self) -> None:
        if self.port is None:
            return  # accepting no connections: nothing to announce, only to look up
        for key in self.channel_keys.values():
            for epoch in self.announce_epochs():
                self.dht.announce(dht_channel_infohash(key, epoch), self.port)
                for sha1 in self._objects:
                    self.dht.announce(dht_object_infohash(key, sha1, epoch), self.port)

    async def _announce_loop(self) -> None:
        await self.dht.joined.wait()
        interval = 1.0
        while True:
            self._announce_all()
            # (and at the next bucket's start: the bucket after it must be announced then)
            await trio.sleep(min(interval, self._until_next_epoch() + 0.01))
            interval = min(interval * 2, REANNOUNCE_SECONDS)

    def _found(self, addresses: set[tuple[str, int]]) -> None:
        for address in addresses:
            if not self._is_self(address):
                self.dial(*address)

    def _watch_current(self) -> list[bytes]:
        """Watch the channel keys of the buckets announced or looked up now, and no others;
        returns the keys to look up."""
        epochs = set(self.announce_epochs()) | set(self.lookup_epochs())
        wanted = {dht_channel_infohash(key, e) for key in self.channel_keys.values() for e in epochs}
        for gone in self._watched - wanted:
            self.dht.unwatch(gone)
        for new in wanted - self._watched:  # answers come whenever any lookup or announce sees them
            self.dht.watch(new, self._found)
        self._watched = wanted
        return [dht_channel_infohash(key, e) for key in self.channel_keys.values() for e in self.lookup_epochs()]

    async def _lookup_loop(self) -> None:
        self._watch_current()
        await self.dht.joined.wait()
        interval = LOOKUP_MIN_SECONDS
        while True:
            for infohash in self._watch_current():
                self.dht.lookup(infohash)
            with trio.move_on_after(min(interval, self._until_next_epoch() + 0.01)):
                await self._wake_lookup.wait()
            self._wake_lookup = trio.Event()
            interval = min(interval * 2, LOOKUP_MAX_SECONDS)

    def look_again(self) -> None:
        """Look channel members up now (e.g. when a find found nobody)."""
        self._wake_lookup.set()

    def announce_object(self, sha1: str) -> None:
        """Announce that this node provides ``sha1`` (kept among the MAX_ANNOUNCED_OBJECTS most recent)."""
        self._objects[sha1] = None
        self._objects.move_to_end(sha1)
        while len(self._objects) > MAX_ANNOUNCED_OBJECTS:
            self._objects.popitem(last=False)
        if self.dht.joined.is_set() and self.port is not None:
            for key in self.channel_keys.values():
                for epoch in self.announce_epochs():
                    self.dht.announce(dht_object_infohash(key, sha1, epoch), self.port)

    async def find_object(self, sha1: str, timeout: float = LOOKUP_TIMEOUT) -> set[tuple[str, int]]:
        """Addresses of nodes that announced ``sha1`` in one of our channels: the first key (of a
        channel, a bucket) with answers ends the lookup. (Waiting for every key meant waiting the
        whole timeout for the previous bucket's key, which usually has none: a DHT lookup never
        says "none". That was longer than a find waits.)"""
        found: set[tuple[str, int]] = set()

        async def one(infohash: bytes) -> None:
            peers = await self.dht.get_peers(infohash, timeout)
            found.update(peers)
            if peers:
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for key in self.channel_keys.values():
                for epoch in self.lookup_epochs():
                    nursery.start_soon(one, dht_object_infohash(key, sha1, epoch))
        return {a for a in found if not self._is_self(a)}


__all__ = ["DhtDiscovery"]
