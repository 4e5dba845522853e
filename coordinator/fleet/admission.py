"""Who may join the fleet: the identity check a node passes before it is admitted.

Pure decisions, no gRPC. A coordinator can know a node by two proofs:

* its **client certificate** (the coordinator requires one: ``--tls-ca``), signed by the
  fleet CA: the node id must be the certificate's common name (as Azure IoT Edge binds a
  device id to its X.509 subject), so a node cannot register or heartbeat as another;
* a **join token** (``node`` role in ``--auth-tokens``) named after the node id, when
  any is configured.

Each proof that is configured must pass. With neither, registration is open (a
loopback development fleet), and the coordinator says so at start-up.

Zeroconf never admits a node by itself: with certificates, the coordinator dials the
advertised address expecting a server certificate for the advertised node id (TLS
host-name verification against the id); with join tokens only, an advert cannot prove
anything, so the node is admitted when it registers with its token.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.errors import (
    InvalidRequestError,
    NodeIdentityError,
    NodeUnauthenticatedError,
)

PROBE, VERIFY_CERTIFICATE, AWAIT_REGISTRATION = "probe", "verify-certificate", "await-registration"
MAX_NODE_ID_CHARS = 128
MAX_ADDRESS_CHARS = 261  # a 253-character DNS name, ':' and a port
MAX_MODELS = 256  # models one node may offer
MAX_VERSIONS = 64  # versions of one model a node may offer
MAX_NAME_CHARS = 128  # a model name or version
MAX_CAPACITY = 1_000_000  # outstanding requests a node may claim
MAX_PROCESSES = 256  # serving processes a node may claim (edge-node --processes bounds it)


@dataclass(frozen=True)
class Credentials:
    """What a Register or Heartbeat call proved: the common names of the client
    certificate (empty without one) and the node token's name (None without one)."""

    certificate_names: tuple[str, ...] = ()
    token_name: str | None = None


@dataclass(frozen=True)
class AdmissionPolicy:
    """``certificates``: nodes present client certificates (mTLS); ``join_tokens``: node
    tokens are configured."""

    certificates: bool = False
    join_tokens: bool = False

    @property
    def open(self) -> bool:
        """True when anyone reaching the coordinator may register as any node."""
        return not (self.certificates or self.join_tokens)

    def check(self, node_id: str, proof: Credentials) -> None:
        """Raise unless ``proof`` shows the caller is node ``node_id``.

        ``NodeUnauthenticatedError`` (UNAUTHENTICATED) when a required proof is missing,
        ``NodeIdentityError`` (PERMISSION_DENIED) when it names another node.
        """
        if self.certificates:
            if not proof.certificate_names:
                raise NodeUnauthenticatedError(
                    "node identity: no client certificate; a node presents one signed by the "
                    "fleet CA (--tls-cert/--tls-key)")
            if node_id not in proof.certificate_names:
                raise NodeIdentityError(
                    f"node_id {node_id!r}: this connection's certificate is for "
                    f"{', '.join(repr(n) for n in proof.certificate_names)}; a node registers "
                    "under its certificate's common name (leave --node-id unset to use it)")
        if self.join_tokens:
            if proof.token_name is None:
                raise NodeUnauthenticatedError(
                    f"node_id {node_id!r}: a join token is required (edge-node --join-token "
                    "or EDGESHARD_JOIN_TOKEN; `edge-coordinator tokens add --role node`)")
            if proof.token_name != node_id:
                raise NodeIdentityError(
                    f"node_id {node_id!r}: the join token belongs to node "
                    f"{proof.token_name!r}")

    def discovery(self) -> str:
        """What to do with a node found by zeroconf: ``PROBE`` (a health check admits it),
        ``VERIFY_CERTIFICATE`` (admit it only if its server certificate is for the
        advertised id) or ``AWAIT_REGISTRATION`` (admit nothing; it must register)."""
        if self.certificates:
            return VERIFY_CERTIFICATE
        return AWAIT_REGISTRATION if self.join_tokens else PROBE


def check_node_address(address: str, own: Iterable[str]) -> str:
    """``address`` when a coordinator can dial it: ``HOST:PORT`` with a port in 1..65535,
    not a wildcard host (``0.0.0.0``, ``::``) and not one of ``own`` (the coordinator's
    own addresses). ``InvalidRequestError`` naming the field otherwise."""
    if not address or len(address) > MAX_ADDRESS_CHARS:
        raise InvalidRequestError(f"address: required, HOST:PORT of at most "
                                  f"{MAX_ADDRESS_CHARS} characters the coordinator can dial")
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or " " in host:
        raise InvalidRequestError(f"address: {address!r} is not HOST:PORT with a port in "
                                  "1..65535")
    try:
        wildcard = ipaddress.ip_address(bare).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        raise InvalidRequestError(f"address: {address!r} is a wildcard; give an address the "
                                  "coordinator can dial (edge-node --advertise-address)")
    if address in set(own):
        raise InvalidRequestError(f"address: {address!r} is this coordinator's own address")
    return address


def check_node_id(node_id: str) -> str:
    """``node_id`` when it is 1..128 printable characters; ``InvalidRequestError``."""
    if not node_id or len(node_id) > MAX_NODE_ID_CHARS or not node_id.isprintable():
        raise InvalidRequestError(f"node_id: required, 1..{MAX_NODE_ID_CHARS} printable "
                                  "characters")
    return node_id


def check_node_report(models: dict[str, tuple[str, ...]], capacity: int,
                      latency_ms: float = 0.0, processes: int = 1) -> None:
    """``InvalidRequestError`` naming the field when what a node reports is out of
    bounds: more than ``MAX_MODELS`` models or ``MAX_VERSIONS`` versions of one, a name
    or version empty or over ``MAX_NAME_CHARS``, a capacity over ``MAX_CAPACITY``,
    processes over ``MAX_PROCESSES``, a latency that is negative or not finite."""
    if len(models) > MAX_MODELS:
        raise InvalidRequestError(f"models: at most {MAX_MODELS} per node, got {len(models)}")
    for name, versions in models.items():
        if not 0 < len(name) <= MAX_NAME_CHARS:
            raise InvalidRequestError(f"models: a model name is 1..{MAX_NAME_CHARS} characters")
        if len(versions) > MAX_VERSIONS or not all(0 < len(v) <= MAX_NAME_CHARS
                                                   for v in versions):
            raise InvalidRequestError(f"models[{name!r}].versions: at most {MAX_VERSIONS}, "
                                      f"each 1..{MAX_NAME_CHARS} characters")
    if capacity > MAX_CAPACITY:
        raise InvalidRequestError(f"capacity: at most {MAX_CAPACITY}, got {capacity}")
    if processes > MAX_PROCESSES:
        raise InvalidRequestError(f"processes: at most {MAX_PROCESSES}, got {processes}")
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise InvalidRequestError(f"load.ewma_latency_ms: must be finite and >= 0, got "
                                  f"{latency_ms}")


def own_addresses(host: str, port: int) -> set[str]:
    """The addresses that reach a coordinator bound to ``host:port``: the bound one and,
    for a loopback or wildcard bind, the loopback names."""
    out = {f"{host}:{port}"}
    try:
        local = ipaddress.ip_address(host.strip("[]"))
        loopish = local.is_loopback or local.is_unspecified
    except ValueError:
        loopish = host == "localhost"
    if loopish:
        out |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    return out
