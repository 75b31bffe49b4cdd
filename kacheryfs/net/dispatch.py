"""The dispatch table: which handler answers which message type, and how it runs.

Each role of a node registers the message types it handles, so a new message type is one
``register`` call in the role that owns it; nothing else changes. A handler returns its reply (or
None). Handlers run as tasks, at most SERVE_LIMIT_PER_PEER at once per peer, unless registered
``inline``: those run in the session's receive loop, one after another, for messages whose order
matters (relay circuit bytes, feed pushes), and must not wait on the peer.

A request nobody handles is answered "unsupported". A reply that reaches the table came after its
request gave up (timed out, or cancelled in the endgame): it is dropped. Answering it would send an
error that is itself a reply nobody waits for, and the two peers would trade errors forever.

Pure: no I/O, testable without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ..protocol.messages import ErrorResponse, Message

if TYPE_CHECKING:
    from .session import PeerSession

Handler = Callable[["PeerSession", Message], Awaitable["Message | None"]]

SERVE_LIMIT_PER_PEER = 32  # handler tasks at once per peer; the receive loop waits for a free slot


@dataclass(frozen=True)
class Route:
    handler: Handler
    inline: bool = False


async def unsupported(session: "PeerSession", msg: Message) -> Message:
    return ErrorResponse(req=msg.req, code="unsupported", message=type(msg).__name__)


_UNSUPPORTED = Route(unsupported)


class Dispatch:
    def __init__(self) -> None:
        self._routes: dict[type[Message], Route] = {}

    def register(self, msg_type: type[Message], handler: Handler, *, inline: bool = False) -> None:
        if msg_type.IS_REPLY:
            raise ValueError(f"{msg_type.__name__} is a reply: it goes to the request waiting for it")
        if msg_type in self._routes:
            raise ValueError(f"{msg_type.__name__} already has a handler")
        self._routes[msg_type] = Route(handler, inline)

    def handles(self, msg_type: type[Message]) -> bool:
        return msg_type in self._routes

    def route(self, msg: Message) -> Route | None:
        """How to handle ``msg``, or None to drop it."""
        route = self._routes.get(type(msg))
        if route is not None:
            return route
        if msg.IS_REPLY or not hasattr(msg, "req"):
            return None  # a late reply, or a notice nobody here cares about
        return _UNSUPPORTED
