"""Hole punching, the node's side: drives the pure state machines of protocol/punch.py over the
node's session to a bootstrap, and dials from the listening port (net/sockets.py).

The requester (A) calls ``punch(bootstrap, target)``; the target (B) answers PunchIncoming and
PunchSync as they come. The TCP connection that results goes to ``on_stream``, which runs the
handshake (A as initiator, B as responder, each expecting the other's id) and returns the session.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import trio

from ..errors import KacheryError, PeerGone, PunchError, RequestFailed
from ..protocol.messages import Observed, PunchIncoming, PunchReady, PunchReply, PunchRequest, PunchSync
from ..protocol.punch import (
    DIAL_TIMEOUT, PUNCH_TTL, Dial, InitiatorPunch, Punched, PunchFailed, ResponderPunch, SendSync,
)
from .session import PeerSession
from .sockets import connect_from, format_addr

log = logging.getLogger(__name__)

PUNCH_REPLY_TIMEOUT = 5.0
DIAL_ERRORS = (OSError, KacheryError, trio.TooSlowError, trio.BrokenResourceError)

# (stream, remote "host:port", expected peer id, we are the initiator) -> the session, or None
OnStream = Callable[[trio.SocketStream, str, str, bool], Awaitable["PeerSession | None"]]


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


CONNECT_HOLD = 100.0  # a connect from the listening port is kept trying this long (all retries)


class _PendingConnect:
    """One connect from the listening port to a peer's address, kept running across the attempts
    and retries of punches to it. Closing it after an attempt and opening a new one would change
    the SYN's sequence number, and a NAT that saw the old SYN (its mapping lives ~2 min) then finds
    the answer to the new one out of window and drops it: every later attempt would fail."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.stream: trio.SocketStream | None = None
        self.taken = False


class PunchClient:
    def __init__(self, local: Callable[[], "tuple[str, int] | None"], on_stream: OnStream,
                 start_soon: Callable[..., None]):
        self.local = local  # the listening address to dial from (None: not listening, cannot punch)
        self.on_stream = on_stream
        self.start_soon = start_soon  # runs the connects that outlive one attempt (the node's nursery)
        self._connects: dict[tuple[tuple[str, int], str], _PendingConnect] = {}
        self.observed: dict[int, str] = {}  # id(bootstrap session) -> the address it sees us at
        self.stats = {"attempted": 0, "punched": 0, "failed": 0, "answered": 0, "retries": 0, "last_seconds": None}
        self._responders: dict[tuple[int, int], trio.MemorySendChannel] = {}
        self._awaiting: dict[str, trio.MemorySendChannel] = {}  # address being punched -> its dial

    # ---- what the bootstrap tells us ---------------------------------------------------------
    def on_observed(self, bootstrap: PeerSession, msg: Observed) -> None:
        if self.observed.get(id(bootstrap)) != msg.addr:
            log.info("bootstrap %s sees us at %s", bootstrap.remote, msg.addr)
        self.observed[id(bootstrap)] = msg.addr

    def forget(self, bootstrap: PeerSession) -> None:
        self.observed.pop(id(bootstrap), None)

    def observed_addrs(self) -> list[str]:
        return sorted(set(self.observed.values()))

    def can_punch(self, bootstrap: PeerSession) -> bool:
        return self.local() is not None and id(bootstrap) in self.observed

    # ---- requester ---------------------------------------------------------------------------
    async def punch(self, bootstrap: PeerSession, target: str) -> PeerSession:
        """A direct session to ``target``, or PunchError. Bounded: a few attempts of DIAL_TIMEOUT."""
        mine = self.observed.get(id(bootstrap))
        if self.local() is None or mine is None:
            raise PunchError("no listening port or observed address to punch from")
        self.stats["attempted"] += 1
        started = time.monotonic()
        state = InitiatorPunch(trio.current_time())
        punch_id = 0
        try:
            reply = await bootstrap.request(PunchRequest(req=bootstrap.next_req(), target=target, addrs=[mine]),
                                            PUNCH_REPLY_TIMEOUT)
            if not isinstance(reply, PunchReady):
                raise RequestFailed("unexpected reply")
            punch_id = reply.punch
            events = state.ready(trio.current_time(), reply.addrs)
        except (RequestFailed, PeerGone, trio.TooSlowError) as exc:
            events = state.refused(f"the bootstrap did not coordinate: {exc}")
        while events:
            event, events = events[0], events[1:]
            if isinstance(event, SendSync):
                try:
                    await bootstrap.send(PunchSync(punch=punch_id, attempt=event.attempt))
                except PeerGone:
                    events = state.refused("the bootstrap left")
            elif isinstance(event, Dial):
                session = await self._dial(event, target, initiator=True)
                events = state.dial_result(session is not None)
            elif isinstance(event, Punched):
                self.stats["punched"] += 1
                self.stats["last_seconds"] = round(time.monotonic() - started, 3)
                log.info("punched through to %s (attempt %d, relay rtt %.0f ms, %.2fs in all)", target[:12],
                         event.attempt, (event.rtt or 0) * 1000, time.monotonic() - started)
                return session
            elif isinstance(event, PunchFailed):
                self.stats["failed"] += 1
                raise PunchError(event.reason)
        raise PunchError("punch ended without a result")  # not reached: the machine always ends

    # ---- target ------------------------------------------------------------------------------
    async def on_incoming(self, bootstrap: PeerSession, msg: PunchIncoming) -> None:
        """Answer a punch the bootstrap forwards, then dial on each sync until punched or done."""
        mine = self.observed.get(id(bootstrap))
        key = (id(bootstrap), msg.punch)
        if self.local() is None or mine is None or key in self._responders:
            await _send_quietly(bootstrap, PunchReply(punch=msg.punch, addrs=[], accept=False))
            return
        state = ResponderPunch(msg.punch, msg.peer, msg.addrs)
        started = time.monotonic()
        send, receive = trio.open_memory_channel(8)
        self._responders[key] = send
        self.stats["answered"] += 1
        try:
            await bootstrap.send(PunchReply(punch=msg.punch, addrs=[mine]))
            deadline = trio.current_time() + PUNCH_TTL
            while state.state not in ("punched", "failed"):
                with trio.move_on_after(max(0.0, deadline - trio.current_time())):
                    attempt = await receive.receive()
                    events = state.sync(attempt)
                    for event in events:
                        session = await self._dial(event, msg.peer, initiator=False)
                        events = state.dial_result(session is not None)
                        if any(isinstance(e, Punched) for e in events):
                            self.stats["punched"] += 1
                            self.stats["last_seconds"] = round(time.monotonic() - started, 3)
                            log.info("punched through to %s (asked by it)", msg.peer[:12])
                        for failed in (e for e in events if isinstance(e, PunchFailed)):
                            self.stats["failed"] += 1
                            log.info("no hole punch to %s: %s", msg.peer[:12], failed.reason)
                    continue
                for failed in state.timed_out():
                    self.stats["failed"] += 1
                    log.info("no hole punch to %s: %s", msg.peer[:12], failed.reason)
        except PeerGone:
            pass
        finally:
            del self._responders[key]

    def on_sync(self, bootstrap: PeerSession, msg: PunchSync) -> None:
        send = self._responders.get((id(bootstrap), msg.punch))
        if send is not None:
            try:
                send.send_nowait(msg.attempt)
            except trio.WouldBlock:
                pass  # a flood of syncs: the state machine would ignore them anyway

    # ---- dialling ----------------------------------------------------------------------------
    async def claim_inbound(self, stream: trio.SocketStream, remote: str) -> bool:
        """An inbound connection from an address we are punching to is the punch's connection: the
        peer's SYN met a NAT mapping left open by an earlier attempt and reached our listener
        before our own dial existed (so our connect would fail with EADDRNOTAVAIL: that one TCP
        connection already exists). Hand it to the dial under way; hold it while its session lives."""
        send = self._awaiting.get(remote)
        if send is None:
            return False
        done: list[PeerSession | None] = []
        finished = trio.Event()
        try:
            send.send_nowait((stream, remote, done, finished))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        await finished.wait()
        if done and done[0] is not None:
            await done[0].closed.wait()
        return True

    async def _dial(self, dial: Dial, peer: str, initiator: bool) -> PeerSession | None:
        """Dial every address at once from the listening port after ``dial.delay``; the first TCP
        connection that completes, or that comes in from one of those addresses meanwhile
        (claim_inbound), is handed to on_stream. None if none did."""
        local = self.local()
        if local is None:
            return None
        send, receive = trio.open_memory_channel(len(dial.addrs) + 1)
        for addr in dial.addrs:
            self._awaiting[addr] = send
        winner: list[tuple[trio.SocketStream, str]] = []
        claimed: list[tuple[list, trio.Event]] = []  # the inbound connection that won, if one did
        try:
            async def one(addr: str, cancel: trio.CancelScope) -> None:
                await trio.sleep(dial.delay)
                pending = self._connect(local, addr, peer, dial.attempt)
                with trio.move_on_after(DIAL_TIMEOUT):
                    await pending.done.wait()
                if pending.stream is None or pending.taken or winner:
                    return  # still trying (left for the next attempt), failed, or another won
                pending.taken = True
                winner.append((pending.stream, addr))
                cancel.cancel()

            async def inbound(cancel: trio.CancelScope) -> None:
                stream, addr, done, finished = await receive.receive()
                if winner:
                    finished.set()  # our dial won: the listener closes this one
                    return
                claimed.append((done, finished))
                log.debug("punch to %s: its connection came in at our listener from %s", peer[:12], addr)
                winner.append((stream, addr))
                cancel.cancel()

            with trio.move_on_after(dial.delay + DIAL_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(inbound, nursery.cancel_scope)
                    for addr in dial.addrs:
                        nursery.start_soon(one, addr, nursery.cancel_scope)
        finally:
            for addr in dial.addrs:
                if self._awaiting.get(addr) is send:
                    del self._awaiting[addr]
            send.close()
            while True:  # connections handed over too late: the listener closes them
                try:
                    _stream, _addr, _done, finished = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                finished.set()
        session = None
        try:
            if winner:
                stream, addr = winner[0]
                host, port = split_addr(addr)
                try:
                    session = await self.on_stream(stream, format_addr(host, port), peer, initiator)
                except DIAL_ERRORS as exc:
                    log.info("punched connection to %s failed its handshake: %r", peer[:12], exc)
        finally:
            for done, finished in claimed:  # the listener's task holds that stream while the session lives
                done.append(session)
                finished.set()
        return session


    def _connect(self, local: tuple[str, int], addr: str, peer: str, attempt: int) -> _PendingConnect:
        """The connect to ``addr`` under way, or a new one (in the node's nursery, so that it
        outlives this attempt)."""
        key = (local, addr)
        pending = self._connects.get(key)
        if pending is not None and not (pending.done.is_set() and (pending.stream is None or pending.taken)):
            return pending
        pending = self._connects[key] = _PendingConnect()

        async def run() -> None:
            try:
                host, port = split_addr(addr)
                with trio.fail_after(CONNECT_HOLD):
                    pending.stream = await connect_from(local, host, port)
            except (*DIAL_ERRORS, ValueError) as exc:
                log.debug("punch to %s at %s (attempt %d): %r", peer[:12], addr, attempt, exc)
            finally:
                pending.done.set()
            try:
                with trio.move_on_after(2 * DIAL_TIMEOUT):  # a connection nobody takes is closed
                    while not pending.taken:
                        await trio.sleep(0.05)
            finally:
                if not pending.taken and pending.stream is not None:
                    await trio.aclose_forcefully(pending.stream)
                if self._connects.get(key) is pending:
                    del self._connects[key]

        self.start_soon(run)
        return pending


async def _send_quietly(session: PeerSession, msg) -> None:
    try:
        await session.send(msg)
    except PeerGone:
        pass
