"""The seams of the node split into roles: the dispatch table and the bootstrap's registry (pure),
and how a node treats messages nobody registered for (over loopback)."""

import pytest
import trio

from kacheryfs.crypto import NodeKey
from kacheryfs.net.bootstrap import BootstrapNode, BootstrapRegistry
from kacheryfs.net.dispatch import Dispatch
from kacheryfs.net.node import Node
from kacheryfs.store import LocalStore
from kacheryfs.protocol.messages import (
    Announce, ChunkData, ErrorResponse, FeedEntries, FindRequest, FindResponse, Ping, Pong, Register,
)

from .mounting import free_port
from .test_net import LOCAL, addr_of, chans

SHA1 = "a" * 40


async def handler(session, msg):
    return None


def test_dispatch_routes_registered_types_and_keeps_the_inline_flag():
    table = Dispatch()
    table.register(FindRequest, handler)
    table.register(FeedEntries, handler, inline=True)
    assert table.route(FindRequest(req=1, sha1=SHA1)).handler is handler
    assert not table.route(FindRequest(req=1, sha1=SHA1)).inline
    assert table.route(FeedEntries(feed_id="f" * 64, subfeed="s")).inline
    assert table.handles(FindRequest) and not table.handles(Ping)


def test_dispatch_refuses_a_second_handler_and_handlers_for_replies():
    table = Dispatch()
    table.register(FindRequest, handler)
    with pytest.raises(ValueError, match="already has a handler"):
        table.register(FindRequest, handler)
    for reply in (FindResponse, ChunkData, ErrorResponse, Pong):
        with pytest.raises(ValueError, match="is a reply"):
            table.register(reply, handler)


async def test_dispatch_answers_unknown_requests_and_drops_late_replies_and_notices():
    table = Dispatch()
    route = table.route(Ping(req=7))  # a request nobody here handles
    reply = await route.handler(None, Ping(req=7))
    assert isinstance(reply, ErrorResponse) and reply.req == 7 and reply.code == "unsupported"
    # a reply whose request gave up: answering it would start an endless exchange of errors
    for late in (Pong(req=7), ErrorResponse(req=7, code="x"), ChunkData(req=7, payload=b"x"),
                 FindResponse(req=7, sha1=SHA1, found=True, size=1)):
        assert table.route(late) is None
    assert table.route(Announce(sha1=SHA1, size=1)) is None  # a notice nobody here cares about
    assert table.route(Register(channel_ids=[], addrs=[])) is None


def test_registry_lists_connected_members_of_the_asked_channels_only():
    reg = BootstrapRegistry()
    reg.register("n1", ["c1"], ["10.0.0.1:4000"], "10.0.0.1:4000")
    reg.register("n2", ["c1", "c2"], ["10.0.0.2:4000"], "10.0.0.2:4000")
    reg.register("n3", ["c2"], ["10.0.0.3:4000"], "10.0.0.3:4000")
    connected = {"n1", "n2"}
    assert [p["node"] for p in reg.peers(["c1"], "n1", connected)] == ["n2"]  # not the asker itself
    assert sorted(p["node"] for p in reg.peers(["c1", "c2"], "nx", connected)) == ["n1", "n2", "n2"]
    assert reg.peers(["c2"], "n2", connected) == []  # n3 registered, but is not connected
    assert reg.peers(["c9"], "n1", connected) == []


def test_registry_puts_the_observed_address_first_for_wildcard_listeners():
    reg = BootstrapRegistry()
    reg.register("n1", ["c1"], ["0.0.0.0:4000", "192.168.1.5:4001"], "203.0.113.9:4000")
    assert reg.peers(["c1"], "x", {"n1"})[0]["addrs"] == ["203.0.113.9:4000", "0.0.0.0:4000", "192.168.1.5:4001"]
    reg.register("n1", ["c1"], ["[::]:4000"], "")  # nothing observed (a relayed session): as given
    assert reg.peers(["c1"], "x", {"n1"})[0]["addrs"] == ["[::]:4000"]


def test_registry_tells_nodes_behind_nat_from_reachable_ones():
    reg = BootstrapRegistry()
    # dialled us from its listening port 4000 on a LAN address: behind NAT; observed address first
    natted = reg.register("n1", ["c1"], ["192.168.77.10:4000"], "198.51.100.2:4000",
                          reported=["198.51.100.2:4000", "203.0.113.5:4000"])
    assert natted.nat and natted.addrs == ["198.51.100.2:4000", "192.168.77.10:4000", "203.0.113.5:4000"]
    public = reg.register("n2", ["c1"], ["198.51.100.9:4000"], "198.51.100.9:4000")
    assert not public.nat and public.addrs == ["198.51.100.9:4000"]
    # did not dial from its listening port (another port observed): that port is not listed
    other = reg.register("n3", ["c1"], ["192.168.77.11:4000"], "198.51.100.2:51000")
    assert other.nat and other.addrs == ["192.168.77.11:4000"]
    # accepts no connections: nothing to dial, whatever was observed
    silent = reg.register("n4", ["c1"], [], "198.51.100.2:51001", reported=["198.51.100.2:51001"])
    assert silent.addrs == [] and not silent.nat
    peer = {p["node"]: p for p in reg.peers(["c1"], "x", {"n1", "n2"})}
    assert peer["n1"]["nat"] and peer["n1"]["observed"] == "198.51.100.2:4000" and not peer["n2"]["nat"]
    assert reg.is_registered("n4")
    assert reg.share_channel("n1", "n2") and not reg.share_channel("n1", "nx")
    reg.forget("n4")
    assert not reg.is_registered("n4")


async def test_a_late_reply_gets_no_answer(cluster):
    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    session = await b.connect(*addr_of(a), expected_peer=a.node_id)
    await session.send(Pong(req=999))  # as when a request was cancelled before its reply came
    await session.request(Ping(req=session.next_req()), 5)  # a has read the late Pong by now
    received = session.stats.bytes_received
    await trio.sleep(0.3)
    assert session.stats.bytes_received == received  # no error came back (nor went on forever)


async def test_cancel_stops_every_task_of_a_node(tmp_path, nursery):
    store = LocalStore(tmp_path / "storage")
    unreachable = ("127.0.0.1", free_port())  # its bootstrap loop keeps retrying
    nodes = [Node(NodeKey.generate(), store, chans("x"), listen=LOCAL, bootstraps=(unreachable,),
                  discovery_dir=tmp_path / "discovery"),
             BootstrapNode(NodeKey.generate(), listen=LOCAL)]
    try:
        for node in nodes:
            done = trio.Event()

            async def run(task_status=trio.TASK_STATUS_IGNORED, node=node, done=done):
                await node.run(task_status=task_status)
                done.set()

            await nursery.start(run)
            node.cancel()
            with trio.fail_after(5):
                await done.wait()  # run() returned: nothing of the node is left running
    finally:
        store.close()


def test_direct_providers_are_preferred_over_relayed_ones():
    from types import SimpleNamespace

    from kacheryfs.net.finding import Provider, prefer_direct

    def provider(direction):
        return Provider(SimpleNamespace(direction=direction), 10, None)

    relayed, punched, direct = provider("relayed"), provider("punched"), provider("outbound")
    assert prefer_direct([relayed, punched, direct]) == [punched, direct]
    assert prefer_direct([relayed]) == [relayed]  # the relay when nothing else has it
    assert prefer_direct([]) == []


async def test_a_node_alone_in_its_channel_says_so_and_when_it_ends(cluster, caplog):
    """A new user's node that finds nobody shares and fetches nothing: a warning, some seconds
    after start, naming the channel and what to check; and a note once a peer arrives."""
    import functools
    import logging

    from kacheryfs.net.node import Node

    caplog.set_level(logging.INFO)
    quick = functools.partial(Node, alone_warning_after=0.3)
    a = await cluster.node("a", chans("x"), node_cls=quick)
    b = await cluster.node("b", chans("y"), node_cls=quick)
    c = await cluster.node("c", chans("y"), node_cls=quick)
    await c.connect(*addr_of(b))
    with trio.fail_after(10):
        while "no peer in channel" not in caplog.text:
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # b and c had the same 0.3 s: they would have warned by now
    warnings = [r.getMessage() for r in caplog.records if "no peer in channel" in r.getMessage()]
    assert len(warnings) == 1 and a.channels_without_peers() == [next(iter(chans("x")))]
    assert "--bootstrap HOST:PORT" in warnings[0] and "same channel name" in warnings[0]
    assert b.channels_without_peers() == [] and c.channels_without_peers() == []
    d = await cluster.node("d", chans("x"), node_cls=quick)
    await d.connect(*addr_of(a))
    with trio.fail_after(10):
        while "a peer is connected now" not in caplog.text:
            await trio.sleep(0.05)
