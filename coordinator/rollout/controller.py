"""The coordinator's canary rollouts: labels, tallies, periodic verdicts, decisions.

``Rollouts`` holds each model's ``Rollout`` record (persisted through ``load``/``save``,
the job store's ``RolloutBook``), routes requests and job shards with
``labels.route``, keeps per-arm tallies, and runs ``verdict.judge`` every
``interval_s`` (sooner once a canary's sample reaches its minimum). A ``rollback``
verdict takes effect at once on this process (unpinned traffic goes to stable from the
next request), is logged with its reasons and saved; ``promote`` (a verdict with
``promote_after``, or an operator) makes the canary stable.

Replicas: each judges what it saw itself; every round re-reads the records, so a
decision or a start made by one replica reaches the others within ``interval_s``.
Failure behaviour: a decision that cannot be saved (store unavailable) still holds on
this process and is saved again each round until it is; a restart keeps the records and
decisions but starts the tallies afresh (the canary is judged on what it serves next).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from coordinator.errors import (
    RolloutNotFoundError,
    RolloutStateError,
    StoreFullError,
    StoreUnavailableError,
)
from coordinator.rollout.labels import (
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    STABLE,
    Rollout,
    Route,
    route,
)
from coordinator.rollout.samples import Tallies
from coordinator.rollout.verdict import PROMOTE, ROLLBACK, Margins, Verdict, judge

log = logging.getLogger(__name__)


def to_row(r: Rollout) -> dict[str, Any]:
    """The store's row of ``r``."""
    row = asdict(r)
    row["margins"] = asdict(r.margins)
    return row


def from_row(row: dict[str, Any]) -> Rollout:
    """The record of a store row (unknown margin names, from a newer release, ignored)."""
    known = Margins.__dataclass_fields__
    margins = Margins(**{k: v for k, v in row["margins"].items() if k in known})
    return Rollout(**{**row, "margins": margins})


class Rollouts:
    """Every model's rollout on this coordinator; see the module docstring.

    ``on_change(rollout)`` is told of every record that changed (metrics);
    ``on_request(model, version, arm, outcome)`` of every request or shard counted in
    an arm (outcome ``ok`` or ``error``); ``on_decision(rollout)`` of each decision made
    here.
    """

    def __init__(self, load: Callable[[], list[dict]], save: Callable[[dict], None],
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time,
                 on_change: Callable[[Rollout], None] = lambda r: None,
                 on_request: Callable[[str, str, str, str], None] = lambda *a: None,
                 on_decision: Callable[[Rollout], None] = lambda r: None):
        self._load, self._save = load, save
        self.interval_s = interval_s
        self.clock = clock
        self.on_change = on_change
        self.on_request = on_request
        self.on_decision = on_decision
        self.tallies = Tallies()
        self._records: dict[str, Rollout] = {}
        self._unsaved: set[str] = set()  # decided here, not in the store yet
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Read the records, then judge every ``interval_s`` in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="rollouts", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
                self.judge_all()
            except (StoreUnavailableError, StoreFullError) as exc:
                # The store logs its fault once, and its return; decisions stay in memory.
                log.debug("rollout round skipped: %s", exc)
            except Exception:  # anything else must not end the rollouts either
                log.exception("rollout round failed; trying again in %gs", self.interval_s)

    # -- the records --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Save decisions not saved yet, then adopt what the store holds (other replicas'
        starts and decisions)."""
        with self._lock:
            for model in sorted(self._unsaved):
                self._save(to_row(self._records[model]))
                self._unsaved.discard(model)
            stored = {row["model"]: from_row(row) for row in self._load()}
            for model, record in stored.items():
                mine = self._records.get(model)
                if mine == record:
                    continue
                if mine is None or mine.started_at != record.started_at:
                    self.tallies.reset(model)
                if mine is not None and mine.running and not record.running:
                    log.warning("rollout of %s: %s by another coordinator (%s)", model,
                                record.state, record.reason)
                self._records[model] = record
                self.on_change(record)

    def get(self, model: str) -> Rollout | None:
        """``model``'s record, or None."""
        return self._records.get(model)

    def records(self) -> list[Rollout]:
        """Every record, by model."""
        with self._lock:
            return [self._records[m] for m in sorted(self._records)]

    def _put(self, record: Rollout) -> Rollout:
        """Apply ``record`` here at once, then save it (kept for the next round when the
        store refuses)."""
        with self._lock:
            self._records[record.model] = record
            self.on_change(record)
            try:
                self._save(to_row(record))
                self._unsaved.discard(record.model)
            except Exception as exc:
                self._unsaved.add(record.model)
                log.error("rollout of %s: %s holds here but cannot be saved yet (%s); "
                          "saving again every %gs", record.model, record.state, exc,
                          self.interval_s)
        return record

    # -- the operator's actions -------------------------------------------------------------
    def begin(self, rollout: Rollout) -> Rollout:
        """Start ``rollout`` (checked; ``ValueError`` names a wrong field). A model whose
        canary is running already must be promoted or rolled back first."""
        rollout = replace(rollout.check(), started_at=self.clock(), decided_at=0.0,
                          state="running", reason="", stats={})
        with self._lock:
            current = self._records.get(rollout.model)
            if current is not None and current.running:
                raise RolloutStateError(
                    f"model {rollout.model}: canary {current.canary} is still running; "
                    f"promote or roll it back first")
            self.tallies.reset(rollout.model)
            log.info("rollout of %s: canary %s takes %.0f%% of traffic (shadow %.0f%%) "
                     "next to stable %s", rollout.model, rollout.canary, rollout.share * 100,
                     rollout.shadow * 100, rollout.stable)
            return self._put(rollout)

    def promote(self, model: str, reason: str = "promoted by an operator") -> Rollout:
        """Make ``model``'s running canary stable."""
        return self._decide(model, PROMOTED, reason)

    def rollback(self, model: str, reason: str = "rolled back by an operator") -> Rollout:
        """Stop ``model``'s canary; every unpinned request goes to stable."""
        return self._decide(model, ROLLED_BACK, reason)

    def _decide(self, model: str, state: str, reason: str,
                verdict: Verdict | None = None) -> Rollout:
        with self._lock:
            current = self._records.get(model)
            if current is None:
                raise RolloutNotFoundError(f"model {model}: no rollout (start one with "
                                           "`edge-coordinator rollout start`)")
            if not current.running:
                raise RolloutStateError(f"model {model}: the rollout is {current.state} "
                                        "already; start a new one")
            verdict = verdict or self.verdict(current)
            record = current.decided(state, reason, self.clock(), verdict.stats)
            self.on_decision(record)
            if state == ROLLED_BACK:
                log.warning("rollout of %s: canary %s rolled back: %s", model,
                            current.canary, reason)
            else:
                log.info("rollout of %s: canary %s promoted to stable: %s", model,
                         current.canary, reason)
            return self._put(record)

    # -- verdicts -------------------------------------------------------------------------------
    def verdict(self, rollout: Rollout) -> Verdict:
        """The comparison of what was seen of ``rollout``'s arms so far."""
        return judge(self.tallies.of(rollout.model, STABLE).sample(),
                     self.tallies.of(rollout.model, CANARY).sample(), rollout.margins)

    def judge_all(self) -> None:
        """Judge every running rollout and act on rollback and promote verdicts."""
        for record in self.records():
            if not record.running:
                continue
            verdict = self.verdict(record)
            try:
                if verdict.decision == ROLLBACK:
                    self._decide(record.model, ROLLED_BACK, "; ".join(verdict.reasons),
                                 verdict)
                elif verdict.decision == PROMOTE:
                    self._decide(record.model, PROMOTED,
                                 f"clean after {verdict.stats['canary_requests']:.0f} canary "
                                 "requests (promote_after)", verdict)
            except (RolloutStateError, RolloutNotFoundError):
                pass  # decided meanwhile by an operator

    # -- the data path --------------------------------------------------------------------------
    def route(self, model: str, pinned: str = "", allow_shadow: bool = True) -> Route:
        """Where a request for ``model`` pinning ``pinned`` goes (``labels.route``)."""
        return route(self._records.get(model), pinned, self._random.random(),
                     self._random.random(), allow_shadow)

    def answered(self, model: str, route_: Route, seconds: float,
                 confidences=(), items: int = 0, escalated: int = 0) -> None:
        """Count a success in ``route_``'s arm (nothing outside one)."""
        if route_.arm:
            tally = self.tallies.of(model, route_.arm)
            tally.answered(seconds, confidences, items, escalated)
            self.on_request(model, route_.version, route_.arm, "ok")
            self._maybe_wake(model, tally.requests)

    def failed(self, model: str, route_: Route) -> None:
        """Count a failure in ``route_``'s arm."""
        if route_.arm:
            tally = self.tallies.of(model, route_.arm)
            tally.failed()
            self.on_request(model, route_.version, route_.arm, "error")
            self._maybe_wake(model, tally.requests)

    def compared(self, model: str, agreed: int, compared: int) -> None:
        """Count shadowed items: ``agreed`` of ``compared`` got stable's top-1 label."""
        self.tallies.of(model, CANARY).compared_with_stable(agreed, compared)

    def _maybe_wake(self, model: str, requests: int) -> None:
        """Judge early when an arm reaches its minimum sample, and every twentieth of it
        after that: a bad canary is stopped within its minimum sample, not a round later."""
        record = self._records.get(model)
        if record is None or not record.running:
            return
        step = max(1, record.margins.min_requests // 20)
        if requests >= record.margins.min_requests and requests % step == 0:
            self._wake.set()

    def shard_route(self, model: str, pinned: str, serves: Callable[[str], bool]) -> Route:
        """The version for a job shard on a node that ``serves`` some versions: as
        ``route`` (no shadow), but an arm's version the node lacks gives way to the
        other arm's when the node serves that."""
        chosen = self.route(model, pinned, allow_shadow=False)
        record = self._records.get(model)
        if pinned or not chosen.arm or record is None or serves(chosen.version):
            return chosen
        other = (Route(record.stable, STABLE) if chosen.arm == CANARY
                 else Route(record.canary, CANARY))
        return other if serves(other.version) else chosen
