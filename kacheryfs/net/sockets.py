"""TCP sockets that share the listening port: the listener and the connections a node makes *from*
that port (to its bootstrap, and for hole punching), so every NAT mapping a peer or the bootstrap
sees is the mapping of the one port the node registered.

Linux lets a socket bind an address:port that a listener holds only when both set SO_REUSEPORT
(SO_REUSEADDR alone is refused while the listener exists); sockets sharing a port this way must
belong to the same user. Only the listener listens, so nothing is load-balanced between sockets.
"""

from __future__ import annotations

import errno
import socket

import trio


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _shared_socket(family: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _check_port_free(host: str, port: int) -> None:
    """Raise EADDRINUSE if anything listens on host:port. Needed because SO_REUSEPORT would let a
    second daemon of the same user bind a port the first one listens on, and the kernel would then
    split incoming connections between them; a plain bind is refused instead."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no owner
        if ":" in host:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
    finally:
        probe.close()


async def open_shared_listener(host: str, port: int, backlog: int = 128) -> trio.SocketListener:
    """A listener on host:port (port 0 picks one) that connections from the same port may share.
    A port another socket listens on is refused (EADDRINUSE), even one of our own user."""
    if port:
        _check_port_free(host, port)
    sock = _shared_socket(_family(host))
    try:
        if ":" in host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def connect_from(local: tuple[str, int], host: str, port: int) -> trio.SocketStream:
    """A TCP connection to host:port made from the local address ``local`` (the listening port).
    For a punch both ends call this at about the same time: their SYNs cross (simultaneous open).
    Cancel it (e.g. with trio.fail_after) to bound the wait."""
    local_host, local_port = local
    if local_host in ("0.0.0.0", "::") and _family(host) != _family(local_host):
        raise OSError(errno.EAFNOSUPPORT, f"cannot reach {host} from {local_host}")
    sock = _shared_socket(_family(host))
    try:
        await sock.bind((local_host, local_port))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    return stream
