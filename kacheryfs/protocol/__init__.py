"""The wire protocol, pure and I/O-free: messages, framing, and the connection state machine."""

from .connection import (
    Connection, HandshakeComplete, MessageReceived, ProtocolError, LocalProtocolError, RemoteProtocolError,
)
from .messages import *  # noqa: F401,F403
