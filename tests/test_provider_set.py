"""The bounded active provider set of a download (net/provider_set.py): pure, no sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.net.provider_set import BENCH_SECONDS, STALL_SECONDS, ActiveView, CandidateView, plan


def cand(useful=3, whole=False, benched_until=float("-inf")):
    return CandidateView(whole=whole, useful=useful, benched_until=benched_until)


def act(useful=3, whole=False, in_flight=1, last_progress=0.0):
    return ActiveView(whole=whole, useful=useful, in_flight=in_flight, last_progress=last_progress)


def test_start_takes_the_seeder_first_and_fills_with_useful_candidates():
    candidates = {"seed": cand(16, whole=True), **{f"p{i}": cand(i % 3) for i in range(20)}}
    drop, add = plan({}, candidates, 0.0, limit=8, rng=random.Random(1))
    assert drop == []
    assert add[0] == "seed" and len(add) == 8
    assert all(candidates[p].useful > 0 for p in add[1:])  # nobody that holds nothing needed


def test_a_crowd_start_asks_only_the_seeder_until_leechers_hold_something():
    candidates = {"seed": cand(16, whole=True), **{f"p{i}": cand(0) for i in range(40)}}
    assert plan({}, candidates, 0.0, limit=8) == ([], ["seed"])


def test_nobody_useful_and_nobody_active_takes_waiting_candidates():
    """A download must never stall while a provider is known: those holding nothing yet are asked
    (they announce chunks as they get them), benched ones too."""
    candidates = {f"p{i}": cand(0, benched_until=10.0 if i % 2 else float("-inf")) for i in range(12)}
    drop, add = plan({}, candidates, 0.0, limit=8, rng=random.Random(2))
    assert drop == [] and len(add) == 8 and set(add) <= set(candidates)


def test_stalled_partial_provider_is_replaced():
    active = {"seed": act(16, whole=True, last_progress=9.0), "slow": act(4, last_progress=0.0),
              "ok": act(4, last_progress=9.5)}
    drop, add = plan(active, {"fresh": cand(2)}, STALL_SECONDS + 0.1, limit=3)
    assert drop == ["slow"] and add == ["fresh"]


def test_stalled_provider_stays_when_nobody_could_replace_it():
    active = {"seed": act(16, whole=True), "slow": act(4, last_progress=0.0)}
    assert plan(active, {"useless": cand(0)}, 100.0, limit=3) == ([], [])


def test_the_last_whole_provider_stays_however_slow():
    active = {"seed": act(16, whole=True, in_flight=30, last_progress=0.0)}
    drop, add = plan(active, {f"p{i}": cand(3) for i in range(3)}, 100.0, limit=2)
    assert "seed" not in drop and len(add) == 1


def test_one_of_two_stalled_whole_providers_may_go():
    active = {"a": act(16, whole=True, last_progress=0.0), "b": act(16, whole=True, last_progress=0.0)}
    drop, add = plan(active, {"c": cand(5), "d": cand(5)}, 100.0, limit=2)
    assert len(drop) == 1 and len(add) == 1


def test_useless_idle_partial_provider_gives_way_to_a_useful_one():
    active = {"seed": act(16, whole=True), "done": act(0, in_flight=0, last_progress=0.5)}
    drop, add = plan(active, {"new": cand(5)}, 1.0, limit=2)
    assert drop == ["done"] and add == ["new"]


def test_a_whole_candidate_takes_a_place_in_a_full_set_of_partial_providers():
    active = {f"p{i}": act(i + 1, last_progress=1.0) for i in range(4)}
    drop, add = plan(active, {"seed": cand(16, whole=True)}, 1.5, limit=4)
    assert drop == ["p0"] and add == ["seed"]  # the least useful partial one


def test_a_whole_candidate_gets_a_place_even_in_a_set_over_the_limit():
    """Found by the fuzz test: three useless partial providers, limit 1, a whole candidate."""
    active = {p: act(0, in_flight=0) for p in ("a", "b", "aa")}
    drop, add = plan(active, {"seed": cand(0, whole=True)}, 0.0, limit=1, rng=random.Random(0))
    assert add == ["seed"] and set(drop) == {"a", "b", "aa"}


def test_benched_candidates_wait():
    drop, add = plan({"seed": act(16, whole=True)}, {"x": cand(5, benched_until=BENCH_SECONDS)}, 1.0, limit=4)
    assert (drop, add) == ([], [])
    assert plan({"seed": act(16, whole=True)}, {"x": cand(5, benched_until=BENCH_SECONDS)}, BENCH_SECONDS,
                limit=4) == ([], ["x"])


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        plan({}, {}, 0.0, limit=0)


views = st.builds(ActiveView, whole=st.booleans(), useful=st.integers(0, 20), in_flight=st.integers(0, 8),
                  last_progress=st.floats(0, 20))
cands = st.builds(CandidateView, whole=st.booleans(), useful=st.integers(0, 20),
                  benched_until=st.sampled_from([float("-inf"), 5.0, 50.0]))


@settings(deadline=None, max_examples=400)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), views, max_size=12),
       st.dictionaries(st.text("ijklmnop", min_size=1, max_size=3), cands, max_size=30),
       st.floats(0, 40), st.integers(1, 10), st.integers(0, 2**32))
def test_plan_keeps_its_promises(active, candidates, now, limit, seed):
    drop, add = plan(active, candidates, now, limit=limit, rng=random.Random(seed))
    assert set(drop) <= set(active) and len(set(drop)) == len(drop)
    assert set(add) <= set(candidates) and len(set(add)) == len(add)
    after = (set(active) - set(drop)) | set(add)
    # never larger than the limit unless it already was (nothing is dropped only to shrink it)
    assert len(after) <= max(limit, len(active))
    assert len(drop) <= len(add) + max(0, len(active) - limit)  # replaced, never just dropped below the limit
    whole_before = [p for p, v in active.items() if v.whole]
    if whole_before:  # a whole provider is always kept
        assert any(active[p].whole for p in after if p in active) or any(candidates[p].whole for p in add)
    elif any(c.whole and c.benched_until <= now for c in candidates.values()):
        assert any(candidates[p].whole for p in add)  # a whole provider joins when one is known
    if not active and candidates:
        assert add  # never nobody to ask while somebody is known
    for p in add:
        if active or any(c.benched_until <= now and (c.whole or c.useful) for c in candidates.values()):
            assert candidates[p].benched_until <= now and (candidates[p].whole or candidates[p].useful > 0)
