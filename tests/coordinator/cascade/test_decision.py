"""Cascade.decide: the escalation policy over edge probabilities, then the cloud tier.

Rules come from ``parse_cascade`` (real ``EscalationPolicy``); the cloud tier is real,
only its transport is a plain function.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from coordinator.cascade.breaker import BreakerState, CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.decision import Cascade, Decision
from coordinator.cascade.policies import EscalationPolicy
from coordinator.cascade.rules import CascadeRule, parse_cascade

# rows 0 and 2 are confident (max_prob >= 0.8), rows 1 and 3 are not
PROBS = np.array([[0.9, 0.05, 0.05],
                  [0.5, 0.3, 0.2],
                  [0.05, 0.05, 0.9],
                  [0.2, 0.45, 0.35]], dtype=np.float32)
ITEMS = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)  # item i's first value is 2 * i
IDS = ["i0", "i1", "i2", "i3"]


class FakeCloud:
    """Answers label 100 + item's first value; raises while ``down``."""

    def __init__(self, down: bool = False):
        self.down = down
        self.sent: list[np.ndarray] = []
        self.models: list[str] = []

    def __call__(self, cloud_model: str, items: np.ndarray, timeout: float):
        self.sent.append(items.copy())
        self.models.append(cloud_model)
        if self.down:
            raise TimeoutError("cloud timed out")
        return (100 + items[:, 0]).astype(np.int64), np.full(len(items), 0.97, np.float32)


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rules() -> dict[str, CascadeRule]:
    return parse_cascade(("m=m-cloud",), ("m=max_prob:0.8",))


@pytest.fixture
def hooks() -> Counter:
    return Counter()


def make_cascade(rules, hooks, cloud, *, burst=1000.0, failures=5) -> Cascade:
    tier = CloudTier(cloud, CircuitBreaker(failures, 30.0), TokenBucket(0.0, burst), CostMeter(),
                     clock=Clock())
    return Cascade(rules, tier,
                   on_decision=lambda model, outcome, n: hooks.update({(model, outcome): n}))


def test_rules_from_parse_cascade(rules):
    rule = rules["m"]
    assert rule.model == "m" and rule.cloud_model == "m-cloud"
    assert rule.policy == EscalationPolicy("max_prob", 0.8)
    default = parse_cascade(("x=x-cloud",), ())["x"]
    assert default.policy == EscalationPolicy("normalized_entropy", 0.5)


def test_confident_items_stay_on_the_edge_and_unsure_ones_go_to_the_cloud(rules, hooks):
    cloud = FakeCloud()
    cascade = make_cascade(rules, hooks, cloud)
    assert cascade.rule("m") is rules["m"] and cascade.rule("other") is None
    d = cascade.decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert isinstance(d, Decision)
    assert d.escalated.tolist() == [False, True, False, True]
    assert d.cloud_answered.tolist() == [False, True, False, True]
    assert d.degraded.tolist() == [False, False, False, False]
    assert d.tiers == ["edge", "cloud", "edge", "cloud"]
    # the cloud saw exactly the escalated items, under its own model name
    assert cloud.models == ["m-cloud"]
    assert np.array_equal(cloud.sent[0], ITEMS[[1, 3]])
    assert d.labels.tolist() == [0, 102, 2, 106]
    assert d.confidences == pytest.approx([0.9, 0.97, 0.9, 0.97])
    assert d.confidences.dtype == np.float32
    # the edge's own answer is kept for every item
    assert d.edge_labels.tolist() == [0, 0, 2, 1]
    assert d.edge_confidences == pytest.approx([0.9, 0.5, 0.9, 0.45])
    assert d.cloud_labels.tolist() == [-1, 102, -1, 106]
    assert hooks == {("m", "accepted"): 2, ("m", "answered"): 2}


def test_no_escalation_makes_no_cloud_call(hooks):
    rules = parse_cascade(("m=m-cloud",), ("m=never",))
    cloud = FakeCloud()
    d = make_cascade(rules, hooks, cloud).decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert cloud.sent == []
    assert d.tiers == ["edge"] * 4 and d.labels.tolist() == [0, 0, 2, 1]
    assert hooks == {("m", "accepted"): 4}


def test_failing_cloud_leaves_escalations_degraded_with_the_edge_answer(rules, hooks):
    cloud = FakeCloud(down=True)
    cascade = make_cascade(rules, hooks, cloud)
    d = cascade.decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert len(cloud.sent) == 1
    assert d.escalated.tolist() == [False, True, False, True]
    assert d.cloud_answered.tolist() == [False] * 4
    assert d.degraded.tolist() == [False, True, False, True]
    assert d.tiers == ["edge"] * 4
    assert d.labels.tolist() == d.edge_labels.tolist() == [0, 0, 2, 1]
    assert d.confidences == pytest.approx(d.edge_confidences)
    assert hooks == {("m", "accepted"): 2, ("m", "unanswered"): 2}


def test_open_breaker_refuses_without_a_call(rules, hooks):
    cloud = FakeCloud(down=True)
    cascade = make_cascade(rules, hooks, cloud, failures=1)
    cascade.decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert cascade.cloud.breaker.state is BreakerState.OPEN
    hooks.clear()
    cloud.down = False  # it would answer now, but the breaker does not ask it
    d = cascade.decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert len(cloud.sent) == 1
    assert d.degraded.tolist() == [False, True, False, True]
    assert d.labels.tolist() == [0, 0, 2, 1]
    assert hooks == {("m", "accepted"): 2, ("m", "unanswered"): 2}


def test_partial_budget_answers_the_leading_escalations(rules, hooks):
    cloud = FakeCloud()
    d = make_cascade(rules, hooks, cloud, burst=1).decide(rules["m"], ITEMS, PROBS, IDS, 2.0)
    assert np.array_equal(cloud.sent[0], ITEMS[[1]])
    assert d.cloud_answered.tolist() == [False, True, False, False]
    assert d.degraded.tolist() == [False, False, False, True]
    assert d.tiers == ["edge", "cloud", "edge", "edge"]
    assert d.labels.tolist() == [0, 102, 2, 1]
    assert hooks == {("m", "accepted"): 2, ("m", "answered"): 1, ("m", "unanswered"): 1}


def test_random_policy_uses_the_item_ids(hooks):
    rules = parse_cascade(("m=m-cloud",), ("m=random:1.0",))
    cloud = FakeCloud()
    d = make_cascade(rules, hooks, cloud).decide(rules["m"], ITEMS, PROBS, IDS, timeout=2.0)
    assert d.escalated.all() and d.tiers == ["cloud"] * 4
    assert d.labels.tolist() == [100, 102, 104, 106]
    with pytest.raises(ValueError, match="ids"):
        make_cascade(rules, hooks, cloud).decide(rules["m"], ITEMS, PROBS, None, timeout=2.0)
