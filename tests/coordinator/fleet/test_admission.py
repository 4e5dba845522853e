"""Who may join the fleet (issue 10, item 2), as pure decisions: the identity policy, the
node address check, and what membership does with a discovered node in each mode."""

from __future__ import annotations

import pytest

from coordinator.errors import InvalidRequestError, NodeIdentityError, NodeUnauthenticatedError
from coordinator.fleet.admission import (
    AWAIT_REGISTRATION,
    PROBE,
    VERIFY_CERTIFICATE,
    AdmissionPolicy,
    Credentials,
    check_node_address,
    check_node_id,
    own_addresses,
)
from coordinator.fleet.membership import Membership
from coordinator.fleet.registry import LIVE, Registry

MODELS = {"m": ("1",)}


def test_an_open_fleet_admits_any_claim():
    policy = AdmissionPolicy()
    assert policy.open and policy.discovery() == PROBE
    policy.check("anyone", Credentials())


def test_with_certificates_the_node_id_is_the_certificates_common_name():
    policy = AdmissionPolicy(certificates=True)
    policy.check("node-1", Credentials(("node-1",)))
    with pytest.raises(NodeIdentityError, match="certificate is for 'node-2'"):
        policy.check("node-1", Credentials(("node-2",)))
    with pytest.raises(NodeUnauthenticatedError, match="no client certificate"):
        policy.check("node-1", Credentials())
    assert policy.discovery() == VERIFY_CERTIFICATE


def test_with_join_tokens_the_token_must_be_the_nodes_own():
    policy = AdmissionPolicy(join_tokens=True)
    policy.check("node-1", Credentials(token_name="node-1"))
    with pytest.raises(NodeIdentityError, match="join token belongs to node 'node-2'"):
        policy.check("node-1", Credentials(token_name="node-2"))
    with pytest.raises(NodeUnauthenticatedError, match="a join token is required"):
        policy.check("node-1", Credentials(("node-1",)))
    assert policy.discovery() == AWAIT_REGISTRATION


def test_with_both_each_proof_must_pass():
    policy = AdmissionPolicy(certificates=True, join_tokens=True)
    policy.check("n", Credentials(("n",), "n"))
    with pytest.raises(NodeUnauthenticatedError):
        policy.check("n", Credentials(("n",)))
    with pytest.raises(NodeIdentityError):
        policy.check("n", Credentials(("m",), "n"))


@pytest.mark.parametrize("address, message", [
    ("", "required"), ("host", "not HOST:PORT"), ("host:0", "port in 1..65535"),
    ("host:70000", "port in 1..65535"), (":8001", "not HOST:PORT"),
    ("0.0.0.0:8001", "is a wildcard"), ("[::]:8001", "is a wildcard"),
    ("a b:8001", "not HOST:PORT"), ("x" * 300 + ":1", "at most 261"),
    ("127.0.0.1:8000", "this coordinator's own address"),
    ("localhost:8000", "this coordinator's own address"),
])
def test_a_node_address_the_coordinator_cannot_dial_is_refused(address, message):
    with pytest.raises(InvalidRequestError, match=message):
        check_node_address(address, own_addresses("127.0.0.1", 8000))


def test_good_addresses_pass():
    own = own_addresses("127.0.0.1", 8000)
    for address in ("127.0.0.1:8001", "edge-7.local:8001", "[::1]:8001", "10.0.0.5:8000"):
        assert check_node_address(address, own) == address
    assert own_addresses("10.0.0.1", 9) == {"10.0.0.1:9"}
    assert "127.0.0.1:9" in own_addresses("0.0.0.0", 9)


@pytest.mark.parametrize("node_id", ["", "x" * 129, "a\nb"])
def test_a_malformed_node_id_is_refused(node_id):
    with pytest.raises(InvalidRequestError, match="node_id"):
        check_node_id(node_id)


def membership(certificates=False, join_tokens=False, verify=None, probe=lambda a, t: MODELS):
    registry = Registry(3.0, 8.0)
    m = Membership(registry, probe, 1.0, 0.5, certificates=certificates,
                   join_tokens=lambda: join_tokens, verify=verify)
    m.own = own_addresses("127.0.0.1", 8000)
    return m, registry


def test_with_join_tokens_discovery_admits_nothing_until_the_node_registers():
    m, registry = membership(join_tokens=True)
    assert not m.discovered(["127.0.0.1:9001"], "node-1", 4)
    assert registry.snapshot() == []  # not even a candidate the next round would probe
    m.register("node-1", "127.0.0.1:9001", MODELS, 4)
    assert registry.get("node-1").state == LIVE


def test_with_certificates_a_discovered_node_must_prove_the_advertised_id():
    asked = []

    def verify(address, node_id, timeout):
        asked.append((address, node_id))
        return MODELS if (address, node_id) == ("127.0.0.1:9002", "node-2") else None

    m, registry = membership(certificates=True, verify=verify)
    assert not m.discovered(["127.0.0.1:9001"], "node-2", 4)  # its cert is not node-2's
    assert registry.snapshot() == []
    assert m.discovered(["127.0.0.1:8000", "127.0.0.1:9002"], "node-2", 4)
    assert asked == [("127.0.0.1:9001", "node-2"), ("127.0.0.1:9002", "node-2")]  # never own
    rec = registry.get("node-2")
    assert rec.state == LIVE and rec.source == "discovered" and rec.models == MODELS


def test_registration_validates_id_and_address_before_recording():
    m, registry = membership()
    with pytest.raises(InvalidRequestError, match="own address"):
        m.register("node-1", "localhost:8000", MODELS, 4)
    with pytest.raises(InvalidRequestError, match="wildcard"):
        m.register("node-1", "0.0.0.0:9001", MODELS, 4)
    assert registry.snapshot() == []
