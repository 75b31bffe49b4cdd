"""Who may open a connection to this node before it has proved anything: limits on handshakes in
progress (in all and per remote address) and on inbound connections per address. Pure: counters
only, no I/O; net/host.py asks it about every accepted TCP connection.

Why: before the handshake completes a connection costs memory and a task but proves nothing, so
one host could hold thousands open. Idle or slow handshakes are cut by a timeout (host.py); these
limits bound how many can be open at once. Relayed connections are counted by the relay instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .. import config as _config


@dataclass(frozen=True)
class Limits:
    """The values come from Config (config.py), which documents them."""

    handshake_timeout: float = _config.DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int = _config.DEFAULT_MAX_HANDSHAKES
    max_handshakes_per_ip: int = _config.DEFAULT_MAX_HANDSHAKES_PER_IP
    max_inbound_per_ip: int = _config.DEFAULT_MAX_INBOUND_PER_IP

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(config.handshake_timeout, config.max_handshakes, config.max_handshakes_per_ip,
                   config.max_inbound_per_ip)


class Ticket:
    """One admitted connection: ``authenticated()`` when its handshake completes, ``release()``
    when it closes (idempotent)."""

    def __init__(self, admission: "Admission", ip: str):
        self._admission = admission
        self.ip = ip
        self._handshaking = True
        self._open = True

    def authenticated(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self._admission._end_handshake(self.ip)

    def release(self) -> None:
        self.authenticated()
        if self._open:
            self._open = False
            self._admission._end_inbound(self.ip)


@dataclass
class Admission:
    limits: Limits = field(default_factory=Limits)
    handshaking: Counter = field(default_factory=Counter)  # ip -> handshakes in progress
    inbound: Counter = field(default_factory=Counter)  # ip -> open inbound connections
    refused: int = 0

    def admit(self, ip: str) -> Ticket | str:
        """A ticket for a new connection from ``ip``, or the reason it is refused."""
        limits = self.limits
        if self.inbound[ip] >= limits.max_inbound_per_ip:
            reason = f"{limits.max_inbound_per_ip} connections from {ip} already"
        elif self.handshaking[ip] >= limits.max_handshakes_per_ip:
            reason = f"{limits.max_handshakes_per_ip} handshakes from {ip} in progress"
        elif sum(self.handshaking.values()) >= limits.max_handshakes:
            reason = f"{limits.max_handshakes} handshakes in progress"
        else:
            self.handshaking[ip] += 1
            self.inbound[ip] += 1
            return Ticket(self, ip)
        self.refused += 1
        return reason

    def _end_handshake(self, ip: str) -> None:
        self.handshaking[ip] -= 1
        if self.handshaking[ip] <= 0:
            del self.handshaking[ip]

    def _end_inbound(self, ip: str) -> None:
        self.inbound[ip] -= 1
        if self.inbound[ip] <= 0:
            del self.inbound[ip]


class LogThrottle:
    """At most ``burst`` log lines, refilled at ``rate`` per second; says how many were skipped.
    A flood of bad connections must not become a flood of log lines (a full disk is a failure too)."""

    def __init__(self, burst: int = 20, rate: float = 1.0):
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._last = None
        self.skipped = 0

    def allow(self, now: float) -> int | None:
        """None: skip this line. Otherwise log it, noting the returned count of lines skipped since."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            self.skipped += 1
            return None
        self._tokens -= 1
        skipped, self.skipped = self.skipped, 0
        return skipped
