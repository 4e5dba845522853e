"""The coordinator's Open Inference Protocol HTTP/REST binding with real processes on
loopback: a coordinator with bearer tokens (--auth-tokens) and a node, driven by
tritonclient.http and the curl binary; and HTTPS with mutual TLS."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

import edgeshard_models
from coordinator.cli.launcher import start_coordinator, start_node, tls_args
from edgeshard.certs import write_fleet_pki

pytestmark = pytest.mark.timeout(180)

EDGE = edgeshard_models.EDGE_MODEL
FAST = ["--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3",
        "--probe-timeout-s", "0.5", "--suspect-after-s", "1.0", "--dead-after-s", "2.0"]
TOKENS = {"cam": ["infer"], "ops": ["admin"], "node-1": ["node"]}


def token(name: str) -> str:
    return f"http-test-token-of-{name}"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(name)}"}


def curl(port: int, path: str, body: bytes | None = None, *args: str,
         scheme: str = "http") -> tuple[int, dict]:
    """(HTTP status, JSON answer) of the real curl binary; ``args`` go before the URL."""
    cmd = ["curl", "-sS", "-w", "\n%{http_code}", *args]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run([*cmd, f"{scheme}://127.0.0.1:{port}{path}"], input=body,
                         capture_output=True, timeout=30, check=True).stdout
    text, _, status = out.rpartition(b"\n")
    return int(status), json.loads(text)


def infer_body(image: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1],
                                   "datatype": "UINT8", "data": image.reshape(-1).tolist()}],
                       **extra}).encode()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, shipped_repository):
    """A coordinator with bearer tokens and --http-port 0, and node-1 joined to it."""
    workdir = tmp_path_factory.mktemp("coord-http")
    tokens = workdir / "tokens.toml"
    tokens.write_text("".join(
        f'[[token]]\nname = "{n}"\nroles = {json.dumps(r)}\ntoken = "{token(n)}"\n\n'
        for n, r in TOKENS.items()))
    procs = []
    try:
        coord = start_coordinator("coordinator", workdir / "state", workdir, extra_args=[
            *FAST, "--auth-tokens", str(tokens), "--http-port", "0"])
        procs.append(coord)
        procs.append(start_node("node-1", shipped_repository, workdir,
                                extra_args=["--workers", "1", "--coordinator", coord.address],
                                env={"EDGESHARD_JOIN_TOKEN": token("node-1")}))
        port = coord.info["http_port"]
        deadline = time.monotonic() + 30
        while curl(port, "/v2/health/ready")[0] != 200:  # open: no token needed
            assert time.monotonic() < deadline, coord.log_tail()
            time.sleep(0.1)
        yield coord
    finally:
        for proc in procs:
            proc.stop(grace=5)


@pytest.fixture
def client(secured):
    c = th.InferenceServerClient(f"127.0.0.1:{secured.info['http_port']}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def sample(holdout):
    images, labels = holdout
    return images[::25, ..., None], labels[::25]


def test_health_is_open_and_metadata_needs_a_token(secured, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(headers=bearer("cam"))["name"] == "edgeshard-coordinator"
    assert client.is_model_ready(EDGE, headers=bearer("cam"))
    meta = client.get_model_metadata(EDGE, headers=bearer("cam"))
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    config = client.get_model_config(EDGE, headers=bearer("cam"))
    assert config["max_batch_size"] == 64 and config["name"] == EDGE
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(EDGE)
    assert info.value.status() == "401"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infers_through_the_fleet(client, sample, binary):
    images, labels = sample
    inp = th.InferInput("image", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    result = client.infer(EDGE, [inp], headers=bearer("cam"), outputs=[
        th.InferRequestedOutput("label", binary_data=binary),
        th.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)])
    accuracy = float((result.as_numpy("label") == labels).mean())
    assert accuracy >= edgeshard_models.model_card()[EDGE]["holdout_accuracy_int8"] - 0.1
    top = result.as_numpy("probabilities")
    assert top.shape == (len(images), 2)
    # tritonclient gives BYTES from JSON as str, from the binary part as bytes
    best = [int((e if isinstance(e, str) else e.decode()).split(":")[1]) for e in top[:, 0]]
    assert best == list(result.as_numpy("label"))
    params = result.get_response()["parameters"]
    assert params["tier"] == "edge" and params["node"] == "node-1"
    stats = client.get_inference_statistics(EDGE, headers=bearer("ops"))["model_stats"]
    assert stats[0]["inference_count"] >= len(images)


def test_curl_with_a_json_body_and_a_token(secured, sample):
    images, labels = sample
    status, answer = curl(secured.info["http_port"], f"/v2/models/{EDGE}/infer",
                          infer_body(images[3], outputs=[{"name": "label"}]),
                          "-H", f"Authorization: Bearer {token('cam')}")
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [int(labels[3])]
    assert answer["parameters"]["tier"] == "edge"


@pytest.mark.parametrize("headers,status,words", [
    ([], 401, "bearer token with the infer role"),
    (["-H", "Authorization: Bearer not-a-token"], 401, "not valid"),
    (["-H", "Authorization: Basic abc"], 401, "Bearer"),
    (["-H", f"Authorization: Bearer {token('node-1')}"], 403, "needs the infer role"),
], ids=["missing", "unknown", "not-bearer", "wrong-role"])
def test_infer_without_the_right_token_is_refused(secured, sample, headers, status, words):
    got, answer = curl(secured.info["http_port"], f"/v2/models/{EDGE}/infer",
                       infer_body(sample[0][0]), *headers)
    assert got == status, answer
    assert words in answer["error"]


def test_errors_through_the_coordinator(secured, sample):
    port, auth = secured.info["http_port"], ["-H", f"Authorization: Bearer {token('cam')}"]
    status, answer = curl(port, "/v2/models/nope/infer", infer_body(sample[0][0]), *auth)
    assert status == 404 and "nope" in answer["error"]
    status, answer = curl(port, "/v2/models/nope", None, *auth)
    assert status == 404 and "nope" in answer["error"]
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1, 1],
                                   "datatype": "UINT8", "data": [0] * 784}]}).encode()
    status, answer = curl(port, f"/v2/models/{EDGE}/infer", body, *auth)
    assert status == 400 and answer["error"].startswith("inputs[0].shape"), answer
    status, answer = curl(port, f"/v2/models/{EDGE}/infer", b"{", *auth)
    assert status == 400 and answer["error"].startswith("body"), answer


def test_https_with_mutual_tls(tmp_path, shipped_repository):
    pki = tmp_path / "pki"
    write_fleet_pki(pki, ["tls-node"], hosts=["127.0.0.1"])
    node = start_node("tls-node", shipped_repository, tmp_path, extra_args=[
        "--workers", "1", "--http-port", "0", *tls_args(pki, "tls-node")])
    try:
        port = node.info["http_port"]
        client_files = ["--cacert", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
                        "--key", str(pki / "client.key")]
        assert curl(port, "/v2/health/ready", None, *client_files,
                    scheme="https") == (200, {"ready": True})
        status, answer = curl(port, f"/v2/models/{EDGE}/infer",
                              infer_body(np.zeros((28, 28), np.uint8)), *client_files,
                              scheme="https")
        assert status == 200 and answer["model_name"] == EDGE
        # Without a client certificate the handshake fails; plaintext gets no answer.
        no_cert = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"),
                                  f"https://127.0.0.1:{port}/v2/health/ready"],
                                 capture_output=True, timeout=30)
        assert no_cert.returncode != 0
        plain = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/v2/health/ready"],
                               capture_output=True, timeout=30)
        assert plain.returncode != 0 or b'"ready"' not in plain.stdout
    finally:
        node.stop(grace=5)
