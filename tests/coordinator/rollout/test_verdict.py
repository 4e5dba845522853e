"""The canary verdict on its own: samples in, a decision with its statistics out."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.rollout.verdict import (
    KEEP,
    PROMOTE,
    ROLLBACK,
    WAIT,
    Margins,
    Sample,
    judge,
    ks_statistic,
)

RNG = np.random.default_rng(0)


def sample(requests=400, errors=0, latency=0.005, confidence=(0.9, 0.05), items=None,
           escalated=0, agreed=0, compared=0):
    lat = tuple(RNG.normal(latency, latency / 10, requests - errors).clip(1e-4))
    conf = tuple(RNG.normal(*confidence, items or requests).clip(0, 1)) if confidence else ()
    return Sample(requests, errors, lat, conf, items or requests, escalated, agreed, compared)


def test_waits_for_the_minimum_sample():
    v = judge(sample(requests=400), sample(requests=50, errors=50), Margins(min_requests=100))
    assert v.decision == WAIT and v.stats["canary_requests"] == 50


def test_an_equal_canary_is_kept_and_promoted_after_enough_requests():
    assert judge(sample(), sample()).decision == KEEP
    assert judge(sample(), sample(), Margins(promote_after=300)).decision == PROMOTE


@pytest.mark.parametrize("canary,reason", [
    (dict(errors=40), "error rate 0.100 vs stable 0.000"),
    (dict(latency=0.02), "latency p95"),
    (dict(confidence=(0.6, 0.1)), "confidence fell"),
    (dict(escalated=100), "escalation rate 0.250"),
    (dict(agreed=50, compared=200), "agrees with stable on 0.250 of 200 shadowed items"),
])
def test_each_regression_rolls_back_with_its_reason(canary, reason):
    v = judge(sample(escalated=4), sample(**canary))
    assert v.decision == ROLLBACK
    assert any(reason in r for r in v.reasons), v.reasons


def test_a_canary_more_confident_than_stable_is_not_a_regression():
    assert judge(sample(confidence=(0.6, 0.1)), sample(confidence=(0.95, 0.02))).decision == KEEP


def test_agreement_needs_its_own_minimum():
    v = judge(sample(), sample(agreed=5, compared=10), Margins(min_shadowed=100))
    assert v.decision == KEEP and v.stats["agreement"] == 0.5


def test_models_without_confidence_compare_errors_and_latency_only():
    v = judge(sample(confidence=None), sample(confidence=None, errors=100))
    assert v.decision == ROLLBACK and "confidence_ks" not in v.stats


@pytest.mark.parametrize("field,value", [("min_requests", 0), ("error_rate", 2.0),
                                          ("latency_p95_ratio", 0.5), ("confidence_ks", 0.0),
                                          ("promote_after", 10)])
def test_margins_out_of_range_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Margins(**{field: value}).check()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=50),
       st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_ks_statistic_is_the_largest_cdf_gap(a, b):
    ks = ks_statistic(np.array(a), np.array(b))
    points = sorted(set(a) | set(b))
    brute = max(abs(sum(x <= p for x in a) / len(a) - sum(x <= p for x in b) / len(b))
                for p in points)
    assert ks == pytest.approx(brute)
    assert ks_statistic(np.array(a), np.array(a)) == 0.0
