"""Hole punching, the bootstrap's side: tells each registering node the address it sees, and
forwards punch messages between registered nodes after the PunchBroker's checks (only addresses it
observed itself, only to the node asked, rate-limited per node). A refused message is answered
with an ErrorResponse naming the reason when it has a request id, logged and counted otherwise;
it never takes the bootstrap down.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import trio

from ..protocol.messages import (
    ErrorResponse, Message, Observed, PunchIncoming, PunchReady, PunchReply, PunchRequest, PunchSync,
)
from ..protocol.punch import PunchBroker, PunchRefused
from .session import PeerGone, PeerSession
from .sockets import format_addr

log = logging.getLogger(__name__)


def observed_addr(session: PeerSession) -> str | None:
    """"host:port" (IPv6 bracketed) the session's TCP connection came from; None if not TCP."""
    host, sep, port = session.remote.rpartition(":")
    if not sep or not port.isdigit() or session.remote.startswith("relay:"):
        return None
    return format_addr(host.strip("[]"), int(port))


class PunchService:
    def __init__(self, sessions: Mapping[str, PeerSession], is_registered: Callable[[str], bool],
                 share_channel: Callable[[str, str], bool] = lambda a, b: True, broker: PunchBroker | None = None):
        self.sessions = sessions
        self.is_registered = is_registered
        self.share_channel = share_channel  # punches only between nodes registered in one channel
        self.broker = broker or PunchBroker()

    def observed(self, node: str) -> set[str]:
        """What this bootstrap saw ``node`` come from (empty unless it registered and is connected)."""
        session = self.sessions.get(node)
        if session is None or session.closed.is_set() or not self.is_registered(node):
            return set()
        addr = observed_addr(session)
        return {addr} if addr else set()

    def observed_message(self, session: PeerSession) -> Observed | None:
        addr = observed_addr(session)
        return Observed(addr=addr) if addr else None

    async def on_request(self, session: PeerSession, msg: PunchRequest) -> Message | None:
        now = trio.current_time()
        try:
            target_observed = self.observed(msg.target) if self.share_channel(session.peer_id, msg.target) else set()
            punch = self.broker.request(now, session.peer_id, msg.req, self.observed(session.peer_id), msg.target,
                                        target_observed, msg.addrs)
        except PunchRefused as refused:
            log.info("refused punch from %s to %s: %s", session.peer_id[:12], msg.target[:12], refused.message)
            return ErrorResponse(req=msg.req, code=refused.code, message=refused.message)
        try:
            await self.sessions[msg.target].send(PunchIncoming(punch=punch.punch, peer=session.peer_id,
                                                                addrs=list(punch.addrs)))
        except (PeerGone, KeyError):
            self.broker.pending.pop(punch.punch, None)
            return ErrorResponse(req=msg.req, code="unknown-target", message="the target left")
        log.info("punch %d: %s -> %s", punch.punch, session.peer_id[:12], msg.target[:12])
        return None  # PunchReady follows the target's PunchReply

    async def on_reply(self, session: PeerSession, msg: PunchReply) -> None:
        try:
            punch = self.broker.reply(trio.current_time(), session.peer_id, msg.punch,
                                      self.observed(session.peer_id), msg.addrs, msg.accept)
        except PunchRefused as refused:
            log.info("refused punch reply from %s: %s", session.peer_id[:12], refused.message)
            return None
        requester = self.sessions.get(punch.requester)
        if requester is None:
            return None
        if msg.accept:
            reply: Message = PunchReady(req=punch.req, punch=punch.punch, addrs=list(msg.addrs))
        else:
            reply = ErrorResponse(req=punch.req, code="declined", message="the target cannot punch")
        try:
            await requester.send(reply)
        except PeerGone:
            pass
        return None

    async def on_sync(self, session: PeerSession, msg: PunchSync) -> None:
        try:
            punch = self.broker.sync(trio.current_time(), session.peer_id, msg.punch, msg.attempt)
        except PunchRefused as refused:
            log.info("refused punch sync from %s: %s", session.peer_id[:12], refused.message)
            return None
        target = self.sessions.get(punch.target)
        if target is not None:
            try:
                await target.send(msg)
            except PeerGone:
                pass
        return None

    def forget(self, session: PeerSession) -> None:
        self.broker.forget(session.peer_id)

    def status(self) -> dict:
        return {"pending": len(self.broker.pending), "forwarded": self.broker.forwarded,
                "refused": dict(self.broker.refused)}
