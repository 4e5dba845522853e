"""Audit sampling: which items are audited, the bounded queue and its worker, the budget
and slots escalations keep, and where comparisons go (agreement, warnings, examples).

The cloud tier, breaker, budget, tracker and example book are the real ones; only the
cloud's transport is a plain function.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import numpy as np
import pytest

from coordinator.cascade.audit import Auditor, AuditSampler, AuditTask, Comparison
from coordinator.cascade.breaker import CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.decision import Cascade
from coordinator.cascade.policies import EscalationPolicy
from coordinator.cascade.rules import parse_audit, parse_cascade
from coordinator.cascade.watch import AgreementWatch
from coordinator.monitoring.agreement import AgreementTracker
from edgeshard.settings import SettingsError

PROBS = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.05, 0.05, 0.9],
                  [0.2, 0.45, 0.35]], dtype=np.float32)  # rows 0 and 2 confident
ITEMS = np.arange(8, dtype=np.float32).reshape(4, 2)
IDS = ["i0", "i1", "i2", "i3"]


class FakeCloud:
    """Answers label 2 for every item (so edge label 0 disagrees, 2 agrees); ``down``
    raises; ``gate`` (an Event) holds every call until set."""

    def __init__(self, down: bool = False, gate: threading.Event | None = None):
        self.down = down
        self.gate = gate
        self.sent: list[np.ndarray] = []

    def __call__(self, cloud_model, items, timeout):
        if self.gate is not None:
            self.gate.wait(10)
        self.sent.append(items.copy())
        if self.down:
            raise ConnectionError("cloud unreachable")
        return np.full(len(items), 2, np.int64), np.full(len(items), 0.97, np.float32)


def tier(transport, rate=None, burst=1000.0, concurrency=4) -> CloudTier:
    return CloudTier(transport, CircuitBreaker(3, 10.0), TokenBucket(rate, burst), CostMeter(),
                     concurrency=concurrency, max_batch=8)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- selection -------------------------------------------------------------------------------
def test_the_pick_is_stable_near_the_rate_and_independent_of_the_random_policy():
    ids = [f"item-{k}" for k in range(20_000)]
    accepted = np.ones(len(ids), bool)
    sampler = AuditSampler({"m": 0.05})
    picked = sampler.select("m", ids, accepted)
    assert 0.04 < picked.mean() < 0.06
    assert (sampler.select("m", ids, accepted) == picked).all()  # same ids, same pick
    escalated = np.asarray(EscalationPolicy("random", 0.05).decide(
        np.full((len(ids), 2), 0.5, np.float32), ids), bool)
    # Not the random policy's items: about 5 % of its picks are audit picks too.
    assert 0.02 < picked[escalated].mean() < 0.09


def test_only_accepted_items_of_a_model_with_a_rate_are_picked():
    accepted = np.array([True, False, True, False])
    assert AuditSampler({"m": 1.0}).select("m", IDS, accepted).tolist() == accepted.tolist()
    assert not AuditSampler({"m": 1.0}).select("other", IDS, accepted).any()
    assert not AuditSampler({"m": 0.0}).select("m", IDS, accepted).any()
    with pytest.raises(ValueError, match="audit"):
        AuditSampler({"m": 1.5})


@pytest.mark.parametrize("entry,message", [
    ("m", "is not MODEL=RATE"), ("m=abc", "'abc' of m is not a number"),
    ("m=1.5", "must be a fraction from 0 to 1"), ("m=-0.1", "must be a fraction"),
    ("m=nan", "must be a fraction"), ("x=0.1", "'x' has no --cascade x=CLOUD_MODEL")])
def test_bad_audit_entries_name_the_option(entry, message):
    with pytest.raises(SettingsError, match=f"^audit: .*{message}"):
        parse_audit((entry,), {"m"})


# -- the cascade offers audits without changing its decision ---------------------------------
def cascade(cloud, sampler_rate=1.0, **kw):
    compared, outcomes = [], Counter()
    cloud_tier = kw.pop("tier", None) or tier(cloud)
    auditor = Auditor(cloud_tier, compared.append,
                      on_outcome=lambda m, o, n: outcomes.update({o: n}), **kw)
    rules = parse_cascade(("m=m-cloud",), ("m=max_prob:0.8",))
    c = Cascade(rules, cloud_tier, on_compared=compared.append, auditor=auditor,
                sampler=AuditSampler({"m": sampler_rate}))
    return c, auditor, compared, outcomes


def test_decide_offers_confident_items_and_reports_escalated_ones():
    cloud = FakeCloud()
    c, auditor, compared, outcomes = cascade(cloud)
    d = c.decide(c.rule("m"), ITEMS, PROBS, IDS, 1.0, "7", "cam-1")
    assert d.escalated.tolist() == [False, True, False, True]
    assert d.tiers == ["edge", "cloud", "edge", "cloud"]  # audits change nothing
    (esc,) = compared
    assert (esc.source, esc.version, esc.segment, list(esc.ids)) == ("escalated", "7", "cam-1",
                                                                      ["i1", "i3"])
    assert auditor.queued == 2  # not sent yet: nothing waited for the audit
    assert len(cloud.sent) == 1
    auditor.start()
    try:
        wait_for(lambda: len(compared) == 2)
    finally:
        auditor.close()
    audit = compared[1]
    assert (audit.source, list(audit.ids), audit.agreed.tolist()) == ("audit", ["i0", "i2"],
                                                                      [False, True])
    assert outcomes == {"compared": 2}
    np.testing.assert_array_equal(audit.items, ITEMS[[0, 2]])


def test_a_shards_comparisons_name_its_job_and_online_ones_none():
    c, auditor, compared, _ = cascade(FakeCloud())
    c.decide(c.rule("m"), ITEMS, PROBS, IDS, 1.0, "7", "cam-1", job_id="job-1")
    c.decide(c.rule("m"), ITEMS, PROBS, IDS, 1.0, "7", "cam-1")  # an online request
    auditor.start()
    try:
        wait_for(lambda: len(compared) == 4)
    finally:
        auditor.close()
    assert sorted((x.job_id, x.source, tuple(x.ids)) for x in compared) == [
        ("", "audit", ("i0", "i2")), ("", "escalated", ("i1", "i3")),
        ("job-1", "audit", ("i0", "i2")), ("job-1", "escalated", ("i1", "i3"))]


def test_a_full_queue_drops_audits_at_once():
    gate = threading.Event()
    c, auditor, compared, outcomes = cascade(FakeCloud(gate=gate), max_items=3)
    rule = c.rule("m")
    no_escalation = np.tile(PROBS[[0]], (4, 1))
    started = time.monotonic()
    c.decide(rule, ITEMS, no_escalation[:2], IDS[:2], 1.0)  # 2 queued
    c.decide(rule, ITEMS, no_escalation[:2], ["j0", "j1"], 1.0)  # 2 more do not fit
    assert time.monotonic() - started < 0.5
    assert auditor.queued == 2 and outcomes == {"queue_full": 2}
    gate.set()


def test_the_queue_is_bounded_in_bytes_too():
    outcomes = Counter()
    auditor = Auditor(tier(FakeCloud()), lambda c: None, max_bytes=20,
                      on_outcome=lambda m, o, n: outcomes.update({o: n}))

    def task(n):  # n items of 8 bytes
        return AuditTask("m-cloud", "m", "1", "", [f"a{k}" for k in range(n)], ITEMS[:n],
                         np.zeros(n, np.int64), np.ones(n, np.float32))
    assert auditor.offer(task(2))
    assert not auditor.offer(task(1))  # 24 bytes would pass 20
    assert auditor.queued == 2 and outcomes == {"queue_full": 1}


def test_a_cloud_that_is_down_drops_audits_and_never_touches_the_answer():
    cloud = FakeCloud(down=True)
    c, auditor, compared, outcomes = cascade(cloud)
    auditor.start()
    try:
        d = c.decide(c.rule("m"), ITEMS, PROBS, IDS, 1.0)
        assert d.degraded.tolist() == [False, True, False, True]  # escalations unanswered
        wait_for(lambda: outcomes["failed"] == 2)
    finally:
        auditor.close()
    assert compared == []


def test_audits_leave_the_budget_reserve_to_escalations():
    bucket = TokenBucket(10.0, 10.0)
    assert bucket.take_spare(8, 0.0, keep=5.0) == 5  # 10 tokens, 5 kept
    assert bucket.take_spare(1, 0.0, keep=5.0) == 0
    assert bucket.take(5, 0.0) == 5  # what audits left is there for escalations
    assert TokenBucket(None, 1.0).take_spare(100, 0.0, keep=5.0) == 100  # unlimited
    cloud = FakeCloud()
    t = tier(cloud, rate=4.0, burst=4.0)
    task = AuditTask("m-cloud", "m", "1", "", ["a", "b", "c", "d"], ITEMS,
                     np.zeros(4, np.int64), np.ones(4, np.float32))
    outcomes = Counter()
    Auditor(t, lambda c: None, on_outcome=lambda m, o, n: outcomes.update({o: n})).run_once(
        [task])
    assert outcomes == {"compared": 2, "budget": 2}  # half the burst is kept


def test_an_audit_never_waits_for_a_call_slot():
    gate = threading.Event()
    cloud = FakeCloud(gate=gate)
    t = tier(cloud, concurrency=1)
    busy = threading.Thread(target=t.ask, args=("m-cloud", ITEMS[:1], 5.0))
    busy.start()  # an escalation holds the only slot
    wait_for(lambda: t._slots._value == 0)
    outcomes = Counter()
    task = AuditTask("m-cloud", "m", "1", "", ["a"], ITEMS[:1], np.zeros(1, np.int64),
                     np.ones(1, np.float32))
    started = time.monotonic()
    Auditor(t, lambda c: None, on_outcome=lambda m, o, n: outcomes.update({o: n})).run_once(
        [task])
    assert time.monotonic() - started < 0.5 and outcomes == {"busy": 1}
    gate.set()
    busy.join()


# -- where comparisons go --------------------------------------------------------------------
def comparison(edge, cloud, version="1", source="audit", model="m"):
    n = len(edge)
    return Comparison(model, version, "", source, [f"x{k}" for k in range(n)],
                      np.zeros((n, 2), np.float32), np.array(edge), np.ones(n, np.float32),
                      np.array(cloud), np.ones(n, np.float32))


def test_the_watch_sets_gauges_warns_once_and_keeps_examples(caplog):
    stats, kept = [], []
    watch = AgreementWatch(AgreementTracker(window=10, min_items=4, warn_below=0.8),
                           on_stat=stats.append, keep=kept.append)
    with caplog.at_level(logging.INFO, "coordinator.cascade.watch"):
        watch.compared(comparison([1, 1, 1, 1], [1, 1, 1, 1]))
        watch.compared(comparison([1, 1, 1, 1], [2, 2, 2, 2]))  # 4 of 8 agree
        watch.compared(comparison([1], [2]))
    assert [s.fraction for s in stats] == [1.0, 0.5, 4 / 9]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "below --agreement-warn 0.8" in warnings[0].getMessage()
    assert "export-examples m" in warnings[0].getMessage()
    assert len(kept) == 3


# -- bad flag values stop `serve` with one line naming the option ----------------------------
@pytest.mark.parametrize("args,text", [
    (("--audit", "mnist_edge=2"), "audit: rate 2 of mnist_edge must be a fraction from 0 to 1"),
    (("--audit", "mnist_edge"), "audit: 'mnist_edge' is not MODEL=RATE"),
    (("--audit", "other=0.1"), "audit: 'other' has no --cascade other=CLOUD_MODEL"),
    (("--agreement-warn", "1.5"), "agreement_warn: must be a fraction from 0 to 1"),
    (("--agreement-warn", "high"), "agreement_warn"),
    (("--agreement-min-items", "900"), "agreement_min_items: must be <= agreement_window"),
    (("--examples-keep", "0"), "examples_keep: must be >= 1"),
    (("--audit-queue", "0"), "audit_queue: must be >= 1")])
def test_serve_refuses_bad_audit_settings_naming_them(args, text, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--state-dir",
                          str(tmp_path), "--cloud", "127.0.0.1:1", "--cascade",
                          "mnist_edge=mnist_cloud", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "configuration error" in out.stderr and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
