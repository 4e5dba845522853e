"""The pure drift statistics (PSI, KS, mean shift, the verdict) and the coordinator's
drift watch (merging nodes' windows, warnings once per crossing)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from coordinator.monitoring.drift import (
    PSI_EPSILON,
    Stats,
    Thresholds,
    assess,
    groups,
    ks_statistic,
    mean_shift,
    merge,
    psi,
)
from coordinator.monitoring.drift_watch import DriftWatch, NodeDrift


def test_psi_matches_the_formula_on_groups_holding_enough_of_the_reference():
    ref, win = [50, 30, 20], [20, 30, 50]
    expected = sum((a - e) * math.log(a / e) for e, a in ((.5, .2), (.3, .3), (.2, .5)))
    assert psi(ref, win) == pytest.approx(expected)  # 0.5498: a significant shift
    assert psi(ref, ref) == 0.0
    assert psi(ref, [5, 3, 2]) == pytest.approx(0.0)  # proportions, not counts


def test_an_empty_group_is_replaced_by_epsilon_not_infinity():
    value = psi([50, 50], [100, 0])
    e, a = 0.5, PSI_EPSILON
    assert value == pytest.approx((1 - .5) * math.log(1 / .5) + (a - e) * math.log(a / e))
    assert math.isfinite(value)


def test_sparse_bins_are_grouped_before_psi():
    # a peaked reference (confidences): 92 % in the top bin, the rest spread thinly
    ref = [1] * 40 + [460]
    assert groups(ref).tolist() == [0, 25]  # 25 bins make the first 5 %; the rest with the top
    window = [0] * 40 + [460]
    window[3], window[30] = 25, 15  # as much in each group, in other thin bins
    assert psi(ref, window) < 0.01
    assert psi(ref, window, min_share=0.0) > 0.25  # bin by bin, noise looks like drift


def test_ks_is_the_largest_distance_between_binned_cdfs():
    assert ks_statistic([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(0.5)
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0


def test_empty_sides_give_no_reading_and_other_bins_are_refused():
    assert psi([0, 0], [1, 2]) is None and ks_statistic([1, 2], [0, 0]) is None
    with pytest.raises(ValueError, match="histograms of 2 and 3 bins"):
        psi([1, 2], [1, 2, 3])


def stats(items, hist, conf=(), mean=10.0, std=2.0, n=1000):
    return Stats(items, (n,), (mean * n,), ((std * std + mean * mean) * n,), tuple(hist),
                 tuple(conf))


def test_mean_shift_is_in_reference_standard_deviations():
    assert mean_shift(stats(1, [1]), stats(1, [1], mean=13.0)) == pytest.approx((1.5,))


def test_assess_judges_only_windows_with_enough_items():
    ref = stats(500, [50, 30, 20], [10, 90])
    shifted = stats(150, [20, 30, 50], [10, 90])
    reading = assess(ref, shifted, Thresholds(0.2, 0.5, 100))
    assert reading.judged and reading.drifted
    assert reading.reasons == ("input PSI 0.550 >= 0.2",)
    assert reading.psi["confidence"] == 0.0
    few = assess(ref, stats(50, [20, 30, 50]), Thresholds(0.2, 0.5, 100))
    assert not few.judged and not few.drifted and few.psi["input"] > 0.2


def test_merge_sums_the_windows_of_several_nodes():
    merged = merge([stats(10, [1, 2], [3]), stats(5, [4, 0], [1])])
    assert merged.items == 15 and merged.input == (5, 2) and merged.confidence == (4,)
    assert merged.count == (2000,)


def report(ref, window, segment="cam"):
    return NodeDrift({("m", "1"): ref, ("m", "2"): None}, {("m", "1", segment): window})


def test_watch_warns_once_per_crossing_and_once_when_it_clears(caplog):
    readings = []
    unprofiled = []
    watch = DriftWatch(Thresholds(0.2, 0.5, 100), on_reading=lambda *a: readings.append(a),
                       on_unprofiled=lambda m, v: unprofiled.append((m, v)))
    ref = stats(500, [50, 30, 20])
    with caplog.at_level(logging.INFO, logger="coordinator.monitoring.drift_watch"):
        for _ in range(3):
            watch.report("n1", report(ref, stats(200, [20, 30, 50])))
        assert watch.drifted() == {("m", "1", "cam")}
        for _ in range(3):
            watch.report("n1", report(ref, stats(200, [50, 30, 20])))
    text = caplog.text
    assert text.count("segment 'cam' drifted from its reference over the last 200 items: "
                      "input PSI 0.550 >= 0.2") == 1
    assert text.count("segment 'cam' is back within its thresholds") == 1
    assert text.count("model m version 2 has no reference profile") == 1
    assert unprofiled == [("m", "2")] and watch.drifted() == set()
    assert len(readings) == 6 and readings[0][:3] == ("m", "1", "cam")


def test_watch_merges_nodes_and_forgets_silent_ones():
    now = [0.0]
    seen = {}
    watch = DriftWatch(Thresholds(0.2, 0.5, 100), clock=lambda: now[0], stale_s=10,
                       on_reading=lambda m, v, s, r: seen.__setitem__(s, r))
    ref = stats(500, [50, 30, 20])
    watch.report("n1", report(ref, stats(60, [20, 30, 50])))
    assert not seen["cam"].judged  # 60 items: below the minimum
    watch.report("n2", report(ref, stats(60, [20, 30, 50])))
    assert seen["cam"].judged and seen["cam"].items == 120 and seen["cam"].drifted
    now[0] = 20.0  # n1 has been silent for 20 s
    watch.report("n2", report(ref, stats(60, [20, 30, 50])))
    assert seen["cam"].items == 60


def test_watch_reports_windows_it_cannot_judge_once(caplog):
    watch = DriftWatch(Thresholds())
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert watch.report("n1", report(stats(500, [1, 2]), stats(200, [1, 2, 3]))) == {}
    assert caplog.text.count("windows cannot be judged: histograms of 2 and 3 bins") == 1


def test_psi_rules_of_thumb_on_a_normal_shift():
    """A 0.6-sigma mean shift of a normal variable (Jeffreys divergence 0.36) is
    "significant", a 0.1-sigma one (0.01) below "moderate", on 20 bins over +-4 sigma."""
    edges = np.linspace(-4, 4, 21)
    rng = np.random.default_rng(0)
    ref = np.histogram(rng.normal(size=200_000), edges)[0]
    small = np.histogram(rng.normal(0.1, size=200_000), edges)[0]
    large = np.histogram(rng.normal(0.6, size=200_000), edges)[0]
    assert psi(ref, small) < 0.1 < 0.25 < psi(ref, large)


@pytest.mark.parametrize("flags,message", [
    ({"drift_psi_warn": "0"}, "drift_psi_warn: --drift-psi-warn must be in (0, 100]"),
    ({"drift_ks_warn": "1.5"}, "drift_ks_warn: --drift-ks-warn must be in (0, 1]"),
    ({"drift_min_items": "0"}, "drift_min_items: --drift-min-items must be in"),
    ({"drift_ks_warn": "x"}, "drift_ks_warn: invalid value 'x' from --drift-ks-warn"),
])
def test_thresholds_are_checked_naming_the_flag(flags, message):
    from coordinator.config import build
    from edgeshard.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        build(flags, {})
    assert str(err.value).startswith(message)
