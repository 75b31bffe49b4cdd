"""Flash-crowd policy, simulated (tests/swarm_sim.py: the real ChunkScheduler and UploadQueue in
every node, links as numbers, a fake clock): what the protocol costs, apart from the CPU of one
machine running every node."""

from __future__ import annotations

import pytest

from .swarm_sim import simulate


@pytest.mark.parametrize("seed", [0, 1])
def test_super_seeded_crowd_finishes_near_one_upload(seed):
    r = simulate(leechers=20, chunks=16, seed=seed)  # seeder at 4 MB/s, leechers far faster
    assert r.verified_twice == 0
    assert r.once_before_twice  # the seeder sent every chunk once before any chunk twice
    assert r.completion < 1.2, r.completion  # the last leecher, over one upload of the object
    assert r.seeder_share < 1.25, r.seeder_share


def test_arrival_order_at_the_seeder_costs_it_more():
    fifo = [simulate(leechers=20, chunks=16, seed=s, upload_order="fifo") for s in (0, 1)]
    rarest = [simulate(leechers=20, chunks=16, seed=s, upload_order="rarest") for s in (0, 1)]
    assert sum(r.seeder_share for r in rarest) < sum(r.seeder_share for r in fifo)
    assert max(r.completion for r in rarest) < max(r.completion for r in fifo)


def test_charging_what_was_asked_delays_the_crowd():
    """The old rate knob charged a manifest request a whole chunk: each leecher's manifest then
    cost the seeder as much as a chunk."""
    sent = simulate(leechers=11, chunks=16, manifest_from_partial_first=False)
    asked = simulate(leechers=11, chunks=16, manifest_from_partial_first=False, charge_requested=True)
    assert asked.seeder_busy > sent.seeder_busy + 5 * (2**20 / 4e6)
    assert asked.completion > sent.completion


def test_crowd_finishes_when_a_leecher_dies_half_way():
    r = simulate(leechers=11, chunks=16, kill=(0, 2.0))
    assert len(r.done_at) == 10 and r.verified_twice == 0
