"""Which waiting chunk request a node whose upload is the bottleneck sends next: pure, no I/O.

A node serving at a capped rate (``KACHERYFS_TEST_SERVE_RATE``: one request at a time, as a slow
uplink would) used to take turns in arrival order. In a flash crowd that made it upload the chunks
the first leechers asked for again and again, while others no leecher had yet waited behind them.
``rarest`` order is super-seeding on the serving side: among the waiting requests, the chunk this
node has uploaded the fewest times goes first (ties: the oldest request), so every chunk leaves once
before any leaves twice; small requests (a manifest, a one-chunk object) go before chunks, since they
cost little and unblock a download. A request for a chunk uploaded before waits behind fresh ones,
which gives its requester time to get that chunk from the peer that has it now and cancel here.

``decline``: a chunk this node has already uploaded ``enough_copies`` times is out in the swarm;
when its request's turn comes while other requests wait, the requester is told "busy" instead
(once per requester and chunk), so this node's upload goes to the others and the requester asks a
peer holding a copy. Asked again by the same requester (nobody else could give it the chunk: the
leechers holding it left, say), it is served: nobody starves.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import Hashable

SMALL = None  # the key of a request that is no chunk of a large object


class UploadQueue:
    def __init__(self, order: str = "rarest", remember: int = 65536, enough_copies: int | None = None):
        if order not in ("rarest", "fifo"):
            raise ValueError("order is 'rarest' or 'fifo'")
        if enough_copies is not None and enough_copies < 1:
            raise ValueError("enough_copies must be at least 1")
        self.order = order
        self.enough_copies = enough_copies  # None: never decline
        self._declined: OrderedDict[tuple, None] = OrderedDict()  # (requester, key) declined once
        self.remember = remember  # chunks whose upload count is kept (least recently uploaded forgotten)
        self._uploads: OrderedDict[Hashable, int] = OrderedDict()  # chunk key -> times uploaded
        self._waiting: dict[Hashable, deque] = {}  # key -> (seq, handle), oldest first
        self._seq = itertools.count()
        self._removed: set[int] = set()  # seqs taken out before their turn
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, key: Hashable, item=None) -> int:
        """A request waits for its turn; returns its handle (for ``remove``)."""
        seq = next(self._seq)
        self._waiting.setdefault(key, deque()).append((seq, item))
        self._count += 1
        return seq

    def remove(self, handle: int) -> None:
        """The request went away (cancelled) before its turn."""
        self._removed.add(handle)
        self._count -= 1

    def pop(self):
        """The next request's (handle, item), or None if none waits."""
        best = None
        for key, waiting in list(self._waiting.items()):
            while waiting and waiting[0][0] in self._removed:
                self._removed.discard(waiting.popleft()[0])
            if not waiting:
                del self._waiting[key]
                continue
            rank = (0 if self.order == "fifo" else self.uploads(key), waiting[0][0])
            if best is None or rank < best[0]:
                best = (rank, key)
        if best is None:
            return None
        key = best[1]
        seq, item = self._waiting[key].popleft()
        if not self._waiting[key]:
            del self._waiting[key]
        self._count -= 1
        return seq, item

    def uploads(self, key: Hashable) -> int:
        """Times ``key`` was uploaded; small requests rank before any chunk."""
        return -1 if key is SMALL else self._uploads.get(key, 0)

    def decline(self, key: Hashable, requester: Hashable) -> bool:
        """Whether the request whose turn it is should be answered "busy" (see the module's doc)."""
        if key is SMALL or self.enough_copies is None or not self._count:
            return False  # a small request, or nobody else waits: serving it costs nobody
        if self._uploads.get(key, 0) < self.enough_copies or (requester, key) in self._declined:
            return False
        self._declined[(requester, key)] = None
        while len(self._declined) > self.remember:
            self._declined.popitem(last=False)
        return True

    def uploaded(self, key: Hashable) -> None:
        """A request for ``key`` was served (its bytes went out)."""
        if key is SMALL:
            return
        self._uploads[key] = self._uploads.get(key, 0) + 1
        self._uploads.move_to_end(key)
        while len(self._uploads) > self.remember:
            self._uploads.popitem(last=False)


class CappedLink:
    """When each reply of a node serving at ``rate`` bytes/s has gone (pure: times are given).

    A slow uplink sends back to back: the next reply's bytes follow the last one's at once, and the
    disk read of the next reply overlaps the sending of the last. Charging each reply ``nbytes /
    rate`` *after* its read made the capped node serve at 0.83-0.90 of its rate (a 1 MiB read and
    its thread hop took 2-4 ms per 21 ms slot at 50 MB/s), which benchmarks then read as a slow
    downloader. The turn (who is read next) passes ``lead`` seconds before the link is free, so
    that read happens while the last reply is still going out; at most half a slot early, so the
    queue's choice is made about as late as before."""

    def __init__(self, rate: float, lead: float = 0.01):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.lead = lead
        self.free_at = float("-inf")  # when the last booked reply has gone

    def book(self, now: float, nbytes: int) -> tuple[float, float]:
        """(start, end) of sending ``nbytes`` read at ``now``: after what is booked, at the rate."""
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.rate
        return start, self.free_at

    def pass_turn_at(self, start: float, end: float) -> float:
        """When the next request may be read: ``lead`` before ``end``, never before mid-slot."""
        return max(end - self.lead, (start + end) / 2)


__all__ = ["UploadQueue", "CappedLink", "SMALL"]
