"""Membership state machine and routing decisions, without processes (a controlled clock)."""

from __future__ import annotations

import random

import pytest

from coordinator.errors import (
    FleetSaturatedError,
    ModelNotServedError,
    NoNodeAvailableError,
    UnknownNodeError,
)
from coordinator.fleet.registry import Registry
from coordinator.fleet.router import Router

MODELS = {"m": ("1",)}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def reg():
    clock = Clock()
    r = Registry(suspect_after=3.0, dead_after=8.0, clock=clock)
    r.clock_ = clock
    return r


def test_candidate_admitted_only_by_a_health_check(reg):
    reg.add_candidate("a:1", "seed")
    assert reg.routable("m") == []
    epoch = reg.register("node-a", "a:1", MODELS, 4)
    assert reg.heartbeat("node-a", epoch, 0, 0, 1.0, 4, None) == (True, False)
    assert reg.routable("m") == []  # beats never admit
    reg.probe_ok("a:1")
    (rec,) = reg.routable("m")
    assert rec.node_id == "node-a" and rec.capacity == 4


def test_silence_makes_suspect_then_dead_and_fires_listeners(reg):
    died, revived = [], []
    reg.on_dead.append(lambda r: died.append(r.address))
    reg.on_live.append(lambda r: revived.append(r.address))
    reg.add_candidate("a:1", "seed", models=MODELS)
    reg.probe_ok("a:1")
    reg.clock_.now += 4
    reg.sweep()
    assert reg.get("a:1").state == "suspect" and reg.routable("m") == []
    reg.clock_.now += 5
    assert [r.address for r in reg.sweep()] == ["a:1"]
    assert died == ["a:1"] and reg.get("a:1").state == "dead"
    reg.probe_ok("a:1")
    assert revived == ["a:1", "a:1"] and reg.get("a:1").state == "live"


def test_unknown_epoch_asks_to_register_again(reg):
    epoch = reg.register("n", "a:1", MODELS, 4)
    assert reg.heartbeat("n", epoch + 1, 0, 0, 0, 4, None) == (False, False)
    assert reg.heartbeat("other", epoch, 0, 0, 0, 4, None) == (False, False)


def test_drain_and_unknown_node(reg):
    drained = []
    reg.on_drain.append(lambda r: drained.append(r.node_id))
    reg.add_candidate("a:1", "seed", node_id="na", models=MODELS)
    reg.probe_ok("a:1")
    assert reg.set_drained("na", True).display_state == "draining"
    assert drained == ["na"] and reg.routable("m") == []
    reg.set_drained("a:1", False)
    assert len(reg.routable("m")) == 1
    with pytest.raises(UnknownNodeError, match="node_id"):
        reg.set_drained("zz", True)


def test_router_errors_say_what_is_wrong(reg):
    router = Router(reg, rng=random.Random(1))
    with pytest.raises(ModelNotServedError, match="no node serves m"):
        router.choose("m")
    reg.add_candidate("a:1", "seed", models=MODELS, capacity=1)
    with pytest.raises(NoNodeAvailableError):
        router.choose("m")
    reg.probe_ok("a:1")
    assert router.choose("m").address == "a:1"
    with pytest.raises(ModelNotServedError):
        router.choose("m", version="2")
    reg.acquire("a:1")  # capacity 1 reached
    with pytest.raises(FleetSaturatedError, match="capacity"):
        router.choose("m")
    reg.release("a:1", 0.01)
    with pytest.raises(NoNodeAvailableError, match="already failed"):
        router.choose("m", exclude=frozenset({"a:1"}))


def test_router_keys_stick_and_spread(reg):
    for i in range(4):
        reg.add_candidate(f"n{i}:1", "seed", models=MODELS, capacity=100)
        reg.probe_ok(f"n{i}:1")
    router = Router(reg, rng=random.Random(7))
    for key in ("cam-1", "cam-2", "cam-3"):
        assert len({router.choose("m", routing_key=key).address for _ in range(20)}) == 1
    assert len({router.choose("m").address for _ in range(100)}) == 4


def test_slow_weights_reset_when_data_is_gone(reg):
    reg.add_candidate("a:1", "seed", models=MODELS)
    reg.set_weights({"a:1": 0.2})
    assert reg.get("a:1").weight == 0.2
    reg.set_weights({})
    assert reg.get("a:1").weight == 1.0


def test_slow_node_gets_work_only_when_the_others_are_busy(reg):
    for name in ("fast:1", "slow:1"):
        reg.add_candidate(name, "seed", models=MODELS, capacity=100)
        reg.probe_ok(name)
    reg.set_weights({"slow:1": 0.1})
    router = Router(reg, rng=random.Random(3))
    assert {router.choose("m").address for _ in range(50)} == {"fast:1"}
    reg.acquire("fast:1", 10)  # (10 + 1) / 1 > (0 + 1) / 0.1
    assert router.choose("m").address == "slow:1"


def test_dead_nodes_are_forgotten_after_expire_after_but_seeds_stay():
    clock = Clock()
    reg = Registry(suspect_after=3.0, dead_after=8.0, clock=clock, expire_after=60.0)
    reg.register("gone", "a:1", MODELS, 4)
    reg.probe_ok("a:1")
    reg.add_candidate("s:1", "seed", node_id="seed")
    reg.probe_ok("s:1", MODELS)
    clock.now += 9
    assert {r.node_id for r in reg.sweep()} == {"gone", "seed"}
    assert reg.expire() == []  # dead, but not silent long enough
    clock.now += 60
    assert [r.node_id for r in reg.expire()] == ["gone"]
    assert [r.node_id for r in reg.snapshot()] == ["seed"]  # a seed is probed until it returns
    with pytest.raises(UnknownNodeError):
        reg.get("gone")
    reg.register("gone", "a:1", MODELS, 4)  # it may come back by registering
    assert reg.get("gone").state == "candidate"


def test_not_routable_names_the_models_that_are_served(reg):
    reg.register("node-a", "a:1", {"digits": ("1",), "faces": ("2",)}, 4)
    reg.probe_ok("a:1")
    with pytest.raises(ModelNotServedError) as err:
        Router(reg).choose("cars")
    assert "no node serves cars (served: digits, faces)" in str(err.value)
