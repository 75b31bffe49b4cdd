"""Which providers a download asks: a bounded, well-chosen set. Pure and I/O-free.

In a 50-node crowd every leecher learns of ~40 providers (find answers, Have messages). Asking all
of them cost CPU per byte on a machine running every node: each download's scheduler walked ~36
peers at every event, every provider's Haves woke it, and requests spread over so many queues that
moved requests and endgame duplicates sent 1.3x the needed bytes. A download now *asks* at most
``MAX_ACTIVE`` providers (its active set, the scheduler's peers) and only *knows of* the others
(candidates: what each holds, kept current from finds and Haves, at no scheduler cost).

``plan`` says which active providers to drop and which candidates to take, from views the caller
builds (Download._replan):
- a whole provider (the seeder) is always in the set when one is known: it alone holds the chunks
  nobody else has yet;
- an active provider that has had requests out for STALL_SECONDS without delivering anything is
  replaced, if a useful candidate waits (the last whole provider is kept however slow: a capped
  seeder with a queue is slow, not gone; ``remove_peer`` handles a peer that really left);
- a partial provider holding nothing still needed, with nothing in flight, gives its place to a
  candidate that holds something needed;
- free places go to useful candidates: whole ones first while no whole provider is active, then
  partial ones in random order (not "most chunks first": every leecher would pick the same early
  leechers and crowd their uploads);
- a provider dropped for stalling is benched for BENCH_SECONDS before it may be taken again (the
  caller's business: one that held nothing needed may come back as soon as it does);
- with nobody active and nobody useful, candidates holding nothing needed yet are taken (they
  will announce chunks): a download never stalls while a provider is known.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping

MAX_ACTIVE = 8
# Measured: with 3 s, in a CPU-starved 50-node crowd (deliveries seconds apart) a download replaced
# 22 providers, each time cancelling requests whose replies were under way (1.8x the needed bytes
# sent). Slow but alive providers are the scheduler's business (moves, expiry at 10 s).
STALL_SECONDS = 10.0
BENCH_SECONDS = 5.0


@dataclass(frozen=True)
class ActiveView:
    whole: bool
    useful: int  # needed, unverified chunks it holds
    in_flight: int  # requests out at it
    last_progress: float  # its last delivery, or when it joined the set


@dataclass(frozen=True)
class CandidateView:
    whole: bool
    useful: int
    benched_until: float = float("-inf")


def plan(active: Mapping[str, ActiveView], candidates: Mapping[str, CandidateView], now: float, *,
         limit: int = MAX_ACTIVE, rng: random.Random | None = None) -> tuple[list[str], list[str]]:
    """(active peers to drop, candidates to take), keeping the set at most ``limit`` (>= 1) large."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    rng = rng or random.Random()
    ready = [p for p, c in candidates.items() if p not in active and c.benched_until <= now and (c.whole or c.useful > 0)]
    rng.shuffle(ready)
    # whole first (they are needed while no whole provider is active), then the rest in random order
    ready.sort(key=lambda p: not candidates[p].whole)
    whole_active = [p for p, v in active.items() if v.whole]
    drop: list[str] = []
    for peer, view in active.items():
        if len(drop) >= len(ready):
            break  # only replaced, never just dropped: a slow provider beats none
        stalled = view.in_flight > 0 and now - view.last_progress >= STALL_SECONDS
        useless = not view.whole and view.useful == 0 and view.in_flight == 0
        if view.whole and stalled and len(whole_active) - sum(1 for d in drop if active[d].whole) <= 1:
            continue  # the last whole provider stays: it alone may hold what nobody else has
        if stalled or (useless and any(candidates[p].useful > 0 or candidates[p].whole for p in ready)):
            drop.append(peer)
    room = limit - (len(active) - len(drop))
    add: list[str] = []
    if not whole_active and ready and candidates[ready[0]].whole and room <= 0:
        # the set is full of partial providers and a whole one is known: it takes the place of
        # the least useful partial one not already leaving
        kept = sorted((p for p in active if p not in drop), key=lambda p: (active[p].useful, -active[p].last_progress))
        while room <= 0 and kept:  # (a set over the limit gives up as many places as it takes)
            drop.append(kept.pop(0))
            room += 1
    for peer in ready:
        if room <= 0:
            break
        add.append(peer)
        room -= 1
    if not active and not add:
        # nobody to ask and nobody useful: take those that hold nothing needed yet (a crowd's
        # leechers at the start), to hear of their chunks as they come; benched ones too
        waiting = [p for p in candidates if p not in active]
        rng.shuffle(waiting)
        add = waiting[:limit]
    return drop, add


__all__ = ["ActiveView", "CandidateView", "plan", "MAX_ACTIVE", "STALL_SECONDS", "BENCH_SECONDS"]
