"""The wire protocol, pure and I/O-free: messages, framing, and the connection state machine."""

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .connection import Connection, ConnectionClosed, HandshakeComplete, MessageReceived

__all__ = [
    "Connection", "ConnectionClosed", "HandshakeComplete", "MessageReceived", "ProtocolError",
    "LocalProtocolError", "RemoteProtocolError",
]
