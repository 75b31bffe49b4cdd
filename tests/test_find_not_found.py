"""When a find gives up (net/finding.py): "not found" once every channel peer has said no, no peer
has come or gone for FIND_QUIET, nothing that could bring one is under way, and the node is past
its first FIND_STARTUP seconds; otherwise it keeps looking until the timeout. Peers here are
in-memory stand-ins for sessions (what a find uses of them: request, peer_id, closed); the times are
trio's virtual clock (autojump), so the checks are about which rule ended the find, not speed."""

import time

import trio

from kacheryfs.net.finding import FIND_QUIET, FIND_STARTUP, Finder
from kacheryfs.protocol.messages import FindResponse

SHA1 = "ab" * 20
TIMEOUT = 3.0


class FakeSession:
    direction = "outbound"

    def __init__(self, peer_id: str, holds: bool = False, delay: float = 0.01):
        self.peer_id = peer_id
        self.holds = holds
        self.delay = delay
        self.closed = trio.Event()
        self.asked = 0
        self._req = 0

    def next_req(self) -> int:
        self._req += 1
        return self._req

    async def request(self, msg, timeout):
        self.asked += 1
        await trio.sleep(self.delay)
        return FindResponse(req=msg.req, sha1=msg.sha1, found=self.holds, size=100 if self.holds else 0)


class FakePeers:
    def __init__(self, sessions=()):
        self.sessions = list(sessions)
        self._changed = trio.Event()

    def channel_peers(self):
        return list(self.sessions)

    async def wait_peers_changed(self) -> None:
        await self._changed.wait()

    def join(self, session) -> None:
        self.sessions.append(session)
        self._changed.set()
        self._changed = trio.Event()


class FakeRoutes:
    def register(self, *args, **kwargs) -> None:
        pass


def finder(peers, *, up_for: float = 100.0, searching=None, widened=None) -> Finder:
    f = Finder(FakeRoutes(), peers, in_a_channel=True, timeout=TIMEOUT, searching=searching,
               more_peers=None if widened is None else widened.append)
    f.started = time.monotonic() - up_for
    return f


async def test_every_peer_said_no_and_nobody_else_is_coming_is_not_found_before_the_timeout(autojump_clock):
    peers = FakePeers([FakeSession("p1"), FakeSession("p2"), FakeSession("p3", delay=0.4)])
    widened = []
    start = trio.current_time()
    assert await finder(peers, widened=widened).find(SHA1) == []
    elapsed = trio.current_time() - start
    assert 0.4 + FIND_QUIET <= elapsed < TIMEOUT  # after the slowest "no", then the quiet period
    assert all(s.asked == 1 for s in peers.sessions)
    assert widened  # it did look for more peers meanwhile

    alone = FakePeers()  # no channel peer at all
    start = trio.current_time()
    assert await finder(alone).find(SHA1) == []
    assert FIND_QUIET <= trio.current_time() - start < TIMEOUT


async def test_a_find_keeps_looking_while_peers_are_being_met(autojump_clock):
    # a dial under way: the find waits for it, and asks the peer it brings
    peers = FakePeers([FakeSession("p1")])
    start = trio.current_time()

    def dialing(_sha1):
        return trio.current_time() - start < 2.0

    async def dial_succeeds():
        await trio.sleep(1.9)
        peers.join(FakeSession("holder", holds=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial_succeeds)
        found = await finder(peers, searching=dialing).find(SHA1)
    assert [p.session.peer_id for p in found] == ["holder"]

    # a peer that connects within the quiet period is asked, and the quiet period starts again
    peers = FakePeers([FakeSession("p1")])

    async def joins_late():
        await trio.sleep(FIND_QUIET * 0.9)
        peers.join(FakeSession("late"))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(joins_late)
        assert await finder(peers).find(SHA1) == []
    assert trio.current_time() - start >= FIND_QUIET * 1.9
    assert peers.sessions[-1].asked == 1

    # a node that has just started is still meeting its first peers: the whole timeout
    start = trio.current_time()
    assert await finder(FakePeers([FakeSession("p1")]), up_for=FIND_STARTUP / 2).find(SHA1) == []
    assert trio.current_time() - start >= TIMEOUT

    # a peer that never answers: the whole timeout too (it has not said no)
    start = trio.current_time()
    assert await finder(FakePeers([FakeSession("p1"), FakeSession("mute", delay=60)])).find(SHA1) == []
    assert trio.current_time() - start >= TIMEOUT
