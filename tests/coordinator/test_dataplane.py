"""DataPlane.infer without a transport: a real Registry, Router, Forwarder and Cascade;
the node and the cloud are plain functions."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.cascade.breaker import CircuitBreaker
from coordinator.cascade.budget import CostMeter, TokenBucket
from coordinator.cascade.cloud import CloudTier
from coordinator.cascade.decision import Cascade
from coordinator.cascade.rules import parse_cascade
from coordinator.dataplane import DataPlane
from coordinator.errors import ModelNotServedError
from coordinator.fleet.forwarder import Forwarder
from coordinator.fleet.registry import Registry
from coordinator.fleet.router import Router
from edgeshard.errors import PeerStatusError

PROBS = np.array([[0.95, 0.05], [0.55, 0.45]], dtype=np.float32)  # sure, unsure


@pytest.fixture
def forwarder() -> Forwarder:
    reg = Registry(suspect_after=30.0, dead_after=60.0)
    reg.register("node-a", "a:1", {"edge": ("1",), "plain": ("1",)}, capacity=4)
    reg.probe_ok("a:1")
    return Forwarder(reg, Router(reg), max_in_flight=4)


def cascade(cloud) -> Cascade:
    tier = CloudTier(cloud, CircuitBreaker(3, 1.0), TokenBucket(None, 100), CostMeter())
    return Cascade(parse_cascade(("edge=big",), ("edge=max_prob:0.9",)), tier)


def answer_the_cloud(model, items, timeout):
    return np.full(len(items), 7, np.int64), np.full(len(items), 0.99, np.float32)


def refuse_the_cloud(model, items, timeout):
    raise PeerStatusError("INVALID_ARGUMENT", "inputs[0].datatype: expected FP32")


def infer(plane: DataPlane, model: str, asked: list[str]):
    def note(what, value):
        asked.append(what)
        return value

    return plane.infer(model, "", "", 5.0, lambda node, timeout: {"from": node.node_id},
                       probabilities_of=lambda response: note("probabilities", PROBS),
                       items=lambda: note("items", np.zeros((2, 3), np.float32)),
                       item_ids=lambda n: note("ids", [f"r:{i}" for i in range(n)]))


def test_without_a_rule_the_nodes_answer_is_final_and_nothing_is_decoded(forwarder):
    asked = []
    answer = infer(DataPlane(forwarder, cascade(answer_the_cloud)), "plain", asked)
    assert answer.response == {"from": "node-a"} and answer.decision is None
    assert asked == []  # the request was forwarded as it came


def test_with_a_rule_unsure_items_go_to_the_cloud(forwarder):
    asked = []
    plane = DataPlane(forwarder, cascade(answer_the_cloud))
    assert plane.cascaded("edge") and not plane.cascaded("plain")
    answer = infer(plane, "edge", asked)
    assert sorted(asked) == ["ids", "items", "probabilities"]
    assert answer.decision.tiers == ["edge", "cloud"]
    assert answer.decision.labels.tolist() == [0, 7]
    np.testing.assert_array_equal(answer.probabilities, PROBS)


def test_a_cloud_refusal_is_the_callers_error(forwarder):
    with pytest.raises(PeerStatusError) as err:
        infer(DataPlane(forwarder, cascade(refuse_the_cloud)), "edge", [])
    assert err.value.status == "INVALID_ARGUMENT"
    assert "cloud tier refused the escalated items" in err.value.details


def test_control_calls_find_a_node_or_say_what_is_served(forwarder):
    plane = DataPlane(forwarder)
    assert plane.node_for("edge").node_id == "node-a"
    assert [n.node_id for n in plane.live_nodes("plain")] == ["node-a"]
    with pytest.raises(ModelNotServedError):
        plane.live_nodes("other")
