"""Discovery through the BitTorrent mainline DHT (BEP 5), with libtorrent as the DHT engine.

A node announces its TCP listen port under keys only channel members can compute
(``crypto.dht_channel_infohash``, ``crypto.dht_object_infohash``) and looks the same keys up to find
its channel's peers and an object's providers. What comes back is a list of addresses and nothing
more: each is dialled and must pass the handshake (node key, channel proof) like any other peer, so
a DHT that lies can only waste a dial.

The boundary: libtorrent runs its DHT in its own C++ threads. ``DhtNode`` owns one libtorrent
session with everything but the DHT switched off (no torrents, trackers, LSD multicast, UPnP or
NAT-PMP). Calls into it that only post work to libtorrent's thread (announce, get_peers, add a
node) are made directly; the blocking ones (creating and destroying the session, waiting for
alerts) go through ``trio.to_thread``. One task pumps alerts and hands replies to waiters.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

import trio

from ..errors import KacheryError

log = logging.getLogger(__name__)

# The public mainline DHT's well-known entry points, used only when --dht is given without
# --dht-bootstrap (tests and benchmarks always give local ones).
PUBLIC_ROUTERS = ("router.bittorrent.com:6881", "dht.transmissionbt.com:6881",
                  "router.utorrent.com:6881", "dht.libtorrent.org:25401")
ALERT_WAIT_MS = 200  # a blocked alert wait ends this often, so shutting down is never slower
STATS_SECONDS = 1.0


class DhtUnavailable(KacheryError):
    """The DHT engine (the libtorrent Python package) is not installed"""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def session_settings(listen: tuple[str, int], routers: tuple[str, ...]) -> dict:
    """libtorrent settings for a DHT-only session. Pure, so what a node turns on is testable.

    On loopback every node has the same IP, so libtorrent's defences that assume one node per IP
    (one routing-table entry per IP, node ids tied to the IP per BEP 42, per-IP rate limits) are
    relaxed there; on any other address they stay as libtorrent ships them.
    """
    host, port = listen
    settings = {
        "listen_interfaces": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "enable_dht": True,
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "dht_bootstrap_nodes": ",".join(routers),
        "alert_mask": 0,  # set in DhtNode: the categories depend on the installed libtorrent
    }
    if _is_loopback(host):
        settings.update({
            "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
            "dht_prefer_verified_node_ids": False, "dht_enforce_node_id": False,
            "dht_ignore_dark_internet": False,
            "dht_block_ratelimit": 1_000_000, "dht_upload_rate_limit": 10_000_000,
        })
    return settings


@dataclass
class _Lookup:
    first: trio.Event = field(default_factory=trio.Event)  # some addresses arrived
    peers: set = field(default_factory=set)


class DhtNode:
    """One mainline DHT node. ``bootstrap``: HOST:PORT of DHT nodes to join through (pinged and
    added to the routing table); ``public_routers``: also join through the public mainline routers
    (the only way this node ever contacts an address it was not given)."""

    def __init__(self, listen: tuple[str, int] = ("0.0.0.0", 0), bootstrap: tuple[str, ...] = (),
                 public_routers: bool = False):
        self.listen = listen
        self.bootstrap = tuple(bootstrap)
        self.public_routers = public_routers
        self.port: int | None = None
        self.nodes = 0  # routing-table size, refreshed every STATS_SECONDS
        self.joined = trio.Event()  # the routing table has had a node
        self._session = None
        self._lookups: dict[bytes, list[_Lookup]] = {}
        self._watchers: dict[bytes, list] = {}  # key -> callbacks given every address found under it
        self._lt = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            import libtorrent as lt
        except ImportError:
            raise DhtUnavailable("pip install libtorrent") from None
        self._lt = lt
        settings = session_settings(self.listen, PUBLIC_ROUTERS if self.public_routers else ())
        settings["alert_mask"] = int(lt.alert_category.dht | lt.alert_category.dht_operation | lt.alert_category.error)
        holder = [await trio.to_thread.run_sync(lt.session, settings)]
        session = self._session = holder[0]
        try:
            self.port = session.listen_port()
            for entry in self.bootstrap:
                host, _, port = entry.rpartition(":")
                session.add_dht_node((host.strip("[]"), int(port)))
            log.info("DHT node on %s:%d, joining through %s", self.listen[0], self.port,
                     ", ".join(self.bootstrap + (("the public routers",) if self.public_routers else ())) or "nobody yet")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump)
                nursery.start_soon(self._stats_loop)
                task_status.started(self)
        finally:
            # Destroying a session waits for libtorrent's threads to stop: the last reference is
            # dropped in a worker thread, not on the trio thread.
            self._session = session = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(holder.clear)

    async def _pump(self) -> None:
        lt, session = self._lt, self._session
        while True:
            # Not abandoned on cancel: the wait ends within ALERT_WAIT_MS, and the session must
            # outlive every call into it.
            await trio.to_thread.run_sync(session.wait_for_alert, ALERT_WAIT_MS)
            for alert in session.pop_alerts():
                if isinstance(alert, lt.dht_get_peers_reply_alert):
                    # libtorrent reports addresses as each DHT node answers with some (lookups and
                    # announces alike); a lookup that finds nothing reports nothing.
                    key = alert.info_hash.to_bytes()
                    found = {(host, port) for host, port in alert.peers()}
                    for lookup in self._lookups.get(key, []):
                        lookup.peers |= found
                        lookup.first.set()
                    for callback in self._watchers.get(key, []):
                        callback(found)
                elif isinstance(alert, lt.dht_stats_alert):
                    self.nodes = sum(bucket["num_nodes"] for bucket in alert.routing_table)
                    if self.nodes:
                        self.joined.set()

    async def _stats_loop(self) -> None:
        while True:
            self._session.post_dht_stats()
            await trio.sleep(STATS_SECONDS if self.joined.is_set() else 0.1)

    def _live(self):
        if self._session is None:
            raise KacheryError("the DHT node is not running")
        return self._session

    def add_node(self, host: str, port: int) -> None:
        self._live().add_dht_node((host, port))

    def announce(self, key: bytes, port: int) -> None:
        """Announce ``port`` (on the address the DHT sees us at) under ``key`` (20 bytes).
        Entries expire in the DHT after ~30 min: announce again well before."""
        self._live().dht_announce(self._lt.sha1_hash(key), port, 0)

    def watch(self, key: bytes, callback) -> None:
        """Call ``callback(addresses)`` whenever addresses under ``key`` turn up (from any lookup or
        announce of this node), until the node stops."""
        self._watchers.setdefault(key, []).append(callback)

    def unwatch(self, key: bytes) -> None:
        """No more callbacks for ``key`` (a rotated-out key)."""
        self._watchers.pop(key, None)

    def lookup(self, key: bytes) -> None:
        """Start a lookup of ``key``; what it finds goes to the watchers and waiters of ``key``."""
        self._live().dht_get_peers(self._lt.sha1_hash(key))

    async def get_peers(self, key: bytes, timeout: float = 5.0, grace: float = 0.1) -> set[tuple[str, int]]:
        """Addresses announced under ``key``: those that arrive within ``grace`` of the first
        answer; empty if nothing came within ``timeout`` (a DHT lookup never says "none")."""
        lookup = _Lookup()
        self._lookups.setdefault(key, []).append(lookup)
        try:
            self.lookup(key)
            with trio.move_on_after(timeout):
                await lookup.first.wait()
                await trio.sleep(grace)
        finally:
            waiting = self._lookups[key]
            waiting.remove(lookup)
            if not waiting:
                del self._lookups[key]
        return lookup.peers


async def start_swarm(nursery: trio.Nursery, count: int, host: str = "127.0.0.1",
                      seed: int = 0) -> list[DhtNode]:
    """``count`` DHT nodes on ``host`` that know each other (tests and benchmarks: a stand-in for
    the mainline DHT). Each joins through the first node and up to two others."""
    import random

    rng = random.Random(seed)
    nodes: list[DhtNode] = []
    for i in range(count):
        known = [f"{host}:{n.port}" for n in nodes]
        bootstrap = tuple(dict.fromkeys(known[:1] + rng.sample(known, min(2, len(known)))))
        nodes.append(await nursery.start(DhtNode((host, 0), bootstrap).run))
    return nodes


__all__ = ["DhtNode", "DhtUnavailable", "PUBLIC_ROUTERS", "session_settings", "start_swarm"]
