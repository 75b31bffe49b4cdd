"""The multi-provider chunk scheduler (net/scheduler.py), driven by a fake clock: no trio, no sockets."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.net.scheduler import ChunkScheduler

MiB = 1 << 20


@dataclass
class FakePeer:
    """Serves requests one at a time at ``rate`` bytes/s, ``latency`` s away."""

    rate: float
    latency: float = 0.02
    liar: bool = False  # answers with bytes that fail verification
    black_hole: bool = False  # never answers
    busy_until: float = 0.0


@dataclass
class Sim:
    sched: ChunkScheduler
    peers: dict[str, FakePeer]
    chunk_bytes: int = MiB
    now: float = 0.0
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    verified: Counter = field(default_factory=Counter)  # chunk -> times newly verified
    expired: list[tuple[str, int]] = field(default_factory=list)
    dropped_at: dict[str, float] = field(default_factory=dict)
    removed_at: dict[str, float] = field(default_factory=dict)
    requeued: list[int] = field(default_factory=list)
    _events: list = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    def at(self, t: float, kind: str, *args) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, args))

    def pump(self) -> None:
        for name in self.sched.peers:
            before = set(self.sched.in_flight[name])
            for chunk in self.sched.next_requests(name, self.now):
                assert chunk not in before and not self.sched.is_verified(chunk)
                if sum(chunk in v for v in self.sched.in_flight.values()) > 1:
                    assert self.sched.queued == []  # duplicates only in the endgame
                self.requests.append((self.now, name, chunk))
                peer = self.peers[name]
                if not peer.black_hole:
                    start = max(self.now + peer.latency / 2, peer.busy_until)
                    peer.busy_until = start + self.chunk_bytes / peer.rate
                    self.at(peer.busy_until + peer.latency / 2, "reply", name, chunk)
            assert len(self.sched.in_flight[name]) <= max(self.sched.window(name), len(before))

    def run(self, limit: float = 120.0) -> float:
        for name in self.peers:
            self.sched.add_peer(name)
        self.pump()
        self.at(0.5, "tick")
        while self._events and not self.sched.done():
            self.now, _, kind, args = heapq.heappop(self._events)
            assert self.now < limit, "simulation did not finish"
            self.expired += self.sched.expired(self.now)
            if kind == "tick":
                self.at(self.now + 0.5, "tick")
            elif kind == "remove":
                self.removed_at[args[0]] = self.now
                self.requeued += self.sched.remove_peer(args[0])
            elif kind == "reply":
                name, chunk = args
                if name in self.removed_at or name in self.dropped_at:
                    continue  # the connection is gone
                if self.peers[name].liar:
                    self.dropped_at[name] = self.now
                    self.sched.drop_peer(name, "sent a chunk that does not match the manifest")
                else:
                    if not self.sched.is_verified(chunk):
                        self.verified[chunk] += 1  # the engine writes the chunk once
                    self.sched.on_chunk_ok(name, chunk, self.chunk_bytes, self.now)
            self.pump()
        assert self.sched.done()
        return self.now

    def count(self, name: str) -> int:
        return sum(1 for _t, p, _c in self.requests if p == name)


def three_peers() -> dict[str, FakePeer]:
    return {"fast": FakePeer(200e6), "mid": FakePeer(50e6), "slow": FakePeer(10e6)}


def test_three_peers_every_chunk_verified_once_faster_gets_more():
    sim = Sim(ChunkScheduler(300, range(300)), three_peers())
    end = sim.run()
    assert sim.verified == Counter({c: 1 for c in range(300)})
    counts = {p: sim.count(p) for p in sim.peers}
    assert counts["fast"] > counts["mid"] > counts["slow"] > 0
    ideal = 300 * MiB / 260e6
    assert end < 1.1 * ideal, (end, ideal)
    stats = sim.sched.stats
    assert stats.verified == 300 and stats.in_flight == 0 and stats.queued == 0
    assert stats.requests == len(sim.requests) <= 300 + stats.duplicates + stats.moves
    assert stats.moves <= 16
    assert stats.duplicates <= 16 and sim.expired == []
    assert stats.peers["fast"].window > stats.peers["slow"].window
    assert stats.peers["fast"].rate > stats.peers["mid"].rate > stats.peers["slow"].rate


def test_only_needed_chunks_are_requested():
    needed = [1, 5, 6, 7, 19]
    sim = Sim(ChunkScheduler(20, needed), three_peers())
    sim.run()
    assert set(sim.verified) == set(needed)
    assert {c for _t, _p, c in sim.requests} == set(needed)


def test_removed_peer_chunks_go_elsewhere():
    sim = Sim(ChunkScheduler(200, range(200)), three_peers())
    sim.at(0.2, "remove", "fast")
    sim.run()
    assert sim.requeued  # fast had chunks in flight when it left
    t = sim.removed_at["fast"]
    assert all(p != "fast" for when, p, _c in sim.requests if when >= t)
    for chunk in sim.requeued:
        assert any(p != "fast" and c == chunk and when >= t for when, p, c in sim.requests)
    assert sim.verified == Counter({c: 1 for c in range(200)})


def test_liar_is_dropped_and_never_asked_again():
    peers = three_peers() | {"liar": FakePeer(500e6, liar=True)}
    sim = Sim(ChunkScheduler(100, range(100)), peers)
    sim.run()
    t = sim.dropped_at["liar"]
    assert all(p != "liar" for when, p, _c in sim.requests if when > t)
    assert "liar" not in sim.sched.peers and "liar" in sim.sched.dropped
    sim.sched.add_peer("liar")  # a banned peer cannot come back for this file
    assert "liar" not in sim.sched.peers and sim.sched.next_requests("liar", sim.now) == []
    assert sim.verified == Counter({c: 1 for c in range(100)})


def test_timeouts_requeue_to_other_peers():
    peers = {"hole": FakePeer(1e9, black_hole=True), "ok": FakePeer(20e6)}
    sim = Sim(ChunkScheduler(40, range(40), request_timeout=1.0), peers)
    sim.run()
    assert sim.expired and {p for p, _c in sim.expired} == {"hole"}
    assert sim.sched.window("hole") == 1
    assert sim.verified == Counter({c: 1 for c in range(40)})
    for _p, chunk in sim.expired:
        assert any(p == "ok" and c == chunk for _t, p, c in sim.requests)


def test_expired_halves_window_once_per_call():
    s = ChunkScheduler(100, range(100), initial_window=8)
    s.add_peer("a")
    assert s.next_requests("a", 0.0) == list(range(8))
    assert s.expired(30.0) == []  # its only source: the requests stay in its queue
    s.add_peer("b")  # another holder: late requests go to it
    assert s.expired(9.9) == []
    out = s.expired(10.0)
    assert out == [("a", c) for c in range(8)]
    assert s.window("a") == 4 and s.in_flight["a"] == [] and s.queued[:8] == list(range(8))
    assert s.stats.peers["a"].failures == 8


def test_failed_chunk_goes_to_another_peer_first():
    s = ChunkScheduler(10, range(10), initial_window=4)
    s.add_peer("a")
    s.add_peer("b")
    assert s.next_requests("a", 0) == [0, 1, 2, 3]
    s.on_chunk_failed("a", 1, 0.1)
    assert s.window("a") == 2
    assert s.next_requests("a", 0.1) == []  # 3 in flight, window 2
    s.on_chunk_ok("a", 0, MiB, 0.2)
    s.on_chunk_ok("a", 2, MiB, 0.2)
    assert s.next_requests("a", 0.2) == [4]  # chunk 1 waits for b
    assert s.in_flight["a"] == [3, 4]
    assert s.next_requests("b", 0.2) == [1, 5, 6, 7]
    s.on_chunk_failed("b", 1, 0.3)  # every peer failed it: anyone may try again
    s.on_chunk_failed("b", 1, 0.3)  # stale repeat: ignored
    assert s.stats.peers["b"].failures == 1
    s.on_chunk_ok("a", 3, MiB, 0.4)
    assert s.next_requests("a", 0.4)[0] == 1


def test_prioritize():
    s = ChunkScheduler(10, range(10), initial_window=2)
    s.add_peer("a")
    assert s.next_requests("a", 0) == [0, 1]
    s.prioritize([7, 3, 1, 42])  # 1 is in flight already, 42 is not a chunk of this file
    s.on_chunk_ok("a", 0, MiB, 1.0)
    assert s.next_requests("a", 1.0) == [7, 3]  # the window grew to 3
    s.prioritize([9])
    s.on_chunk_ok("a", 1, MiB, 2.0)
    assert s.next_requests("a", 2.0)[0] == 9


def test_endgame_duplicates_and_late_copy_is_harmless():
    s = ChunkScheduler(4, range(4), initial_window=4)
    s.add_peer("slow")
    assert s.next_requests("slow", 0.0) == [0, 1, 2, 3]
    s.add_peer("fast")
    s.on_chunk_ok("slow", 0, MiB, 1.0)
    moved = s.next_requests("fast", 1.0)
    assert moved == [3, 2, 1]  # waiting at a peer that delivers 1 chunk/s: moved, last-expected first
    assert s.next_requests("fast", 1.0) == [] and s.stats.moves == 3 and s.stats.duplicates == 0
    assert sorted(s.take_cancelled()) == [("slow", 1), ("slow", 2), ("slow", 3)]
    s.remove_peer("slow")  # nothing re-queued: each chunk is in flight at "fast"
    assert s.queued == []
    s.add_peer("slow")
    assert s.next_requests("slow", 1.1) == [1, 2, 3]  # again at most one duplicate per chunk
    assert s.next_requests("slow", 1.1) == []
    assert s.on_chunk_ok("fast", 2, MiB, 1.2) == ["slow"]  # the loser may be cancelled
    assert {p: sorted(c) for p, c in s.in_flight.items()} == {"slow": [1, 3], "fast": [1, 3]}
    verified = s.stats.verified
    assert s.on_chunk_ok("slow", 2, MiB, 1.5) == []  # the late duplicate
    assert s.stats.verified == verified and not s.done()
    for c in (1, 3):
        s.on_chunk_ok("fast", c, MiB, 1.6)
    assert s.done() and s.in_flight == {"slow": [], "fast": []}
    assert s.next_requests("slow", 2.0) == [] and not s.stalled()


def test_stalled_when_all_peers_gone():
    s = ChunkScheduler(5, range(5), initial_window=2)
    assert s.stalled()  # no peer yet
    s.add_peer("a")
    s.add_peer("b")
    assert not s.stalled()
    assert s.next_requests("a", 0) + s.next_requests("b", 0) == [0, 1, 2, 3]
    assert s.remove_peer("a") + s.remove_peer("b") == [0, 1, 2, 3]
    assert s.stalled() and not s.done() and s.queued == [0, 1, 2, 3, 4]
    assert s.remove_peer("a") == []
    s.add_peer("c")
    assert not s.stalled()
    assert ChunkScheduler(3, []).done() and not ChunkScheduler(3, []).stalled()


def test_window_is_capped_by_measured_rate():
    # 1 MB/s with a 10 s timeout: no more than ~3.5 chunks should wait at this peer.
    s = ChunkScheduler(100, range(100), initial_window=4, request_timeout=10.0)
    s.add_peer("slow")
    now = 0.0
    s.next_requests("slow", now)
    for _ in range(30):
        now += MiB / 1e6
        s.on_chunk_ok("slow", s.in_flight["slow"][0], MiB, now)
        s.next_requests("slow", now)
    assert s.window("slow") <= 4 and s.expired(now) == []


# --- property test: random event orders keep the invariants

PEERS = ["a", "b", "c", "d"]
op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(PEERS)),
    st.tuples(st.just("remove"), st.sampled_from(PEERS)),
    st.tuples(st.just("drop"), st.sampled_from(PEERS)),
    st.tuples(st.just("next"), st.sampled_from(PEERS)),
    st.tuples(st.just("next"), st.sampled_from(PEERS)),
    st.tuples(st.just("ok"), st.sampled_from(PEERS), st.integers(0, 63)),
    st.tuples(st.just("ok"), st.sampled_from(PEERS), st.integers(0, 63)),
    st.tuples(st.just("fail"), st.sampled_from(PEERS), st.integers(0, 63)),
    st.tuples(st.just("ended"), st.sampled_from(PEERS), st.integers(0, 63)),
    st.tuples(st.just("tick"), st.floats(0, 2)),
    st.tuples(st.just("prio"), st.lists(st.integers(0, 40), max_size=4)),
)


def check_invariants(s: ChunkScheduler, needed: set[int], verified: set[int], banned: set[str]) -> None:
    in_flight = s.in_flight
    holders = Counter(c for chunks in in_flight.values() for c in chunks)
    queued = s.queued
    assert queued == sorted(set(queued))
    assert all(n <= 2 for n in holders.values())  # at most one duplicate per chunk
    assert set(queued).isdisjoint(holders) and verified.isdisjoint(set(queued) | set(holders))
    assert set(queued) | set(holders) | verified == needed  # nothing lost, nothing invented
    assert not banned & set(s.peers) and not banned & set(in_flight)
    assert s.done() == (verified == needed)
    assert s.stalled() == (verified != needed and not s.peers)


@settings(max_examples=300, deadline=None)
@given(num_chunks=st.integers(1, 40), needed_mask=st.integers(0, 2**40 - 1),
       window=st.integers(1, 6), ops=st.lists(op, max_size=120))
def test_random_event_orders_keep_invariants(num_chunks, needed_mask, window, ops):
    needed = {c for c in range(num_chunks) if needed_mask >> c & 1}
    s = ChunkScheduler(num_chunks, needed, initial_window=window, max_window=8, request_timeout=1.0)
    now, verified, banned = 0.0, set(), set()
    for peer in PEERS[:3]:
        s.add_peer(peer)
    for o in ops:
        kind, args = o[0], o[1:]
        if kind == "add":
            s.add_peer(args[0])
        elif kind == "remove":
            s.remove_peer(args[0])
        elif kind == "drop":
            s.drop_peer(args[0], "lied")
            banned.add(args[0])
        elif kind == "next":
            peer = args[0]
            before = set(s.in_flight.get(peer, []))
            got = s.next_requests(peer, now)
            assert len(got) == len(set(got)) and not set(got) & (before | verified)
            if peer in banned:
                assert got == []
            if got:
                assert len(s.in_flight[peer]) <= s.window(peer)
                if any(sum(c in v for v in s.in_flight.values()) > 1 for c in got):
                    assert s.queued == []  # duplicates only in the endgame
        elif kind in ("ok", "fail"):
            peer, k = args
            mine = sorted(s.in_flight.get(peer, []))
            chunk = mine[k % len(mine)] if mine else k % num_chunks  # else a late or stray reply
            if kind == "ok":
                s.on_chunk_ok(peer, chunk, MiB, now)
                if chunk in needed:
                    verified.add(chunk)
            else:
                s.on_chunk_failed(peer, chunk, now)
        elif kind == "ended":
            peer, k = args
            mine = sorted(s.in_flight.get(peer, []))
            s.on_request_ended(peer, mine[k % len(mine)] if mine else k % num_chunks)
        elif kind == "tick":
            now += args[0]
            for peer, chunk in s.expired(now):
                assert peer not in banned
        elif kind == "prio":
            s.prioritize(args[0])
        check_invariants(s, needed, verified, banned)
        for peer in s.peers:
            assert 1 <= s.window(peer) <= 8

    # Liveness: one honest peer that answers everything finishes the file.
    s.add_peer("z")
    for _ in range(4 * num_chunks + 4):
        if s.done():
            break
        for peer in s.peers:
            s.next_requests(peer, now)
        for peer, chunks in s.in_flight.items():
            for chunk in chunks:
                s.on_chunk_ok(peer, chunk, MiB, now)
                verified.add(chunk)
        now += 0.1
        check_invariants(s, needed, verified, banned)
    assert s.done() and verified == needed


def test_want_grows_what_is_needed():
    s = ChunkScheduler(10, [])
    assert s.done() and not s.stalled()
    s.add_peer("p")
    assert s.next_requests("p", 0.0) == []
    s.want([7, 2])
    s.want([2])
    s.prioritize([7])
    assert s.next_requests("p", 0.0) == [7, 2]
    assert not s.done()
    s.on_chunk_ok("p", 7, 100, 0.1)
    s.on_chunk_ok("p", 2, 100, 0.2)
    assert s.done()
    with pytest.raises(ValueError):
        s.want([10])


@pytest.mark.parametrize("rate_a,rate_b,latency", [(1e9, 1e9, 0.001), (1e9, 0.8e9, 0.001), (300e6, 250e6, 0.001),
                                                    (500e6, 400e6, 0.0002), (200e6, 150e6, 0.002)])
def test_two_healthy_providers_fetch_no_chunk_twice(rate_a, rate_b, latency):
    """A fresh node loading a 191 MiB file from two healthy providers: every chunk requested once.
    The endgame raced the last chunks of the slightly slower one for a few ms, and one chunk came
    twice (before the swarming scheduler, 20-40 % of the file came twice)."""
    sim = Sim(ChunkScheduler(191, range(191)), {"a": FakePeer(rate_a, latency), "b": FakePeer(rate_b, latency)})
    end = sim.run()
    assert len(sim.requests) == 191 and sim.sched.stats.duplicates == 0
    assert end < 1.1 * 191 * MiB / (rate_a + rate_b) + 0.05  # and no slower for it


def test_a_stalled_holder_is_still_raced_at_the_end():
    sim = Sim(ChunkScheduler(40, range(40)), {"a": FakePeer(200e6), "b": FakePeer(200e6)})
    # b stops answering once it has taken requests: its last chunks are re-requested at a
    sim.peers["b"].black_hole = True
    end = sim.run()
    assert sim.verified == Counter({c: 1 for c in range(40)}) and end < 10
    assert sim.sched.stats.duplicates + sim.sched.stats.moves > 0


def test_a_request_only_one_partial_peer_can_answer_does_not_expire():
    s = ChunkScheduler(4, range(4), initial_window=4)
    s.add_peer("p", have=[0, 1])
    s.add_peer("q", have=[1])
    assert sorted(s.next_requests("p", 0.0)) == [0, 1]
    assert s.expired(10.0) == [("p", 1)]  # q holds chunk 1 too; only p holds chunk 0
    assert s.in_flight["p"] == [0]


def test_a_request_ended_without_its_chunk_gives_it_back():
    """A cancelled multi-chunk request whose other chunks did not come: they are queued again, for
    the same peer too (it is not at fault), even though no other peer holds them."""
    s = ChunkScheduler(8, range(8), initial_window=4)
    s.add_peer("p")
    assert s.next_requests("p", 0.0) == [0, 1, 2, 3]
    s.on_chunk_ok("q", 0, MiB, 0.1)  # chunk 0 came from elsewhere (a peer since gone)
    s.on_request_ended("p", 1)
    s.on_request_ended("p", 2)
    assert s.in_flight["p"] == [3]
    assert s.expired(1000.0) == []  # p is their only holder: they would never expire
    assert s.stats.peers["p"].failures == 0
    assert s.next_requests("p", 0.2)[:2] == [1, 2]  # lowest first, then chunk 4
    s.on_request_ended("p", 5)  # not in flight there: nothing happens
    assert 5 in s.queued
