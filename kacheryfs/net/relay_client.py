"""A node's side of relaying: sessions carried through a circuit of a bootstrap it registered with.

It opens circuits to peers it cannot reach directly (a way of dialing, net/dialing.py), and
accepts circuits a bootstrap opens to it, but only from the bootstraps it registered with. Circuit
bytes are fed to the circuit's stream in order (inline handlers); the handshake and the session
inside run exactly as over TCP.
"""

from __future__ import annotations

import logging

from ..errors import KacheryError, RequestFailed
from ..protocol.messages import RelayClose, RelayData, RelayIncoming, RelayOpen, RelayOpened
from .dialing import DIAL_ERRORS, DialTarget
from .host import SessionHost
from .relay import RelayStream
from .session import PeerSession

log = logging.getLogger(__name__)

RELAY_OPEN_TIMEOUT = 10.0


class RelayClient:
    def __init__(self, host: SessionHost):
        self.host = host
        self.relays: set[PeerSession] = set()  # sessions to bootstraps we registered with
        self._streams: dict[tuple[int, int], RelayStream] = {}  # (id(relay session), circuit)
        host.register(RelayIncoming, self._incoming, inline=True)
        host.register(RelayData, self._data, inline=True)
        host.register(RelayClose, self._closed, inline=True)
        host.watch_sessions(closed=self._session_closed)

    def trust(self, relay: PeerSession) -> None:
        """A bootstrap we registered with: it may open circuits to us."""
        self.relays.add(relay)

    async def dial(self, target: DialTarget) -> bool:
        """A way of dialing: through the bootstrap that introduced the peer."""
        if target.via is None or target.via.closed.is_set():
            return False
        try:
            await self.connect_via_relay(target.via, target.node)
            return True
        except DIAL_ERRORS as exc:
            log.info("could not reach %s through the relay: %r", target.node[:12], exc)
            return False

    async def connect_via_relay(self, relay: PeerSession, node: str) -> PeerSession:
        try:
            reply = await relay.request(RelayOpen(req=relay.next_req(), target=node), RELAY_OPEN_TIMEOUT)
        except RequestFailed as exc:
            raise KacheryError(f"the relay refused a circuit: {exc}") from None
        if not isinstance(reply, RelayOpened):
            raise KacheryError("relay refused")
        stream = self._streams[(id(relay), reply.circuit)] = RelayStream(relay, reply.circuit, self._forget)
        return await self.host.open_session(stream, f"relay:{relay.remote}", "relayed", expected_peer=node)

    def _forget(self, stream: RelayStream) -> None:
        self._streams.pop((id(stream.relay), stream.circuit), None)

    async def _incoming(self, session: PeerSession, msg: RelayIncoming) -> None:
        if session not in self.relays:
            return  # only our own bootstraps may relay to us
        stream = self._streams[(id(session), msg.circuit)] = RelayStream(session, msg.circuit, self._forget)
        self.host.start_soon(self.host.accept, stream, f"relay:{session.remote}", "relayed")

    async def _data(self, session: PeerSession, msg: RelayData) -> None:
        stream = self._streams.get((id(session), msg.circuit))
        if stream is not None:
            await stream.feed(msg.payload)

    async def _closed(self, session: PeerSession, msg: RelayClose) -> None:
        stream = self._streams.pop((id(session), msg.circuit), None)
        if stream is not None:
            if msg.reason:
                log.info("relay circuit %d closed by the relay: %s", msg.circuit, msg.reason)
            stream.remote_closed(msg.reason)

    def _session_closed(self, session: PeerSession) -> None:
        self.relays.discard(session)
        for key in [k for k in self._streams if k[0] == id(session)]:
            self._streams.pop(key).remote_closed()
