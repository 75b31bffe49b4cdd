"""The wire protocol, pure and I/O-free: messages, framing, and the connection state machine."""

from .connection import (
    Connection, ConnectionClosed, HandshakeComplete, MessageReceived, ProtocolError,
)
from .messages import LocalProtocolError, RemoteProtocolError

__all__ = [
    "Connection", "ConnectionClosed", "HandshakeComplete", "MessageReceived", "ProtocolError",
    "LocalProtocolError", "RemoteProtocolError",
]
