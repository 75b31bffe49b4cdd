"""The relay's circuits and their limits, pure (times passed in; the ends are opaque objects with a
``peer_id``), in the manner of libp2p circuit-relay v2 reservations but sized for bulk data.

Limits (the bootstrap operator's flags, see docs/user-guide.md "Connectivity"):
- per circuit: bytes relayed (both directions together) and duration;
- per node: concurrent circuits, and bytes relayed for it in the current hour.
A circuit over a limit is closed; both ends get a RelayClose whose reason names the limit, and a
transfer running over it fails with that reason (kacheryfs does not throttle: a relay that is
slower than agreed hides the cost it is meant to show).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

GiB = 1 << 30
NODE_WINDOW = 3600.0


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class RelayLimits:
    circuit_bytes: int = 64 * GiB
    circuit_seconds: float = 24 * 3600.0
    node_circuits: int = 64
    node_bytes: int = 256 * GiB  # per node per hour

    def describe(self, which: str) -> str:
        """The message naming a limit, as the ends of a closed circuit see it."""
        return {
            "circuit-bytes": f"relay limit reached: {_size(self.circuit_bytes)} per circuit (--relay-circuit-bytes)",
            "circuit-seconds": f"relay limit reached: {self.circuit_seconds:g} s per circuit (--relay-circuit-seconds)",
            "node-circuits": f"relay limit reached: {self.node_circuits} circuits per node (--relay-node-circuits)",
            "node-bytes": f"relay limit reached: {_size(self.node_bytes)} per node per hour (--relay-node-bytes)",
        }[which]


class RelayLimitExceeded(Exception):
    def __init__(self, limit: str, message: str, ends: tuple = ()):
        super().__init__(message)
        self.limit = limit
        self.message = message
        self.ends = ends  # of the circuit that was closed (none when a new circuit was refused)


@dataclass
class Circuit:
    ends: tuple
    opened: float
    bytes: int = 0

    def other(self, end):
        return self.ends[1] if end is self.ends[0] else self.ends[0]


@dataclass
class RelayTable:
    """The bootstrap's circuits, with counters for ``status``."""
    limits: RelayLimits = field(default_factory=RelayLimits)
    circuits: dict[int, Circuit] = field(default_factory=dict)
    total_bytes: int = 0
    opened: int = 0
    closed_by_limit: dict[str, int] = field(default_factory=dict)
    _usage: dict[str, tuple[float, int]] = field(default_factory=dict)  # node -> (window start, bytes)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def open(self, a, b, now: float) -> int:
        """A new circuit between two ends; raises RelayLimitExceeded."""
        for end in (a, b):
            if sum(1 for c in self.circuits.values() if end in c.ends) >= self.limits.node_circuits:
                self._over("node-circuits")
            if self._used(end.peer_id, now) >= self.limits.node_bytes:
                self._over("node-bytes")
        circuit = next(self._ids)
        self.circuits[circuit] = Circuit((a, b), now)
        self.opened += 1
        return circuit

    def route(self, end, circuit: int, nbytes: int, now: float):
        """The other end for ``nbytes`` arriving from ``end`` on ``circuit``, or None if there is no
        such circuit of ``end``. Raises RelayLimitExceeded (the circuit is then gone)."""
        c = self.circuits.get(circuit)
        if c is None or end not in c.ends:
            return None
        if now - c.opened > self.limits.circuit_seconds:
            self._drop(circuit, "circuit-seconds")
        if c.bytes + nbytes > self.limits.circuit_bytes:
            self._drop(circuit, "circuit-bytes")
        for e in c.ends:
            if self._used(e.peer_id, now) + nbytes > self.limits.node_bytes:
                self._drop(circuit, "node-bytes")
        c.bytes += nbytes
        self.total_bytes += nbytes
        for e in c.ends:
            start, used = self._usage[e.peer_id]
            self._usage[e.peer_id] = (start, used + nbytes)
        return c.other(end)

    def expired(self, now: float) -> list[tuple[int, Circuit, str]]:
        """Circuits past their duration, removed; (id, circuit, reason) for closing both ends."""
        gone = [cid for cid, c in self.circuits.items() if now - c.opened > self.limits.circuit_seconds]
        out = []
        for cid in gone:
            out.append((cid, self.circuits.pop(cid), self.limits.describe("circuit-seconds")))
            self.closed_by_limit["circuit-seconds"] = self.closed_by_limit.get("circuit-seconds", 0) + 1
        return out

    def close(self, circuit: int) -> Circuit | None:
        return self.circuits.pop(circuit, None)

    def drop_end(self, end) -> list[tuple[int, object]]:
        """``end`` went away: its circuits go; (id, other end) for telling the others."""
        gone = [(cid, c.other(end)) for cid, c in self.circuits.items() if end in c.ends]
        for cid, _ in gone:
            del self.circuits[cid]
        return gone

    def status(self) -> dict:
        return {"bytes": self.total_bytes, "open": len(self.circuits), "opened": self.opened,
                "closed_by_limit": dict(self.closed_by_limit),
                "circuits": [{"id": cid, "bytes": c.bytes, "ends": [e.peer_id for e in c.ends]}
                             for cid, c in self.circuits.items()]}

    def _used(self, node: str, now: float) -> int:
        start, used = self._usage.get(node, (now, 0))
        if now - start >= NODE_WINDOW:
            start, used = now, 0
        self._usage[node] = (start, used)
        return used

    def _drop(self, circuit: int, limit: str):
        c = self.circuits.pop(circuit)
        self._over(limit, c.ends)

    def _over(self, limit: str, ends: tuple = ()):
        self.closed_by_limit[limit] = self.closed_by_limit.get(limit, 0) + 1
        raise RelayLimitExceeded(limit, self.limits.describe(limit), ends)
