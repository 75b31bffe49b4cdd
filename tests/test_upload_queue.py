"""The capped uploader's order (net/upload_queue.py): pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.net.upload_queue import SMALL, CappedLink, UploadQueue


def drain(q: UploadQueue) -> list:
    out = []
    while (popped := q.pop()) is not None:
        out.append(popped[1])
    return out


def test_fifo_is_arrival_order():
    q = UploadQueue("fifo")
    for item, key in enumerate(["a", "a", "b", SMALL, "a"]):
        q.push(key, item)
    q.uploaded("a")
    assert drain(q) == [0, 1, 2, 3, 4]
    assert len(q) == 0


def test_rarest_serves_every_chunk_once_before_any_twice():
    q = UploadQueue("rarest")
    # three leechers ask for chunk 0 first (as sequential downloaders would), then 1, then 2
    for leecher in range(3):
        for chunk in range(3):
            q.push(chunk, (leecher, chunk))
    order = []
    while (popped := q.pop()) is not None:
        leecher, chunk = popped[1]
        order.append(chunk)
        q.uploaded(chunk)
    assert order[:3] == [0, 1, 2]  # once each ...
    assert sorted(order[3:6]) == [0, 1, 2]  # ... before a second copy of any
    assert len(order) == 9


def test_small_requests_go_first_and_ties_go_to_the_oldest():
    q = UploadQueue()
    q.push(5, "chunk 5")
    q.push(7, "chunk 7")
    q.push(SMALL, "manifest")
    assert q.pop()[1] == "manifest"
    assert q.pop()[1] == "chunk 5"  # both never uploaded: the older request first
    q.uploaded(5)
    q.push(5, "chunk 5 again")
    q.push(9, "chunk 9")
    assert drain(q) == ["chunk 7", "chunk 9", "chunk 5 again"]


def test_a_removed_request_never_gets_a_turn():
    q = UploadQueue()
    a = q.push(1, "a")
    q.push(1, "b")
    c = q.push(2, "c")
    q.remove(a)
    q.remove(c)
    assert len(q) == 1
    assert drain(q) == ["b"]
    assert q.pop() is None and len(q) == 0


def test_upload_counts_are_bounded():
    q = UploadQueue(remember=4)
    for chunk in range(10):
        q.uploaded(chunk)
    assert [q.uploads(c) for c in range(10)] == [0] * 6 + [1] * 4  # the least recently uploaded forgotten
    assert q.uploads(SMALL) == -1


def test_unknown_order_is_refused():
    with pytest.raises(ValueError):
        UploadQueue("random")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "remove", "pop"]), st.integers(0, 5)), max_size=60),
       st.sampled_from(["rarest", "fifo"]))
def test_every_pushed_request_is_popped_once_or_removed(ops, order):
    """Whatever the interleaving: nothing lost, nothing twice, len() right, removed ones never popped."""
    q = UploadQueue(order)
    waiting: dict[int, int] = {}  # handle -> key
    popped, removed = [], set()
    for op, n in ops:
        if op == "push":
            key = SMALL if n == 5 else n
            handle = q.push(key, None)
            waiting[handle] = key
        elif op == "remove" and waiting:
            handle = sorted(waiting)[n % len(waiting)]
            del waiting[handle]
            q.remove(handle)
            removed.add(handle)
        elif op == "pop":
            got = q.pop()
            if got is None:
                assert not waiting
                continue
            handle = got[0]
            assert handle in waiting
            key = waiting.pop(handle)
            if order == "rarest":  # no waiting request had a strictly better rank
                assert all(q.uploads(k) >= q.uploads(key) for k in waiting.values())
            if key is not SMALL:
                q.uploaded(key)
            popped.append(handle)
        assert len(q) == len(waiting)
    rest = [h for h, _ in iter(q.pop, None)]
    assert sorted(rest) == sorted(waiting)
    assert not set(popped) & removed and len(set(popped)) == len(popped)


def test_decline_a_well_copied_chunk_once_while_others_wait():
    q = UploadQueue("rarest", enough_copies=2)
    q.uploaded("c")
    q.uploaded("c")
    q.push("d", "someone else")
    assert q.decline("c", "leecher-1")  # sent twice, and another request waits: "busy"
    assert not q.decline("c", "leecher-1")  # asked again by the same requester: served (nobody starves)
    assert q.decline("c", "leecher-2")
    assert not q.decline("d", "leecher-2")  # fewer copies
    assert not q.decline(SMALL, "leecher-3")  # small requests are never declined
    q.pop()
    assert not q.decline("c", "leecher-3")  # nobody else waits: serving it costs nobody


def test_without_enough_copies_nothing_is_declined():
    q = UploadQueue("rarest")
    for _ in range(5):
        q.uploaded("c")
    q.push("d")
    assert not q.decline("c", "x")
    with pytest.raises(ValueError):
        UploadQueue("rarest", enough_copies=0)


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=60))
def test_a_requester_is_declined_at_most_once_per_chunk(asks):
    """However requests come, a requester asking for the same chunk again is served."""
    q = UploadQueue("rarest", enough_copies=1)
    q.push("other")
    declined = set()
    for requester, chunk in asks:
        if q.decline(chunk, requester):
            assert (requester, chunk) not in declined
            declined.add((requester, chunk))
        else:
            q.uploaded(chunk)


def test_a_capped_link_sends_back_to_back_and_reads_overlap_the_tail():
    link = CappedLink(rate=1000.0, lead=0.01)  # 1000 bytes/s: 100 bytes take 0.1 s
    start, end = link.book(now=5.0, nbytes=100)
    assert (start, end) == (5.0, 5.1)  # an idle link sends at once
    assert link.pass_turn_at(start, end) == pytest.approx(5.09)  # the next read overlaps the tail
    # the next reply was read at 5.093, before the first had gone: it follows it, not its read
    start2, end2 = link.book(now=5.093, nbytes=50)
    assert start2 == pytest.approx(5.1) and end2 == pytest.approx(5.15)
    # a rate is kept over many replies whatever each read costs, as long as it fits in the lead
    now, sent = link.pass_turn_at(start2, end2), 0
    for _ in range(100):
        start, end = link.book(now=now + 0.004, nbytes=100)  # a 4 ms read after the turn passed
        now = link.pass_turn_at(start, end)
        sent += 100
    assert end == pytest.approx(5.15 + sent / 1000.0)
    # after a pause the link is idle again: no credit for the time it was not used
    start, end = link.book(now=end + 3.0, nbytes=10)
    assert start == pytest.approx(5.15 + sent / 1000.0 + 3.0)


def test_a_capped_link_never_passes_the_turn_before_mid_slot():
    link = CappedLink(rate=1000.0, lead=0.05)
    start, end = link.book(now=0.0, nbytes=20)  # a 20 ms slot, shorter than twice the lead
    assert link.pass_turn_at(start, end) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        CappedLink(rate=0)
