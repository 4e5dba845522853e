"""Calibration: temperature scaling, ECE, threshold sweeps with their bounds, reports."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from coordinator.cascade.calibration import (
    SweepRow,
    apply_temperature,
    cascade_summary,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    pick_threshold,
    short_threshold,
    sweep,
    to_log_probs,
)
from coordinator.cascade.policies import EscalationPolicy

SCORING = ("max_prob", "margin", "entropy", "normalized_entropy", "random")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    u = rng.random((probs.shape[0], 1))
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


@pytest.fixture(scope="module")
def synthetic():
    """Logits and labels drawn from softmax(z / 2.5): softmax(z) is overconfident."""
    rng = np.random.default_rng(20240917)
    z = rng.normal(0.0, 4.0, size=(6000, 10))
    labels = sample_labels(rng, softmax(z / 2.5))
    return z, labels


def test_fit_temperature_recovers_known_temperature(synthetic):
    z, labels = synthetic
    t = fit_temperature(z, labels)
    assert t == pytest.approx(2.5, rel=0.10)
    # NLL is minimal there.
    nll = negative_log_likelihood(z, labels, t)
    assert nll < negative_log_likelihood(z, labels, t * 0.9)
    assert nll < negative_log_likelihood(z, labels, t * 1.1)


def test_fit_from_log_probabilities_equals_fit_from_logits(synthetic):
    z, labels = synthetic
    probs = softmax(z).astype(np.float32)
    t_logits = fit_temperature(z, labels)
    t_probs = fit_temperature(to_log_probs(probs), labels)
    assert t_probs == pytest.approx(t_logits, rel=1e-3)


def test_ece_drops_after_temperature_scaling(synthetic):
    z, labels = synthetic
    probs = softmax(z).astype(np.float32)
    t = fit_temperature(to_log_probs(probs), labels)
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(apply_temperature(probs, t), labels)
    assert before > 0.15
    assert after < 0.03
    assert after < before / 5


def test_ece_of_a_perfectly_calibrated_constant():
    probs = np.tile(np.array([[0.75, 0.25]], np.float32), (8, 1))
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-7)
    assert expected_calibration_error(probs, np.ones(8, np.int64)) == pytest.approx(0.75)


def test_apply_temperature():
    probs = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-6)
    hot = apply_temperature(probs, 1e6)
    np.testing.assert_allclose(hot, 1 / 3, atol=1e-4)
    sharp = apply_temperature(probs, 0.5)
    assert sharp.dtype == np.float32 and sharp[0, 0] > 0.7
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, atol=1e-6)


def test_fit_temperature_rejects_probabilities_and_bad_arguments(synthetic):
    z, labels = synthetic
    with pytest.raises(ValueError, match=r"^logits: these look like probabilities"):
        fit_temperature(softmax(z), labels)
    with pytest.raises(ValueError, match=r"^labels: labels must be in \[0, 10\)"):
        fit_temperature(z, labels + 1)
    with pytest.raises(ValueError, match=r"^labels: expected shape"):
        fit_temperature(z, labels[:10])
    with pytest.raises(ValueError, match=r"^bounds: "):
        fit_temperature(z, labels, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"^temperature: "):
        apply_temperature(softmax(z).astype(np.float32), 0.0)


def test_fit_temperature_at_a_bound_returns_the_bound():
    z = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    assert fit_temperature(z, labels, bounds=(0.5, 10.0)) == 0.5


# --- sweeps ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cascade():
    """Edge probabilities whose confidence is informative; a better, different cloud."""
    rng = np.random.default_rng(7)
    n, k = 600, 5
    truth = rng.integers(0, k, n)
    z = rng.normal(0.0, 1.0, (n, k))
    z[np.arange(n), truth] += rng.gamma(2.0, 1.0, n)
    probs = softmax(z * 1.5).astype(np.float32)
    edge = probs.argmax(axis=1)
    cloud = np.where(rng.random(n) < 0.9, truth, rng.integers(0, k, n))
    return probs, edge, cloud, truth


def test_sweep_matches_policy_decisions_and_bounds(cascade):
    probs, edge, cloud, truth = cascade
    n = len(truth)
    ids = np.arange(n)
    for name in SCORING:
        rows = sweep(probs, edge, cloud, truth, name, ids=ids)
        thresholds = [r.threshold for r in rows]
        assert thresholds == sorted(thresholds)
        for row in rows[::7]:
            mask = EscalationPolicy(name, row.threshold).decide(probs, ids)
            answer = np.where(mask, cloud, edge)
            assert row.escalated == mask.sum()
            assert row.cascade_accuracy == pytest.approx((answer == truth).mean(), abs=1e-12)
            kept = ~mask
            if kept.any():
                assert row.accepted_accuracy == pytest.approx((edge == truth)[kept].mean())
            assert row.cloud_calls_per_1000 == pytest.approx(1000 * mask.sum() / n)
        for row in rows:
            assert row.oracle_accuracy >= row.cascade_accuracy - 1e-12
            assert row.oracle_accuracy >= row.random_accuracy - 1e-12


def test_confidence_policies_beat_random_on_informative_scores(cascade):
    probs, edge, cloud, truth = cascade
    rows = sweep(probs, edge, cloud, truth, "max_prob")
    mid = [r for r in rows if 0.1 <= r.escalation_rate <= 0.5]
    assert mid and all(r.cascade_accuracy > r.random_accuracy for r in mid)


def test_sweep_ends_are_edge_only_and_cloud_only(cascade):
    probs, edge, cloud, truth = cascade
    summary = cascade_summary(edge, cloud, truth)
    first = sweep(probs, edge, cloud, truth, "max_prob", thresholds=[0.0])[0]
    assert first.escalated == 0
    assert first.cascade_accuracy == first.random_accuracy == first.oracle_accuracy
    assert first.cascade_accuracy == summary["edge_only_accuracy"]
    (never,) = sweep(probs, edge, cloud, truth, "never")
    assert never.cascade_accuracy == summary["edge_only_accuracy"]
    (always,) = sweep(probs, edge, cloud, truth, "always")
    assert always.escalation_rate == 1.0 and math.isnan(always.accepted_accuracy)
    assert always.cascade_accuracy == always.random_accuracy == summary["cloud_only_accuracy"]
    full = sweep(probs, edge, cloud, truth, "random", thresholds=[1.0])[0]
    assert full.cascade_accuracy == summary["cloud_only_accuracy"]
    assert max(r.oracle_accuracy for r in sweep(probs, edge, cloud, truth, "max_prob")) == \
        pytest.approx(summary["best_cascade_accuracy"])


def test_random_bound_matches_monte_carlo(cascade):
    probs, edge, cloud, truth = cascade
    n = len(truth)
    rng = np.random.default_rng(3)
    edge_ok, cloud_ok = edge == truth, cloud == truth
    for k in (60, 300):
        row = sweep(probs, edge, cloud, truth, "random", thresholds=[k / n],
                    ids=[f"x{i}" for i in range(n)])[0]
        # The row's own k is whatever the hash gave; simulate that k.
        k_row = row.escalated
        draws = np.array([
            np.where(np.isin(np.arange(n), rng.choice(n, k_row, replace=False)),
                     cloud_ok, edge_ok).mean()
            for _ in range(4000)
        ])
        assert abs(draws.mean() - row.random_accuracy) < 4 * draws.std() / math.sqrt(4000)


def test_oracle_is_the_best_subset_by_brute_force():
    rng = np.random.default_rng(11)
    n = 9
    truth = rng.integers(0, 3, n)
    edge = np.where(rng.random(n) < 0.5, truth, (truth + 1) % 3)
    cloud = np.where(rng.random(n) < 0.6, truth, (truth + 2) % 3)
    probs = softmax(rng.normal(size=(n, 3))).astype(np.float32)
    rows = sweep(probs, edge, cloud, truth, "max_prob")
    for row in rows:
        best = max(
            (np.where(np.isin(np.arange(n), subset), cloud, edge) == truth).mean()
            for subset in itertools.combinations(range(n), row.escalated)
        )
        assert row.oracle_accuracy == pytest.approx(best)


def test_sweep_defaults_and_validation(cascade):
    probs, edge, cloud, truth = cascade
    rows = sweep(probs, None, cloud, truth, "entropy")
    assert rows[0].threshold == pytest.approx(-math.log(5)) and rows[-1].threshold == 0.0
    assert len(sweep(probs, None, cloud, truth, "margin")) > 101
    with pytest.raises(ValueError, match=r"^thresholds: threshold: 1\.5 is outside"):
        sweep(probs, edge, cloud, truth, "max_prob", thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"^cloud_pred: expected shape"):
        sweep(probs, edge, cloud[:5], truth, "max_prob")
    with pytest.raises(ValueError, match=r"^name: unknown escalation policy"):
        sweep(probs, edge, cloud, truth, "confidence")


# --- picking a threshold ----------------------------------------------------------------

def row(threshold: float, escalated: int, accuracy: float, n: int = 100) -> SweepRow:
    return SweepRow("max_prob", threshold, n, escalated, escalated / n, 10.0 * escalated,
                    accuracy, math.nan, 1.0, 0.9)


ROWS = [row(0.0, 0, 0.90), row(0.5, 5, 0.93), row(0.6, 10, 0.95), row(0.65, 10, 0.95),
        row(0.7, 15, 0.95), row(0.8, 20, 0.97), row(0.9, 40, 0.96)]


def test_pick_threshold_by_budget():
    assert pick_threshold(ROWS, budget=0.15).threshold == 0.6  # tie at 0.95 -> lower rate
    assert pick_threshold(ROWS, budget=0.20).threshold == 0.8
    assert pick_threshold(ROWS, budget=0.0).threshold == 0.0
    assert pick_threshold(ROWS, budget=1.0).threshold == 0.8


def test_pick_threshold_by_target_accuracy():
    assert pick_threshold(ROWS, target_accuracy=0.95).threshold == 0.65
    assert pick_threshold(ROWS, target_accuracy=0.96).threshold == 0.8
    with pytest.raises(ValueError, match=r"^target_accuracy: 0\.9900 is not reachable; the "
                                         r"best cascade accuracy in the sweep is 0\.9700"):
        pick_threshold(ROWS, target_accuracy=0.99)


def test_pick_threshold_arguments():
    with pytest.raises(ValueError, match=r"^budget/target_accuracy: give exactly one"):
        pick_threshold(ROWS)
    with pytest.raises(ValueError, match=r"^budget/target_accuracy: give exactly one"):
        pick_threshold(ROWS, budget=0.1, target_accuracy=0.9)
    with pytest.raises(ValueError, match=r"^budget: must be in \[0, 1\]"):
        pick_threshold(ROWS, budget=15)
    with pytest.raises(ValueError, match=r"^budget: no row escalates at most"):
        pick_threshold(ROWS[1:], budget=0.01)


def test_pick_on_a_real_sweep_respects_the_budget(cascade):
    probs, edge, cloud, truth = cascade
    rows = sweep(probs, edge, cloud, truth, "margin")
    chosen = pick_threshold(rows, budget=0.15)
    assert chosen.escalated <= 0.15 * len(truth)
    assert chosen.cascade_accuracy == max(r.cascade_accuracy for r in rows
                                          if r.escalation_rate <= 0.15)


# --- reports ----------------------------------------------------------------------------

def test_write_table_and_plot(cascade, tmp_path):
    pytest.importorskip("matplotlib")
    from coordinator.cascade.report import plot, write_table

    probs, edge, cloud, truth = cascade
    rows = sweep(probs, edge, cloud, truth, "max_prob") + \
        sweep(probs, edge, cloud, truth, "always")
    summary = cascade_summary(edge, cloud, truth)
    nested = {**summary, "chosen": dataclasses.asdict(rows[-1]), "t": np.float32(1.5)}
    write_table(rows, tmp_path / "s.csv", tmp_path / "s.json", nested)
    with open(tmp_path / "s.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[-1]["accepted_accuracy"] == ""
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["summary"] == {**summary, "t": 1.5,
                                   "chosen": {**dataclasses.asdict(rows[-1]),
                                              "accepted_accuracy": None}}
    assert document["rows"][-1]["accepted_accuracy"] is None
    assert document["rows"][0]["cascade_accuracy"] == rows[0].cascade_accuracy

    chosen = pick_threshold(rows, budget=0.15)
    plot(rows, tmp_path / "a.png", chosen, "test", summary=summary)
    plot(rows, tmp_path / "b.png", chosen, "test")
    first = (tmp_path / "a.png").read_bytes()
    assert first.startswith(b"\x89PNG") and len(first) > 10_000
    plot(rows, tmp_path / "c.png", chosen, "test", summary=summary)
    assert (tmp_path / "c.png").read_bytes() == first  # deterministic


def test_short_threshold_keeps_the_decisions_with_fewer_digits():
    scores = np.array([0.5, 0.8612345, 0.8734261, 0.95, 0.99999994])
    t = short_threshold("max_prob", 0.8734261, scores)
    assert t == 0.87  # strictly between 0.8612345 and 0.8734261, far from both
    want = EscalationPolicy("max_prob", 0.8734261).decide_scores(scores)
    assert np.array_equal(EscalationPolicy("max_prob", t).decide_scores(scores), want)
    # Neighbours closer than the robustness margin: the shortest exact value still decides
    # alike, and digits are only added where needed.
    close = np.array([0.9000001, 0.9000002])
    t = short_threshold("max_prob", 0.9000002, close)
    assert np.array_equal(EscalationPolicy("max_prob", t).decide_scores(close), [True, False])
    assert len(repr(t)) <= len(repr(0.9000002))
    assert short_threshold("entropy", -0.4321987, np.array([-1.0, -0.4321987])) == -0.5
    assert short_threshold("never", None, scores) is None


@pytest.mark.parametrize("policy", SCORING)
def test_short_threshold_matches_every_swept_row(cascade, policy):
    probs, edge_pred, cloud_pred, truth = cascade
    ids = np.arange(len(truth))
    scores = EscalationPolicy(policy, 0.0 if policy != "entropy" else -1.0).scores(probs, ids)
    rows = sweep(probs, edge_pred, cloud_pred, truth, policy)
    for row in rows[:: max(1, len(rows) // 40)]:
        t = short_threshold(policy, row.threshold, scores)
        (again,) = sweep(probs, edge_pred, cloud_pred, truth, policy, thresholds=[t])
        assert again.escalated == row.escalated and len(repr(t)) <= len(repr(row.threshold))
