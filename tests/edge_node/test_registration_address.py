"""The address a node registers with: a node bound to every interface must not tell a
coordinator on another machine to dial 127.0.0.1 (review of issue 10)."""

from __future__ import annotations

import ipaddress

from edge_node.config import NodeConfig
from edge_node.server import EdgeNodeServer


def host_towards(coordinator: str, **settings) -> str:
    server = EdgeNodeServer.__new__(EdgeNodeServer)  # only the config is needed
    server.config = NodeConfig(model_repository="models/repository", **settings)
    return server._host_towards(coordinator)


def test_a_wildcard_bind_registers_the_address_of_the_route_to_the_coordinator():
    assert host_towards("127.0.0.1:8000", host="0.0.0.0", insecure=True) == "127.0.0.1"
    # TEST-NET-2 (RFC 5737): never a real peer; a UDP "connect" sends nothing.
    towards_far = host_towards("198.51.100.7:8000", host="0.0.0.0", insecure=True)
    assert towards_far == "127.0.0.1" or not ipaddress.ip_address(towards_far).is_loopback


def test_an_explicit_address_wins():
    assert host_towards("198.51.100.7:8000", host="0.0.0.0", insecure=True,
                        advertise_address="10.1.2.3") == "10.1.2.3"
    assert host_towards("198.51.100.7:8000", host="127.0.0.1") == "127.0.0.1"
