"""Relaying through a bootstrap for nodes that cannot reach each other directly.

The bootstrap only forwards RelayData between two sessions; the two nodes run the normal handshake
inside the circuit, so the relay sees ciphertext and cannot impersonate either side. Limits per
circuit (bytes) and per node (open circuits) keep a relay from being used as free bulk transport
without bound (the idea of libp2p circuit-relay v2 reservations; protocol/relay_limits.py).
"""

from __future__ import annotations

import logging

import trio

from ..errors import PeerGone
from ..protocol.messages import RelayClose, RelayData
from ..protocol.relay_limits import RelayLimitExceeded, RelayLimits, RelayTable  # noqa: F401 (re-exported)
from .session import PeerSession

log = logging.getLogger(__name__)

RELAY_PIECE = 1 << 20
RELAY_STALL_SECONDS = 30.0


class RelayStream(trio.abc.Stream):
    """A byte stream over one circuit of a session to a relay."""

    def __init__(self, relay: PeerSession, circuit: int, on_close=None):
        self.relay = relay
        self.circuit = circuit
        self._send, self._receive = trio.open_memory_channel(64)
        self._closed = False
        self._on_close = on_close
        self.close_reason: str | None = None  # why the relay closed the circuit (e.g. a limit it names)

    async def feed(self, data: bytes) -> None:
        """Bytes arrived for this circuit (called in order by the relay session's receive loop).

        When the reader is 64 pieces behind, wait for it: the relay session's receive loop stops,
        TCP pushes back to the relay and through it to the sender (flow control, instead of the
        transfer failing whenever the reader is briefly slower, e.g. on a busy machine). A reader
        stuck for RELAY_STALL_SECONDS closes the circuit, so one circuit cannot block the others
        of that relay session for ever."""
        try:
            self._send.send_nowait(data)
            return
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        with trio.move_on_after(RELAY_STALL_SECONDS):
            try:
                await self._send.send(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            return
        log.warning("relay circuit %d: reader stalled for %.0fs; closing it", self.circuit, RELAY_STALL_SECONDS)
        self.remote_closed("relay circuit stalled")

    def remote_closed(self, reason: str | None = None) -> None:
        if reason and self.close_reason is None:
            self.close_reason = reason
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
