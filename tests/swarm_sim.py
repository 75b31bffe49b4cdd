"""A flash crowd simulated with a fake clock: the real scheduler (net/scheduler.py) and upload order
(net/upload_queue.py) in every node, the rest of a node's swarming as it is in net/ (finds in
batches, Have batches to interested peers, provider refresh, manifests, cancels), and links as
numbers: one seeder uploading at R, leechers at L each, a one-way latency. Deterministic for a seed.

Used by tests/test_swarm_sim.py (policy tests): it separates what the policy costs from what the
2-core machine of benchmarks/bench_swarm.py costs (docs/benchmarks.md).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from kacheryfs.net.provider_set import BENCH_SECONDS, ActiveView, CandidateView, plan
from kacheryfs.net.scheduler import ChunkScheduler
from kacheryfs.net.transfer import endgame_chunks
from kacheryfs.net.upload_queue import SMALL, UploadQueue

MiB = 1 << 20
MANIFEST = -1  # the chunk "index" of a manifest request


@dataclass
class SimConfig:
    leechers: int = 11
    chunks: int = 16
    chunk_bytes: int = MiB
    seeder_rate: float = 4e6  # bytes/s
    leecher_rate: float = 100e6  # bytes/s a leecher uploads (loopback: what its CPU manages)
    latency: float = 0.001  # one way, s
    start_spread: float = 0.0  # leechers start at uniform random times in [0, start_spread]
    install_seconds: float = 0.05  # whole-file hash, fsync, rename
    manifest_bytes: int = 2000
    charge_requested: bool = False  # the old rate knob: a request costs its requested length, not what is sent
    upload_order: str = "rarest"  # net/upload_queue.py
    cancel_expired: bool = True  # a request the scheduler gave up on is cancelled at its peer
    manifest_from_partial_first: bool = True
    have_interval: float = 0.1  # net/swarm.py's HAVE_INTERVAL, MAX_INTERESTED
    max_interested: int = 16
    max_peers: int = 16  # sessions a node dials; it accepts up to 2 * max_peers + 8
    find_fanout: int = 8
    find_grace: float = 0.015
    refresh_seconds: float = 2.0
    find_cache_seconds: float = 5.0
    request_timeout: float = 10.0  # the scheduler's
    transport_timeout: float = 120.0  # the request's own (transfer.CHUNK_REQUEST_TIMEOUT)
    scheduler: dict = field(default_factory=dict)  # extra ChunkScheduler keyword arguments
    seed: int = 0
    kill: tuple[int, float] | None = None  # (leecher index, time): it stops serving and fetching
    max_active: int | None = 8  # providers a download asks at once (net/provider_set.py); None: all it knows
    replan_seconds: float = 0.25  # transfer.REPLAN_SECONDS
    enough_copies: int | None = 2  # the seeder declines a chunk sent this often while others wait
    watch_interval: float | None = 0.5  # find askers hear of new chunks this often (None: as traders do)


@dataclass
class SimResult:
    done_at: dict[int, float]
    one_upload: float
    seeder_bytes: int
    seeder_busy: float
    seeder_last_upload_end: float
    seeder_copies: Counter  # chunk -> times the seeder uploaded it
    once_before_twice: bool
    messages: Counter
    verified_twice: int  # chunks a leecher verified more than once (must be 0)
    max_providers: int  # most providers one leecher's scheduler held at once
    declined: int  # requests the seeder answered "busy"
    fetched_bytes: int  # all chunk bytes leechers received (duplicates included)
    size: int

    @property
    def completion(self) -> float:
        return max(self.done_at.values()) / self.one_upload

    @property
    def seeder_share(self) -> float:
        return self.seeder_bytes / self.size


class _Request:
    __slots__ = ("requester", "chunk", "req", "handle", "begun", "cancelled", "sent_at")

    def __init__(self, requester, chunk, req, sent_at):
        self.requester, self.chunk, self.req, self.sent_at = requester, chunk, req, sent_at
        self.handle = None
        self.begun = False
        self.cancelled = False


class _Node:
    def __init__(self, name, rate, order):
        self.name = name
        self.rate = rate
        self.queue = UploadQueue(order)
        self.requests: dict[int, _Request] = {}  # handle -> request waiting here
        self.busy = False
        self.uploaded = 0
        self.busy_time = 0.0
        self.peers: set = set()
        self.whole = False
        self.dead = False
        # leecher side
        self.started = False
        self.sched: ChunkScheduler | None = None
        self.have: set[int] = set()
        self.has_manifest = False
        self.interested: OrderedDict = OrderedDict()
        self.asked: dict = {}  # peer -> time it asked us before we started
        self.pending_have: set[int] = set()
        self.have_cooldown_until = -1.0
        self.have_flush_scheduled = False
        self.in_flight: dict[tuple, int] = {}  # (peer, chunk) -> req id
        self.find_cache_at = -1e9
        self.done_at: float | None = None
        self.refreshing = False
        self.wake_pending = False
        self.manifest_wait = None
        self.known: dict = {}  # provider -> chunks it holds (None: all), active or not
        self.joined: dict = {}  # active provider -> when it joined
        self.benched: dict = {}
        self.watchers: OrderedDict = OrderedDict()
        self.watch_pending: set[int] = set()
        self.watch_sent = -1e9


class SwarmSim:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self._events: list = []
        self._seq = itertools.count()
        self._req = itertools.count()
        self.messages: Counter = Counter()
        self.max_providers = 0
        self.declined = 0
        self.seeder = _Node("S", cfg.seeder_rate, cfg.upload_order)
        self.seeder.queue.enough_copies = cfg.enough_copies
        self.seeder.whole = True
        self.seeder.has_manifest = True
        self.leechers = [_Node(i, cfg.leecher_rate, cfg.upload_order) for i in range(cfg.leechers)]
        self.nodes = {n.name: n for n in [self.seeder, *self.leechers]}
        self.seeder_copies: Counter = Counter()
        self.seeder_log: list[int] = []  # chunks in upload order
        self.seeder_last_end = 0.0
        self.verified: Counter = Counter()
        self.fetched_bytes = 0
        self._connect()

    # --- topology: each node dials up to max_peers others, accepts up to 2 * max_peers + 8

    def _connect(self):
        cap_in = 2 * self.cfg.max_peers + 8
        names = list(self.nodes)
        order = names[:]
        self.rng.shuffle(order)
        for a in order:
            others = [b for b in names if b != a]
            self.rng.shuffle(others)
            for b in others:
                if len(self.nodes[a].peers) >= self.cfg.max_peers:
                    break
                if b in self.nodes[a].peers or len(self.nodes[b].peers) >= cap_in:
                    continue
                self.nodes[a].peers.add(b)
                self.nodes[b].peers.add(a)

    # --- events

    def at(self, t, fn, *args):
        heapq.heappush(self._events, (t, next(self._seq), fn, args))

    def send(self, fn, *args, kind="msg"):
        self.messages[kind] += 1
        self.at(self.now + self.cfg.latency, fn, *args)

    def run(self) -> SimResult:
        cfg = self.cfg
        for leecher in self.leechers:
            self.at(self.rng.uniform(0, cfg.start_spread), self._start, leecher)
        if cfg.kill:
            self.at(cfg.kill[1], self._kill, self.leechers[cfg.kill[0]])
        while self._events:
            self.now, _, fn, args = heapq.heappop(self._events)
            if self.now > 3600:
                raise AssertionError("the simulated crowd did not finish in an hour")
            fn(*args)
        alive = [n for n in self.leechers if not n.dead]
        missing = [n.name for n in alive if n.done_at is None]
        if missing:
            raise AssertionError(f"leechers {missing} never finished")
        size = cfg.chunks * cfg.chunk_bytes
        seen, once_first = set(), True
        for c in self.seeder_log:
            if c in seen and len(seen) < cfg.chunks:
                once_first = False
            seen.add(c)
        return SimResult(
            done_at={n.name: n.done_at for n in alive}, one_upload=size / cfg.seeder_rate,
            seeder_bytes=self.seeder.uploaded, seeder_busy=self.seeder.busy_time,
            seeder_last_upload_end=self.seeder_last_end, seeder_copies=self.seeder_copies,
            once_before_twice=once_first, messages=self.messages,
            verified_twice=sum(1 for v in self.verified.values() if v > 1), fetched_bytes=self.fetched_bytes,
            size=size, max_providers=self.max_providers, declined=self.declined)

    # --- serving (every node): one upload at a time at its rate, in UploadQueue order

    def _arrive(self, server: _Node, request: _Request):
        if server.dead:
            return
        if server.started and not server.whole:
            self._interest(server, request.requester)  # Server._chunk: swarm.interested
        key = SMALL if request.chunk == MANIFEST else request.chunk
        request.handle = server.queue.push(key, request)
        server.requests[request.handle] = request
        self._serve_next(server)

    def _cancel_arrive(self, server: _Node, requester, req):
        for handle, request in list(server.requests.items()):
            if request.requester == requester and request.req == req and not request.begun:
                server.queue.remove(handle)
                del server.requests[handle]
                return

    def _serve_next(self, server: _Node):
        if server.busy or server.dead:
            return
        popped = server.queue.pop()
        if popped is None:
            return
        handle, request = popped
        del server.requests[handle]
        request.begun = True
        if request.chunk != MANIFEST and server.queue.decline(request.chunk, request.requester):
            self.declined += 1
            self.send(self._reply, self.nodes[request.requester], server.name, request, "busy", kind="reply")
            self._serve_next(server)
            return
        if request.chunk == MANIFEST:
            sent = self.cfg.manifest_bytes
            charged = self.cfg.chunk_bytes if self.cfg.charge_requested else sent
            ok = server.has_manifest
        else:
            sent = charged = self.cfg.chunk_bytes
            ok = server.whole or request.chunk in server.have
            if ok:
                server.queue.uploaded(request.chunk)
        if not ok:
            sent = 0
            charged = 0 if not self.cfg.charge_requested else self.cfg.chunk_bytes
        seconds = charged / server.rate
        server.busy = True
        server.busy_time += seconds
        server.uploaded += sent
        if server is self.seeder and request.chunk != MANIFEST and ok:
            self.seeder_copies[request.chunk] += 1
            self.seeder_log.append(request.chunk)
        self.at(self.now + seconds, self._sent, server, request, ok)

    def _sent(self, server: _Node, request: _Request, ok: bool):
        server.busy = False
        if server is self.seeder:
            self.seeder_last_end = self.now
        if not server.dead:
            self.send(self._reply, self.nodes[request.requester], server.name, request, ok, kind="reply")
        self._serve_next(server)

    # --- a leecher: find, manifest, download

    def _start(self, node: _Node):
        if node.dead:
            return
        self._find(node, whole=False, then=self._found)

    def _find(self, node: _Node, whole: bool, then):
        """Finding.find: batches of find_fanout connected peers; first "found" (a whole one, with
        ``whole``) then a short grace; while nobody has it, wait and ask again."""
        state = {"asked": set(), "found": [], "answered": 0, "done": False, "first": False}

        def batch():
            if state["done"] or node.dead:
                return
            fresh = [p for p in sorted(node.peers, key=str) if p not in state["asked"]]
            self.rng.shuffle(fresh)
            if not fresh:
                if state["answered"] < len(state["asked"]):
                    return  # the last answers call batch() again
                if not self._widen(node):
                    state["asked"].clear()  # connected to everyone: ask again (peers start meanwhile)
                self.at(self.now + 0.5, batch)  # WIDEN_SECONDS
                return
            for p in fresh[:self.cfg.find_fanout]:
                state["asked"].add(p)
                self.send(self._find_arrive, self.nodes[p], node.name, state, whole, kind="find")
            self.at(self.now + 0.2, maybe_next)

        def maybe_next():
            if not state["done"] and not state["first"]:
                batch()

        state["answer"] = lambda found: answer(found)

        def answer(found):
            state["answered"] += 1
            if state["done"]:
                return
            if found is not None:
                state["found"].append(found)
                if not whole or found[1] is None:
                    if not state["first"]:
                        state["first"] = True
                        self.at(self.now + self.cfg.find_grace, finish)
            elif state["answered"] == len(state["asked"]) and not state["first"]:
                batch()
            if state["first"] and state["answered"] == len(state["asked"]):
                finish()  # everyone asked has answered: no need to wait out the grace

        def finish():
            if not state["done"]:
                state["done"] = True
                then(node, state["found"])

        batch()

    def _widen(self, node: _Node) -> bool:
        others = sorted((n for n in self.nodes if n != node.name and n not in node.peers), key=str)
        self.rng.shuffle(others)
        for b in others[:8]:
            node.peers.add(b)
            self.nodes[b].peers.add(node.name)
        return bool(others)

    def _find_arrive(self, server: _Node, asker, state, whole):
        if server.dead:
            return
        if server.whole:
            found = (server.name, None)
        elif server.started and server.sched is not None:
            if self.cfg.watch_interval is None:
                self._interest(server, asker)
            elif asker not in server.interested:
                server.watchers[asker] = True
            found = (server.name, set(server.have))
        else:
            server.asked[asker] = self.now
            found = None
        self.send(lambda: state["answer"](found), kind="find_reply")

    def _found(self, node: _Node, providers):
        node.find_cache_at = self.now
        order = list(providers)
        if self.cfg.manifest_from_partial_first:
            order.sort(key=lambda p: p[1] is None)  # partial providers (not the bottleneck) first
        self._get_manifest(node, providers, order)

    def _get_manifest(self, node, providers, order):
        if not order:
            self.at(self.now + 0.5, self._start, node)
            return
        peer = order[0][0]
        req = next(self._req)
        request = _Request(node.name, MANIFEST, req, self.now)
        node.in_flight[(peer, MANIFEST)] = req
        node.manifest_wait = (providers, order)
        self.send(self._arrive, self.nodes[peer], request, kind="request")

    def _begin_download(self, node: _Node, providers):
        node.has_manifest = True
        cfg = self.cfg
        kwargs = dict(initial_window=32, min_initial_window=2, slack_chunks=2, slack_seconds=0.1,
                      request_timeout=cfg.request_timeout, seed=cfg.seed * 1000 + node.name,
                      endgame_chunks=endgame_chunks(cfg.chunks))
        kwargs.update(cfg.scheduler)
        s = node.sched = ChunkScheduler(cfg.chunks, range(cfg.chunks), **kwargs)
        node.started = True
        if cfg.max_active is None:
            s.add_peers({p: have for p, have in providers})
        else:
            node.known = {p: (None if have is None else set(have)) for p, have in providers}
            _drop, add = plan({}, self._candidates(node), self.now, limit=cfg.max_active, rng=self.rng)
            share = max(s.min_initial_window, s.initial_window // max(1, len(node.known)))  # (as Download)
            for p in add:
                s.add_peer(p, node.known[p], window=share)
            node.joined = {p: self.now for p in add}
            self.at(self.now + cfg.replan_seconds, self._replan, node)
        self.max_providers = max(self.max_providers, len(s.peers))
        for p, have in providers:  # Swarm.add: partial providers are interested in our chunks
            if have is not None and p in s.peers:
                self._interest(node, p)
        for p, when in node.asked.items():
            if self.now - when < 30:
                self._interest(node, p)
                self.send(self._have_arrive, self.nodes[p], node.name, set(node.have), kind="have")
        node.asked.clear()
        self.at(self.now + cfg.refresh_seconds, self._refresh, node)
        self._pump(node)

    def _interest(self, node: _Node, peer):
        node.interested[peer] = True
        node.interested.move_to_end(peer)
        while len(node.interested) > self.cfg.max_interested:
            node.interested.popitem(last=False)

    def _pump(self, node: _Node):
        s = node.sched
        if node.dead or s is None or node.done_at is not None or s.done():
            return
        for peer, chunk in s.expired(self.now):
            if self.cfg.cancel_expired:
                self._cancel(node, peer, chunk)
        for peer in s.peers:
            if self.nodes[peer].dead:
                s.remove_peer(peer)
                continue
            for chunk in s.next_requests(peer, self.now):
                req = next(self._req)
                node.in_flight[(peer, chunk)] = req
                self.send(self._arrive, self.nodes[peer], _Request(node.name, chunk, req, self.now), kind="request")
        for peer, chunk in s.take_cancelled():
            self._cancel(node, peer, chunk)
        # the download loop wakes at least once a second (expiries)
        if s.requests_in_flight() and not node.wake_pending:
            node.wake_pending = True
            self.at(self.now + 1.0, self._wake, node)

    def _wake(self, node: _Node):
        node.wake_pending = False
        self._pump(node)

    def _cancel(self, node, peer, chunk):
        req = node.in_flight.pop((peer, chunk), None)
        if req is not None:
            self.send(self._cancel_arrive, self.nodes[peer], node.name, req, kind="cancel")

    def _reply(self, node: _Node, peer, request: _Request, ok: bool):
        if node.dead:
            return
        if request.chunk == MANIFEST:
            node.in_flight.pop((peer, MANIFEST), None)
            providers, order = node.manifest_wait
            if ok:
                self._begin_download(node, providers)
            else:
                self._get_manifest(node, providers, order[1:])
            return
        if node.in_flight.get((peer, request.chunk)) != request.req:
            if ok:
                self.fetched_bytes += self.cfg.chunk_bytes  # a cancelled request whose reply was under way
            return
        if self.now - request.sent_at > self.cfg.transport_timeout:
            node.in_flight.pop((peer, request.chunk), None)
            return  # TooSlowError: the scheduler already gave up on it
        del node.in_flight[(peer, request.chunk)]
        s = node.sched
        if ok == "busy":
            s.on_chunk_declined(peer, request.chunk, self.now)
            self._pump(node)
            return
        if not ok:
            s.on_chunk_failed(peer, request.chunk, self.now)
            self._pump(node)
            return
        self.fetched_bytes += self.cfg.chunk_bytes
        fresh = request.chunk not in node.have
        for other in s.on_chunk_ok(peer, request.chunk, self.cfg.chunk_bytes, self.now):
            self._cancel(node, other, request.chunk)
        if fresh:
            self.verified[(node.name, request.chunk)] += 1
            node.have.add(request.chunk)
            node.pending_have.add(request.chunk)
            self._flush_soon(node)
        if len(node.have) == self.cfg.chunks and node.done_at is None:
            node.done_at = self.now + self.cfg.install_seconds
            self.at(node.done_at, self._installed, node)
        self._pump(node)

    def _installed(self, node: _Node):
        node.whole = True
        for peer in node.interested:  # Swarm.finish: Have(all)
            self.send(self._have_arrive, self.nodes[peer], node.name, None, kind="have")

    # --- Have batches (Swarm.run): at once, then at most every have_interval

    def _flush_soon(self, node: _Node):
        if node.have_flush_scheduled:
            return
        node.have_flush_scheduled = True
        self.at(max(self.now, node.have_cooldown_until), self._flush, node)

    def _flush(self, node: _Node):
        node.have_flush_scheduled = False
        if node.dead or not node.pending_have:
            return
        chunks = set(node.pending_have)
        node.pending_have.clear()
        for peer in list(node.interested):
            self.send(self._have_arrive, self.nodes[peer], node.name, chunks, kind="have")
        node.have_cooldown_until = self.now + self.cfg.have_interval
        if self.cfg.watch_interval is not None:
            node.watch_pending |= chunks
            if node.watchers and self.now - node.watch_sent >= self.cfg.watch_interval:
                for peer in node.watchers:
                    if peer not in node.interested:
                        self.send(self._have_arrive, self.nodes[peer], node.name, set(node.watch_pending), kind="have")
                node.watch_pending.clear()
                node.watch_sent = self.now
            elif node.watch_pending and node.watchers:
                self.at(node.watch_sent + self.cfg.watch_interval, self._flush_watchers, node)

    def _flush_watchers(self, node: _Node):
        if node.dead or not node.watch_pending or self.now - node.watch_sent < self.cfg.watch_interval:
            return
        for peer in node.watchers:
            if peer not in node.interested:
                self.send(self._have_arrive, self.nodes[peer], node.name, set(node.watch_pending), kind="have")
        node.watch_pending.clear()
        node.watch_sent = self.now

    # --- the bounded provider set (Download._replan, net/provider_set.py)

    def _useful(self, node: _Node, have) -> int:
        return self.cfg.chunks - len(node.have) if have is None else len(have - node.have)

    def _candidates(self, node: _Node) -> dict:
        return {p: CandidateView(have is None, self._useful(node, have), node.benched.get(p, -1e9))
                for p, have in node.known.items()
                if p not in node.joined and p not in node.sched.dropped and not self.nodes[p].dead}

    def _learn(self, node: _Node, sender, chunks) -> None:
        """A find answer or a Have: what ``sender`` holds; it joins if there is room."""
        s = node.sched
        if sender in node.known and node.known[sender] is not None:
            node.known[sender] = None if chunks is None else node.known[sender] | set(chunks)
        elif sender not in node.known:
            node.known[sender] = None if chunks is None else set(chunks)
        if sender in node.joined:
            if sender not in s.peers:
                del node.joined[sender]
            elif chunks is None:
                s.peer_has_all(sender)
            else:
                s.peer_has(sender, chunks)
            if sender in node.joined:
                return
        have = node.known[sender]
        if (sender not in s.dropped and node.benched.get(sender, -1e9) <= self.now
                and (have is None or self._useful(node, have))):
            if len(node.joined) < self.cfg.max_active:
                s.add_peer(sender, have, window=s.share_of_initial_window())
                node.joined[sender] = self.now
                self.max_providers = max(self.max_providers, len(s.peers))


    def _replan(self, node: _Node):
        if node.dead or node.done_at is not None:
            return
        self.at(self.now + self.cfg.replan_seconds, self._replan, node)
        self._replan_now(node)

    def _replan_now(self, node: _Node):
        s = node.sched
        for p in [p for p in node.joined if p not in s.peers]:
            del node.joined[p]
        active = {}
        for p, joined in node.joined.items():
            in_flight, last_ok = s.progress(p)
            active[p] = ActiveView(node.known[p] is None, self._useful(node, node.known[p]), in_flight,
                                   joined if last_ok is None else max(last_ok, joined))
        drop, add = plan(active, self._candidates(node), self.now, limit=self.cfg.max_active, rng=self.rng)
        for p in drop:
            del node.joined[p]
            if active[p].in_flight:
                node.benched[p] = self.now + BENCH_SECONDS
            for chunk in s.remove_peer(p):
                self._cancel(node, p, chunk)
        for p in add:
            s.add_peer(p, node.known[p], window=s.share_of_initial_window())
            node.joined[p] = self.now
        self.max_providers = max(self.max_providers, len(s.peers))
        self._pump(node)

    def _have_arrive(self, node: _Node, sender, chunks):
        if node.dead or node.sched is None or node.done_at is not None:
            return
        s = node.sched
        if self.cfg.max_active is not None:
            self._learn(node, sender, chunks)
            if sender in node.joined:  # Swarm._have: only traders become interested
                self._interest(node, sender)
            self._pump(node)
            return
        if sender not in s.peers and sender not in s.dropped:
            s.add_peer(sender, None if chunks is None else chunks, window=s.share_of_initial_window())
        elif chunks is None:
            s.peer_has_all(sender)
        else:
            s.peer_has(sender, chunks)
        self._interest(node, sender)
        self._pump(node)

    # --- provider refresh (Download._refresh_providers)

    def _refresh(self, node: _Node):
        if node.dead or node.done_at is not None:
            return
        self.at(self.now + self.cfg.refresh_seconds, self._refresh, node)
        s = node.sched
        starving = s.unavailable() > 0
        if starving:
            for peer in s.peers:
                if not self.nodes[peer].whole:
                    self.send(self._holdings_arrive, self.nodes[peer], node.name, kind="find")
        elif self.now - node.find_cache_at < self.cfg.find_cache_seconds:
            return  # the find's cached answer: nobody new
        self._find(node, whole=starving, then=self._refreshed)

    def _holdings_arrive(self, server: _Node, asker):
        if server.dead:
            return
        have = None if server.whole else set(server.have)
        self.send(self._have_arrive, self.nodes[asker], server.name, have, kind="find_reply")

    def _refreshed(self, node: _Node, providers):
        node.find_cache_at = self.now
        s = node.sched
        if self.cfg.max_active is not None:
            for peer, have in providers:
                self._learn(node, peer, have)
            self._pump(node)
            return
        for peer, have in providers:
            if peer not in s.peers and peer not in s.dropped:
                s.add_peer(peer, have, window=s.share_of_initial_window())
            elif have is None:
                s.peer_has_all(peer)
            else:
                s.peer_has(peer, have)
        self._pump(node)

    def _kill(self, node: _Node):
        node.dead = True
        for other in self.leechers:
            if other.sched is not None and node.name in other.sched.peers:
                other.sched.remove_peer(node.name)
                if self.cfg.max_active is not None:
                    self._replan_now(other)  # (Download.run: a provider left)
                self._pump(other)


def simulate(**kwargs) -> SimResult:
    return SwarmSim(SimConfig(**kwargs)).run()


__all__ = ["SimConfig", "SimResult", "SwarmSim", "simulate"]
