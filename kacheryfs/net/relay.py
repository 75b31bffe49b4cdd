"""Relaying through a bootstrap for nodes that cannot reach each other directly.

The bootstrap only forwards RelayData between two sessions; the two nodes run the normal handshake
inside the circuit, so the relay sees ciphertext and cannot impersonate either side. Limits per
circuit (bytes) and per node (open circuits) keep a relay from being used as free bulk transport
without bound (the idea of libp2p circuit-relay v2 reservations).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import trio

from ..errors import PeerGone
from ..protocol.messages import RelayClose, RelayData
from .session import PeerSession

log = logging.getLogger(__name__)

RELAY_PIECE = 1 << 20
MAX_CIRCUIT_BYTES = 64 << 30
MAX_CIRCUITS_PER_NODE = 64


class RelayStream(trio.abc.Stream):
    """A byte stream over one circuit of a session to a relay."""

    def __init__(self, relay: PeerSession, circuit: int, on_close=None):
        self.relay = relay
        self.circuit = circuit
        self._send, self._receive = trio.open_memory_channel(64)
        self._closed = False
        self._on_close = on_close

    def feed(self, data: bytes) -> None:
        """Bytes arrived for this circuit (called in order by the relay session's receive loop)."""
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            # the reader is 64 MiB behind: treat as a broken circuit rather than block the relay session
            log.warning("relay circuit %d overflowed; closing it", self.circuit)
            self.remote_closed()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def remote_closed(self) -> None:
        self._send.close()

    async def send_all(self, data) -> None:
        if self._closed:
            raise trio.ClosedResourceError()
        view = memoryview(data)
        try:
            for start in range(0, len(view), RELAY_PIECE):
                await self.relay.send(RelayData(circuit=self.circuit, payload=bytes(view[start:start + RELAY_PIECE])))
        except PeerGone:
            raise trio.BrokenResourceError("relay gone") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes=None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError()
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return b""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send.close()
        if self._on_close:
            self._on_close(self)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.relay.send(RelayClose(circuit=self.circuit))
            except PeerGone:
                pass


@dataclass
class Circuit:
    ends: tuple[PeerSession, PeerSession]
    bytes: int = 0

    def other(self, session: PeerSession) -> PeerSession:
        return self.ends[1] if session is self.ends[0] else self.ends[0]


class RelayTable:
    """The bootstrap's circuits."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.circuits: dict[int, Circuit] = {}

    def open(self, a: PeerSession, b: PeerSession) -> int | None:
        for s in (a, b):
            if sum(1 for c in self.circuits.values() if s in c.ends) >= MAX_CIRCUITS_PER_NODE:
                return None
        circuit = next(self._ids)
        self.circuits[circuit] = Circuit((a, b))
        return circuit

    def route(self, session: PeerSession, circuit: int, nbytes: int) -> PeerSession | None:
        c = self.circuits.get(circuit)
        if c is None or session not in c.ends:
            return None
        c.bytes += nbytes
        if c.bytes > MAX_CIRCUIT_BYTES:
            del self.circuits[circuit]
            return None
        return c.other(session)

    def close(self, circuit: int) -> Circuit | None:
        return self.circuits.pop(circuit, None)

    def drop_session(self, session: PeerSession) -> list[tuple[int, PeerSession]]:
        gone = [(cid, c.other(session)) for cid, c in self.circuits.items() if session in c.ends]
        for cid, _ in gone:
            del self.circuits[cid]
        return gone
