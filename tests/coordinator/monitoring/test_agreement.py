"""The rolling edge/cloud agreement tracker: windows, the minimum sample, low/recovered."""

from __future__ import annotations

import pytest

from coordinator.monitoring.agreement import AgreementKey, AgreementTracker

KEY = AgreementKey("mnist_edge", "1", "", "audit")


def test_agreement_is_undefined_until_the_minimum_sample():
    t = AgreementTracker(window=10, min_items=4, warn_below=0.5)
    stat, change = t.record(KEY, [True, True, True])
    assert (stat.items, stat.agreed, stat.fraction, stat.low, change) == (3, 3, None, False, None)
    stat, change = t.record(KEY, [False])
    assert stat.fraction == 0.75 and change is None


def test_the_window_keeps_the_last_items_and_warns_once_per_crossing():
    t = AgreementTracker(window=4, min_items=4, warn_below=0.6)
    t.record(KEY, [True] * 4)
    stat, change = t.record(KEY, [False, False])  # window: T T F F
    assert (stat.items, stat.agreed, stat.fraction, stat.low, change) == (4, 2, 0.5, True, "low")
    stat, change = t.record(KEY, [False])  # still low: no second warning
    assert stat.fraction == 0.25 and change is None
    stat, change = t.record(KEY, [True, True, True])  # F T T T
    assert stat.fraction == 0.75 and change == "recovered" and not stat.low


def test_keys_are_kept_apart():
    t = AgreementTracker(window=10, min_items=1)
    t.record(KEY, [True])
    t.record(KEY._replace(version="2"), [False])
    t.record(KEY._replace(source="escalated"), [False, True])
    assert [(s.key.version, s.key.source, s.fraction) for s in t.stats()] == [
        ("1", "audit", 1.0), ("1", "escalated", 0.5), ("2", "audit", 0.0)]
    assert t.stat(KEY._replace(segment="cam-1")) is None


@pytest.mark.parametrize("kwargs,message", [
    ({"window": 0}, "window"), ({"min_items": 0}, "min_items"),
    ({"window": 5, "min_items": 6}, "min_items"), ({"warn_below": 1.5}, "warn_below"),
    ({"warn_below": float("nan")}, "warn_below")])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AgreementTracker(**kwargs)


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source"):
        AgreementTracker().record(KEY._replace(source="shadow"), [True])


def test_escalated_items_are_reported_but_never_judged_low():
    t = AgreementTracker(window=10, min_items=2, warn_below=0.9)
    stat, change = t.record(KEY._replace(source="escalated"), [False] * 5)
    assert stat.fraction == 0.0 and not stat.low and change is None
    stat, change = t.record(KEY, [False] * 5)  # the same on audited items warns
    assert stat.low and change == "low"
