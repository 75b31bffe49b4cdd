"""Feed replication between nodes over loopback (in one trio run)."""

import logging

import trio

from kacheryfs.feeds import FeedEntry, make_entry, verify_chain
from kacheryfs.feeds.entry import entry_hash
from kacheryfs.crypto import FeedKey
from kacheryfs.net.feed_sync import pack_entries
from kacheryfs.protocol.messages import FeedEntries

from .test_net import addr_of, chans, wait_for


async def test_replication_channel_members_only(cluster):
    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    c = await cluster.node("c", chans("y"))
    feed = a.feed_sync.feeds.create_feed(label="jobs")
    await a.feed_sync.append(feed, "jobs", [{"job": i} for i in range(1000)])
    await b.connect(*addr_of(a))
    await c.connect(*addr_of(a))
    assert await b.feed_sync.discover(feed, timeout=5)
    await wait_for(lambda: b.feed_sync.feeds.num_messages(feed, "jobs") == 1000)
    entries = b.feed_sync.feeds.get_entries(feed, "jobs")
    verify_chain(entries)
    assert [e.value for e in entries[:3]] == [{"job": 0}, {"job": 1}, {"job": 2}]
    assert not await c.feed_sync.discover(feed, timeout=1)
    assert c.feed_sync.feeds.num_messages(feed, "jobs") == 0


async def test_live_push_and_catch_up_from_a_replica(cluster):
    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    feed = a.feed_sync.feeds.create_feed()
    await a.feed_sync.append(feed, "results", ["first"])
    await b.connect(*addr_of(a))
    assert await b.feed_sync.discover(feed, timeout=5)
    await wait_for(lambda: b.feed_sync.feeds.num_messages(feed, "results") == 1)
    latencies = []
    for i in range(20):  # each append reaches B by push, not by polling
        start = trio.current_time()
        async with trio.open_nursery() as n:
            n.start_soon(a.feed_sync.append, feed, "results", [{"i": i}])
            count = await b.feed_sync.wait_for_more(feed, "results", i + 1, timeout=5)
        assert count == i + 2
        latencies.append(trio.current_time() - start)
    a.cancel()  # the owner goes offline
    d = await cluster.node("d", chans("x"))
    await d.connect(*addr_of(b))
    assert await d.feed_sync.discover(feed, timeout=5)
    await wait_for(lambda: d.feed_sync.feeds.num_messages(feed, "results") == 21)
    verify_chain(d.feed_sync.feeds.get_entries(feed, "results"))


async def test_forged_entries_are_rejected_and_the_log_stays_intact(cluster, caplog):
    caplog.set_level(logging.WARNING)
    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    mallory = await cluster.node("m", chans("x"))
    feed = a.feed_sync.feeds.create_feed()
    await a.feed_sync.append(feed, "log", [1, 2, 3])
    await b.connect(*addr_of(a))
    assert await b.feed_sync.discover(feed, timeout=5)
    await wait_for(lambda: b.feed_sync.feeds.num_messages(feed, "log") == 3)
    honest = b.feed_sync.feeds.get_entries(feed, "log")
    session = await mallory.connect(*addr_of(b))
    impostor = FeedKey.generate()
    tip = entry_hash(honest[-1])
    forged_sig = make_entry(impostor, "log", 3, tip, "forged", 1)
    forged_sig = FeedEntry(feed, "log", 3, tip, forged_sig.timestamp_ms, forged_sig.message, forged_sig.signature)
    fork = FeedEntry(feed, "log", 1, entry_hash(honest[0]), 5, b'"fork"', honest[1].signature)
    attacks = [
        [forged_sig],                      # wrong signer
        [fork],                            # a different entry 1
        [honest[2], honest[1]],            # reordered
        [FeedEntry(feed, "log", 5, tip, 1, b"1", honest[2].signature)],  # a gap, badly signed
    ]
    for batch in attacks:
        await session.send(FeedEntries(feed_id=feed, subfeed="log", payload=pack_entries(batch)))
    await wait_for(lambda: b.feed_sync.rejected >= 3)
    assert b.feed_sync.feeds.get_entries(feed, "log") == honest
    verify_chain(b.feed_sync.feeds.get_entries(feed, "log"))
    # and honest replication carries on
    await a.feed_sync.append(feed, "log", [4])
    await wait_for(lambda: b.feed_sync.feeds.num_messages(feed, "log") == 4)
