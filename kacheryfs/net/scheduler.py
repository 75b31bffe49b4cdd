"""Which chunk to request from which peer: a pure, I/O-free scheduler for one file's download.

The transfer engine owns the sockets and the clock; it tells the scheduler what happened
(``on_chunk_ok``, ``on_chunk_failed``, ``remove_peer``, ...) with the current time ``now`` and asks
``next_requests(peer, now)`` what to send. Being pure, it is tested with a fake clock and random
event orders (tests/test_scheduler.py).

Policy:
- Each peer has a window of requests in flight. It starts at ``initial_window``, grows like TCP
  (slow start: +1 per verified chunk, doubling per round trip; then +1/window per chunk) and halves
  on a failure or timeout. A peer that answers faster frees its window sooner and grows it faster,
  so it gets more of the file.
- The window is capped near the peer's bandwidth-delay product, measured: twice what it delivers
  in its best round trip, plus two chunks (as BBR sizes its window). That keeps the pipe full and
  leaves room to probe upward, while a window deeper than that adds no throughput, only requests
  queued at the peer: they delay the end of the download and, past ``request_timeout``, expire.
  So a peer gets more in flight when it is faster or farther away, and the slow ones stay shallow.
- Providers may hold the whole object or only some chunks (a node still downloading it: its
  ``have`` set, grown by ``peer_has`` as it announces new chunks). A peer is only ever asked for
  chunks it holds.
- Chunks a reader is waiting on (``prioritize``) go out first. Then, while every provider holds
  the whole object, queued chunks go out lowest index first (sequential readers, read-ahead). Once
  some providers are partial, **rarest first**: the queued chunk held by the fewest providers,
  ties broken by a random order of this download's own, so that downloaders starting together
  fetch different chunks from a seeder and then trade them. A chunk that failed or timed out at a
  peer is given to the other peers holding it first.
- The initial window budget is shared: ``add_peers`` gives each of n providers
  ``initial_window // n`` (at least ``min_initial_window``), so a crowd starting at once does not
  queue the object many times over at one slow seeder; slow start then grows the fast ones.
- Moves: a peer with a free window and nothing queued that it holds may take over requests
  waiting at a peer that should deliver them much later (a slow or crowded seeder) when it
  holds those chunks; the old request is cancelled (``take_cancelled``), not duplicated.
- Endgame: once every remaining chunk is in flight and at most ENDGAME_CHUNKS remain, a peer with a free window may re-request the
  chunks another peer is slowest to deliver (latest expected arrival, from that peer's queue
  position and rate), at most one duplicate per chunk and only where this peer expects to be
  sooner by DUPLICATE_MIN_GAIN, so a fast peer does not race a fast one for nothing. The first
  verified copy wins.
  Outside the endgame a chunk is never in flight twice.
- A peer that sent bad bytes (``drop_peer``) is banned for this file: never asked again, even if
  added back.
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass, field
from typing import Iterable, Mapping

# Window cap: _RTT_GAIN round trips' worth of the peer's delivery rate, plus _SLACK_CHUNKS.
_RTT_GAIN = 2.0
_SLACK_CHUNKS = 2.0
_RATE_EWMA = 0.3  # weight of a new delivery-rate sample
STEAL_MIN_AGE = 0.05  # a request waits this long (s) before another peer may take it over...
STEAL_SILENT_AGE = 1.0  # (s) for a peer that has delivered nothing yet: its speed is unknown
STEAL_FACTOR = 2.0  # ...and only if that peer should deliver it in less than half the time
STEAL_MARGIN = 0.1  # and at least this much (s) sooner
ENDGAME_CHUNKS = 8  # duplicates only once this few chunks remain
# A peer with room and nothing to take from the queue looks for requests to move to it (step 3 of
# next_requests, a pass over every peer's requests); when that finds nothing it looks again only
# this much (s) later, or after its own next delivery. A download calls
# next_requests for each of its peers at every event (a chunk, a Have from any of 40 peers): in a
# 50-node crowd these fruitless passes were most of the scheduler's CPU (simulated: 90%).
IDLE_SEARCH_SECONDS = 0.05
# ...and only where the duplicate should arrive this much (s) sooner: between healthy peers (two equal
# providers) the last chunks are a few ms apart, and racing them fetched 1-3 chunks twice per file
# for nothing; a stalled or slow holder is still raced.
DUPLICATE_MIN_GAIN = 0.1
RARITY_HORIZON = 4096  # rarest-first looks at this many lowest queued chunks (bounded cost per call)


@dataclass
class _Peer:
    window: float
    ssthresh: float
    in_flight: dict[int, float] = field(default_factory=dict)  # chunk -> time requested
    rate: float | None = None  # bytes/s, EWMA of delivery-rate samples
    last_ok: float | None = None
    min_rtt: float | None = None  # fastest request -> verified seen
    chunks_ok: int = 0
    bytes_ok: int = 0
    failures: int = 0
    have: bytearray | None = None  # chunks it holds, bit i of byte i // 8; None: the whole object
    search_after: float = float("-inf")  # no moving of requests to this peer before then (IDLE_SEARCH_SECONDS)

    def holds(self, chunk: int) -> bool:
        have = self.have
        return have is None or bool(have[chunk >> 3] >> (chunk & 7) & 1)


@dataclass(frozen=True)
class PeerStats:
    window: int
    in_flight: int
    chunks_ok: int
    bytes_ok: int
    failures: int
    rate: float | None
    holds: int | None  # chunks it holds (None: the whole object)


@dataclass(frozen=True)
class SchedulerStats:
    needed: int
    verified: int
    queued: int
    in_flight: int
    requests: int
    duplicates: int  # endgame re-requests issued
    moves: int  # requests moved from a slower peer (cancelled there)
    peers: dict[str, PeerStats]
    dropped: frozenset[str]


class ChunkScheduler:
    def __init__(self, num_chunks: int, needed: Iterable[int], *, initial_window: int = 4,
                 max_window: int = 64, request_timeout: float = 10.0, slack_chunks: float = _SLACK_CHUNKS,
                 slack_seconds: float = 0.0, min_initial_window: int = 1, seed: int | None = None,
                 endgame_chunks: int = ENDGAME_CHUNKS):
        if not 1 <= min_initial_window <= initial_window <= max_window:
            raise ValueError("need 1 <= min_initial_window <= initial_window <= max_window")
        self.num_chunks = num_chunks
        self.needed = set(needed)  # grows with want(): a lazy reader asks for chunks as it goes
        if any(not 0 <= c < num_chunks for c in self.needed):
            raise ValueError("needed chunk out of range")
        self.initial_window = initial_window
        self.max_window = max_window
        self.request_timeout = request_timeout
        # Chunks allowed beyond the measured bandwidth-delay product: a transfer is a pipeline of
        # several serial stages (read, encrypt, send, decrypt, verify, write), each needs one in hand.
        self.slack_chunks = slack_chunks
        # ...and this much time's worth at the peer's measured rate: deep on a fast link, shallow
        # at a slow (or shared) provider, whose queued requests could later come from others.
        self.slack_seconds = slack_seconds
        self.min_initial_window = min_initial_window
        self.endgame_chunks = endgame_chunks
        self._random = random.Random(seed)
        self._rank: list[int] | None = None  # random tie-break order, made when a partial peer comes
        self._holding: list[int] | None = None  # chunk -> partial peers holding it (full ones hold all)
        self._partial_peers = 0
        self._queue: list[int] = sorted(self.needed)  # waiting, ascending; disjoint from in flight
        self._urgent: dict[int, None] = {}  # chunks readers wait on, oldest first (ordered set)
        self._holders: dict[int, list[str]] = {}  # chunk -> peers it is in flight at (1, or 2 in endgame)
        self._failed_at: dict[int, set[str]] = {}  # chunk -> peers that failed or timed out on it
        self._verified: set[int] = set()
        self._peers: dict[str, _Peer] = {}
        self._banned: dict[str, str] = {}  # peer -> reason
        self._chunk_bytes = 1  # largest chunk seen, for turning a byte rate into a chunk count
        self._requests = 0
        self._duplicates = 0
        self._moves = 0
        self._moved: set[int] = set()
        self._cancelled: list[tuple[str, int]] = []

    # --- peers

    def add_peer(self, peer: str, have: Iterable[int] | None = None, *, window: int | None = None) -> None:
        """A provider: of the whole object (``have`` None) or of the chunks in ``have``. A peer
        already known just gains what ``have`` lists."""
        if peer in self._banned:
            return
        if peer in self._peers:
            if have is None:
                self.peer_has_all(peer)
            else:
                self.peer_has(peer, have)
            return
        window = self.initial_window if window is None else max(1, min(window, self.max_window))
        state = self._peers[peer] = _Peer(window=float(window), ssthresh=float(self.max_window))
        if have is not None:
            if self._holding is None:
                self._holding = [0] * self.num_chunks
                self._rank = list(range(self.num_chunks))
                self._random.shuffle(self._rank)
            state.have = bytearray((self.num_chunks + 7) // 8)
            self._partial_peers += 1
            self.peer_has(peer, have)

    def add_peers(self, peers: Mapping[str, Iterable[int] | None]) -> None:
        """Several providers at once, sharing the initial window budget between them."""
        share = max(self.min_initial_window, self.initial_window // max(1, len(peers)))
        for peer, have in peers.items():
            self.add_peer(peer, have, window=share)

    def share_of_initial_window(self) -> int:
        """The initial window a provider joining now gets (the budget shared with those present)."""
        return max(self.min_initial_window, self.initial_window // (len(self._peers) + 1))

    def peer_has(self, peer: str, chunks: Iterable[int]) -> bool:
        """A partial provider now also holds ``chunks``. True if that makes a needed chunk available."""
        state = self._peers.get(peer)
        if state is None or state.have is None:
            return False
        have, holding, useful = state.have, self._holding, False
        for chunk in chunks:
            if not 0 <= chunk < self.num_chunks:
                continue  # beyond this object: ignore
            byte, bit = chunk >> 3, 1 << (chunk & 7)
            if not have[byte] & bit:
                have[byte] |= bit
                holding[chunk] += 1
                if not useful and chunk in self.needed and chunk not in self._verified:
                    useful = True
        return useful

    def peer_has_all(self, peer: str) -> None:
        """A partial provider completed the object."""
        state = self._peers.get(peer)
        if state is not None and state.have is not None:
            self._forget_have(state)

    def _forget_have(self, state: _Peer) -> None:
        holding = self._holding
        for byte_index, byte in enumerate(state.have):
            while byte:
                low = byte & -byte
                holding[byte_index * 8 + low.bit_length() - 1] -= 1
                byte ^= low
        state.have = None
        self._partial_peers -= 1

    def remove_peer(self, peer: str) -> list[int]:
        """The peer is gone: its in-flight chunks go back to the queue; returns those re-queued."""
        state = self._peers.pop(peer, None)
        if state is None:
            return []
        if state.have is not None:
            self._forget_have(state)
        requeued = []
        for chunk in state.in_flight:
            if self._release(chunk, peer):
                requeued.append(chunk)
        return requeued

    def holds(self, peer: str, chunk: int) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.holds(chunk)

    def progress(self, peer: str) -> tuple[int, float | None]:
        """(requests in flight at ``peer``, when it last delivered a chunk: None if never)."""
        state = self._peers.get(peer)
        return (0, None) if state is None else (len(state.in_flight), state.last_ok)

    def drop_peer(self, peer: str, reason: str) -> None:
        """The peer sent bad bytes: forget it for this file and never ask it again."""
        self.remove_peer(peer)
        self._banned[peer] = reason

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    @property
    def dropped(self) -> dict[str, str]:
        return dict(self._banned)

    def window(self, peer: str) -> int:
        state = self._peers.get(peer)
        return int(state.window) if state else 0

    # --- what to ask for

    def want(self, chunks: Iterable[int]) -> None:
        """Add chunks to what is needed (lazy reads, read-ahead); already-needed ones are ignored."""
        for chunk in chunks:
            if not 0 <= chunk < self.num_chunks:
                raise ValueError("chunk out of range")
            if chunk not in self.needed:
                self.needed.add(chunk)
                bisect.insort(self._queue, chunk)

    def prioritize(self, chunks: Iterable[int]) -> None:
        """A reader waits on these: they go out before anything else still queued."""
        for chunk in chunks:
            if chunk in self.needed and chunk not in self._verified:
                self._urgent.setdefault(chunk, None)

    def next_requests(self, peer: str, now: float) -> list[int]:
        """Chunks to request from ``peer`` now; each is recorded as in flight there."""
        state = self._peers.get(peer)
        if state is None:
            return []
        free = int(state.window) - len(state.in_flight)
        picked: list[int] = []
        if free <= 0:
            return picked
        # 1. chunks readers wait on, 2. the queue: in order, or rarest first once some peers are partial
        for chunk in list(self._urgent):
            if len(picked) == free:
                break
            if chunk not in self._holders and state.holds(chunk) and self._eligible(chunk, peer):
                picked.append(chunk)
        if len(picked) < free:
            chosen = set(picked)
            if self._partial_peers == 0:
                for chunk in self._queue:
                    if len(picked) == free:
                        break
                    if chunk not in chosen and self._eligible(chunk, peer):
                        picked.append(chunk)
            else:
                holding, rank = self._holding, self._rank
                horizon = self._queue if len(self._queue) <= RARITY_HORIZON else self._queue[:RARITY_HORIZON]
                have, failed_at = state.have, self._failed_at
                if have is None:
                    candidates = [c for c in horizon
                                  if c not in chosen and (not failed_at or self._eligible(c, peer))]
                else:  # the bit test inline: this loop is the scheduler's hottest
                    candidates = [c for c in horizon if have[c >> 3] >> (c & 7) & 1
                                  and c not in chosen and (not failed_at or self._eligible(c, peer))]
                picked += heapq.nsmallest(free - len(picked), candidates, key=lambda c: (holding[c], rank[c]))
        for chunk in picked:
            self._queue.pop(bisect.bisect_left(self._queue, chunk))
        # 3. chunks waiting at a slower peer move here (their request there is cancelled)
        if len(picked) < free and len(self._peers) > 1 and now >= state.search_after:
            moved = self._steal(peer, state, free - len(picked), len(picked), now)
            if not moved:  # found nothing to move: not again at once
                state.search_after = now + IDLE_SEARCH_SECONDS
            picked += moved
        # 4. endgame: nothing left to queue and only a few chunks to go, so race the chunks other
        # peers will deliver last (a duplicate costs the other peer's upload: kept for the very end)
        if not self._queue and len(picked) < free and len(self.needed) - len(self._verified) <= self.endgame_chunks:
            candidates = sorted(
                ((-self._eta(other_state, rank), chunk)
                 for other, other_state in self._peers.items() if other != peer
                 for rank, chunk in enumerate(other_state.in_flight)  # dicts keep request order
                 if len(self._holders[chunk]) == 1 and state.holds(chunk)
                 and peer not in self._failed_at.get(chunk, ())),
            )
            for neg_eta, chunk in candidates[:free - len(picked)]:
                mine = 0.0 if state.rate is None else self._eta(state, len(state.in_flight) + len(picked))
                if mine + DUPLICATE_MIN_GAIN >= -neg_eta:
                    break  # the holder should deliver it before, or hardly later than, we could
                picked.append(chunk)
                self._duplicates += 1
        for chunk in picked:
            state.in_flight[chunk] = now
            self._holders.setdefault(chunk, []).append(peer)
        self._requests += len(picked)
        return picked

    def _steal(self, peer: str, state: _Peer, room: int, already: int, now: float) -> list[int]:
        """Requests queued at other peers that ``peer`` holds and should deliver clearly sooner
        (by STEAL_FACTOR and STEAL_MARGIN): moved here, never duplicated. The requests they leave
        are listed by ``take_cancelled`` for the caller to cancel at the old peer."""
        mine_first = 0.0 if state.rate is None else self._eta(state, len(state.in_flight) + already)
        candidates = sorted(
            ((-self._eta(other_state, rank), other, chunk)
             for other, other_state in self._peers.items()
             if other != peer and other_state.in_flight  # skip peers that will deliver all soon enough:
             and self._eta(other_state, len(other_state.in_flight) - 1) >= mine_first * STEAL_FACTOR + STEAL_MARGIN
             for rank, chunk in enumerate(other_state.in_flight)
             if chunk not in self._moved
             and now - other_state.in_flight[chunk] >= (STEAL_MIN_AGE if other_state.rate else STEAL_SILENT_AGE)
             and len(self._holders[chunk]) == 1
             and state.holds(chunk) and peer not in self._failed_at.get(chunk, ())),
            key=lambda c: (c[0], c[2]),  # (peers ids need not be comparable with each other)
        )
        moved: list[int] = []
        for neg_eta, other, chunk in candidates[:room]:
            mine = 0.0 if state.rate is None else self._eta(state, len(state.in_flight) + already + len(moved))
            if -neg_eta < mine * STEAL_FACTOR + STEAL_MARGIN:
                break  # sorted latest first: no later candidate is worth moving either
            del self._peers[other].in_flight[chunk]
            self._holders[chunk].remove(other)
            del self._holders[chunk]
            self._cancelled.append((other, chunk))
            self._moved.add(chunk)  # once: requests do not bounce between peers
            moved.append(chunk)
            self._moves += 1
        return moved

    def take_cancelled(self) -> list[tuple[str, int]]:
        """(peer, chunk) requests the scheduler moved elsewhere since the last call: cancel them."""
        out, self._cancelled = self._cancelled, []
        return out

    def _eta(self, state: _Peer, rank: int) -> float:
        """Roughly when the peer delivers the request ``rank`` places back in its queue (unknown: never)."""
        return float("inf") if state.rate is None else (rank + 1) * self._chunk_bytes / state.rate

    def _eligible(self, chunk: int, peer: str) -> bool:
        # A peer that failed this chunk gets it again only once every peer holding it has failed it.
        failed = self._failed_at.get(chunk)
        return (not failed or peer not in failed
                or failed.issuperset(p for p, s in self._peers.items() if s.holds(chunk)))

    # --- what happened

    def on_chunk_ok(self, peer: str, chunk: int, nbytes: int, now: float) -> list[str]:
        """The chunk arrived from ``peer`` and verified. Harmless for a late duplicate.

        Returns the other peers still working on this chunk (an endgame duplicate), which the
        caller may cancel; they are no longer counted as in flight.
        """
        state = self._peers.get(peer)
        if state is not None:
            sent = state.in_flight.pop(chunk, None)
            if sent is not None:
                self._holders[chunk].remove(peer)
                self._grow(state, nbytes, sent, now)
            state.search_after = float("-inf")  # its rate and load changed: it may take work now
            state.chunks_ok += 1
            state.bytes_ok += nbytes
        if chunk not in self.needed or chunk in self._verified:
            return []
        self._verified.add(chunk)
        self._urgent.pop(chunk, None)
        self._failed_at.pop(chunk, None)
        others = self._holders.pop(chunk, [])
        for other in others:
            del self._peers[other].in_flight[chunk]
        i = bisect.bisect_left(self._queue, chunk)
        if i < len(self._queue) and self._queue[i] == chunk:
            self._queue.pop(i)  # it had timed out here and been re-queued: now it is in anyway
        return others

    def _grow(self, state: _Peer, nbytes: int, sent: float, now: float) -> None:
        self._chunk_bytes = max(self._chunk_bytes, nbytes)
        # Delivery rate: bytes over the time since the later of (last delivery, this request).
        since = sent if state.last_ok is None else max(state.last_ok, sent)
        sample = nbytes / max(now - since, 1e-6)
        state.rate = sample if state.rate is None else (1 - _RATE_EWMA) * state.rate + _RATE_EWMA * sample
        state.last_ok = now
        state.min_rtt = now - sent if state.min_rtt is None else min(state.min_rtt, now - sent)
        state.window += 1.0 if state.window < state.ssthresh else 1.0 / state.window
        cap = state.rate * (_RTT_GAIN * state.min_rtt + self.slack_seconds) / self._chunk_bytes + self.slack_chunks
        state.window = max(1.0, min(state.window, float(self.max_window), cap))

    def on_chunk_failed(self, peer: str, chunk: int, now: float) -> None:
        """The peer refused or errored on this chunk: re-queue it (others first) and shrink the window."""
        state = self._peers.get(peer)
        if state is None or chunk not in state.in_flight:
            return  # stale: already expired, re-queued and penalized
        del state.in_flight[chunk]
        state.failures += 1
        self._shrink(state)
        self._failed_at.setdefault(chunk, set()).add(peer)
        self._release(chunk, peer)

    def on_request_ended(self, peer: str, chunk: int) -> None:
        """The request for ``chunk`` at ``peer`` ended without it (cancelled here; no reply came):
        re-queue it, with no penalty to the peer. Harmless if it is no longer in flight there."""
        state = self._peers.get(peer)
        if state is None or state.in_flight.pop(chunk, None) is None:
            return
        self._release(chunk, peer)

    def on_chunk_declined(self, peer: str, chunk: int, now: float) -> None:
        """The peer said it is busy with this chunk (it sent it to enough others): re-queue it for
        the other peers holding it first; the peer's window stays (it is not slow or broken), and
        it gets the chunk again once every holder has failed or declined it."""
        state = self._peers.get(peer)
        if state is None or chunk not in state.in_flight:
            return
        del state.in_flight[chunk]
        self._failed_at.setdefault(chunk, set()).add(peer)
        self._release(chunk, peer)

    def expired(self, now: float) -> list[tuple[str, int]]:
        """Requests older than ``request_timeout`` are re-queued for other peers; each late peer's
        window halves (once per call, as one loss event). Returns (peer, chunk) pairs to log.

        A request for a chunk no other peer holds stays where it is: its peer is its only source,
        and one asked again queues behind everyone else (a capped seeder facing a crowd). Measured
        in tests/swarm_sim.py (49 leechers, 32 chunks, seeder at 1 MB/s): expiring those requests
        too made the seeder send 1.9 copies and the crowd take 1.9 uploads; at 0.5 MB/s it never
        finished. (A peer that is really gone closes its session: remove_peer.)"""
        out: list[tuple[str, int]] = []
        for peer, state in self._peers.items():
            late = [c for c, sent in state.in_flight.items()
                    if now - sent >= self.request_timeout and self._held_elsewhere(c, state)]
            if not late:
                continue
            state.failures += len(late)
            self._shrink(state)
            for chunk in late:
                del state.in_flight[chunk]
                self._failed_at.setdefault(chunk, set()).add(peer)
                self._release(chunk, peer)
                out.append((peer, chunk))
        return out

    def _held_elsewhere(self, chunk: int, state: _Peer) -> bool:
        """Whether a peer other than ``state``'s holds ``chunk``."""
        whole = len(self._peers) - self._partial_peers - (state.have is None)
        if whole > 0:
            return True
        if self._holding is None:
            return False
        return self._holding[chunk] - (state.have is not None and state.holds(chunk)) > 0

    def _shrink(self, state: _Peer) -> None:
        state.ssthresh = max(state.window / 2, 1.0)
        state.window = state.ssthresh

    def _release(self, chunk: int, peer: str) -> bool:
        """``peer`` no longer holds ``chunk``; queue it unless verified or in flight elsewhere."""
        holders = self._holders.get(chunk)
        if holders is not None:
            holders.remove(peer)
            if holders:
                return False
            del self._holders[chunk]
        if chunk in self._verified:
            return False
        bisect.insort(self._queue, chunk)
        return True

    # --- status

    def done(self) -> bool:
        return len(self._verified) == len(self.needed)

    def stalled(self) -> bool:
        """Chunks remain but there is no peer left to ask."""
        return not self.done() and not self._peers

    def unavailable(self) -> int:
        """Queued chunks that no current peer holds (they wait for a Have, or for a new provider)."""
        if len(self._peers) > self._partial_peers:
            return 0  # someone holds everything
        holding = self._holding
        return sum(1 for c in self._queue if holding is None or not holding[c])

    def requests_in_flight(self) -> int:
        """Chunks requested and not yet delivered (cheap; ``stats`` has the details)."""
        return len(self._holders)

    def is_verified(self, chunk: int) -> bool:
        return chunk in self._verified

    @property
    def in_flight(self) -> dict[str, list[int]]:
        return {peer: list(state.in_flight) for peer, state in self._peers.items()}

    @property
    def queued(self) -> list[int]:
        return list(self._queue)

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            needed=len(self.needed), verified=len(self._verified), queued=len(self._queue),
            in_flight=len(self._holders), requests=self._requests, duplicates=self._duplicates, moves=self._moves,
            peers={p: PeerStats(int(s.window), len(s.in_flight), s.chunks_ok, s.bytes_ok, s.failures, s.rate,
                                None if s.have is None else sum(b.bit_count() for b in s.have))
                   for p, s in self._peers.items()},
            dropped=frozenset(self._banned),
        )


__all__ = ["ChunkScheduler", "PeerStats", "SchedulerStats"]
