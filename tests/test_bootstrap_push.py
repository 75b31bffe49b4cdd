"""The bootstrap pushes newly registered peers (PeersJoined) instead of nodes polling for them, over
loopback: who is told, what, how often; and a node takes such pushes only from its own bootstraps."""

from __future__ import annotations

import trio

from kacheryfs.crypto import NodeKey
from kacheryfs.net import discovery
from kacheryfs.net.bootstrap import BootstrapRegistry
from kacheryfs.net.session import PeerSession, handshake
from kacheryfs.net.sockets import connect_from, format_addr, open_shared_listener
from kacheryfs.protocol import Connection
from kacheryfs.protocol.connection import INITIATOR
from kacheryfs.protocol.messages import PeersJoined, Ping, Register

from .test_net import addr_of, chans, wait_for


class RawClient:
    """A session to a node or bootstrap that records what it is sent and asks for nothing (so
    whatever it learns of peers was pushed), dialled from its own listening port like a node."""

    def __init__(self, channels: dict):
        self.key = NodeKey.generate()
        self.channels = channels
        self.received: list = []
        self.accepted = 0  # connections to its listener
        self.session: PeerSession | None = None
        self.listen_addr = ""

    async def start(self, nursery, host: str, port: int) -> "RawClient":
        listener = await open_shared_listener("127.0.0.1", 0)
        self.listen_addr = format_addr(*listener.socket.getsockname()[:2])

        async def count(stream):
            self.accepted += 1
            await trio.aclose_forcefully(stream)

        await nursery.start(trio.serve_listeners, count, [listener])
        stream = await connect_from(listener.socket.getsockname()[:2], host, port)
        conn = Connection(INITIATOR, self.key, self.channels)
        self.session = PeerSession(stream, conn, await handshake(stream, conn), "outbound", f"{host}:{port}")

        async def record(session, msg):
            self.received.append(msg)

        nursery.start_soon(self.session.receive_loop, record)
        return self

    async def register(self, addrs=()) -> None:
        await self.session.send(Register(channel_ids=sorted(self.channels), addrs=list(addrs)))
        await self.session.request(Ping(req=self.session.next_req()), 5)  # the bootstrap has handled it

    def joined(self) -> list[str]:
        return [p["node"] for m in self.received if isinstance(m, PeersJoined) for p in m.peers]


def test_registry_entries_go_to_members_of_a_shared_channel_only():
    reg = BootstrapRegistry()
    reg.register("n1", ["c1", "c2"], ["10.0.0.1:4000"], "10.0.0.1:4000")
    reg.register("n2", ["c1"], ["10.0.0.2:4000"], "10.0.0.2:4000")
    reg.register("n3", ["c3"], ["10.0.0.3:4000"], "10.0.0.3:4000")
    reg.register("n4", ["c2"], ["10.0.0.4:4000"], "10.0.0.4:4000")
    out = reg.entries("n1", {"n2", "n3"})  # n4 shares c2 but is not connected
    assert set(out) == {"n2"}
    assert out["n2"] == [{"node": "n1", "addrs": ["10.0.0.1:4000"], "channel_id": "c1",
                          "observed": "10.0.0.1:4000", "nat": False}]
    assert reg.entries("nx", {"n1"}) == {}


async def test_a_registered_node_hears_of_each_new_member_at_once_and_only_once(cluster, nursery, monkeypatch):
    monkeypatch.setattr(discovery, "BOOTSTRAP_REFRESH_SECONDS", 0.1)  # b re-registers over and over
    boot = await cluster.node("boot", {}, bootstrap_mode=True)
    watcher = await RawClient(chans("x")).start(nursery, *addr_of(boot))
    await watcher.register()
    b = await cluster.node("b", chans("x"), bootstrap=addr_of(boot))
    c = await cluster.node("c", chans("y"), bootstrap=addr_of(boot))
    await wait_for(lambda: b.node_id in watcher.joined())  # pushed: the watcher never asked
    entry = next(p for m in watcher.received if isinstance(m, PeersJoined) for p in m.peers)
    assert entry["addrs"] == b.listen_addrs and entry["observed"] == b.listen_addrs[0] and not entry["nat"]
    await wait_for(lambda: boot.registry.is_registered(c.node_id))
    await trio.sleep(1.0)  # ~10 re-registrations of b and c, with nothing new in them
    assert watcher.joined() == [b.node_id]  # not c (another channel), and b once
    assert watcher.accepted == 0  # it registered no address: nobody dials it


async def test_a_node_dials_peers_its_bootstrap_pushes_and_ignores_pushes_from_anyone_else(cluster, nursery,
                                                                                       monkeypatch):
    monkeypatch.setattr(discovery, "BOOTSTRAP_REFRESH_SECONDS", 3600.0)  # no poll would find the peer
    boot = await cluster.node("boot", {}, bootstrap=None, bootstrap_mode=True)
    a = await cluster.node("a", chans("x"), bootstrap=addr_of(boot))
    await wait_for(lambda: boot.registry.is_registered(a.node_id) and a.relay_client.relays)
    await trio.sleep(0.3)  # a's first (and, here, only) PeersRequest has been answered
    # a channel member connected to a directly pushes a forged peer list naming its own listener
    forger = await RawClient(chans("x")).start(nursery, *addr_of(a))
    forged = {"node": NodeKey.generate().node_id, "addrs": [forger.listen_addr], "channel_id": "0" * 32,
              "observed": forger.listen_addr, "nat": False}
    await forger.session.send(PeersJoined(peers=[forged]))
    await forger.session.request(Ping(req=forger.session.next_req()), 5)
    # a new member registers with the bootstrap from its listening port: the bootstrap pushes it to a
    member = await RawClient(chans("x")).start(nursery, *addr_of(boot))
    await member.register([member.listen_addr])
    await wait_for(lambda: member.accepted >= 1)  # a dialled the pushed member
    await trio.sleep(0.3)
    assert forger.accepted == 0  # ... but not the address the forger pushed
