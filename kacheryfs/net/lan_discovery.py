"""Finding channel peers on the local network with no server: UDP multicast beacons.

A beacon says "node N listens on port P" and carries, per channel, a tag only members can compute
(a MAC under the channel key over node, port and time), so listeners recognise their channels while
nobody else learns which channels a node is in or can link beacons of one channel together. A
matching beacon is only a hint: the node is dialled and must pass the handshake.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time

import trio

from ..crypto import blake2b
from .interfaces import Dials

log = logging.getLogger(__name__)

GROUP = "239.255.77.77"
PORT = 7787
BEACON_DOMAIN = b"kacheryfs/lan-beacon/v1"
MAX_BEACON = 1400
TAG_BYTES = 16


def _tag(channel_key: bytes, node: str, port: int, stamp: int) -> str:
    msg = BEACON_DOMAIN + node.encode() + port.to_bytes(2, "big") + stamp.to_bytes(8, "big")
    return blake2b(msg, key=channel_key, size=TAG_BYTES).hex()


def encode_beacon(node: str, port: int, channel_keys: list[bytes], stamp: int | None = None) -> bytes:
    stamp = int(time.time()) if stamp is None else stamp
    tags = [_tag(k, node, port, stamp) for k in channel_keys][:60]
    return json.dumps({"v": 1, "node": node, "port": port, "t": stamp, "tags": tags}).encode()


def match_beacon(data: bytes, channel_keys: list[bytes], own_node: str) -> tuple[str, int] | None:
    """(node, port) if the beacon is well formed, from another node, and in one of our channels."""
    if len(data) > MAX_BEACON:
        return None
    try:
        beacon = json.loads(data)
        node, port, stamp, tags = beacon["node"], beacon["port"], beacon["t"], beacon["tags"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(node, str) and len(node) == 64 and isinstance(port, int) and 0 < port < 65536
            and isinstance(stamp, int) and stamp >= 0 and isinstance(tags, list)) or node == own_node:
        return None
    tags = set(t for t in tags if isinstance(t, str))
    if any(_tag(k, node, port, stamp) in tags for k in channel_keys):
        return node, port
    return None


def _receiver_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # several nodes per host
    sock.bind((GROUP, PORT))  # only the group's datagrams
    membership = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.setblocking(False)
    return sock


def _sender_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # this network segment only
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # and other nodes on this host
    sock.setblocking(False)
    return sock


async def run(node: Dials, port: int, interval: float = 1.0) -> None:
    """Send beacons and dial the members we hear, until cancelled."""
    keys = list(node.channel_keys.values())
    try:
        receiver = trio.socket.from_stdlib_socket(_receiver_socket())
        sender = trio.socket.from_stdlib_socket(_sender_socket())
    except OSError as exc:
        log.warning("LAN discovery unavailable: %s", exc)
        return
    log.info("LAN discovery on %s:%d", GROUP, PORT)
    with receiver, sender:
        async with trio.open_nursery() as nursery:
            async def beacon() -> None:
                sent = 0
                while True:
                    try:
                        await sender.sendto(encode_beacon(node.node_id, port, keys), (GROUP, PORT))
                    except OSError as exc:
                        log.debug("beacon not sent: %s", exc)
                    sent += 1
                    await trio.sleep(interval if sent < 10 else 5 * interval)

            nursery.start_soon(beacon)
            while True:
                data, (host, _src_port) = await receiver.recvfrom(MAX_BEACON + 1)
                found = match_beacon(data, keys, node.node_id)
                if found is not None:
                    peer, peer_port = found
                    node.maybe_dial({"node": peer, "addrs": [f"{host}:{peer_port}"]})
