"""Coordinated TCP hole punching (the DCUtR idea, over our bootstrap): pure state machines.

Both nodes keep a registration session to the bootstrap that they dialled *from their listening
port*, so the address the bootstrap observes for them is the NAT mapping of that port.

    A -> bootstrap   PunchRequest{target B, A's observed addrs}        A notes the time
    bootstrap -> B   PunchIncoming{punch, A, A's addrs}                 (checked: PunchBroker)
    B -> bootstrap   PunchReply{punch, B's observed addrs}
    bootstrap -> A   PunchReady{punch, B's addrs}                       rtt = now - request time
    A -> bootstrap -> B   PunchSync{punch, attempt}
    A dials B's addrs rtt/2 after sending the sync (about when the sync reaches B); B dials A's
    addrs as soon as the sync arrives. Both dial from their listening port (SO_REUSEPORT), so the
    two SYNs cross and each NAT lets the other's through (TCP simultaneous open).

The connection that results is one TCP connection both sides "dialled"; A runs the handshake as
initiator, B as responder, each expecting the other's node id. A failed attempt is retried with a
fresh sync, at most ``attempts`` times in all; then the punch has failed. The node asks for a new
punch after each of RETRY_DELAYS while the peer's session is relayed (a NAT mapping or firewall
state may have changed, a SYN may have been lost); after the last the relay stays.

``InitiatorPunch`` / ``ResponderPunch`` say what to do (``SendSync``, ``Dial``) and how it ended
(``Punched``, ``PunchFailed``); ``PunchBroker`` is the bootstrap's side: it forwards a punch only
between registered nodes, only to addresses it observed itself, and rate-limits requests per node.
No I/O here: times are passed in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

PUNCH_ATTEMPTS = 3
DIAL_TIMEOUT = 2.5  # per attempt: covers the 1 s SYN retransmission of a SYN that met a closed NAT
PUNCH_TTL = 20.0  # the broker forgets a punch this long after it was requested
RTT_CAP = 2.0  # a round trip through the relay longer than this is treated as this (bounded wait)
RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)  # seconds before each new punch after a failed one (~1 min)


@dataclass(frozen=True)
class SendSync:
    attempt: int


@dataclass(frozen=True)
class Dial:
    addrs: tuple[str, ...]
    delay: float  # seconds from now
    attempt: int


@dataclass(frozen=True)
class Punched:
    attempt: int
    rtt: float | None


@dataclass(frozen=True)
class PunchFailed:
    reason: str


class InitiatorPunch:
    """The requesting side (A)."""

    def __init__(self, now: float, attempts: int = PUNCH_ATTEMPTS):
        self.started = now
        self.attempts = attempts
        self.attempt = 0
        self.rtt: float | None = None
        self.addrs: tuple[str, ...] = ()
        self.state = "requesting"  # -> dialing -> punched | failed

    def ready(self, now: float, addrs) -> list:
        """The bootstrap answered with the target's addresses."""
        if self.state != "requesting":
            return []
        self.rtt = min(max(0.0, now - self.started), RTT_CAP)
        self.addrs = tuple(addrs)
        if not self.addrs:
            return self._fail("the target has no address to punch to")
        return self._next_attempt()

    def refused(self, reason: str) -> list:
        if self.state in ("punched", "failed"):
            return []
        return self._fail(reason)

    def dial_result(self, ok: bool) -> list:
        if self.state != "dialing":
            return []
        if ok:
            self.state = "punched"
            return [Punched(self.attempt, self.rtt)]
        if self.attempt >= self.attempts:
            return self._fail(f"no direct connection after {self.attempts} attempts")
        return self._next_attempt()

    def _next_attempt(self) -> list:
        self.attempt += 1
        self.state = "dialing"
        return [SendSync(self.attempt), Dial(self.addrs, self.rtt / 2, self.attempt)]

    def _fail(self, reason: str) -> list:
        self.state = "failed"
        return [PunchFailed(reason)]


class ResponderPunch:
    """The target side (B): dials when a sync arrives, at most ``attempts`` times."""

    def __init__(self, punch: int, peer: str, addrs, attempts: int = PUNCH_ATTEMPTS):
        self.punch = punch
        self.peer = peer
        self.addrs = tuple(addrs)
        self.attempts = attempts
        self.attempt = 0
        self.state = "waiting"  # -> dialing -> waiting ... -> punched | failed

    def sync(self, attempt: int) -> list:
        """A sync for ``attempt``; duplicates, stale or out-of-range attempts are ignored."""
        if self.state != "waiting" or attempt != self.attempt + 1 or attempt > self.attempts:
            return []
        self.attempt = attempt
        self.state = "dialing"
        return [Dial(self.addrs, 0.0, attempt)]

    def dial_result(self, ok: bool) -> list:
        if self.state != "dialing":
            return []
        if ok:
            self.state = "punched"
            return [Punched(self.attempt, None)]
        if self.attempt >= self.attempts:
            self.state = "failed"
            return [PunchFailed(f"no direct connection after {self.attempts} attempts")]
        self.state = "waiting"
        return []

    def timed_out(self) -> list:
        """No sync came in time: give up."""
        if self.state in ("punched", "failed"):
            return []
        self.state = "failed"
        return [PunchFailed("no sync from the peer")]


# ---- the bootstrap's side ----------------------------------------------------------------------
class PunchRefused(Exception):
    """A punch message the bootstrap will not act on; ``code`` goes into the ErrorResponse."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TokenBucket:
    burst: float
    per_second: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class PendingPunch:
    punch: int
    req: int  # the requester's request id, for PunchReady
    requester: str
    target: str
    addrs: tuple[str, ...]
    created: float
    replied: bool = False
    syncs: int = 0


@dataclass
class PunchBroker:
    """Which punches the bootstrap forwards. Every request costs the requester a token (refused
    ones too), so a storm of requests is cut off at ``burst`` and then ``per_second``."""
    burst: float = 5
    per_second: float = 0.5
    max_pending_per_node: int = 4
    attempts: int = PUNCH_ATTEMPTS
    ttl: float = PUNCH_TTL
    pending: dict[int, PendingPunch] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # code -> count
    forwarded: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def request(self, now: float, requester: str, req: int, observed: set[str], target: str,
                target_observed: set[str], addrs) -> PendingPunch:
        """A PunchRequest from ``requester`` (whose registration session the bootstrap saw coming
        from ``observed``); ``target_observed`` is empty if the target is not registered here."""
        self.expire(now)
        bucket = self.buckets.setdefault(requester, TokenBucket(self.burst, self.per_second))
        if not bucket.take(now):
            self._refuse("rate-limited", "too many punch requests; slow down")
        if not observed:
            self._refuse("not-registered", "register with this bootstrap before asking for a punch")
        if target == requester or not target_observed:
            self._refuse("unknown-target", "the target is not registered here")
        bad = [a for a in addrs if a not in observed]
        if bad:
            self._refuse("address-not-observed", f"{bad[0]} is not an address this bootstrap observed for you")
        if sum(1 for p in self.pending.values() if p.requester == requester) >= self.max_pending_per_node:
            self._refuse("busy", "too many punches pending")
        for pid in [pid for pid, p in self.pending.items() if (p.requester, p.target) == (requester, target)]:
            del self.pending[pid]  # a retry supersedes the requester's earlier punch to that target
        punch = PendingPunch(next(self._ids), req, requester, target, tuple(addrs), now)
        self.pending[punch.punch] = punch
        return punch

    def reply(self, now: float, responder: str, punch_id: int, observed: set[str], addrs,
              accept: bool) -> PendingPunch:
        """A PunchReply: only from the node the punch was sent to, once, with observed addresses."""
        self.expire(now)
        punch = self.pending.get(punch_id)
        if punch is None or punch.target != responder or punch.replied:
            self._refuse("no-such-punch", "no punch was asked of you with that id")
        if accept:
            bad = [a for a in addrs if a not in observed]
            if bad:
                self._refuse("address-not-observed", f"{bad[0]} is not an address this bootstrap observed for you")
        punch.replied = True
        if not accept:
            del self.pending[punch_id]
        else:
            self.forwarded += 1
        return punch

    def sync(self, now: float, sender: str, punch_id: int, attempt: int) -> PendingPunch:
        """A PunchSync: only from the requester, after the reply, attempts in order."""
        self.expire(now)
        punch = self.pending.get(punch_id)
        if punch is None or punch.requester != sender or not punch.replied:
            self._refuse("no-such-punch", "no punch of yours with that id is ready")
        if attempt != punch.syncs + 1 or attempt > self.attempts:
            self._refuse("bad-attempt", f"attempt {attempt} out of order (at most {self.attempts})")
        punch.syncs = attempt
        return punch

    def expire(self, now: float) -> None:
        for pid in [pid for pid, p in self.pending.items() if now - p.created > self.ttl]:
            del self.pending[pid]
        for node in [n for n, b in self.buckets.items() if b.tokens >= b.burst and now - b.at > 60]:
            del self.buckets[node]  # full again and idle: no state needed

    def forget(self, node: str) -> None:
        """A node left: its punches go."""
        for pid in [pid for pid, p in self.pending.items() if node in (p.requester, p.target)]:
            del self.pending[pid]

    def _refuse(self, code: str, message: str):
        self.refused[code] = self.refused.get(code, 0) + 1
        raise PunchRefused(code, message)
