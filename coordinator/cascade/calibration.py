"""Calibration of the edge/cloud cascade: temperature, reliability, threshold sweeps.

Pure: NumPy in, numbers and dataclasses out; no I/O (``coordinator.cascade.report``
writes files and figures). Algorithms:

* Temperature scaling (Guo et al., ICML 2017), :func:`fit_temperature`: the ``T > 0``
  minimizing the negative log-likelihood of ``softmax(z / T)`` on held-out data. NLL is
  convex in ``1/T`` (a log-sum-exp of linear functions minus a linear one), hence
  unimodal in ``log T``, so a golden-section search on ``log T`` over ``bounds`` finds
  it without SciPy. Works from logits or log-probabilities alike: ``log p = z -
  logsumexp(z)`` differs from ``z`` by a per-row constant, which softmax ignores, so
  ``softmax(log p / T) == softmax(z / T)``. Probabilities are clipped at 1e-30 before the
  log (:func:`to_log_probs`). A temperature fitted on probabilities that were already
  produced with a temperature ``T0`` is relative to them: the total is ``T0 * T``.
* Expected calibration error, :func:`expected_calibration_error`: equal-width bins of the
  top-1 probability, ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|``.
* Threshold sweep, :func:`sweep`: for each threshold of a policy from
  ``coordinator.cascade.policies``, what the cascade does on labelled data (edge answer where
  kept, cloud answer where escalated), next to the two bounds at the *same* number ``k``
  of escalated items: the **oracle** (escalate the edge's mistakes the cloud fixes, then
  those neither gets right, then the rest: the best any policy can do with ``k`` cloud
  calls) and **random** (the exact expectation over uniformly random subsets of size
  ``k``: ``((N - k) * edge_correct + k * cloud_correct) / N**2``). One sort and prefix
  sums make the whole sweep ``O(N log N + T log N)``.
* :func:`pick_threshold`: the best row within an escalation budget, or the cheapest row
  reaching an accuracy target.
* :func:`short_threshold`: the threshold to print and serve. A picked threshold sits on
  an item's score (``0.87342617...``); printed with a few digits it would move past
  other scores and no longer make the reported decisions. This finds the value with the
  fewest significant digits (1 to 17) that makes exactly the same decisions on the
  scores, preferring one that also keeps them when every score moves by 1e-6 (so that
  float32 rounding of the served probabilities cannot flip an item); its ``repr`` is
  what to print.

Failure behaviour: malformed arguments raise ``ValueError`` whose message starts with
the argument's name; an unreachable accuracy target raises ``ValueError`` naming
``target_accuracy`` and the best reachable figure. A temperature at a search bound (data
the model separates perfectly drives ``T`` to 0; labels unrelated to the scores drive it
to infinity) is returned as the bound, with a warning logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import numpy as np

from coordinator.cascade.policies import EscalationPolicy, as_probs, get_policy

__all__ = [
    "SweepRow", "apply_temperature", "cascade_summary", "expected_calibration_error",
    "fit_temperature", "negative_log_likelihood", "pick_threshold", "short_threshold", "sweep",
    "to_log_probs",
]

log = logging.getLogger(__name__)

PROB_FLOOR = 1e-30
"""Probabilities are clipped here before the log, so a 0 gives -69, not -inf."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_GRID = 101  # sweep grid points across a policy's threshold range


def to_log_probs(probs: object) -> np.ndarray:
    """``log(max(p, 1e-30))`` in float64, ``[N,K]``."""
    arr = as_probs(probs).astype(np.float64)
    return np.log(np.maximum(arr, PROB_FLOOR))


def _log_softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    scaled = z / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def _labels(value: object, name: str, n: int, k: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    if k is not None and n and (arr.min() < 0 or arr.max() >= k):
        raise ValueError(f"{name}: labels must be in [0, {k}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _logits(value: object) -> np.ndarray:
    try:
        z = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("logits: expected a float array [N,K]") from None
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits: expected shape [N,K] with N >= 1, K >= 2, got {list(z.shape)}")
    if not np.isfinite(z).all():
        raise ValueError("logits: must be finite (clip probabilities with to_log_probs)")
    if z.min() >= 0.0 and z.max() <= 1.0 and np.allclose(z.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "logits: these look like probabilities (rows in [0, 1] summing to 1); pass "
            "logits, or log-probabilities from to_log_probs(probs)"
        )
    return z


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"{name}: must be finite and > 0, got {result!r}")
    return result


def negative_log_likelihood(logits: object, labels: object, temperature: float = 1.0) -> float:
    """Mean NLL (nats) of ``labels`` under ``softmax(logits / temperature)``."""
    z = _logits(logits)
    y = _labels(labels, "labels", z.shape[0], z.shape[1])
    t = _positive(temperature, "temperature")
    return float(-_log_softmax(z, t)[np.arange(z.shape[0]), y].mean())


def fit_temperature(logits: object, labels: object, *,
                    bounds: tuple[float, float] = (0.01, 100.0), tol: float = 1e-6) -> float:
    """The temperature minimizing NLL on ``(logits, labels)`` (see the module docstring).

    ``logits`` is ``[N,K]`` logits or log-probabilities (``to_log_probs(probs)``);
    ``labels`` int ``[N]``. Golden-section search on ``log T`` in ``bounds`` until the
    bracket is narrower than ``tol`` (in log T). Returns a float in ``bounds``.
    """
    z = _logits(logits)
    y = _labels(labels, "labels", z.shape[0], z.shape[1])
    lo_t, hi_t = (_positive(b, "bounds") for b in bounds)
    if not lo_t < hi_t:
        raise ValueError(f"bounds: need low < high, got {bounds!r}")
    tol = _positive(tol, "tol")
    rows = np.arange(z.shape[0])

    def nll(log_t: float) -> float:
        return float(-_log_softmax(z, math.exp(log_t))[rows, y].mean())

    a, b = math.log(lo_t), math.log(hi_t)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    log_t = (a + b) / 2.0
    lo, hi = math.log(lo_t), math.log(hi_t)
    if log_t - lo < 2 * tol or hi - log_t < 2 * tol:
        edge = lo_t if log_t - lo < 2 * tol else hi_t
        log.warning("fit_temperature: optimum at the search bound T=%g (separable or "
                    "uninformative data?)", edge)
        return edge
    return math.exp(log_t)


def apply_temperature(probs: object, temperature: float) -> np.ndarray:
    """``softmax(log(max(p, 1e-30)) / T)`` as float32 ``[N,K]`` (rows sum to 1)."""
    t = _positive(temperature, "temperature")
    return np.exp(_log_softmax(to_log_probs(probs), t)).astype(np.float32)


def expected_calibration_error(probs: object, labels: object, bins: int = 15) -> float:
    """ECE of the top-1 prediction over ``bins`` equal-width confidence bins.

    Bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]`` (0 goes to the first bin);
    the prediction is the argmax (first index on ties). Returns a float in [0, 1].
    """
    p = as_probs(probs)
    y = _labels(labels, "labels", p.shape[0])
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: must be an int >= 1, got {bins!r}")
    conf = p.max(axis=1).astype(np.float64)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.abs(np.bincount(index, correct, bins) - np.bincount(index, conf, bins))
    return float(gap.sum() / p.shape[0])


@dataclass(frozen=True)
class SweepRow:
    """What one threshold of one policy does on labelled data (accuracies in [0, 1])."""

    policy: str
    threshold: float | None
    """``None`` for ``never`` / ``always``."""
    n: int
    escalated: int
    escalation_rate: float
    cloud_calls_per_1000: float
    """Escalated items per 1000 items."""
    cascade_accuracy: float
    """Edge answer where kept, cloud answer where escalated."""
    accepted_accuracy: float
    """Accuracy of the edge answers kept; NaN when every item escalates."""
    oracle_accuracy: float
    """Best accuracy of any choice of ``escalated`` items."""
    random_accuracy: float
    """Expected accuracy of ``escalated`` items chosen uniformly at random."""


def cascade_summary(edge_pred: object, cloud_pred: object, truth: object) -> dict:
    """Edge-only and cloud-only accuracy and how the two models' mistakes overlap."""
    y = np.asarray(truth)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"truth: expected a non-empty [N] label array, got shape {y.shape}")
    n = y.shape[0]
    y = _labels(y, "truth", n)
    edge_ok = _labels(edge_pred, "edge_pred", n) == y
    cloud_ok = _labels(cloud_pred, "cloud_pred", n) == y
    fixable = int((~edge_ok & cloud_ok).sum())
    return {
        "n": n,
        "edge_only_accuracy": float(edge_ok.mean()),
        "cloud_only_accuracy": float(cloud_ok.mean()),
        "edge_wrong_cloud_right": fixable,
        "edge_right_cloud_wrong": int((edge_ok & ~cloud_ok).sum()),
        "both_wrong": int((~edge_ok & ~cloud_ok).sum()),
        "best_cascade_accuracy": float((edge_ok.sum() + fixable) / n),
    }


def _default_thresholds(policy: str, scores: np.ndarray, k: int) -> np.ndarray:
    spec = get_policy(policy)
    low = -math.log(k) if policy == "entropy" else spec.low
    grid = np.linspace(low, spec.high, _GRID)
    finite = scores[np.isfinite(scores)]
    return np.unique(np.clip(np.concatenate([grid, finite]), low, spec.high))


def sweep(edge_probs: object, edge_pred: object | None, cloud_pred: object, truth: object,
          policy_name: str, thresholds: Sequence[float] | np.ndarray | None = None,
          ids: Sequence[object] | np.ndarray | None = None) -> list[SweepRow]:
    """One :class:`SweepRow` per threshold of ``policy_name``, sorted by threshold.

    ``edge_probs`` float ``[N,K]``; ``edge_pred`` int ``[N]`` (``None``: argmax of
    ``edge_probs``, first index on ties; pass the node's labels to match it exactly);
    ``cloud_pred`` and ``truth`` int ``[N]``. ``thresholds`` default to the distinct
    score values plus a 101-point grid over the policy's range (``[-ln K, 0]`` for
    entropy), clipped to it; given ones are validated like ``EscalationPolicy``'s.
    ``ids`` feed the ``random`` policy (default: row indices). ``never`` / ``always``
    give a single row. Decisions are exactly ``EscalationPolicy(name, t).decide``.
    """
    probs = as_probs(edge_probs, "edge_probs")
    n, k = probs.shape
    edge = probs.argmax(axis=1) if edge_pred is None else _labels(edge_pred, "edge_pred", n)
    cloud = _labels(cloud_pred, "cloud_pred", n)
    y = _labels(truth, "truth", n)
    spec = get_policy(policy_name)
    if spec.needs_ids and ids is None:
        ids = np.arange(n)
    scores = spec.score(probs, ids)
    if not spec.needs_threshold:
        policies = [EscalationPolicy(policy_name)]
    else:
        if thresholds is None:
            values = _default_thresholds(policy_name, scores, k)
        else:
            values = np.unique(np.asarray(thresholds, dtype=np.float64))
            if values.size == 0:
                raise ValueError("thresholds: need at least one threshold")
        try:
            policies = [EscalationPolicy(policy_name, float(t)) for t in values]
        except ValueError as exc:
            raise ValueError(f"thresholds: {exc}") from None

    order_key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(order_key, kind="stable")
    sorted_scores = order_key[order]
    edge_ok, cloud_ok = edge == y, cloud == y
    cum_edge = np.concatenate([[0], np.cumsum(edge_ok[order])])
    cum_cloud = np.concatenate([[0], np.cumsum(cloud_ok[order])])
    e_total, c_total = int(edge_ok.sum()), int(cloud_ok.sum())
    fixable = int((~edge_ok & cloud_ok).sum())
    harmful = int((edge_ok & ~cloud_ok).sum())

    rows = []
    for policy in policies:
        if policy.name in ("never", "always"):
            esc = 0 if policy.name == "never" else n
        else:
            esc = int(np.searchsorted(sorted_scores, policy.cutoff, side="left"))
        kept_ok = e_total - int(cum_edge[esc])
        correct = kept_ok + int(cum_cloud[esc])
        oracle = e_total + min(esc, fixable) - max(0, esc - (n - harmful))
        rows.append(SweepRow(
            policy=policy_name,
            threshold=policy.threshold,
            n=n,
            escalated=esc,
            escalation_rate=esc / n,
            cloud_calls_per_1000=1000.0 * esc / n,
            cascade_accuracy=correct / n,
            accepted_accuracy=kept_ok / (n - esc) if esc < n else math.nan,
            oracle_accuracy=oracle / n,
            random_accuracy=((n - esc) * e_total + esc * c_total) / (n * n),
        ))
    return rows


def pick_threshold(rows: Sequence[SweepRow], budget: float | None = None,
                   target_accuracy: float | None = None) -> SweepRow:
    """Choose a row by escalation ``budget`` or by ``target_accuracy`` (exactly one).

    * ``budget`` (fraction of items, in [0, 1]): the highest cascade accuracy among rows
      escalating at most ``budget * n`` items; ties go to the lower escalation rate.
    * ``target_accuracy`` (in [0, 1]): the lowest escalation rate whose cascade accuracy
      is at least the target; ties go to the higher accuracy. ``ValueError`` naming
      ``target_accuracy`` and the best reachable accuracy when no row reaches it.

    Rows with the same escalation count make the same decisions on this data; among
    them the budget pick takes the lowest threshold (least escalation on new data) and
    the accuracy pick the highest (most headroom on new data).
    """
    if (budget is None) == (target_accuracy is None):
        raise ValueError("budget/target_accuracy: give exactly one")
    if not rows:
        raise ValueError("rows: empty sweep")

    def threshold_key(row: SweepRow) -> float:
        return -math.inf if row.threshold is None else row.threshold

    if budget is not None:
        b = _fraction(budget, "budget")
        within = [r for r in rows if r.escalated <= b * r.n + 1e-9]
        if not within:
            least = min(r.escalation_rate for r in rows)
            raise ValueError(f"budget: no row escalates at most {b:.2%} of items "
                             f"(the least is {least:.2%})")
        return min(within, key=lambda r: (-r.cascade_accuracy, r.escalation_rate,
                                          threshold_key(r)))
    target = _fraction(target_accuracy, "target_accuracy")
    reaching = [r for r in rows if r.cascade_accuracy >= target - 1e-12]
    if not reaching:
        best = max(rows, key=lambda r: (r.cascade_accuracy, -r.escalation_rate))
        raise ValueError(
            f"target_accuracy: {target:.4f} is not reachable; the best cascade accuracy in "
            f"the sweep is {best.cascade_accuracy:.4f} (escalation rate "
            f"{best.escalation_rate:.2%}, threshold {best.threshold})"
        )
    return min(reaching, key=lambda r: (r.escalation_rate, -r.cascade_accuracy,
                                        -threshold_key(r)))


_SHIFT_MARGIN = 1e-6  # how far scores may move without changing a short threshold's decisions


def short_threshold(policy_name: str, threshold: float | None, scores: object) -> float | None:
    """The shortest decimal threshold deciding like ``threshold`` on ``scores`` (see the
    module docstring); ``None`` (``never`` / ``always``) is returned as is.

    ``scores`` float ``[N]`` as ``EscalationPolicy.scores`` gives them. The result is a
    valid threshold of the policy, and ``EscalationPolicy(policy_name, result).decide``
    escalates exactly the items ``threshold`` escalates; ``threshold`` itself when no
    shorter value does.
    """
    if threshold is None:
        return None
    s = np.asarray(scores, dtype=np.float64)
    want = EscalationPolicy(policy_name, threshold).decide_scores(s)
    spec = get_policy(policy_name)
    shift = _SHIFT_MARGIN * max(1.0, abs(threshold))
    shifted = (s - shift, s + shift)

    def decides_alike(value: float, robust: bool) -> bool:
        if not spec.low <= value <= spec.high:
            return False
        policy = EscalationPolicy(policy_name, value)
        return all(np.array_equal(policy.decide_scores(v), want)
                   for v in ((s, *shifted) if robust else (s,)))

    exact = Decimal(repr(float(threshold)))
    for robust in (True, False):
        for digits in range(1, 18):
            step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
            for rounding in (ROUND_HALF_EVEN, ROUND_FLOOR, ROUND_CEILING):
                value = float(exact.quantize(step, rounding=rounding))
                if decides_alike(value, robust):
                    return value
    return float(threshold)


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    result = float(value)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {result!r}")
    return result
