"""Discovery through a mainline DHT: a local swarm of 20 libtorrent DHT nodes on 127.0.0.1 stands
in for the public DHT (no bootstrap server of ours, no other address)."""

import pytest
import trio

from kacheryfs.crypto import channel_id, channel_key, dht_channel_infohash, dht_object_infohash
from kacheryfs.net.dht import PUBLIC_ROUTERS, DhtNode, session_settings, start_swarm
from kacheryfs.net.dht_discovery import DhtDiscovery

pytest.importorskip("libtorrent")

SWARM = 20


def test_keys_only_members_can_compute():
    open_x = channel_key("x")
    private = channel_key("x", b"secret")
    other_secret = channel_key("x", b"other")
    keys = {dht_channel_infohash(k) for k in (open_x, private, other_secret)}
    assert len(keys) == 3 and all(len(k) == 20 for k in keys)
    assert dht_channel_infohash(private) == dht_channel_infohash(channel_key("x", b"secret"))
    assert dht_channel_infohash(open_x) != bytes.fromhex(channel_id(open_x))[:20]
    sha = "ab" * 20
    per_object = {dht_object_infohash(k, sha) for k in (open_x, private)}
    assert len(per_object) == 2 and dht_object_infohash(open_x, "cd" * 20) not in per_object
    assert dht_object_infohash(open_x, sha) != dht_channel_infohash(open_x)


def test_settings_turn_on_nothing_but_the_dht():
    for listen in (("127.0.0.1", 0), ("0.0.0.0", 6881)):
        s = session_settings(listen, ())
        assert s["enable_dht"] and not (s["enable_lsd"] or s["enable_upnp"] or s["enable_natpmp"])
        assert s["dht_bootstrap_nodes"] == ""  # no public router unless asked for
    loop = session_settings(("127.0.0.1", 0), ())
    assert loop["dht_restrict_routing_ips"] is False  # every node shares one IP on loopback
    wide = session_settings(("0.0.0.0", 6881), PUBLIC_ROUTERS)
    assert "dht_restrict_routing_ips" not in wide  # libtorrent's defences stay on
    assert wide["dht_bootstrap_nodes"] == ",".join(PUBLIC_ROUTERS)
    assert wide["listen_interfaces"] == "0.0.0.0:6881"
    assert session_settings(("::1", 0), ())["listen_interfaces"] == "[::1]:0"


async def wait_joined(nodes, timeout=20):
    with trio.fail_after(timeout):
        for n in nodes:
            await n.joined.wait()


async def test_swarm_members_find_each_other_and_objects_outsiders_do_not(nursery):
    swarm = await start_swarm(nursery, SWARM)
    assert len({n.port for n in swarm}) == SWARM
    await wait_joined(swarm)
    x_private = channel_key("x", b"secret")
    dialled = {"a": set(), "b": set(), "c": set()}
    discoveries = {}
    for name, channels, port in (("a", {"x": x_private}, 41001), ("b", {"x": x_private}, 41002),
                                 ("c", {"x": channel_key("x", b"guess")}, 41003)):
        dht = await nursery.start(DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[len(discoveries) * 7].port}",)).run)
        discoveries[name] = await nursery.start(
            DhtDiscovery(dht, channels, port, lambda h, p, name=name: dialled[name].add((h, p))).run)
    with trio.fail_after(30):
        while ("127.0.0.1", 41002) not in dialled["a"] or ("127.0.0.1", 41001) not in dialled["b"]:
            await trio.sleep(0.05)
    assert ("127.0.0.1", 41001) not in dialled["a"]  # never itself
    assert not dialled["c"] & {("127.0.0.1", 41001), ("127.0.0.1", 41002)}  # wrong secret: nothing
    sha = "5e" * 20
    discoveries["a"].announce_object(sha)
    with trio.fail_after(20):
        while ("127.0.0.1", 41001) not in await discoveries["b"].find_object(sha, timeout=2):
            await trio.sleep(0.1)
    assert await discoveries["c"].find_object(sha, timeout=2) == set()
    assert await discoveries["b"].find_object("00" * 20, timeout=2) == set()


async def test_lookup_with_no_dht_nodes_times_out_empty(nursery):
    lonely = await nursery.start(DhtNode(("127.0.0.1", 0)).run)
    with trio.fail_after(5):
        assert await lonely.get_peers(b"k" * 20, timeout=0.5) == set()
    assert lonely.nodes == 0 and not lonely.joined.is_set()


async def test_two_kacheryfs_nodes_meet_through_the_dht_and_fetch(cluster, nursery):
    """20 DHT nodes, no bootstrap of ours, no same-machine discovery: two members of a private
    channel find each other through the DHT, and one fetches the other's file."""
    from kacheryfs.net.fetcher import NetworkFetcher
    from kacheryfs.store import CHUNK_SIZE

    from .conftest import random_bytes
    from .test_net import chans, wait_for

    swarm = await start_swarm(nursery, SWARM)
    await wait_joined(swarm)
    channel = chans("lab", secret=b"s3cret")
    a = await cluster.node("a", channel, dht=DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[3].port}",)))
    b = await cluster.node("b", channel, dht=DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[15].port}",)))
    outsider = await cluster.node("c", chans("lab", secret=b"guess"),
                                  dht=DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[9].port}",)))
    data = random_bytes(3 * CHUNK_SIZE + 17, seed=31)
    obj = a.store.put_bytes(data)
    await wait_for(lambda: a.node_id in b.sessions and b.node_id in a.sessions, timeout=30)
    await NetworkFetcher(b).fetch(obj.sha1)
    assert b.store.read_bytes(obj.sha1) == data
    assert a.status()["dht"]["nodes"] > 0
    # the outsider's DHT key differs: it never even learns their addresses
    assert a.node_id not in outsider.sessions and b.node_id not in outsider.sessions


def test_keys_rotate_and_adjacent_buckets_overlap():
    from kacheryfs.crypto import dht_epoch

    key = channel_key("x", b"secret")
    assert dht_channel_infohash(key, 7) != dht_channel_infohash(key, 8) != dht_channel_infohash(key)
    assert dht_object_infohash(key, "ab" * 20, 7) != dht_object_infohash(key, "ab" * 20, 8)
    assert dht_channel_infohash(key, 7) == dht_channel_infohash(channel_key("x", b"secret"), 7)
    assert dht_epoch(100.0, 50.0) == 2 and dht_epoch(99.9, 50.0) == 1
    clocks = {t: DhtDiscovery(None, {"x": key}, 1, lambda h, p: None, clock=lambda t=t: t, epoch_seconds=100.0)
              for t in (199.0, 201.0, 450.0)}
    # a node late in bucket 1 and one early in bucket 2: the one ahead looks up a key the other
    # announces, and both announce under one key (an announce returns the peers under its key)
    assert set(clocks[199.0].announce_epochs()) & set(clocks[201.0].lookup_epochs())
    assert set(clocks[199.0].announce_epochs()) & set(clocks[201.0].announce_epochs())
    # ...and a node two buckets on looks up none of the keys the first announces
    assert not set(clocks[199.0].announce_epochs()) & set(clocks[450.0].lookup_epochs())


async def test_rotated_keys_meet_across_a_bucket_boundary_on_the_swarm(nursery):
    """20 DHT nodes on loopback: A's clock is at the end of a bucket, B's already in the next (a
    clock error under one bucket): they find each other and an object; C, two buckets later, finds
    neither (yesterday's keys are not looked up)."""
    swarm = await start_swarm(nursery, SWARM)
    await wait_joined(swarm)
    key = channel_key("rot", b"secret")
    period = 3600.0
    clocks = {"a": lambda: 10 * period - 1, "b": lambda: 10 * period + 1, "c": lambda: 12 * period + 1}
    dialled = {name: set() for name in clocks}
    discoveries = {}
    for i, (name, port) in enumerate((("a", 42001), ("b", 42002), ("c", 42003))):
        dht = await nursery.start(DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[i * 6].port}",)).run)
        discoveries[name] = await nursery.start(
            DhtDiscovery(dht, {"rot": key}, port, lambda h, p, name=name: dialled[name].add((h, p)),
                         clock=clocks[name], epoch_seconds=period).run)
    with trio.fail_after(30):
        while ("127.0.0.1", 42001) not in dialled["b"] or ("127.0.0.1", 42002) not in dialled["a"]:
            await trio.sleep(0.05)
    sha = "7a" * 20
    discoveries["a"].announce_object(sha)
    with trio.fail_after(20):
        while ("127.0.0.1", 42001) not in await discoveries["b"].find_object(sha, timeout=2):
            await trio.sleep(0.1)
    assert ("127.0.0.1", 42001) not in await discoveries["c"].find_object(sha, timeout=2)
    assert not dialled["c"] & {("127.0.0.1", 42001)}


async def test_a_full_node_dials_a_holder_the_dht_names_for_a_find(cluster, nursery):
    """A node at its peer cap whose peers lack an object dials the holder the DHT names for it
    (as widening dials past the cap), instead of answering "not found"."""
    from kacheryfs.net.fetcher import NetworkFetcher
    from kacheryfs.store import CHUNK_SIZE

    from .conftest import random_bytes
    from .test_net import addr_of, chans, wait_for

    swarm = await start_swarm(nursery, SWARM)
    await wait_joined(swarm)
    channel = chans("lab", secret=b"s3cret")
    other = await cluster.node("other", channel)  # no DHT: met by hand
    reader = await cluster.node("reader", channel, max_peers=1,
                                dht=DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[4].port}",)))
    await reader.connect(*addr_of(other), expected_peer=other.node_id)  # its one peer: full
    reader.finder.started -= 60  # up for a while: a find may give up after FIND_QUIET
    holder = await cluster.node("holder", channel, max_peers=0,  # dials nobody itself
                                dht=DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{swarm[12].port}",)))
    data = random_bytes(2 * CHUNK_SIZE + 9, seed=33)
    obj = holder.store.put_bytes(data)
    await wait_for(lambda: reader.dht.joined.is_set() and holder.dht_discovery is not None
                   and holder.dht.joined.is_set(), timeout=20)
    holder.provide(obj.sha1)  # as a node does when it stores or fetches an object
    await trio.sleep(1.5)  # the holder's announcements are out; the reader, full, dialled nobody
    assert holder.node_id not in reader.sessions
    await NetworkFetcher(reader).fetch(obj.sha1)
    assert reader.store.read_bytes(obj.sha1) == data
    assert holder.node_id in reader.sessions
