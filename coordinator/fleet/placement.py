"""Placement: which edge node gets a unit of work. Pure functions of their inputs.

No I/O, no threads, no clock: time is an argument, randomness is an injected
``random.Random``. Given the same inputs every function returns the same answer, in
any process (hashes come from BLAKE2b, never from Python's salted ``hash()``).

Algorithms:

* Weighted rendezvous (HRW) hashing, :func:`rendezvous_score` / :func:`rank`: every
  (key, node) pair gets a score; the key belongs to the highest. When a node leaves
  only its own keys move; when one joins it takes keys only from the others.
* Bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018), :func:`pick_for_key` and
  :class:`BoundedLoadAssigner`: walk the key's HRW ranking and take the first node
  under its share of ``(1 + epsilon)`` times the work, so a hot key spills to its
  second choice instead of overloading one node.
* Power of two choices, :func:`pick_least_loaded_of_two`: for work with no affinity,
  sample two nodes, take the less loaded.

Rebalancing by speed (slow nodes get smaller weights) lives in ``coordinator.fleet.rebalance``.

Failure behaviour, in one place: an empty fleet, a fleet of only full or zero-weight
(drained) nodes gives ``None`` from the ``pick_*`` functions, never an exception.
Malformed arguments (negative load, NaN weight, duplicate node ids, epsilon <= 0)
raise ``ValueError`` whose message starts with the argument's name.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BoundedLoadAssigner", "Candidate", "check_number", "load_bound", "moved_keys",
    "pick_for_key", "pick_least_loaded_of_two", "rank", "rendezvous_score", "top_choice",
]

_PERSON = b"edgeshard.hrw"  # BLAKE2b personalisation: our scores differ from other uses
_MANTISSA_BITS = 52


def check_number(name: str, value: float, *, minimum: float = 0.0, strict: bool = False,
                  allow_inf: bool = False) -> None:
    """Check ``value`` is a number >= ``minimum`` (> if ``strict``), finite unless ``allow_inf``.

    Raises ``ValueError`` whose message starts with ``name``.
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


@dataclass(frozen=True)
class Candidate:
    """One node as placement sees it at a moment."""

    node_id: str
    """Stable identity; the only node property that enters the hash."""
    weight: float = 1.0
    """Relative capacity, >= 0, already including slow-node down-weighting. 0 = drained:
    the node ranks last and is never picked for new work."""
    load: float = 0.0
    """Outstanding work (in flight + queued), >= 0."""
    capacity: float = math.inf
    """Most outstanding work the node accepts, > 0; ``load >= capacity`` means full."""

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"node_id must be a non-empty string, got {self.node_id!r}")
        check_number("weight", self.weight)
        check_number("load", self.load)
        check_number("capacity", self.capacity, strict=True, allow_inf=True)

    @property
    def full(self) -> bool:
        """True when ``load >= capacity``: the node takes no more work."""
        return self.load >= self.capacity

    @property
    def usable(self) -> bool:
        """May receive new work: positive weight and not full."""
        return self.weight > 0 and not self.full


def _checked(candidates: Iterable[Candidate]) -> list[Candidate]:
    out = list(candidates)
    seen: set[str] = set()
    for c in out:
        if not isinstance(c, Candidate):
            raise ValueError(f"candidates must hold Candidate objects, got {c!r}")
        if c.node_id in seen:
            raise ValueError(f"candidates: duplicate node_id {c.node_id!r}")
        seen.add(c.node_id)
    return out


_PREFIX = hashlib.blake2b(digest_size=8, person=_PERSON)


def _keyed(key: str) -> hashlib.blake2b:
    """The hash state after absorbing ``key``; copied once per node instead of rehashing."""
    k = key.encode("utf-8", "surrogatepass")  # total on str, lone surrogates too
    h = _PREFIX.copy()
    h.update(len(k).to_bytes(8, "big") + k)  # length prefix: ("ab", "c") != ("a", "bc")
    return h


def _score(keyed: hashlib.blake2b, node_id: str, weight: float) -> float:
    if weight == 0:
        return 0.0
    h = keyed.copy()
    h.update(node_id.encode("utf-8", "surrogatepass"))
    # The top 52 bits m give h = (m + 0.5) / 2**52: exact in a double, strictly in (0, 1).
    m = int.from_bytes(h.digest(), "big") >> (64 - _MANTISSA_BITS)
    return -weight / math.log((m + 0.5) / (1 << _MANTISSA_BITS))


def rendezvous_score(key: str, node_id: str, weight: float = 1.0) -> float:
    """Weighted rendezvous score ``-weight / ln(h)``, where h is BLAKE2b-64 of
    (length-prefixed key, node_id) mapped uniformly into the open interval (0, 1).

    The node with the highest score owns the key. With this form the probability that
    node i wins is exactly ``w_i / sum(w)`` (Schindelhauer and Schomaker 2005), and a
    change of one node's weight only moves keys to or from that node. ``weight == 0``
    scores 0.0, below every positive weight. Negative, NaN or infinite weight:
    ``ValueError``.
    """
    check_number("weight", weight)
    return _score(_keyed(key), node_id, weight)


def rank(key: str, candidates: Iterable[Candidate]) -> list[str]:
    """All candidate ids, best first: descending score, ties by ascending ``node_id``.

    Load and capacity are ignored (that is :func:`pick_for_key`'s job); zero-weight nodes
    come last. No candidates: ``[]``. Duplicate ids: ``ValueError``. The first k entries
    are the key's owner and its standbys.
    """
    keyed = _keyed(key)
    scored = sorted((-_score(keyed, c.node_id, c.weight), c.node_id)
                    for c in _checked(candidates))
    return [node_id for _, node_id in scored]


def top_choice(key: str, candidates: Iterable[Candidate]) -> str | None:
    """The key's HRW owner among positive-weight candidates (``rank(key)[0]`` without the
    sort); ``None`` when there is none."""
    keyed = _keyed(key)
    best = min(((-_score(keyed, c.node_id, c.weight), c.node_id)
                for c in _checked(candidates) if c.weight > 0), default=None)
    return None if best is None else best[1]


def moved_keys(keys: Iterable[str], before: Sequence[Candidate],
               after: Sequence[Candidate]) -> float:
    """Share of ``keys`` whose :func:`top_choice` differs between two fleets, in [0, 1].

    An owner that appears or disappears (a fleet with no positive weight) counts as a
    move. No keys: ``ValueError`` (the share is undefined).
    """
    keys = list(keys)
    if not keys:
        raise ValueError("keys must not be empty")
    before, after = _checked(before), _checked(after)
    moved = sum(top_choice(k, before) != top_choice(k, after) for k in keys)
    return moved / len(keys)


def pick_least_loaded_of_two(candidates: Iterable[Candidate], rng: random.Random) -> str | None:
    """Power of two choices: sample two distinct usable nodes, return the one with the
    lower ``(load + 1) / weight`` (its load per unit of weight once it takes this work);
    a tie goes to the first of the two sampled, so an idle fleet of equals is spread at
    random rather than always to the same node.

    Usable means weight > 0 and not full. Weight divides load, so a slow node
    (down-weighted by ``coordinator.fleet.rebalance.SlowNodePolicy``) looks busier than its
    queue, even when idle: a node at weight 0.1 gets work only once the others hold 9
    more units than it does. Candidates
    are sorted by id before sampling, so the answer depends on the set and ``rng``'s
    state, not on the input order. No usable node: ``None``. One: that node, and ``rng``
    is not consumed. Expected max load above the mean is ``ln ln n / ln 2 + O(1)``
    against ``Theta(ln n / ln ln n)`` for one random choice (Azar et al. 1999).
    """
    usable = sorted((c for c in _checked(candidates) if c.usable), key=lambda c: c.node_id)
    if not usable:
        return None
    if len(usable) == 1:
        return usable[0].node_id
    i, j = rng.sample(range(len(usable)), 2)
    a, b = usable[i], usable[j]
    return b.node_id if (b.load + 1) / b.weight < (a.load + 1) / a.weight else a.node_id


def load_bound(epsilon: float, total: float, weight: float, weight_sum: float) -> int:
    """Most work node i may hold *after* taking one more unit under bounded loads:
    ``ceil((1 + epsilon) * (total + 1) * weight / weight_sum)``.

    The product is rounded to 9 decimals before the ceiling so that float noise in, say,
    ``1.1 * 1000`` does not grant an extra slot. Because the bounds sum to at least
    ``(1 + epsilon) * (total + 1) > total``, some positive-weight node is always under
    its bound: only capacity limits can leave a key with no node.
    """
    return math.ceil(round((1.0 + epsilon) * (total + 1.0) * weight / weight_sum, 9))


def _check_epsilon(epsilon: float) -> None:
    check_number("epsilon", epsilon, strict=True)


def pick_for_key(key: str, candidates: Iterable[Candidate],
                 epsilon: float = 0.25) -> str | None:
    """Weighted rendezvous hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

    ``total`` is the load summed over positive-weight candidates (a drained node's
    leftover work would otherwise loosen everyone's bound). Walk :func:`rank` and return
    the first node with ``load < load_bound(epsilon, total, w_i, sum(w))`` and
    ``load < capacity``. A key therefore sticks to its HRW owner while that node is
    within ``(1 + epsilon)`` of its fair share, and overflow goes to the key's next
    choice, which is itself stable. Inserting work only through this function keeps
    every node at or below its bound, hence max/mean load <= 1 + epsilon up to the
    ceiling.

    No candidates, all full, or no positive weight: ``None``. ``epsilon <= 0``:
    ``ValueError`` (with epsilon = 0 the bound leaves no slack and keys lose affinity).
    """
    _check_epsilon(epsilon)
    by_id = {c.node_id: c for c in _checked(candidates)}
    active = [c for c in by_id.values() if c.weight > 0]
    if not active:
        return None
    total = sum(c.load for c in active)
    weight_sum = sum(c.weight for c in active)
    for node_id in rank(key, active):
        c = by_id[node_id]
        if not c.full and c.load < load_bound(epsilon, total, c.weight, weight_sum):
            return node_id
    return None


class BoundedLoadAssigner:
    """Streaming assignment of unit work items to a fixed fleet under bounded loads.

    ``assign(key)`` places one unit of work for ``key`` exactly as :func:`pick_for_key`
    would given the current loads (capacities are unlimited here) and returns the
    node; the same key may be assigned many times, each a separate unit.
    ``release(key)`` removes the most recent unit of that key (LIFO).

    Invariant: under assigns alone, every node holds at most
    ``load_bound(epsilon, m - 1, w_i, W)`` units after m assigns, so max/mean <=
    1 + epsilon up to the ceiling. Releases never migrate work, so after releases a node
    may sit above the bound for the smaller total until its work drains; new work then
    goes elsewhere. Rankings are cached per distinct key (memory grows with the number
    of distinct keys: this is a tool for tests, benchmarks and offline planning).
    """

    def __init__(self, weights: Mapping[str, float], epsilon: float = 0.25):
        _check_epsilon(epsilon)
        self._candidates = _checked(Candidate(n, w) for n, w in weights.items())
        self._weights = {c.node_id: c.weight for c in self._candidates if c.weight > 0}
        if not self._weights:
            raise ValueError("weights must give at least one node a positive weight")
        self._weight_sum = sum(self._weights.values())
        self._epsilon = epsilon
        self._loads = dict.fromkeys(self._weights, 0)
        self._total = 0
        self._placed: dict[str, list[str]] = {}
        self._ranks: dict[str, list[str]] = {}

    def assign(self, key: str) -> str:
        """Place one unit of work for ``key`` as :func:`pick_for_key` would; return the node id.

        Never fails: some positive-weight node is always under its bound.
        """
        order = self._ranks.get(key)
        if order is None:
            order = [n for n in rank(key, self._candidates) if n in self._weights]
            self._ranks[key] = order
        for node_id in order:
            bound = load_bound(self._epsilon, self._total, self._weights[node_id],
                               self._weight_sum)
            if self._loads[node_id] < bound:
                self._loads[node_id] += 1
                self._total += 1
                self._placed.setdefault(key, []).append(node_id)
                return node_id
        raise AssertionError("unreachable: the bounds sum to more than the total load")

    def release(self, key: str) -> str:
        """Remove the latest unit placed for ``key``; return its node. None placed:
        ``KeyError``."""
        stack = self._placed.get(key)
        if not stack:
            raise KeyError(f"key {key!r} has no assigned work")
        node_id = stack.pop()
        if not stack:
            del self._placed[key]
        self._loads[node_id] -= 1
        self._total -= 1
        return node_id

    @property
    def loads(self) -> dict[str, int]:
        """Units of work held per node id (positive-weight nodes only), as a copy."""
        return dict(self._loads)

    def max_over_mean(self) -> float:
        """Largest ``load_i / fair_share_i`` (fair share = total * w_i / W); 0.0 if idle.
        With equal weights this is max load / mean load."""
        if self._total == 0:
            return 0.0
        return max(load * self._weight_sum / (self._total * self._weights[n])
                   for n, load in self._loads.items())
