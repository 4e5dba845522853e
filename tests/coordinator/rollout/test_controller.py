"""Rollouts on one coordinator: verdicts acted on, decisions saved and re-read."""

from __future__ import annotations

import pytest

from coordinator.errors import RolloutNotFoundError, RolloutStateError
from coordinator.rollout.controller import Rollouts, from_row, to_row
from coordinator.rollout.labels import CANARY, PROMOTED, ROLLED_BACK, STABLE, Rollout, Route
from coordinator.rollout.verdict import Margins


class Book:
    """The store's side, in memory; ``fail`` makes saves raise."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.fail = False

    def load(self):
        return [self.rows[m] for m in sorted(self.rows)]

    def save(self, row):
        if self.fail:
            raise OSError("store away")
        self.rows[row["model"]] = dict(row)


def rollouts(book, **kwargs):
    return Rollouts(book.load, book.save, clock=lambda: 1000.0, **kwargs)


def feed(r: Rollouts, arm: str, n: int, confidence: float, error_every: int = 0):
    for k in range(n):
        route = Route("2" if arm == CANARY else "1", arm)
        if error_every and k % error_every == 0:
            r.failed("m", route)
        else:
            r.answered("m", route, 0.01, [confidence], 1)


def start(r: Rollouts, **margins) -> Rollout:
    return r.begin(Rollout("m", "1", "2", 0.2, 0.0, Margins(min_requests=20, **margins)))


def test_a_worse_canary_is_rolled_back_and_the_decision_saved():
    book = Book()
    seen = []
    r = rollouts(book, on_change=seen.append)
    start(r)
    feed(r, STABLE, 30, 0.95)
    feed(r, CANARY, 19, 0.3)
    r.judge_all()
    assert r.get("m").running  # below the minimum sample: wait
    feed(r, CANARY, 1, 0.3)
    r.judge_all()
    record = r.get("m")
    assert record.state == ROLLED_BACK and "confidence fell" in record.reason
    assert record.stats["canary_requests"] == 20
    assert book.rows["m"]["state"] == ROLLED_BACK
    assert r.route("m").version == "1" and not r.route("m").arm
    assert [s.state for s in seen] == ["running", ROLLED_BACK]


def test_a_good_canary_is_kept_then_promoted_after_its_sample():
    book = Book()
    r = rollouts(book)
    start(r, promote_after=40)
    feed(r, STABLE, 30, 0.95)
    feed(r, CANARY, 30, 0.95)
    r.judge_all()
    assert r.get("m").running and r.verdict(r.get("m")).decision == "keep"
    feed(r, CANARY, 10, 0.95)
    r.judge_all()
    assert r.get("m").state == PROMOTED and r.get("m").stable == "2"
    assert r.route("m").version == "2"


def test_operator_actions_and_their_errors():
    r = rollouts(Book())
    with pytest.raises(RolloutNotFoundError):
        r.promote("m")
    start(r)
    with pytest.raises(RolloutStateError, match="still running"):
        start(r)
    assert r.rollback("m", "by hand").reason == "by hand"
    with pytest.raises(RolloutStateError, match="rolled_back already"):
        r.promote("m")
    start(r)  # a new rollout after a decision
    assert r.promote("m").state == PROMOTED


def test_a_decision_holds_here_while_the_store_refuses_and_is_saved_later():
    book = Book()
    r = rollouts(book)
    start(r)
    book.fail = True
    r.rollback("m", "by hand")
    assert r.get("m").state == ROLLED_BACK and book.rows["m"]["state"] == "running"
    assert r.route("m").version == "1" and not r.route("m").arm
    book.fail = False
    r.refresh()
    assert book.rows["m"]["state"] == ROLLED_BACK


def test_a_restarted_coordinator_and_another_replica_read_the_decisions():
    book = Book()
    first = rollouts(book)
    start(first)
    other = rollouts(book)
    other.refresh()
    assert other.get("m").running and other.route("m", "2").arm == CANARY
    first.rollback("m", "worse")
    other.refresh()
    assert other.get("m").state == ROLLED_BACK and other.route("m").version == "1"
    restarted = rollouts(book)
    restarted.refresh()
    assert restarted.get("m") == first.get("m")


def test_rows_round_trip_and_ignore_unknown_margins():
    record = Rollout("m", "1", "2", 0.2, 0.1, Margins(min_requests=7), stats={"x": 1.0})
    row = to_row(record)
    assert from_row(row) == record
    row["margins"]["from_the_future"] = 3
    assert from_row(row) == record


def test_a_shard_runs_on_the_version_its_node_serves():
    r = rollouts(Book())
    r.begin(Rollout("m", "1", "2", 1.0, 0.0, Margins(min_requests=20)))
    assert r.shard_route("m", "", lambda v: True) == Route("2", CANARY)
    assert r.shard_route("m", "", lambda v: v == "1") == Route("1", STABLE)
    assert r.shard_route("m", "5", lambda v: False) == Route("5")
