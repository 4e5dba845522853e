"""Escalation policies: scores on hand-made distributions, decisions, validation, int8."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ext
from coordinator.cascade.policies import (
    POLICIES,
    EscalationPolicy,
    get_policy,
    hash_uniform,
)

K = 4
UNIFORM = np.full((1, K), 1 / K, np.float32)
ONE_HOT = np.eye(K, dtype=np.float32)[[2]]
TIE = np.array([[0.5, 0.5, 0.0, 0.0]], np.float32)
SKEWED = np.array([[0.7, 0.2, 0.1, 0.0]], np.float32)
PROBS = np.concatenate([UNIFORM, ONE_HOT, TIE, SKEWED])
H_SKEWED = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))


@pytest.mark.parametrize("name,expected", [
    ("max_prob", [0.25, 1.0, 0.5, 0.7]),
    ("margin", [0.0, 1.0, 0.0, 0.5]),
    ("entropy", [-math.log(4), 0.0, -math.log(2), -H_SKEWED]),
    ("normalized_entropy", [0.0, 1.0, 0.5, 1 - H_SKEWED / math.log(4)]),
])
def test_scores_on_hand_made_distributions(name, expected):
    scores = get_policy(name).score(PROBS, None)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_scores_agree_with_ext_confidence():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=200).astype(np.float32)
    conf = ext.confidence(probs)
    np.testing.assert_array_equal(EscalationPolicy("max_prob", 0.5).scores(probs), conf.max_prob)
    np.testing.assert_array_equal(EscalationPolicy("margin", 0.5).scores(probs), conf.margin)
    np.testing.assert_array_equal(EscalationPolicy("entropy", -1).scores(probs), -conf.entropy)


@pytest.mark.parametrize("name,threshold,expected", [
    # uniform, one-hot, two-way tie, skewed
    ("max_prob", 0.6, [True, False, True, False]),
    ("max_prob", 0.5, [True, False, False, False]),  # the tie sits exactly on 0.5: kept
    ("margin", 0.4, [True, False, True, False]),
    ("entropy", -0.7, [True, False, False, True]),  # ln 2 = 0.693 < 0.7 nats: kept
    ("normalized_entropy", 0.5, [True, False, False, True]),
    ("never", None, [False] * 4),
    ("always", None, [True] * 4),
])
def test_decide(name, threshold, expected):
    assert EscalationPolicy(name, threshold).decide(PROBS).tolist() == expected


def test_threshold_zero_keeps_everything_and_one_escalates_all_but_certain():
    assert not EscalationPolicy("max_prob", 0.0).decide(PROBS).any()
    assert EscalationPolicy("max_prob", 1.0).decide(PROBS).tolist() == [True, False, True, True]


def test_float32_score_on_the_threshold_is_not_escalated():
    # float32(0.9) = 0.89999998 < 0.9 and float32(0.7) < 0.7: a plain `<` would escalate.
    probs = np.array([[0.9, 0.1], [0.7, 0.3]], np.float32)
    assert float(np.float32(0.9)) < 0.9
    assert EscalationPolicy("max_prob", 0.9).decide(probs).tolist() == [False, True]
    assert EscalationPolicy("max_prob", 0.7).decide(probs).tolist() == [False, False]
    assert EscalationPolicy("max_prob", 0.9000002).decide(probs).tolist() == [True, True]


def test_quantized_confidence_steps_on_the_threshold():
    # int8 softmax outputs: probability q/256 for q in [0, 255], dequantized in float32.
    q = np.array([[192 - 128, -128 + 64], [191 - 128, -128 + 65]], np.int8)
    probs = ext.dequantize(q, 1 / 256, -128)
    assert probs[0, 0] == 0.75
    assert EscalationPolicy("max_prob", 0.75).decide(probs).tolist() == [False, True]


def test_nan_rows_escalate():
    probs = np.array([[np.nan, 0.5], [0.9, 0.1]], np.float32)
    for name, threshold in (("max_prob", 0.5), ("margin", 0.1), ("entropy", -2.0),
                            ("normalized_entropy", 0.1)):
        assert EscalationPolicy(name, threshold).decide(probs).tolist() == [True, False]


def test_unknown_policy_lists_known_ones():
    with pytest.raises(ValueError, match=r"^name: unknown escalation policy 'maxprob'; "
                                         r"known: always, entropy, margin, max_prob"):
        EscalationPolicy("maxprob", 0.5)
    assert set(POLICIES) == {"max_prob", "margin", "entropy", "normalized_entropy", "random",
                             "never", "always"}


@pytest.mark.parametrize("name,bad", [
    ("max_prob", 1.5), ("max_prob", -0.1), ("margin", 1.01), ("normalized_entropy", -0.5),
    ("entropy", 0.5), ("random", 1.2), ("random", -0.01),
])
def test_threshold_out_of_range(name, bad):
    with pytest.raises(ValueError, match=r"^threshold: .* is outside"):
        EscalationPolicy(name, bad)


@pytest.mark.parametrize("bad", [None, float("nan"), True, "0.5"])
def test_threshold_must_be_a_number(bad):
    with pytest.raises(ValueError, match=r"^threshold: "):
        EscalationPolicy("max_prob", bad)


def test_entropy_threshold_is_negative_and_never_always_ignore_threshold():
    assert EscalationPolicy("entropy", -0.3).threshold == -0.3
    assert EscalationPolicy("never").threshold is None
    assert not EscalationPolicy("never", 0.7).decide(PROBS).any()


def test_random_is_stable_per_item_and_matches_rate():
    ids = [f"job-7/item-{i}" for i in range(20_000)]
    probs = np.full((len(ids), 2), 0.5, np.float32)
    policy = EscalationPolicy("random", 0.3)
    mask = policy.decide(probs, ids)
    assert abs(mask.mean() - 0.3) < 0.015
    # Same item, same decision: in another batch, in another order, in a later process.
    order = np.random.default_rng(1).permutation(len(ids))[:500]
    again = policy.decide(probs[:500], [ids[i] for i in order])
    assert again.tolist() == mask[order].tolist()
    assert hash_uniform("job-7/item-0") == 0.06529316253689188
    # Raising the rate only adds items; the ends are exact.
    assert not (mask & ~EscalationPolicy("random", 0.5).decide(probs, ids)).any()
    assert not EscalationPolicy("random", 0.0).decide(probs, ids).any()
    assert EscalationPolicy("random", 1.0).decide(probs, ids).all()


def test_random_needs_one_id_per_row():
    with pytest.raises(ValueError, match=r"^ids: the 'random' policy needs item ids"):
        EscalationPolicy("random", 0.1).decide(PROBS)
    with pytest.raises(ValueError, match=r"^ids: expected 4 ids"):
        EscalationPolicy("random", 0.1).decide(PROBS, ["a"])


def test_probs_shape_is_checked():
    with pytest.raises(ValueError, match=r"^probs: expected shape \[N,K\]"):
        EscalationPolicy("max_prob", 0.5).decide(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"^probs: "):
        EscalationPolicy("max_prob", 0.5).decide(np.zeros((0, 3), np.float32))


def test_int8_unreachable_threshold_is_refused():
    with pytest.raises(ValueError) as info:
        EscalationPolicy("max_prob", 0.999).check_reachable(1 / 256)
    message = str(info.value)
    assert message.startswith("threshold: 0.999 is above the highest confidence this model "
                              "can report (0.9960938); every item would escalate")
    assert "use <= 0.9960938 or the 'always' policy" in message
    # The advised value passes, and so does the exact top step.
    assert EscalationPolicy("max_prob", 0.9960938).check_reachable(1 / 256) == 255 / 256
    assert EscalationPolicy("max_prob", 255 / 256).check_reachable(1 / 256) == 255 / 256
    with pytest.raises(ValueError, match=r"^threshold: 0\.997 is above"):
        EscalationPolicy("margin", 0.997).check_reachable(1 / 256)


def test_reachability_of_entropy_policies_and_no_ops():
    best = -(255 / 256) * math.log(255 / 256)
    with pytest.raises(ValueError, match=r"^threshold: "):
        EscalationPolicy("entropy", -0.001).check_reachable(1 / 256)
    assert EscalationPolicy("entropy", -0.01).check_reachable(1 / 256) == pytest.approx(-best)
    with pytest.raises(ValueError, match=r"^threshold: "):
        EscalationPolicy("normalized_entropy", 0.999).check_reachable(1 / 256, num_classes=10)
    assert EscalationPolicy("normalized_entropy", 0.999).check_reachable(1 / 256) is None
    assert EscalationPolicy("max_prob", 1.0).check_reachable(None) is None
    assert EscalationPolicy("random", 1.0).check_reachable(1 / 256) is None
    with pytest.raises(ValueError, match=r"^prob_step: "):
        EscalationPolicy("max_prob", 0.5).check_reachable(1.5)


def test_unreachable_threshold_really_escalates_everything():
    # The most confident row an int8 softmax can emit, dequantized.
    q = np.full((1, 10), -128, np.int8)
    q[0, 3] = 127
    probs = ext.dequantize(q, 1 / 256, -128)
    assert EscalationPolicy("max_prob", 0.999).decide(probs).all()
    assert not EscalationPolicy("max_prob", 0.9960938).decide(probs).any()
