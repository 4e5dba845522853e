"""Node identity under mutual TLS (issue 10, item 2) with real processes: a node is its
certificate's common name, cannot register as another, and zeroconf discovery admits
only a node whose server certificate is for the id it advertises. tritonclient with TLS
and a bearer token infers through the coordinator."""

from __future__ import annotations

import time
import uuid

import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

import edgeshard_models
from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.launcher import start_coordinator, start_node, start_process, tls_args
from edgeshard.certs import write_fleet_pki
from edgeshard.tls import TLSFiles, channel_credentials

pytestmark = pytest.mark.timeout(180)

FAST = ["--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3",
        "--probe-timeout-s", "0.5", "--suspect-after-s", "1.0", "--dead-after-s", "2.0"]
SUFFIX = uuid.uuid4().hex[:6]  # adverts of other runs on this host carry other ids
FIRST, SECOND, THIRD = (f"{n}-{SUFFIX}" for n in ("alpha", "beta", "gamma"))


@pytest.fixture(scope="module")
def mtls_fleet(tmp_path_factory, shipped_repository):
    workdir = tmp_path_factory.mktemp("identity")
    pki = workdir / "pki"
    write_fleet_pki(pki, [FIRST, SECOND, THIRD])
    tokens = workdir / "tokens.toml"
    tokens.write_text('[[token]]\nname = "cam"\nroles = ["infer"]\ntoken = "cam-token"\n\n'
                      '[[token]]\nname = "ops"\nroles = ["admin"]\ntoken = "ops-token"\n')
    procs = []
    try:
        coord = start_coordinator("coordinator", workdir / "state", workdir, extra_args=[
            *FAST, *tls_args(pki, "coordinator"), "--discover", "--auth-tokens", str(tokens)])
        procs.append(coord)
        # No --node-id: the node takes its certificate's common name.
        procs.append(start_process(FIRST, ["-m", "edge_node"], [
            "--model-repository", str(shipped_repository), "--host", "127.0.0.1",
            "--port", "0", "--workers", "1", "--coordinator", coord.address,
            *tls_args(pki, FIRST)], workdir))
        # THIRD's certificate, registering as someone else.
        liar = start_node("liar", shipped_repository, workdir, extra_args=[
            "--workers", "1", "--coordinator", coord.address, *tls_args(pki, THIRD)])
        procs.append(liar)
        # Advertised only (no registration): one true to its certificate, one not.
        for node_id, cert in ((SECOND, SECOND), (f"spoof-{SUFFIX}", THIRD)):
            procs.append(start_node(node_id, shipped_repository, workdir, extra_args=[
                "--workers", "1", "--advertise", *tls_args(pki, cert)]))
        admin = CoordinatorClient(coord.address, token="ops-token", credentials=(
            channel_credentials(TLSFiles(pki / "client.pem", pki / "client.key",
                                         pki / "ca.pem"))))
        yield coord, pki, liar, admin
        admin.close()
    finally:
        for proc in procs:
            proc.stop(grace=2)


def live(admin) -> dict[str, str]:
    return {n.node_id: n.source for n in admin.nodes() if n.state == "live"}


def test_a_node_is_its_certificate_and_discovery_checks_the_advertised_id(mtls_fleet):
    coord, _, liar, admin = mtls_fleet
    deadline = time.monotonic() + 30
    while live(admin) != {FIRST: "registered", SECOND: "discovered"}:
        assert time.monotonic() < deadline, (live(admin), coord.log_tail(40))
        time.sleep(0.2)
    time.sleep(1.0)  # the liar and the spoofed advert had their chances
    assert live(admin) == {FIRST: "registered", SECOND: "discovered"}
    assert {n.node_id for n in admin.nodes()} == {FIRST, SECOND}  # not even candidates
    assert (f"PERMISSION_DENIED: node_id 'liar': this connection's certificate is for "
            f"'{THIRD}'") in liar.log_tail(50)
    assert f"discovered node spoof-{SUFFIX} at 127.0.0.1:" in coord.log_tail(200)


def test_tritonclient_with_tls_and_a_token_infers_through_the_coordinator(mtls_fleet,
                                                                           holdout):
    coord, pki, _, _ = mtls_fleet
    client = tc.InferenceServerClient(
        coord.address, ssl=True, root_certificates=str(pki / "ca.pem"),
        private_key=str(pki / "client.key"), certificate_chain=str(pki / "client.pem"))
    try:
        images, labels = holdout
        inp = tc.InferInput("image", [8, *images.shape[1:]], "UINT8")
        inp.set_data_from_numpy(images[:8])
        result = client.infer(edgeshard_models.EDGE_MODEL, [inp],
                              outputs=[tc.InferRequestedOutput("label")],
                              headers={"authorization": "Bearer cam-token"})
        assert (result.as_numpy("label") == labels[:8]).mean() >= 0.75
        with pytest.raises(InferenceServerException) as info:
            client.infer(edgeshard_models.EDGE_MODEL, [inp])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()
