"""The scheduler with partial providers (swarming): rarest first, only chunks a peer holds, moves
of requests away from a slow seeder, and a whole flash crowd simulated with a fake clock."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.net.scheduler import ChunkScheduler

MiB = 1 << 20


def test_partial_peers_are_asked_only_for_what_they_hold():
    s = ChunkScheduler(10, range(10), initial_window=8)
    s.add_peer("p", [1, 3, 5])
    assert sorted(s.next_requests("p", 0.0)) == [1, 3, 5]
    assert s.next_requests("p", 0.0) == []
    assert s.peer_has("p", [7, 8, 1])  # 7 and 8 are new and needed
    assert sorted(s.next_requests("p", 0.1)) == [7, 8]
    assert not s.peer_has("p", [7, 99])  # nothing new (and 99 is not a chunk: ignored)
    assert s.unavailable() == 5  # 0, 2, 4, 6, 9: nobody holds them
    s.add_peer("seeder", window=5)
    assert s.unavailable() == 0
    assert sorted(s.next_requests("seeder", 0.2)) == [0, 2, 4, 6, 9]


def test_rarest_first_with_random_tie_break():
    s = ChunkScheduler(12, range(12), initial_window=4, seed=1)
    s.add_peer("seeder")
    s.add_peer("a", range(0, 8))
    s.add_peer("b", range(0, 4))
    # held by the seeder only: 8..11; by the seeder and a: 4..7; by all three: 0..3
    assert sorted(s.next_requests("seeder", 0.0)) == [8, 9, 10, 11]
    assert sorted(s.next_requests("a", 0.0)) == [4, 5, 6, 7]
    assert sorted(s.next_requests("b", 0.0)) == [0, 1, 2, 3]
    orders = set()
    for seed in range(8):  # downloaders starting together pick different chunks from the seeder
        t = ChunkScheduler(40, range(40), initial_window=4, seed=seed)
        t.add_peer("seeder")
        t.add_peer("leecher", [])
        orders.add(tuple(t.next_requests("seeder", 0.0)))
    assert len(orders) == 8


def test_without_partial_peers_order_stays_sequential():
    s = ChunkScheduler(10, range(10), initial_window=4, seed=3)
    s.add_peer("a")
    s.add_peer("b")
    assert s.next_requests("a", 0.0) == [0, 1, 2, 3]


def test_urgent_chunks_first_only_where_held():
    s = ChunkScheduler(10, range(10), initial_window=2)
    s.add_peer("p", [0, 1, 2, 9])
    s.prioritize([9, 5])
    assert s.next_requests("p", 0.0)[0] == 9  # 5 is held by nobody: it waits
    s.add_peer("seeder")
    assert s.next_requests("seeder", 0.0)[0] == 5


def test_initial_window_budget_is_shared():
    s = ChunkScheduler(100, range(100), initial_window=32, min_initial_window=4)
    s.add_peers({"s": None, **{f"l{i}": [] for i in range(7)}})
    assert s.window("s") == 4 and s.window("l0") == 4
    alone = ChunkScheduler(100, range(100), initial_window=32, min_initial_window=4)
    alone.add_peers({"s": None})
    assert alone.window("s") == 32
    assert alone.share_of_initial_window() == 16


def test_completed_peer_counts_as_whole_and_leaving_peer_is_forgotten():
    s = ChunkScheduler(6, range(6), initial_window=6)
    s.add_peer("a", [0])
    s.add_peer("b", [0, 1])
    s.peer_has_all("a")
    assert s.unavailable() == 0 and s.stats.peers["a"].holds is None
    assert s.stats.peers["b"].holds == 2
    s.remove_peer("a")
    assert s.unavailable() == 4  # b holds 0 and 1 only
    assert sorted(s.next_requests("b", 0.1)) == [0, 1]


def test_requests_move_from_a_slow_seeder_and_are_cancelled_there():
    s = ChunkScheduler(10, range(10), initial_window=4, seed=0)
    s.add_peer("seeder")
    s.add_peer("leecher", [])
    first = s.next_requests("seeder", 0.0)
    assert len(first) == 4
    s.on_chunk_ok("seeder", first[0], MiB, 1.0)  # 1 MiB/s: the rest waits up to seconds
    waiting = s.in_flight["seeder"]
    s.peer_has("leecher", waiting)
    moved = s.next_requests("leecher", 1.1)
    assert sorted(moved) == sorted(waiting)
    assert sorted(c for _p, c in s.take_cancelled()) == sorted(waiting)
    assert s.take_cancelled() == []
    assert all(c not in s.in_flight["seeder"] for c in moved)  # moved, never in flight twice
    assert s.stats.moves == len(moved) and s.stats.duplicates == 0
    for c in moved:  # a late copy from the seeder (its cancel came too late) is harmless
        s.on_chunk_ok("leecher", c, MiB, 1.2)
    s.on_chunk_ok("seeder", moved[0], MiB, 1.3)
    assert s.stats.verified == 1 + len(moved)


def test_a_fruitless_search_for_work_is_not_repeated_at_once():
    """A peer with room that found nothing to move looks again IDLE_SEARCH_SECONDS later, or
    after its own next delivery: not at every event of the download."""
    from kacheryfs.net.scheduler import IDLE_SEARCH_SECONDS

    s = ChunkScheduler(10, range(10), initial_window=4, seed=0)
    s.add_peer("seeder")
    s.add_peer("leecher", [])
    first = s.next_requests("seeder", 0.0)
    s.on_chunk_ok("seeder", first[0], MiB, 1.0)  # 1 MiB/s: the rest waits up to seconds
    assert s.next_requests("leecher", 1.1) == []  # it holds nothing yet: a fruitless search
    waiting = s.in_flight["seeder"]
    s.peer_has("leecher", waiting)
    assert s.next_requests("leecher", 1.1 + IDLE_SEARCH_SECONDS / 2) == []  # too soon to look again
    assert sorted(s.next_requests("leecher", 1.1 + IDLE_SEARCH_SECONDS)) == sorted(waiting)
    # after its own delivery a peer looks again at once
    t = ChunkScheduler(10, range(10), initial_window=4, seed=0)
    t.add_peer("seeder")
    t.add_peer("leecher", [0])
    assert t.next_requests("leecher", 0.0) == [0]
    slow = t.next_requests("seeder", 0.0)
    t.on_chunk_ok("seeder", slow[0], MiB, 1.0)
    assert t.next_requests("leecher", 1.1) == []  # nothing it holds to take
    t.peer_has("leecher", t.in_flight["seeder"])
    t.on_chunk_ok("leecher", 0, MiB, 1.101)
    moved = t.next_requests("leecher", 1.101)  # within IDLE_SEARCH_SECONDS of its last search
    assert moved and set(moved) <= set(slow[1:])


def test_no_move_to_a_peer_that_is_not_faster():
    s = ChunkScheduler(10, range(10), initial_window=2, seed=0)
    s.add_peer("a")
    s.add_peer("b", [])
    got = s.next_requests("a", 0.0)
    s.on_chunk_ok("a", got[0], MiB, 0.002)  # a is fast: nothing worth moving
    s.peer_has("b", range(10))
    s.next_requests("a", 0.002)
    assert s.take_cancelled() == []


# --- a flash crowd, simulated: one seeder at R, leechers much faster, Haves after a delay


def flash_crowd(n_leechers=8, chunks=40, seeder_rate=10 * MiB, leecher_rate=200 * MiB, latency=0.001,
                have_delay=0.05, seed=0, cancel=True, kill=None):
    events, seq = [], itertools.count()

    def at(t, *what):
        heapq.heappush(events, (t, next(seq), what))

    names = [f"L{i}" for i in range(n_leechers)]
    rate = {"S": seeder_rate, **{n: leecher_rate for n in names}}
    queues = {p: deque() for p in rate}  # requests waiting at each provider, served in order
    serving = {p: False for p in rate}
    cancelled: set = set()
    served = Counter()
    scheds = {}
    for i, n in enumerate(names):
        s = ChunkScheduler(chunks, range(chunks), initial_window=32, min_initial_window=2, slack_chunks=2,
                           slack_seconds=0.1, seed=seed * 100 + i, request_timeout=30)
        s.add_peers({"S": None, **{m: [] for m in names if m != n}})
        scheds[n] = s
    verified = Counter()
    done_at: dict[str, float] = {}
    dead: set = set()
    now = 0.0

    def kick(p):
        while queues[p] and not serving[p] and p not in dead:
            n, c = queues[p].popleft()
            if (p, n, c) in cancelled:
                cancelled.discard((p, n, c))
                continue
            serving[p] = True
            served[p] += 1
            at(now + MiB / rate[p], "sent", p, n, c)

    def pump():
        for n, s in scheds.items():
            if s.done() or n in dead:
                continue
            for p in s.peers:
                for c in s.next_requests(p, now):
                    if sum(c in v for v in s.in_flight.values()) > 1:
                        assert s.queued == []  # duplicates only in the endgame
                    at(now + latency / 2, "arrive", p, n, c)
            for p, c in s.take_cancelled():
                at(now + latency / 2, "cancel", p, n, c)

    if kill:
        at(kill[1], "kill", kill[0])
    pump()
    while events:
        now, _, what = heapq.heappop(events)
        assert now < 600
        kind = what[0]
        if kind == "arrive":
            _, p, n, c = what
            queues[p].append((n, c))
            kick(p)
        elif kind == "cancel":
            _, p, n, c = what
            if cancel and (n, c) in queues[p]:
                cancelled.add((p, n, c))
        elif kind == "sent":
            _, p, n, c = what
            serving[p] = False
            kick(p)
            if p not in dead:
                at(now + latency / 2, "reply", n, p, c)
        elif kind == "reply":
            _, n, p, c = what
            s = scheds[n]
            if n in dead:
                continue
            new = not s.is_verified(c)
            s.on_chunk_ok(p, c, MiB, now)
            if new:
                verified[(n, c)] += 1
                at(now + have_delay, "have", n, c)
                if s.done():
                    done_at[n] = now
                    at(now + have_delay, "complete", n)
        elif kind == "have":
            _, n, c = what
            for m, s in scheds.items():
                if m != n and n not in dead:
                    s.peer_has(n, [c])
        elif kind == "complete":
            for m, s in scheds.items():
                if m != what[1]:
                    s.peer_has_all(what[1])
        elif kind == "kill":
            victim = what[1]
            dead.add(victim)
            for m, s in scheds.items():
                if m != victim:
                    s.remove_peer(victim)
        pump()
    assert all(v == 1 for v in verified.values())  # no chunk is verified twice by one leecher
    return done_at, served["S"] / chunks


@pytest.mark.parametrize("seed", [0, 1])
def test_flash_crowd_trades_between_leechers(seed):
    done_at, seeder_share = flash_crowd(seed=seed)
    assert len(done_at) == 8
    one_upload = 40 * MiB / (10 * MiB)
    assert max(done_at.values()) < 2.0 * one_upload  # not 8 uploads' worth
    assert seeder_share < 3.0  # the rest came from leechers


def test_flash_crowd_without_cancels_costs_the_seeder_more():
    _done, with_cancels = flash_crowd(n_leechers=4, seed=0)
    _done, without = flash_crowd(n_leechers=4, seed=0, cancel=False)
    assert with_cancels < without


def test_flash_crowd_survives_a_leecher_killed_half_way():
    done_at, seeder_share = flash_crowd(seed=4, kill=("L3", 2.0))
    assert set(done_at) == {f"L{i}" for i in range(8)} - {"L3"}


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), have_delay=st.floats(0.0, 0.5))
def test_flash_crowd_always_completes(seed, n, have_delay):
    done_at, _ = flash_crowd(n_leechers=n, chunks=12, seed=seed, have_delay=have_delay)
    assert len(done_at) == n


def test_a_declined_chunk_goes_to_other_holders_first_and_back_if_none():
    s = ChunkScheduler(4, range(4), initial_window=8, max_window=8)
    s.add_peer("seed")
    s.add_peer("leech", have=[0])
    asked = s.next_requests("seed", 0.0)
    assert 0 in asked
    window = s.window("seed")
    s.on_chunk_declined("seed", 0, 0.1)
    assert s.window("seed") == window  # busy is not slow: the window stays
    assert 0 in s.next_requests("leech", 0.2)  # the peer holding a copy gets it
    s.on_chunk_failed("leech", 0, 0.3)
    assert 0 in s.next_requests("seed", 0.4)  # every holder declined or failed: back to the seeder
