"""The wire protocol, pure and I/O-free: messages, framing, and the connection state machine."""

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "Connection", "ConnectionClosed", "HandshakeComplete", "MessageReceived", "ProtocolError",
    "LocalProtocolError", "RemoteProtocolError",
]


def __getattr__(name: str):
    """The connection machine (and its message codec) on first use: a short CLI command builds a
    Config, which imports protocol.relay_limits, and needs neither."""
    if name in ("Connection", "ConnectionClosed", "HandshakeComplete", "MessageReceived"):
        from . import connection

        return getattr(connection, name)
    raise AttributeError(f"module 'kacheryfs.protocol' has no attribute {name!r}")
