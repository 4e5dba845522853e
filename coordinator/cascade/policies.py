"""Escalation: which edge answers go to the cloud model. Pure functions of their inputs.

No I/O, no threads, no clock. Every policy maps the edge model's output probabilities
``probs`` (float32 ``[N,K]``) to a per-item **confidence score**, higher meaning surer;
an item escalates iff ``score < threshold``. Policies (:data:`POLICIES`, by name):

* ``max_prob``: ``p_top1``; threshold in [0, 1].
* ``margin``: ``p_top1 - p_top2`` (Big/Little DNN, Park et al. 2015); threshold in [0, 1].
* ``entropy``: ``-H(p)`` in nats (BranchyNet, Teerapittayanon et al. 2016). The score is
  <= 0, so the threshold is a **negative** number in [-ln K, 0]: ``-0.5`` escalates items
  whose entropy exceeds 0.5 nats.
* ``normalized_entropy``: ``1 - H(p) / ln K`` in [0, 1] (Sedna's CrossEntropy rule, and
  DDNN's normalized entropy turned into a confidence); Sedna's default threshold is 0.5.
* ``random``: escalates a fraction ``rate`` of the items (the threshold *is* the rate),
  chosen by a stable hash of the item id: the score is ``u = BLAKE2b(str(id))`` mapped
  to [0, 1), and an item escalates iff ``u < rate``. The same item always gets the same
  decision, in any process and after restarts, and raising the rate only adds items.
  Needs ``ids``. Ids go through ``str()``, so ``7`` and ``"7"`` are the same item.
* ``never`` / ``always``: scores ``+inf`` / ``-inf``; the threshold is ignored.

Comparison tolerance: probability policies escalate iff ``score < threshold - tol`` with
``tol = 1e-7 * max(1, |threshold|)``. Scores arrive as float32 while thresholds are
Python floats: a probability the node reports as exactly 0.9 is float32(0.9) =
0.89999998, which is below 0.9, so a plain ``<`` would escalate an item sitting exactly
on the threshold. The same happens at the 1/256 steps of quantized confidences after
dequantization and softmax. Half a float32 ulp is at most 6e-8 in [0, 1] (scaled by the
magnitude for entropy), so the tolerance makes "at the threshold" mean "confident
enough" without moving any real decision. ``random`` compares exactly: ``u`` is exact,
and a rate of 1 must escalate everything.

Failure behaviour: a row with NaN probabilities gets a NaN score and **escalates** (the
edge's answer cannot be trusted). Rows are not required to sum to 1 (quantized outputs do
not). Malformed arguments (unknown policy, threshold out of range, wrong shapes, missing
ids for ``random``) raise ``ValueError`` whose message starts with the argument's name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import ext

__all__ = [
    "POLICIES", "TOLERANCE", "EscalationPolicy", "PolicySpec", "as_probs", "get_policy",
    "hash_uniform",
]

TOLERANCE = 1e-7
"""Relative slack of the score comparison (see the module docstring)."""

_PERSON = b"edgeshard.esc"  # BLAKE2b personalisation: differs from placement's hashes
_MANTISSA_BITS = 53

ScoreFn = Callable[[np.ndarray, "Sequence[object] | np.ndarray | None"], np.ndarray]


def as_probs(probs: object, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a C-contiguous float32 ``[N,K]`` array with N, K >= 1."""
    try:
        arr = np.ascontiguousarray(probs, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a float array [N,K]") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [N,K] with N, K >= 1, got {list(arr.shape)}")
    return arr


def hash_uniform(item_id: object) -> float:
    """Map an item id to a float in [0, 1), stable across processes (BLAKE2b of ``str(id)``)."""
    digest = hashlib.blake2b(str(item_id).encode(), digest_size=8, person=_PERSON).digest()
    return (int.from_bytes(digest, "big") >> (64 - _MANTISSA_BITS)) / float(1 << _MANTISSA_BITS)


def _from_confidence(field: str, sign: float = 1.0, offset: float = 0.0) -> ScoreFn:
    """A score ``offset + sign * ext.confidence(probs).<field>``; NaN for non-finite rows.

    ``ext.confidence`` skips non-positive entries in the entropy (and NaN compares as
    non-positive), so a NaN row is marked here for every policy alike.
    """
    def score(probs, ids=None):
        arr = as_probs(probs)
        values = getattr(ext.confidence(arr), field).astype(np.float64)
        result = offset + sign * values
        result[~np.isfinite(arr).all(axis=1)] = np.nan
        return result
    score.__name__ = f"score_{field}"
    return score


def _random(probs, ids=None):
    n = as_probs(probs).shape[0]
    if ids is None:
        raise ValueError("ids: the 'random' policy needs item ids (it hashes them)")
    if len(ids) != n:
        raise ValueError(f"ids: expected {n} ids (one per row of probs), got {len(ids)}")
    return np.fromiter((hash_uniform(i) for i in ids), dtype=np.float64, count=n)


def _constant(value: float) -> ScoreFn:
    def score(probs, ids=None):
        return np.full(as_probs(probs).shape[0], value, dtype=np.float64)
    return score


@dataclass(frozen=True)
class PolicySpec:
    """One escalation rule: how to score items and which thresholds make sense."""

    name: str
    score: ScoreFn
    """``score(probs, ids) -> float64 [N]``; higher is surer."""
    low: float
    """Smallest valid threshold (``-inf`` for ``entropy``: the bound -ln K depends on K)."""
    high: float
    """Largest valid threshold."""
    summary: str
    needs_threshold: bool = True
    needs_ids: bool = False
    tolerant: bool = True
    """Whether decisions use the float32 tolerance (False for ``random``)."""


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec for spec in (
        PolicySpec("max_prob", _from_confidence("max_prob"), 0.0, 1.0, "top-1 probability"),
        PolicySpec("margin", _from_confidence("margin"), 0.0, 1.0,
                   "top-1 minus top-2 probability"),
        PolicySpec("entropy", _from_confidence("entropy", -1.0), -math.inf, 0.0,
                   "minus the entropy in nats (<= 0)"),
        PolicySpec("normalized_entropy", _from_confidence("normalized_entropy", -1.0, 1.0),
                   0.0, 1.0,
                   "1 - entropy / ln K (Sedna CrossEntropy; default threshold 0.5)"),
        PolicySpec("random", _random, 0.0, 1.0, "escalate a stable hashed fraction of ids",
                   needs_ids=True, tolerant=False),
        PolicySpec("never", _constant(math.inf), -math.inf, math.inf, "keep every edge answer",
                   needs_threshold=False),
        PolicySpec("always", _constant(-math.inf), -math.inf, math.inf,
                   "send every item to the cloud", needs_threshold=False),
    )
}
"""The escalation policies by name."""


def get_policy(name: str) -> PolicySpec:
    """The policy called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"name: unknown escalation policy {name!r}; known: {known}") from None


def _threshold_value(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold: expected a real number, got {value!r}")
    result = float(value)
    if math.isnan(result):
        raise ValueError("threshold: must not be NaN")
    return result


@dataclass(frozen=True)
class EscalationPolicy:
    """A named policy with its threshold; validated at construction.

    ``threshold`` may be ``None`` only for ``never`` / ``always`` (which ignore it).
    """

    name: str
    threshold: float | None = None

    def __post_init__(self) -> None:
        spec = get_policy(self.name)
        if self.threshold is None:
            if spec.needs_threshold:
                raise ValueError(
                    f"threshold: the {self.name!r} policy needs a threshold in "
                    f"{_range_text(spec)}"
                )
            return
        value = _threshold_value(self.threshold)
        if not spec.low <= value <= spec.high:
            what = " (the escalation rate)" if self.name == "random" else ""
            raise ValueError(
                f"threshold: {value!r} is outside {_range_text(spec)} for the {self.name!r} "
                f"policy{what}"
            )
        object.__setattr__(self, "threshold", value)

    @property
    def spec(self) -> PolicySpec:
        """The :class:`PolicySpec` registered under this policy's name."""
        return POLICIES[self.name]

    def scores(self, probs: object, ids: Sequence[object] | np.ndarray | None = None
               ) -> np.ndarray:
        """Confidence scores float64 ``[N]`` (higher = surer)."""
        return self.spec.score(probs, ids)

    def decide(self, probs: object, ids: Sequence[object] | np.ndarray | None = None
               ) -> np.ndarray:
        """Escalate mask bool ``[N]``: True where the item goes to the cloud."""
        return self.decide_scores(self.scores(probs, ids))

    def decide_scores(self, scores: np.ndarray) -> np.ndarray:
        """Escalate mask for precomputed :meth:`scores` (NaN scores escalate)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.name == "never":
            return np.zeros(scores.shape, dtype=bool)
        if self.name == "always":
            return np.ones(scores.shape, dtype=bool)
        return ~(scores >= self.cutoff)

    @property
    def cutoff(self) -> float:
        """The effective comparison value: ``threshold - tol`` (``threshold`` for random)."""
        t = self.threshold
        if t is None:
            return math.inf if self.name == "always" else -math.inf
        return t - TOLERANCE * max(1.0, abs(t)) if self.spec.tolerant else t

    def check_reachable(self, prob_step: float | None, *, num_classes: int | None = None
                        ) -> float | None:
        """Refuse a threshold that a model with quantized probabilities can never meet.

        int8/uint8 models that output probabilities (a quantized softmax) report them in
        steps of ``prob_step`` (1/256 for TFLite's softmax) and never reach 1.0: the
        largest value is ``1 - prob_step`` (255/256 = 0.9961). The most confident row
        such a model can emit is ``[1 - prob_step, 0, ..., 0]``; its score is the
        highest reachable one, and a threshold above it (beyond the comparison
        tolerance) would escalate every item. Returns that highest score, or ``None``
        when there is nothing to check (``prob_step`` None: float probabilities reach 1;
        ``random`` / ``never`` / ``always``; ``normalized_entropy`` without
        ``num_classes``). Raises ``ValueError`` naming ``threshold`` when unreachable.
        """
        if prob_step is None or self.name in ("random", "never", "always"):
            return None
        if isinstance(prob_step, bool) or not isinstance(prob_step, (int, float, np.floating)):
            raise ValueError(f"prob_step: expected a real number or None, got {prob_step!r}")
        step = float(prob_step)
        if not 0.0 < step < 1.0:
            raise ValueError(f"prob_step: must be in (0, 1), got {step!r}")
        top = 1.0 - step
        if self.name in ("max_prob", "margin"):
            best = top
        else:
            entropy = -top * math.log(top)
            if self.name == "entropy":
                best = -entropy
            else:
                if num_classes is None:
                    return None
                if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                        or num_classes < 2:
                    raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
                best = 1.0 - entropy / math.log(num_classes)
        assert self.threshold is not None
        if self.cutoff > best:
            # 7 significant digits: off from ``best`` by far less than the tolerance, so
            # the advised value itself passes this check.
            raise ValueError(
                f"threshold: {self.threshold:g} is above the highest confidence this model "
                f"can report ({best:.7g}); every item would escalate — use <= {best:.7g} "
                "or the 'always' policy"
            )
        return best


def _range_text(spec: PolicySpec) -> str:
    if spec.name == "entropy":
        return "[-ln K, 0] (a negative number: minus the entropy in nats)"
    return f"[{spec.low:g}, {spec.high:g}]"
