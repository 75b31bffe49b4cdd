"""Nodes talking over real loopback TCP inside one trio run (no mounts)."""

import hashlib
import logging

import pytest
import trio

from kacheryfs.crypto import NodeKey, channel_id, channel_key
from kacheryfs.errors import ObjectNotFound
from kacheryfs.net.bootstrap import BootstrapNode
from kacheryfs.net.fetcher import NetworkFetcher
from kacheryfs.net.node import Node
from kacheryfs.protocol.messages import ChunkRequest, FindRequest
from kacheryfs.store import CHUNK_SIZE, LocalStore

from .conftest import random_bytes

LOCAL = ("127.0.0.1", 0)


def chans(*names, secret=None):
    out = {}
    for name in names:
        key = channel_key(name, secret)
        out[channel_id(key)] = key
    return out


class Cluster:
    def __init__(self, tmp_path, nursery):
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.nodes = []

    async def node(self, name, channels, *, bootstrap=None, node_cls=Node, bootstrap_mode=False, listen=LOCAL,
                   find_timeout=2.0, **extra):
        from kacheryfs.feeds import FeedStore

        if bootstrap_mode:  # the bootstrap is a node of its own kind: no channels, no store
            node = BootstrapNode(NodeKey.generate(), listen=listen)
        else:
            store = LocalStore(self.tmp_path / name)
            feeds = FeedStore(self.tmp_path / name / "feeds.sqlite3", self.tmp_path / name / "feed-keys")
            bootstraps = (tuple(bootstrap),) if bootstrap else ()
            node = node_cls(NodeKey.generate(), store, channels, listen=listen, bootstraps=bootstraps,
                            find_timeout=find_timeout, feeds=feeds, **extra)
        # The fixture stops every task of a node and closes its stores only once they are done.
        stopped = trio.Event()
        scope = trio.CancelScope()

        async def run_node(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run_node)
        node.stop, node.stopped = scope.cancel, stopped
        node.name = name
        self.nodes.append(node)
        return node


def addr_of(node):
    host, port = node.listen_addrs[0].rsplit(":", 1)
    return host, int(port)


async def seeder_and_reader(cluster, data):
    """A node storing ``data`` on channel x, and a reader connected to it with a fetcher."""
    seeder = await cluster.node("s", chans("x"))
    obj = seeder.store.put_bytes(data)
    reader = await cluster.node("r", chans("x"))
    await reader.connect(*addr_of(seeder))
    return seeder, obj, reader, NetworkFetcher(reader)


async def wait_for(predicate, timeout=10):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_bootstrap_channel_members_share_outsiders_get_nothing(cluster, caplog):
    caplog.set_level(logging.INFO)
    boot = await cluster.node("boot", {}, bootstrap_mode=True)
    a = await cluster.node("a", chans("x"), bootstrap=addr_of(boot))
    b = await cluster.node("b", chans("x"), bootstrap=addr_of(boot))
    c = await cluster.node("c", chans("y"), bootstrap=addr_of(boot))
    data = random_bytes(3 * CHUNK_SIZE + 123)
    obj = a.store.put_bytes(data)
    small = a.store.put_bytes(b"small file")
    await wait_for(lambda: a.node_id in b.sessions)
    fb = NetworkFetcher(b)
    assert await fb.locate(obj.sha1) == len(data)
    await fb.fetch(obj.sha1)
    assert b.store.read_bytes(obj.sha1) == data
    assert not b.store.info(obj.sha1).pinned  # a cached copy...
    assert b.store.index.channels_of(obj.sha1) == {channel_id(channel_key("x"))}  # ...re-served on x only
    await fb.fetch(small.sha1)
    assert b.store.read_bytes(small.sha1) == b"small file"
    fc = NetworkFetcher(c)
    with trio.fail_after(5):
        assert await fc.locate(obj.sha1) is None
    with pytest.raises(ObjectNotFound):
        await fc.fetch(obj.sha1)
    assert a.node_id not in c.sessions  # the bootstrap never introduced them
    assert c.node_id not in a.counters.served_bytes
    assert a.counters.served_bytes[b.node_id] >= len(data)


async def test_serving_side_refuses_non_members(cluster):
    a = await cluster.node("a", chans("x"))
    c = await cluster.node("c", chans("y"))
    obj = a.store.put_bytes(random_bytes(1000))
    session = await c.connect(*addr_of(a), expected_peer=a.node_id)  # C dials A directly
    reply = await session.request(FindRequest(req=session.next_req(), sha1=obj.sha1), 5)
    assert reply.found is False
    with pytest.raises(Exception, match="not-found"):
        await session.request(ChunkRequest(req=session.next_req(), sha1=obj.sha1, offset=0, length=1000), 5)
    assert a.counters.served_bytes[c.node_id] == 0
    assert a.counters.refused[c.node_id] >= 1


async def test_private_channel_wrong_secret_gets_nothing(cluster):
    a = await cluster.node("a", chans("lab", secret=b"right"))
    good = await cluster.node("good", chans("lab", secret=b"right"))
    bad = await cluster.node("bad", chans("lab", secret=b"wrong"))
    obj = a.store.put_bytes(b"private data")
    await good.connect(*addr_of(a))
    await bad.connect(*addr_of(a))
    await NetworkFetcher(good).fetch(obj.sha1)
    assert good.store.read_bytes(obj.sha1) == b"private data"
    assert await NetworkFetcher(bad).locate(obj.sha1) is None
    assert a.counters.served_bytes[bad.node_id] == 0


class LyingNode(Node):
    """Serves every chunk with one byte flipped."""

    def _read_into(self, sha1, offset, view, record):
        n = super()._read_into(sha1, offset, view, record)
        if n:
            view[n // 2] ^= 0xFF
        return n


async def test_lying_peer_is_dropped_reader_gets_correct_bytes(cluster, caplog):
    """The liar flips one byte per reply, so the chunks before it in a multi-chunk reply verify
    and win over the honest peer's requests for them. Repeated with fresh readers: whether those
    wins cut an honest request short depends on timing (a request cancelled for one of its chunks
    once left its other chunks "in flight" with nothing asking for them, and the download never
    ended: one reader in two to ten)."""
    caplog.set_level(logging.WARNING)
    data = random_bytes(96 * CHUNK_SIZE + 5, seed=3)
    honest = await cluster.node("honest", chans("x"))
    liar = await cluster.node("liar", chans("x"), node_cls=LyingNode)
    obj = honest.store.put_bytes(data)
    assert liar.store.put_bytes(data) == obj
    for attempt in range(8):
        caplog.clear()
        reader = await cluster.node(f"reader{attempt}", chans("x"))
        await reader.connect(*addr_of(honest))
        await reader.connect(*addr_of(liar))
        with trio.fail_after(30):
            await NetworkFetcher(reader).fetch(obj.sha1)
        assert reader.store.read_bytes(obj.sha1) == data
        assert any("corrupt chunk" in r.message and liar.node_id[:12] in r.message for r in caplog.records)
        # dropped at its first bad chunk: it serves at most the window already requested from it
        assert liar.counters.served_bytes[reader.node_id] <= 34 * CHUNK_SIZE  # its window, and the manifest


async def test_only_liars_means_failure_and_nothing_stored(cluster):
    data = random_bytes(2 * CHUNK_SIZE + 5, seed=4)
    liar = await cluster.node("liar", chans("x"), node_cls=LyingNode)
    reader = await cluster.node("reader", chans("x"))
    obj = liar.store.put_bytes(data)
    await reader.connect(*addr_of(liar))
    with pytest.raises(Exception, match="Could not fetch"):
        await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.info(obj.sha1) is None


async def test_garbage_connections_do_not_hurt_the_node(cluster, caplog):
    caplog.set_level(logging.WARNING)
    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    obj = a.store.put_bytes(b"still served")
    host, port = addr_of(a)
    for garbage in (b"GET / HTTP/1.0\r\n\r\n" + b"x" * 64, b"KACHFS01" + b"\0" * 32 + b"\xff" * 100):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(garbage)
        with trio.fail_after(5):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass  # reset: the node hung up on us
        await stream.aclose()
    await wait_for(lambda: sum("rejected connection" in r.message for r in caplog.records) >= 2)
    await b.connect(host, port)
    await NetworkFetcher(b).fetch(obj.sha1)
    assert b.store.read_bytes(obj.sha1) == b"still served"


async def test_provider_killed_mid_transfer(cluster):
    data = random_bytes(40 * CHUNK_SIZE, seed=5)
    p1 = await cluster.node("p1", chans("x"))
    p2 = await cluster.node("p2", chans("x"))
    reader = await cluster.node("reader", chans("x"))
    obj = p1.store.put_bytes(data)
    p2.store.put_bytes(data)
    await reader.connect(*addr_of(p1))
    await reader.connect(*addr_of(p2))

    async def kill_p1_midway():
        await wait_for(lambda: p1.counters.served_bytes[reader.node_id] >= 5 * CHUNK_SIZE)
        p1.cancel()

    async with trio.open_nursery() as n:
        n.start_soon(kill_p1_midway)
        await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.read_bytes(obj.sha1) == data
    assert 0 < p1.counters.served_bytes[reader.node_id] < len(data)


async def test_resume_after_the_only_provider_returns(cluster, tmp_path):
    data = random_bytes(30 * CHUNK_SIZE, seed=6)
    p1 = await cluster.node("p1", chans("x"))
    reader = await cluster.node("reader", chans("x"), find_timeout=1.0)
    obj = p1.store.put_bytes(data)
    await reader.connect(*addr_of(p1))

    def verified_at_reader() -> int:
        entry = reader.swarm.entries.get(obj.sha1)
        return entry.download.partial.present_bytes() if entry is not None else 0

    async def kill_midway():  # once the reader holds verified chunks (several are in flight at once)
        await wait_for(lambda: verified_at_reader() >= 8 * CHUNK_SIZE)
        p1.cancel()

    with pytest.raises(Exception):
        async with trio.open_nursery() as n:
            n.start_soon(kill_midway)
            await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.info(obj.sha1) is None
    kept = list((reader.store.root / "partial").glob("*.part"))
    assert kept, "verified chunks are kept for resuming"
    # the provider comes back (same store, new process-equivalent)
    p1_again = await cluster.node("p1", chans("x"))
    await reader.connect(*addr_of(p1_again))
    before = p1_again.counters.served_bytes[reader.node_id]
    await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.read_bytes(obj.sha1) == data
    assert p1_again.counters.served_bytes[reader.node_id] - before < len(data)  # resumed, not restarted
    assert hashlib.sha1(reader.store.read_bytes(obj.sha1)).hexdigest() == obj.sha1


async def test_relay_when_neither_side_accepts_connections(cluster, caplog):
    caplog.set_level(logging.INFO)
    boot = await cluster.node("boot", {}, bootstrap_mode=True)
    a = await cluster.node("a", chans("x"), bootstrap=addr_of(boot), listen=None)
    b = await cluster.node("b", chans("x"), bootstrap=addr_of(boot), listen=None)
    data = random_bytes(5 * CHUNK_SIZE + 7, seed=9)
    obj = a.store.put_bytes(data)
    await wait_for(lambda: a.node_id in b.sessions and b.node_id in a.sessions)
    assert {b.sessions[a.node_id].direction, a.sessions[b.node_id].direction} <= {"relayed", "inbound"}
    assert b.sessions[a.node_id].remote.startswith("relay:")
    await NetworkFetcher(b).fetch(obj.sha1)
    assert b.store.read_bytes(obj.sha1) == data
    assert any("relaying" in r.message for r in caplog.records)
    circuit = next(iter(boot.relay_table.circuits.values()))
    assert circuit.bytes > len(data)  # the bytes went through the bootstrap, encrypted end to end
    assert a.counters.served_bytes[b.node_id] >= len(data)


async def test_several_capped_seeders_all_contribute(cluster):
    data = random_bytes(128 * CHUNK_SIZE, seed=12)
    seeders = []
    for i in range(3):
        s = await cluster.node(f"s{i}", chans("x"))
        s.serve_rate_limit = 100e6  # bytes/s, as the benchmark's equal seeders
        assert s.store.put_bytes(data).sha1 == hashlib.sha1(data).hexdigest()
        seeders.append(s)
    reader = await cluster.node("reader", chans("x"))
    for s in seeders:
        await reader.connect(*addr_of(s))
    await NetworkFetcher(reader).fetch(hashlib.sha1(data).hexdigest())
    assert reader.store.read_bytes(hashlib.sha1(data).hexdigest()) == data
    shares = [s.counters.served_bytes[reader.node_id] for s in seeders]
    assert all(share >= 16 * CHUNK_SIZE for share in shares), shares


async def test_concurrent_requests_for_one_object_fetch_it_once(cluster):
    data = random_bytes(12 * CHUNK_SIZE + 1, seed=13)
    seeder, obj, reader, fetcher = await seeder_and_reader(cluster, data)
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(fetcher.fetch, obj.sha1)
        for _ in range(3):  # and lazy readers of the same object at the same time
            async def lazy_read():
                remote = await fetcher.open_remote(obj.sha1)
                if remote is not None:
                    assert await remote.read(5 * CHUNK_SIZE, 100) == data[5 * CHUNK_SIZE:5 * CHUNK_SIZE + 100]
                    remote.close()
            n.start_soon(lazy_read)
    assert reader.store.read_bytes(obj.sha1) == data
    manifest_size = seeder.store.info(obj.manifest_sha1).size
    assert seeder.counters.served_bytes[reader.node_id] <= len(data) + manifest_size + CHUNK_SIZE


async def test_a_fetched_manifest_is_kept_beside_the_download_and_always_before_install(cluster, monkeypatch, caplog):
    """The manifest a peer sent is stored while the first chunks come (not before them: its write
    and fsyncs are off a first read's path); if that store fails, the install stores it, so an
    object is never held here without its manifest (peers ask us for it)."""
    from kacheryfs.net import transfer

    data = random_bytes(6 * CHUNK_SIZE + 5, seed=31)
    seeder, obj, reader, fetcher = await seeder_and_reader(cluster, data)
    # a lazy reader: the manifest is held while the download is still running
    remote = await fetcher.open_remote(obj.sha1)
    assert await remote.read(3 * CHUNK_SIZE, 10) == data[3 * CHUNK_SIZE:3 * CHUNK_SIZE + 10]
    await wait_for(lambda: reader.store.info(obj.manifest_sha1) is not None)
    assert reader.store.info(obj.sha1) is None  # not installed: only what was read (and read-ahead)
    remote.close()

    # the store of the manifest beside the download fails once: the install keeps it
    other = seeder.store.put_bytes(random_bytes(4 * CHUNK_SIZE + 7, seed=32))
    keep, failed = transfer._keep_copy, []

    def keep_failing_once(store, sha1, raw, channel_ids):
        if sha1 == other.manifest_sha1 and not failed:
            failed.append(sha1)
            raise OSError(28, "No space left on device")
        return keep(store, sha1, raw, channel_ids)

    monkeypatch.setattr(transfer, "_keep_copy", keep_failing_once)
    with caplog.at_level(logging.WARNING, logger="kacheryfs.net.transfer"):
        await fetcher.fetch(other.sha1)
    assert failed == [other.manifest_sha1] and "could not store manifest" in caplog.text
    assert reader.store.read_bytes(other.manifest_sha1) == seeder.store.read_bytes(other.manifest_sha1)
    assert reader.store.info(other.sha1) is not None
