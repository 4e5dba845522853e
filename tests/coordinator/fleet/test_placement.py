"""Placement: rendezvous hashing, bounded loads, two choices, slow-node policy.

The movement and balance figures are measured and printed (``pytest -s``), then
asserted against the bounds the algorithms promise.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fleet.placement import (
    BoundedLoadAssigner,
    Candidate,
    load_bound,
    moved_keys,
    pick_for_key,
    pick_least_loaded_of_two,
    rank,
    rendezvous_score,
    top_choice,
)
from coordinator.fleet.rebalance import Ewma, NodeHealth, NodeState, SlowNodePolicy

ROOT = Path(__file__).resolve().parents[3]
N = 10
KEYS = [f"model-{i % 7}/request-{i}" for i in range(20_000)]


def fleet(n: int, **kw) -> list[Candidate]:
    return [Candidate(f"node-{i}", **kw) for i in range(n)]


# --- rendezvous hashing ---------------------------------------------------------------

_SCORES_SCRIPT = """
import json
from coordinator.fleet.placement import rendezvous_score
keys = ["", "model-a/1", "camera-7", "\u00e9t\u00e9"]
print(json.dumps([repr(rendezvous_score(k, f"node-{i}", 1.5)) for k in keys for i in range(4)]))
"""


def test_scores_are_identical_across_processes_with_different_hash_seeds():
    outputs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", _SCORES_SCRIPT], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)
        outputs.append(json.loads(done.stdout))
    here = [repr(rendezvous_score(k, f"node-{i}", 1.5))
            for k in ["", "model-a/1", "camera-7", "\u00e9t\u00e9"] for i in range(4)]
    assert outputs[0] == outputs[1] == here


def test_rankings_are_pinned():
    # A change of hash function reshuffles every key in a running fleet: make it loud.
    nodes = [Candidate(f"node-{i}", float(i % 3 + 1)) for i in range(5)]
    assert rank("model-a/1", nodes) == ["node-0", "node-2", "node-1", "node-3", "node-4"]
    assert rank("camera-7", nodes) == ["node-1", "node-2", "node-0", "node-4", "node-3"]
    assert rank("", nodes) == ["node-4", "node-0", "node-2", "node-1", "node-3"]


def test_score_scales_with_weight_and_zero_weight_scores_zero():
    one = rendezvous_score("k", "node-0")
    assert one > 0
    assert rendezvous_score("k", "node-0", 2.0) == pytest.approx(2 * one)
    assert rendezvous_score("k", "node-0", 0.0) == 0.0


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_score_rejects_bad_weight(weight):
    with pytest.raises(ValueError, match="^weight"):
        rendezvous_score("k", "node-0", weight)


@pytest.fixture(scope="module")
def owners():
    """Each key's owner in a fleet of N, with one node gone, and with one node added."""
    base = fleet(N)
    leaving = "node-3"
    smaller = [c for c in base if c.node_id != leaving]
    larger = base + [Candidate(f"node-{N}")]
    return {
        "base": base, "smaller": smaller, "larger": larger, "leaving": leaving,
        "before": [top_choice(k, base) for k in KEYS],
        "after_leave": [top_choice(k, smaller) for k in KEYS],
        "after_join": [top_choice(k, larger) for k in KEYS],
    }


def test_a_leaving_node_moves_only_its_own_keys(owners):
    share = moved_keys(KEYS, owners["base"], owners["smaller"])
    print(f"\nleave: {share:.4f} of {len(KEYS)} keys moved (1/N = {1 / N:.4f})")
    assert share <= 1.1 / N
    moved = [(b, a) for b, a in zip(owners["before"], owners["after_leave"], strict=True)
             if b != a]
    assert {b for b, _ in moved} == {owners["leaving"]}
    assert len(moved) == owners["before"].count(owners["leaving"])
    assert share == len(moved) / len(KEYS)


def test_a_joining_node_takes_keys_only_for_itself(owners):
    share = moved_keys(KEYS, owners["base"], owners["larger"])
    print(f"\njoin: {share:.4f} of {len(KEYS)} keys moved (1/(N+1) = {1 / (N + 1):.4f})")
    assert share <= 1.1 / (N + 1)
    moved = [a for b, a in zip(owners["before"], owners["after_join"], strict=True) if b != a]
    assert set(moved) == {f"node-{N}"}
    assert share == len(moved) / len(KEYS)


def test_weighted_shares_follow_weights():
    nodes = [Candidate("a", 1.0), Candidate("b", 2.0), Candidate("c", 3.0)]
    counts = Counter(top_choice(k, nodes) for k in KEYS)
    shares = {n: counts[n] / len(KEYS) for n in "abc"}
    print(f"\nweights 1:2:3 -> shares {shares}")
    for node_id, expected in zip("abc", (1 / 6, 2 / 6, 3 / 6), strict=True):
        assert shares[node_id] == pytest.approx(expected, abs=0.01)


def test_rank_breaks_ties_by_node_id_and_puts_drained_nodes_last():
    nodes = [Candidate("z", 0.0), Candidate("b", 1.0), Candidate("a", 0.0)]
    assert rank("k", nodes) == ["b", "a", "z"]
    assert rank("k", []) == []
    assert top_choice("k", [Candidate("a", 0.0)]) is None


def test_duplicate_node_ids_are_rejected():
    with pytest.raises(ValueError, match="^candidates: duplicate node_id 'a'"):
        rank("k", [Candidate("a"), Candidate("a")])


def test_moved_keys_needs_keys():
    with pytest.raises(ValueError, match="^keys"):
        moved_keys([], fleet(2), fleet(3))


@settings(max_examples=200, deadline=None)
@given(key=st.text(), ids=st.lists(st.text(min_size=1), unique=True, max_size=12),
       data=st.data())
def test_rank_is_a_permutation(key, ids, data):
    weights = data.draw(st.lists(st.floats(0, 10), min_size=len(ids), max_size=len(ids)))
    weight_of = dict(zip(ids, weights, strict=True))
    nodes = [Candidate(n, w) for n, w in weight_of.items()]
    ranked = rank(key, nodes)
    assert sorted(ranked) == sorted(ids)
    assert rank(key, list(reversed(nodes))) == ranked
    assert top_choice(key, nodes) == next((n for n in ranked if weight_of[n] > 0), None)


# --- bounded loads ----------------------------------------------------------------------

def skewed_keys(total: int = 10_000) -> list[str]:
    """Few hot keys carry most of the work: plain HRW would put 40 % on one node."""
    rng = random.Random(7)
    keys = ["hot-0"] * (total * 4 // 10) + ["hot-1"] * (total * 2 // 10)
    keys += ["hot-2"] * (total // 10)
    keys += [f"cold-{rng.randrange(300)}" for _ in range(total - len(keys))]
    rng.shuffle(keys)
    return keys


def test_plain_hrw_overloads_on_the_skewed_keys():
    nodes = fleet(N)
    counts = Counter(top_choice(k, nodes) for k in skewed_keys())
    ratio = max(counts.values()) / (10_000 / N)
    print(f"\nplain HRW on skewed keys: max/mean = {ratio:.2f}")
    assert ratio > 3


@pytest.mark.parametrize("epsilon", [0.1, 0.25, 0.5])
def test_bounded_loads_keep_max_over_mean_within_one_plus_epsilon(epsilon):
    nodes = fleet(N)
    assigner = BoundedLoadAssigner({c.node_id: c.weight for c in nodes}, epsilon=epsilon)
    tops: dict[str, str] = {}
    for m, key in enumerate(skewed_keys()):
        top = tops.setdefault(key, top_choice(key, nodes))
        under_bound = assigner.loads[top] < load_bound(epsilon, m, 1.0, N)
        got = assigner.assign(key)
        # Sticks to the HRW owner exactly while the owner is under its bound.
        assert (got == top) == under_bound
        assert max(assigner.loads.values()) <= load_bound(epsilon, m, 1.0, N)
    loads = assigner.loads
    ratio = max(loads.values()) / (sum(loads.values()) / N)
    print(f"\nbounded loads eps={epsilon}: max/mean = {ratio:.4f}, loads {sorted(loads.values())}")
    assert ratio == assigner.max_over_mean()
    assert ratio <= 1 + epsilon


def test_pick_for_key_sticks_to_the_owner_until_its_bound_then_overflows():
    nodes = fleet(4)
    first, second = rank("hot", nodes)[:2]
    # total 5 + 1 new unit, bound = ceil(1.25 * 6 / 4) = 2
    loads = {first: 1, second: 0, **{n.node_id: 2 for n in nodes if n.node_id not in
                                     (first, second)}}
    at = [Candidate(n, 1.0, loads[n]) for n in loads]
    assert pick_for_key("hot", at) == first
    loads[first] = 2
    loads[[n for n in loads if n not in (first, second)][0]] = 1  # same total, owner at bound
    at = [Candidate(n, 1.0, loads[n]) for n in loads]
    assert pick_for_key("hot", at) == second


def test_pick_for_key_respects_capacity_and_drain():
    nodes = fleet(3, capacity=4.0)
    owner = rank("k", nodes)[0]
    full_owner = [Candidate(c.node_id, 1.0, 4.0 if c.node_id == owner else 0.0, 4.0)
                  for c in nodes]
    assert pick_for_key("k", full_owner) == rank("k", nodes)[1]
    drained_owner = [Candidate(c.node_id, 0.0 if c.node_id == owner else 1.0) for c in nodes]
    assert pick_for_key("k", drained_owner) == rank("k", nodes)[1]


@pytest.mark.parametrize("candidates", [
    [],
    fleet(3, load=2.0, capacity=2.0),
    fleet(3, weight=0.0),
], ids=["empty", "all-full", "all-zero-weight"])
def test_pick_for_key_returns_none_when_no_node_can_take_work(candidates):
    assert pick_for_key("k", candidates) is None


@pytest.mark.parametrize("epsilon", [0.0, -0.5, math.nan])
def test_pick_for_key_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="^epsilon"):
        pick_for_key("k", fleet(2), epsilon)


candidates_st = st.lists(
    st.builds(lambda i, w, load, cap: Candidate(f"n{i}", w, load, cap),
              st.integers(0, 30), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
              st.integers(0, 20).map(float),
              st.one_of(st.just(math.inf), st.integers(1, 20).map(float))),
    max_size=10, unique_by=lambda c: c.node_id)


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=8), candidates=candidates_st,
       epsilon=st.sampled_from([0.1, 0.25, 1.0]))
def test_pick_for_key_takes_the_first_ranked_node_under_bound(key, candidates, epsilon):
    got = pick_for_key(key, candidates, epsilon)
    active = [c for c in candidates if c.weight > 0]
    total, wsum = sum(c.load for c in active), sum(c.weight for c in active)
    by_id = {c.node_id: c for c in candidates}

    def fits(c):
        return c.usable and c.load < load_bound(epsilon, total, c.weight, wsum)

    ranked = rank(key, candidates)
    expected = next((n for n in ranked if fits(by_id[n])), None)
    assert got == expected
    if got is not None:
        assert not by_id[got].full and by_id[got].weight > 0
    if active and all(math.isinf(c.capacity) for c in active):
        assert got is not None  # the bounds always leave room somewhere


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.sampled_from(["a", "b", "c", "d", "hot"]), max_size=60),
       weights=st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=6)
       .filter(lambda ws: any(ws)))
def test_assigner_agrees_with_pick_for_key(keys, weights):
    named = {f"n{i}": w for i, w in enumerate(weights)}
    assigner = BoundedLoadAssigner(named, epsilon=0.25)
    for key in keys:
        loads = assigner.loads
        view = [Candidate(n, w, loads.get(n, 0)) for n, w in named.items()]
        assert assigner.assign(key) == pick_for_key(key, view, 0.25)


def test_assigner_release_is_lifo_per_key_and_checks_its_input():
    assigner = BoundedLoadAssigner({"a": 1.0, "b": 1.0}, epsilon=0.5)
    placed = [assigner.assign("k") for _ in range(4)]
    assert sum(assigner.loads.values()) == 4
    assert [assigner.release("k") for _ in range(4)] == placed[::-1]
    assert assigner.loads == {"a": 0, "b": 0}
    assert assigner.max_over_mean() == 0.0
    with pytest.raises(KeyError, match="'k'"):
        assigner.release("k")
    with pytest.raises(ValueError, match="^weights"):
        BoundedLoadAssigner({"a": 0.0})
    with pytest.raises(ValueError, match="^epsilon"):
        BoundedLoadAssigner({"a": 1.0}, epsilon=0)


# --- power of two choices ---------------------------------------------------------------

def _gap_after_picks(choose, picks: int = 1_000, n: int = N) -> float:
    loads = {f"node-{i}": 0 for i in range(n)}
    for _ in range(picks):
        loads[choose([Candidate(k, 1.0, v) for k, v in loads.items()])] += 1
    return max(loads.values()) - picks / n


def test_two_choices_balance_far_better_than_one_random_choice():
    rng_two, rng_one = random.Random(42), random.Random(42)
    two = _gap_after_picks(lambda cs: pick_least_loaded_of_two(cs, rng_two))
    one = _gap_after_picks(lambda cs: rng_one.choice(cs).node_id)
    print(f"\n1000 picks on {N} nodes: max - mean = {two} (two choices), {one} (one choice)")
    assert two <= 3
    assert one > 2 * two


def test_two_choices_edge_cases():
    rng = random.Random(1)
    assert pick_least_loaded_of_two([], rng) is None
    assert pick_least_loaded_of_two(fleet(3, load=5.0, capacity=5.0), rng) is None
    assert pick_least_loaded_of_two(fleet(3, weight=0.0), rng) is None
    state = rng.getstate()
    only = [Candidate("a", 1.0, 5.0, 5.0), Candidate("b", 1.0, 9.0), Candidate("c", 0.0)]
    assert pick_least_loaded_of_two(only, rng) == "b"
    assert rng.getstate() == state


def test_two_choices_compares_load_per_weight():
    # Both are always sampled; "slow" has fewer requests but a third of the weight.
    nodes = [Candidate("fast", 1.0, 4.0), Candidate("slow", 0.3, 2.0)]
    assert pick_least_loaded_of_two(nodes, random.Random(0)) == "fast"


@settings(max_examples=200, deadline=None)
@given(candidates=candidates_st, seed=st.integers(0, 2**32))
def test_two_choices_never_picks_an_unusable_node(candidates, seed):
    got = pick_least_loaded_of_two(candidates, random.Random(seed))
    usable = {c.node_id for c in candidates if c.usable}
    assert (got in usable) if usable else got is None
    shuffled = list(reversed(candidates))
    assert pick_least_loaded_of_two(shuffled, random.Random(seed)) == got


@pytest.mark.parametrize("kwargs,name", [
    ({"node_id": ""}, "node_id"),
    ({"node_id": "a", "weight": -1.0}, "weight"),
    ({"node_id": "a", "weight": math.nan}, "weight"),
    ({"node_id": "a", "load": -1.0}, "load"),
    ({"node_id": "a", "load": math.inf}, "load"),
    ({"node_id": "a", "capacity": 0.0}, "capacity"),
])
def test_candidate_validates_its_fields(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        Candidate(**kwargs)


# --- slow nodes --------------------------------------------------------------------------

def _fleet_latencies(d: float) -> dict[str, float]:
    return {"a": 10.0, "b": 10.0, "c": 10.0, "d": d}


def test_a_node_three_times_slower_than_the_median_is_down_weighted():
    policy = SlowNodePolicy()
    assert policy.update(_fleet_latencies(10.0), now=0.0)["d"] == 1.0
    assert policy.update(_fleet_latencies(30.0), now=5.0)["d"] == 1.0  # still dwelling
    weights = policy.update(_fleet_latencies(30.0), now=10.0)
    assert weights == {"a": 1.0, "b": 1.0, "c": 1.0, "d": pytest.approx(1 / 3)}
    assert policy.health["d"].state is NodeState.SLOW
    assert policy.health["d"].since == 10.0
    # A node first seen slow is slow at once; the multiplier is clamped at min_weight.
    fresh = SlowNodePolicy(min_weight=0.2)
    assert fresh.update(_fleet_latencies(1000.0), now=0.0)["d"] == 0.2


def test_latency_between_the_thresholds_keeps_the_state():
    policy = SlowNodePolicy()
    policy.update(_fleet_latencies(25.0), now=0.0)
    history = [policy.update(_fleet_latencies(25.0 if t % 2 else 15.0), now=float(t))["d"]
               for t in range(1, 100)]
    assert all(w < 1.0 for w in history)  # 15 is below slow (20) but above recover (13)
    policy = SlowNodePolicy()
    policy.update(_fleet_latencies(15.0), now=0.0)
    assert all(policy.update(_fleet_latencies(19.0 if t % 2 else 14.0), now=float(t))["d"] == 1.0
               for t in range(1, 100))


def test_oscillation_across_both_thresholds_switches_at_most_once_per_dwell():
    policy = SlowNodePolicy(min_dwell_s=10.0)
    switches = []
    state = None
    for t in range(0, 61):
        policy.update(_fleet_latencies(30.0 if t % 2 else 10.0), now=float(t))
        health = policy.health["d"]
        if health.state is not state:
            switches.append(health.since)
            state = health.state
    print(f"\nflapping latency for 60 s, dwell 10 s: state changes at {switches}")
    assert len(switches) <= 60 // 10 + 1
    assert all(b - a >= 10.0 for a, b in zip(switches, switches[1:], strict=False))
    without_dwell = SlowNodePolicy(min_dwell_s=0.0)
    flips = {without_dwell.update(_fleet_latencies(30.0 if t % 2 else 10.0), now=float(t))["d"]
             for t in range(10)}
    assert sorted(flips) == pytest.approx([1 / 3, 1.0])  # the dwell, not luck, held it steady


def test_a_slow_node_recovers_below_the_recover_threshold():
    policy = SlowNodePolicy()
    policy.update(_fleet_latencies(30.0), now=0.0)
    assert policy.update(_fleet_latencies(12.0), now=5.0)["d"] == pytest.approx(10 / 12)
    assert policy.health["d"].state is NodeState.SLOW  # fast enough, but still dwelling
    assert policy.update(_fleet_latencies(9.0), now=6.0)["d"] == 1.0  # faster than median
    assert policy.update(_fleet_latencies(14.0), now=20.0)["d"] == pytest.approx(10 / 14)
    assert policy.update(_fleet_latencies(12.0), now=21.0)["d"] == 1.0
    assert policy.health["d"] == NodeHealth(NodeState.NORMAL, 21.0)


def test_policy_forgets_missing_nodes_and_handles_tiny_fleets():
    policy = SlowNodePolicy()
    policy.update(_fleet_latencies(30.0), now=0.0)
    policy.update({"a": 10.0, "b": 10.0}, now=1.0)
    assert set(policy.health) == {"a", "b"}
    assert policy.update({"a": 99.0}, now=2.0) == {"a": 1.0}
    assert policy.update({}, now=3.0) == {}
    assert policy.health == {}
    # Two nodes: the slower is compared with the faster (low median).
    assert policy.update({"a": 10.0, "b": 30.0}, now=4.0)["b"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("kwargs,name", [
    ({"slow_factor": 1.2}, "slow_factor"),
    ({"recover_factor": 0.5}, "recover_factor"),
    ({"min_weight": 0.0}, "min_weight"),
    ({"min_weight": 1.5}, "min_weight"),
    ({"min_dwell_s": -1.0}, "min_dwell_s"),
])
def test_policy_validates_its_fields(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        SlowNodePolicy(**kwargs)


def test_policy_rejects_bad_latency_and_time_going_backwards():
    policy = SlowNodePolicy()
    with pytest.raises(ValueError, match=r"^latencies\['a'\]"):
        policy.update({"a": -1.0}, now=0.0)
    policy.update({"a": 1.0}, now=5.0)
    with pytest.raises(ValueError, match="^now"):
        policy.update({"a": 1.0}, now=4.0)


# --- Ewma -------------------------------------------------------------------------------

def test_ewma_per_sample():
    e = Ewma(alpha=0.5)
    assert e.value is None
    assert e.update(10.0, now=0.0) == 10.0
    assert e.update(20.0, now=0.0) == 15.0


def test_ewma_per_time_halves_old_samples_and_counts_bursts_equally():
    e = Ewma(half_life_s=2.0)
    e.update(10.0, now=0.0)
    assert e.update(40.0, now=2.0) == pytest.approx((10 * 0.5 + 40) / 1.5)
    burst = Ewma(half_life_s=2.0)
    for v in (10.0, 20.0, 30.0):
        burst.update(v, now=1.0)
    assert burst.value == pytest.approx(20.0)
    with pytest.raises(ValueError, match="^now"):
        burst.update(1.0, now=0.5)


@pytest.mark.parametrize("kwargs,name", [
    ({}, "alpha or half_life_s"),
    ({"alpha": 0.5, "half_life_s": 1.0}, "alpha or half_life_s"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.5}, "alpha"),
    ({"half_life_s": -1.0}, "half_life_s"),
])
def test_ewma_validates_its_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        Ewma(**kwargs)
