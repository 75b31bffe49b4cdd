"""Swarming over real loopback TCP (nodes in one trio run): downloaders serve the chunks they have
verified, a crowd trades chunks instead of queueing at one capped seeder, a leecher that dies or
lies does not stop the others."""

import logging

import trio

from kacheryfs.net.fetcher import NetworkFetcher
from kacheryfs.net.node import Node
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes
from .test_net import addr_of, chans, wait_for

MB = 1_000_000
SEEDER_RATE = 20 * MB  # bytes/s: the test rate knob (KACHERYFS_TEST_SERVE_RATE) set on the seeder


async def mesh(nodes):
    """Every node connected to every other (as discovery would do in a small channel)."""
    for i, a in enumerate(nodes):
        for b in nodes[:i]:
            if b.node_id not in a.sessions:
                await a.connect(*addr_of(b), expected_peer=b.node_id)
    await wait_for(lambda: all(len(n.sessions) >= len(nodes) - 1 for n in nodes))


async def crowd(cluster, leechers: int, size: int, seed: int):
    seeder = await cluster.node("seeder", chans("x"))
    seeder.serve_rate_limit = SEEDER_RATE
    data = random_bytes(size, seed=seed)
    obj = seeder.store.put_bytes(data)
    nodes = [await cluster.node(f"l{i}", chans("x")) for i in range(leechers)]
    await mesh([seeder] + nodes)
    return seeder, nodes, data, obj


async def test_flash_crowd_seeder_serves_less_than_three_copies(cluster):
    seeder, leechers, data, obj = await crowd(cluster, 8, 40 * CHUNK_SIZE, seed=21)
    async with trio.open_nursery() as nursery:
        for node in leechers:  # all start at once
            nursery.start_soon(NetworkFetcher(node).fetch, obj.sha1)
    for node in leechers:
        assert node.store.info(obj.sha1) is not None
        assert node.store.read_bytes(obj.sha1) == data
    served_by_seeder = sum(seeder.counters.served_bytes.values())
    served_by_leechers = sum(sum(n.counters.served_bytes.values()) for n in leechers)
    print(f"seeder served {served_by_seeder / len(data):.2f} copies, leechers {served_by_leechers / len(data):.2f}")
    assert served_by_seeder < 3 * len(data), served_by_seeder / len(data)
    assert served_by_leechers > 4 * len(data)  # the rest came from leechers
    # the same bytes counted from the other side: each leecher fetched about one copy
    assert sum(n.counters.fetched_bytes for n in leechers) < 8 * len(data) * 1.5
    for node in leechers:  # each download's summary (status "downloads"): where its time and chunks went
        summary = node.status()["downloads"][-1]
        assert summary["sha1"] == obj.sha1 and sum(summary["chunks_from"].values()) >= 40
        tl = summary["timeline"]
        assert tl["asked"] <= tl["found"] <= tl["manifest"] <= tl["first_chunk"] <= tl["complete"] <= tl["installed"]


async def test_leecher_killed_half_way_others_finish(cluster):
    seeder, leechers, data, obj = await crowd(cluster, 5, 30 * CHUNK_SIZE, seed=22)
    victim = leechers[0]
    fetchers = [NetworkFetcher(n) for n in leechers]
    async with trio.open_nursery() as nursery:
        for fetcher in fetchers[1:]:
            nursery.start_soon(fetcher.fetch, obj.sha1)
        victim_scope = trio.CancelScope()

        async def victim_fetch():
            with victim_scope:
                await fetchers[0].fetch(obj.sha1)

        nursery.start_soon(victim_fetch)
        # kill it the moment it holds half the object
        await wait_for(lambda: obj.sha1 in victim.swarm.entries, timeout=60)
        download = victim.swarm.entries[obj.sha1].download
        half = trio.Event()
        download.chunk_listeners.append(lambda _index: len(download.have()) >= 15 and half.set())
        if len(download.have()) >= 15:
            half.set()
        with trio.fail_after(60):
            await half.wait()
        victim.cancel()  # its sessions, server and downloads all stop
        victim_scope.cancel()
    for node in leechers[1:]:
        assert node.store.read_bytes(obj.sha1) == data
    assert victim.store.info(obj.sha1) is None  # it never completed


class LyingPartialNode(Node):
    """Serves the chunks of objects it is still downloading with one byte flipped."""

    def _read_partial_into(self, partial, offset, view):
        n = super()._read_partial_into(partial, offset, view)
        if n:
            view[n // 2] ^= 0xFF
        return n


async def test_peer_serving_a_bad_chunk_of_a_partial_object_is_banned(cluster, caplog):
    caplog.set_level(logging.WARNING)
    seeder = await cluster.node("seeder", chans("x"))
    seeder.serve_rate_limit = SEEDER_RATE
    data = random_bytes(24 * CHUNK_SIZE, seed=23)
    obj = seeder.store.put_bytes(data)
    liar = await cluster.node("liar", chans("x"), node_cls=LyingPartialNode)
    reader = await cluster.node("reader", chans("x"))
    await mesh([seeder, liar, reader])
    # the liar reads the first half lazily and keeps the file open: a partial provider of chunks 0-11
    liar_reader = await NetworkFetcher(liar).open_remote(obj.sha1)
    assert await liar_reader.read(0, 12 * CHUNK_SIZE) == data[:12 * CHUNK_SIZE]
    view = liar.status()["swarm"]  # what `kacheryfs status` shows while the liar's fetch is open
    assert [f["sha1"] for f in view] == [obj.sha1] and view[0]["have"] >= 12 and view[0]["chunks"] == 24
    assert {p["node"]: p["holds"] for p in view[0]["providers"]}[seeder.node_id] == "all"
    assert sum(p["chunks_from"] for p in view[0]["providers"]) >= 12
    from kacheryfs.cli import swarm_lines

    lines = swarm_lines(liar.status())
    assert lines[0].startswith(f"fetching: {obj.sha1}") and seeder.node_id[:16] in lines[1] and "whole" in lines[1]
    try:
        await NetworkFetcher(reader).fetch(obj.sha1)
    finally:
        liar_reader.close()
    assert reader.store.read_bytes(obj.sha1) == data
    assert liar.counters.served_bytes[reader.node_id] > 0  # it was asked, as a partial provider
    assert any("corrupt chunk" in r.message and liar.node_id[:12] in r.message for r in caplog.records)
    # banned at its first bad chunk: it got no more than the share of the window it had then
    assert liar.counters.served_bytes[reader.node_id] <= 16 * CHUNK_SIZE


async def test_partial_object_served_only_on_its_channels_and_only_verified_chunks(cluster):
    from kacheryfs.protocol.messages import ChunkRequest, FindRequest

    seeder = await cluster.node("seeder", chans("x"))
    data = random_bytes(8 * CHUNK_SIZE, seed=24)
    obj = seeder.store.put_bytes(data)
    middle = await cluster.node("middle", chans("x", "y"))
    outsider = await cluster.node("outsider", chans("y"))  # shares only y with the middle node
    member = await cluster.node("member", chans("x"))
    await middle.connect(*addr_of(seeder))
    reader = await NetworkFetcher(middle).open_remote(obj.sha1)
    try:
        assert await reader.read(0, 10) == data[:10]  # chunk 0 only
        for asker, expect in ((member, True), (outsider, False)):
            session = await asker.connect(*addr_of(middle), expected_peer=middle.node_id)
            found = await session.request(FindRequest(req=session.next_req(), sha1=obj.sha1), 5)
            assert found.found is expect
            if expect:
                assert found.chunks is not None and 0 in found.chunks and 5 not in found.chunks
                got = await session.request(ChunkRequest(req=session.next_req(), sha1=obj.sha1,
                                                         offset=0, length=CHUNK_SIZE), 5)
                assert bytes(got.payload) == data[:CHUNK_SIZE]
            for offset in (5 * CHUNK_SIZE, CHUNK_SIZE - 10):  # a chunk not held, or one straddling it
                try:
                    await session.request(ChunkRequest(req=session.next_req(), sha1=obj.sha1,
                                                       offset=offset, length=100), 5)
                    raise AssertionError("served a chunk it does not hold")
                except Exception as exc:
                    assert "not-found" in str(exc)
    finally:
        reader.close()


async def test_peer_cap_bounds_sessions_and_a_find_widens_to_reach_the_holder(cluster, tmp_path):
    """Nodes that meet through a shared directory dial at most --max-peers of each other; a find
    that none of a node's peers can answer dials the peers it had skipped."""
    discovery = tmp_path / "discovery"
    nodes = [await cluster.node(f"n{i}", chans("x"), discovery_dir=discovery, max_peers=2) for i in range(6)]
    await wait_for(lambda: all(len(n.sessions) >= 2 for n in nodes), timeout=30)
    await trio.sleep(2.5)  # several discovery rounds: the cap must hold
    # each node dialled at most 2: at most 6 * 2 connections, seen from both ends (a full mesh is 30)
    assert sum(len(n.sessions) for n in nodes) <= 2 * 2 * len(nodes)
    assert sum(1 for n in nodes for s in n.sessions.values() if s.direction == "outbound") <= 2 * len(nodes)
    reader = await cluster.node("reader", chans("x"), discovery_dir=discovery, max_peers=1)
    await wait_for(lambda: len(reader.sessions) >= 1, timeout=30)
    await trio.sleep(1.5)
    strangers = [n for n in nodes if n.node_id not in reader.sessions]
    assert len(strangers) >= 3  # the others are full: nobody dials the newcomer
    holder = strangers[0]
    data = random_bytes(2 * CHUNK_SIZE + 1, seed=25)
    obj = holder.store.put_bytes(data)
    await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.read_bytes(obj.sha1) == data
    assert holder.node_id in reader.sessions


async def test_capped_seeder_uploads_fresh_chunks_first_and_drops_cancelled_requests(cluster):
    """The capped uploader (net/upload_queue.py in serving): of the waiting requests, a chunk never
    uploaded goes before a second copy of one; a cancelled request never gets a turn; what is sent
    is charged, so a one-request object (a manifest) costs its size, not a chunk's."""
    from kacheryfs.protocol.messages import Cancel, ChunkRequest

    seeder = await cluster.node("seeder", chans("x"))
    seeder.serve_rate_limit = 4 * MB  # 0.26 s a chunk: the requests below queue behind the first
    data = random_bytes(4 * CHUNK_SIZE, seed=25)
    obj = seeder.store.put_bytes(data)
    small = seeder.store.put_bytes(b"a small object")
    asker = await cluster.node("asker", chans("x"))
    session = await asker.connect(*addr_of(seeder), expected_peer=seeder.node_id)
    replies: list[tuple[str, int]] = []

    async def ask(name: str, sha1: str, offset: int, req: int):
        got = await session.request(ChunkRequest(req=req, sha1=sha1, offset=offset, length=CHUNK_SIZE), 30)
        assert bytes(got.payload) == (data[offset:offset + CHUNK_SIZE] if sha1 == obj.sha1 else b"a small object")
        replies.append((name, offset))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "first", obj.sha1, 0, session.next_req())  # takes the turn at once
        await wait_for(lambda: seeder.server._uploading)
        # while it is sent: chunk 0 again, then chunks 1 and 2 (sequential downloaders' order)
        for name, offset in (("0 again", 0), ("1", CHUNK_SIZE), ("2", 2 * CHUNK_SIZE)):
            nursery.start_soon(ask, name, obj.sha1, offset, session.next_req())
            await wait_for(lambda: len(seeder.server.upload_queue) >= 1 + ["0 again", "1", "2"].index(name))
        doomed = session.next_req()
        await session.send(ChunkRequest(req=doomed, sha1=obj.sha1, offset=3 * CHUNK_SIZE, length=CHUNK_SIZE))
        await wait_for(lambda: len(seeder.server.upload_queue) == 4)
        await session.send(Cancel(req=doomed))
        await wait_for(lambda: seeder.counters.cancelled[asker.node_id] == 1)
    assert [name for name, _ in replies] == ["first", "1", "2", "0 again"]
    assert seeder.counters.cancelled[asker.node_id] == 1
    assert seeder.counters.served_bytes[asker.node_id] == 4 * CHUNK_SIZE
    # a one-request object is charged what is sent (a few bytes), not the chunk's worth asked for;
    # from now on it ranks as small (before any chunk)
    before = len(seeder.server.capped_uploads)
    await ask("small", small.sha1, 0, session.next_req())
    arrived, began, ended, peer, sha1, offset, asked, sent = seeder.server.capped_uploads[before]
    assert (sha1, asked, sent) == (small.sha1, CHUNK_SIZE, len(b"a small object"))
    assert small.sha1 in seeder.server._one_read
    assert not seeder.server._uploading and len(seeder.server.upload_queue) == 0


async def seeder_and_asker(cluster, seed: int):
    """A seeder holding a 2-chunk object and a node connected to it: (seeder, asker, object, its
    bytes, the asker's session to the seeder, the seeder's session to the asker)."""
    seeder = await cluster.node("seeder", chans("x"))
    data = random_bytes(2 * CHUNK_SIZE, seed=seed)
    obj = seeder.store.put_bytes(data)
    asker = await cluster.node("asker", chans("x"))
    session = await asker.connect(*addr_of(seeder), expected_peer=seeder.node_id)
    await wait_for(lambda: asker.node_id in seeder.sessions)
    return seeder, asker, obj, data, session, seeder.sessions[asker.node_id]


async def test_reply_waiting_to_be_sent_is_dropped_by_a_cancel(cluster):
    """A chunk already read but queued behind other replies on the session is not sent once the
    requester cancels it (it moved the request to a faster peer)."""
    from kacheryfs.protocol.messages import Cancel, ChunkRequest

    seeder, asker, obj, data, session, toward_asker = await seeder_and_asker(cluster, seed=26)
    async with toward_asker._send_lock:  # the seeder is busy sending something else to the asker
        req = session.next_req()
        await session.send(ChunkRequest(req=req, sha1=obj.sha1, offset=0, length=CHUNK_SIZE))
        # read, and waiting for the session's send lock
        await wait_for(lambda: (id(toward_asker), req) in seeder.server._waiting)
        await trio.sleep(0.2)
        assert (id(toward_asker), req) in seeder.server._waiting
        await session.send(Cancel(req=req))
        await wait_for(lambda: seeder.counters.cancelled[asker.node_id] == 1)
    assert seeder.counters.served_bytes[asker.node_id] == 0
    # the session still works, and serves what is not cancelled
    got = await session.request(ChunkRequest(req=session.next_req(), sha1=obj.sha1, offset=CHUNK_SIZE,
                                             length=CHUNK_SIZE), 10)
    assert bytes(got.payload) == data[CHUNK_SIZE:]
    assert seeder.counters.served_bytes[asker.node_id] == CHUNK_SIZE


async def test_requests_given_up_on_are_cancelled_at_a_busy_seeder(cluster, monkeypatch):
    """A request the downloader stopped waiting for (its reply would be dropped) is cancelled at the
    provider. Without it a capped seeder facing a crowd sent abandoned requests in the time of live
    ones: at N = 50 (48 MB at 2 MB/s) each of the last chunks went out 82 times and nobody got it."""
    import kacheryfs.net.transfer as transfer

    monkeypatch.setattr(transfer, "CHUNK_REQUEST_TIMEOUT", 1.5)  # the first requests' replies come later
    seeder = await cluster.node("seeder", chans("x"))
    seeder.serve_rate_limit = 8 * MB  # 0.52 s a 4-chunk request: the 3rd of 6 is already too late
    data = random_bytes(24 * CHUNK_SIZE, seed=27)
    obj = seeder.store.put_bytes(data)
    leecher = await cluster.node("leecher", chans("x"))
    await mesh([seeder, leecher])
    with trio.fail_after(60):
        await NetworkFetcher(leecher).fetch(obj.sha1)
    assert leecher.store.read_bytes(obj.sha1) == data
    summary = leecher.status()["downloads"][-1]
    assert summary["failures"].get("TooSlowError", 0) > 0, summary  # the case this test is about
    assert seeder.counters.cancelled[leecher.node_id] > 0
    served = sum(seeder.counters.served_bytes.values())
    # without the Cancel every abandoned request was sent anyway (1.7 copies here)
    assert served < 1.35 * len(data), served / len(data)


async def test_reply_sent_after_its_request_was_given_up_is_still_taken(cluster):
    """session.late_reply: a reply already on its way when the requester gave up (a moved request,
    whose Cancel came too late at the provider) reaches a late waiter instead of being dropped;
    a request the provider dropped gets none."""
    from kacheryfs.protocol.messages import Cancel, ChunkData, ChunkRequest

    seeder, asker, obj, data, session, toward_asker = await seeder_and_asker(cluster, seed=28)
    req = session.next_req()
    async with toward_asker._send_lock:  # the reply is read and waits to be sent
        try:
            await session.request(ChunkRequest(req=req, sha1=obj.sha1, offset=0, length=CHUNK_SIZE), 0.3)
            raise AssertionError("the reply could not have come")
        except trio.TooSlowError:
            pass
    with trio.fail_after(10):
        late = await session.late_reply(req, 5.0)
    assert isinstance(late, ChunkData) and bytes(late.payload) == data[:CHUNK_SIZE]
    # a request cancelled in time at the provider: no reply, the late waiter gives up
    req = session.next_req()
    async with toward_asker._send_lock:
        await session.send(ChunkRequest(req=req, sha1=obj.sha1, offset=CHUNK_SIZE, length=CHUNK_SIZE))
        await wait_for(lambda: (id(toward_asker), req) in seeder.server._waiting)
        await session.send(Cancel(req=req))
        await wait_for(lambda: seeder.counters.cancelled[asker.node_id] == 1)
    with trio.fail_after(10):
        assert await session.late_reply(req, 0.5) is None


async def test_a_find_that_met_only_no_asks_again_when_a_peer_begins_fetching(cluster):
    """A crowd starting at once: every peer's first answer to a find is "no" (none has begun).
    L2, connected only to L1, asked L1 before L1 started; when L1 begins fetching from the seeder
    its Have reaches L2, whose find asks L1 again and fetches through it (L2 never meets the
    seeder). Before, L2 gave up with "not found" once every peer had said no for a second."""
    seeder = await cluster.node("seeder", chans("x"))
    data = random_bytes(6 * CHUNK_SIZE + 5, seed=41)
    obj = seeder.store.put_bytes(data)
    l1 = await cluster.node("l1", chans("x"))
    l2 = await cluster.node("l2", chans("x"))
    await l1.connect(*addr_of(seeder), expected_peer=seeder.node_id)
    await l2.connect(*addr_of(l1), expected_peer=l1.node_id)
    l2.finder.started -= 60  # up for a minute: its find may say "not found" after FIND_QUIET
    async with trio.open_nursery() as nursery:
        nursery.start_soon(NetworkFetcher(l2).fetch, obj.sha1)
        await wait_for(lambda: obj.sha1 in l1.swarm._asked)  # L1 said no to L2's find
        await trio.sleep(0.2)  # L2's find is now waiting, every peer having said no
        await NetworkFetcher(l1).fetch(obj.sha1)
    assert l2.store.read_bytes(obj.sha1) == data
    assert seeder.node_id not in l2.sessions and l2.node_id not in seeder.counters.served_bytes
    assert sum(l1.counters.served_bytes.values()) >= len(data)
