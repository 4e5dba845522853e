"""Authenticated membership and API (issue 10, items 2 and 3) with real processes on
loopback: a coordinator with a token file, nodes with and without join tokens, clients
with each role, job ownership, the CLI, metrics, revocation without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import edgeshard_models
from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.launcher import start_coordinator, start_node
from coordinator.jobs.items import ItemSource
from coordinator.jobs.model import JobState
from edgeshard.transport import open_channel
from protos import fleet_pb2, fleet_pb2_grpc, oip_pb2
from protos.oip_service import InferenceStub

pytestmark = pytest.mark.timeout(180)

FAST = ["--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3",
        "--probe-timeout-s", "0.5", "--suspect-after-s", "1.0", "--dead-after-s", "2.0"]
TOKENS = {"cam": ["infer"], "alice": ["jobs"], "bob": ["jobs"], "ops": ["admin"],
          "node-1": ["node"], "node-2": ["node"]}


def token(name: str) -> str:
    return f"test-token-of-{name}"


def write_token_file(path, names) -> None:
    path.write_text("".join(
        f'[[token]]\nname = "{n}"\nroles = {TOKENS[n]!r}\ntoken = "{token(n)}"\n\n'
        .replace("'", '"') for n in names))


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True,
                          text=True, timeout=90, env={**clean, **(env or {})})


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, shipped_repository):
    """A coordinator with bearer tokens and join tokens; node-1 joins with its token,
    ``rogue`` with none and ``impostor`` (id node-2) with node-1's."""
    workdir = tmp_path_factory.mktemp("auth")
    tokens = workdir / "tokens.toml"
    write_token_file(tokens, TOKENS)
    procs = []
    try:
        coord = start_coordinator("coordinator", workdir / "state", workdir, extra_args=[
            *FAST, "--auth-tokens", str(tokens), "--metrics-port", "0"])
        procs.append(coord)
        common = ["--workers", "1", "--coordinator", coord.address]
        procs.append(start_node("node-1", shipped_repository, workdir, extra_args=common,
                                env={"EDGESHARD_JOIN_TOKEN": token("node-1")}))
        rogue = start_node("rogue", shipped_repository, workdir, extra_args=common)
        impostor = start_node("node-2", shipped_repository, workdir,
                              extra_args=[*common, "--join-token", token("node-1")])
        procs += [rogue, impostor]
        admin = CoordinatorClient(coord.address, token=token("ops"))
        wait_for(lambda: [n for n in admin.nodes() if n.state == "live"], what="node-1")
        yield coord, tokens, rogue, impostor, admin
        admin.close()
    finally:
        for proc in procs:
            proc.stop(grace=2)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_only_the_node_with_its_own_join_token_is_admitted(secured):
    coord, _, rogue, impostor, admin = secured
    time.sleep(1.0)  # several registration attempts of the other two
    assert [(n.node_id, n.state) for n in admin.nodes()] == [("node-1", "live")]
    wait_for(lambda: "UNAUTHENTICATED: node_id 'rogue': a join token is required"
             in rogue.log_tail(50), what="the rogue node's refusal")
    wait_for(lambda: "PERMISSION_DENIED: node_id 'node-2': the join token belongs to node "
             "'node-1'" in impostor.log_tail(50), what="the impostor's refusal")
    assert "refused Register of node 'rogue'" in coord.log_tail(80)
    assert "a join token is required" in coord.log_tail(80)


def register(address: str, node_id: str, node_address: str, with_token: str | None):
    channel = open_channel(address, token=with_token)
    try:
        return fleet_pb2_grpc.FleetStub(channel).Register(
            fleet_pb2.RegisterRequest(node_id=node_id, address=node_address), timeout=5)
    finally:
        channel.close()


def test_a_heartbeat_or_registration_as_another_node_is_refused(secured):
    coord = secured[0]
    code, details = code_of(lambda: register(coord.address, "node-1", "127.0.0.1:1", None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: register(coord.address, "node-1", "127.0.0.1:1",
                                       token("node-2")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = code_of(lambda: register(coord.address, "node-1", "127.0.0.1:1", "forged"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    channel = open_channel(coord.address, token=token("node-2"))
    try:
        code, details = code_of(lambda: fleet_pb2_grpc.FleetStub(channel).Heartbeat(
            fleet_pb2.HeartbeatRequest(node_id="node-1", epoch=1), timeout=5))
    finally:
        channel.close()
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to node 'node-2'" in details


@pytest.mark.parametrize("address, message", [
    ("0.0.0.0:9001", "is a wildcard"), ("127.0.0.1", "not HOST:PORT"),
    (None, "this coordinator's own address")])
def test_a_node_address_that_cannot_be_dialled_is_refused(secured, address, message):
    coord = secured[0]
    address = address or coord.address
    code, details = code_of(lambda: register(coord.address, "node-2", address, token("node-2")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


def infer(address: str, with_token: str | None, images: np.ndarray):
    channel = open_channel(address, token=with_token)
    try:
        request = oip_pb2.ModelInferRequest(model_name=edgeshard_models.EDGE_MODEL)
        tensor = request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
        tensor.contents.uint_contents.extend(images.ravel().tolist())
        return InferenceStub(channel).ModelInfer(request, timeout=10)
    finally:
        channel.close()


def test_a_client_without_a_token_is_unauthenticated_but_health_stays_open(secured, holdout):
    coord = secured[0]
    images = holdout[0][:2]
    code, details = code_of(lambda: infer(coord.address, None, images))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "ModelInfer needs a bearer token with the infer role" in details
    anonymous = CoordinatorClient(coord.address)
    try:
        for call in (anonymous.nodes, anonymous.list_jobs, lambda: anonymous.drain("node-1")):
            assert code_of(call)[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        anonymous.close()
    channel = open_channel(coord.address)
    try:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert InferenceStub(channel).ServerLive(oip_pb2.ServerLiveRequest(), timeout=5).live
    finally:
        channel.close()


def test_the_infer_role_infers_but_may_not_drain_or_run_jobs(secured, holdout):
    coord = secured[0]
    images, labels = holdout
    response = infer(coord.address, token("cam"), images[:4])
    assert [o.name for o in response.outputs]  # answered by node-1
    cam = CoordinatorClient(coord.address, token=token("cam"))
    try:
        assert [n.node_id for n in cam.nodes()] == ["node-1"]
        code, details = code_of(lambda: cam.drain("node-1"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "Drain needs the admin role; the token of 'cam' has infer"
        code, _ = code_of(cam.list_jobs)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        cam.close()


def test_a_job_belongs_to_the_token_that_submitted_it(secured, holdout):
    coord, _, _, _, admin = secured
    images, _ = holdout
    alice = CoordinatorClient(coord.address, token=token("alice"))
    bob = CoordinatorClient(coord.address, token=token("bob"))
    try:
        ids = [f"a-{i}" for i in range(40)]
        job_id = alice.submit(edgeshard_models.EDGE_MODEL,
                              ItemSource.from_arrays(ids, images[:40]), shard_size=20).job_id
        assert [s.state for s in alice.watch(job_id, interval=0.1, timeout=60)][-1] \
            == JobState.DONE
        assert sorted(r.id for r in alice.results(job_id)) == sorted(ids)
        assert job_id in [j.job_id for j in alice.list_jobs()]
        assert job_id not in [j.job_id for j in bob.list_jobs()]
        for call in (lambda: bob.get(job_id), lambda: list(bob.results(job_id)),
                     lambda: bob.cancel(job_id), lambda: list(bob.watch(job_id, timeout=5))):
            code, details = code_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "submitted by another token's holder" in details
        # Nor can bob take the job over by submitting again under its id.
        code, _ = code_of(lambda: bob.submit(edgeshard_models.EDGE_MODEL, ItemSource.from_arrays(
            ids, images[:40]), shard_size=20, job_id=job_id))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # An admin sees every job.
        assert job_id in [j.job_id for j in admin.list_jobs()]
        assert len(list(admin.results(job_id))) == 40
    finally:
        alice.close()
        bob.close()


def test_refusals_are_counted_in_metrics(secured):
    coord = secured[0]
    code_of(lambda: register(coord.address, "x", "127.0.0.1:1", "forged"))
    anonymous = CoordinatorClient(coord.address)
    try:
        code_of(anonymous.nodes)
    finally:
        anonymous.close()
    url = f"http://127.0.0.1:{coord.info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("edgeshard_coordinator_auth_denied_total")}
    assert lines['edgeshard_coordinator_auth_denied_total{code="UNAUTHENTICATED",'
                 'method="ListNodes"}'] >= 1
    assert any('code="PERMISSION_DENIED"' in k for k in lines), lines


def test_the_cli_sends_its_token_and_explains_a_refusal(secured):
    coord = secured[0]
    out = cli("nodes", "--coordinator", coord.address)
    assert out.returncode == 1
    assert "UNAUTHENTICATED: ListNodes needs a bearer token with the infer role" in out.stderr
    assert "--token or EDGESHARD_TOKEN" in out.stderr and "Traceback" not in out.stderr
    out = cli("nodes", "--coordinator", coord.address, env={"EDGESHARD_TOKEN": token("cam")})
    assert out.returncode == 0 and "node-1" in out.stdout, out.stderr
    out = cli("drain", "node-1", "--coordinator", coord.address, "--token", token("cam"))
    assert out.returncode == 1 and "PERMISSION_DENIED: Drain needs the admin role" in out.stderr
    out = cli("nodes", "--coordinator", coord.address, "--token", "two words")
    assert out.returncode == 2 and "--token: a token is up to 512 printable" in out.stderr


def test_cli_submit_runs_a_job_with_its_token(secured, holdout, tmp_path):
    coord = secured[0]
    np.save(tmp_path / "items.npy", holdout[0][:30])
    args = ["submit", "--coordinator", coord.address, "--model", edgeshard_models.EDGE_MODEL,
            "--input", str(tmp_path / "items.npy"), "--no-progress"]
    out = cli(*args, "--output", str(tmp_path / "refused.jsonl"),
              env={"EDGESHARD_TOKEN": token("cam")})
    assert out.returncode == 1 and "PERMISSION_DENIED: Submit needs the jobs role" in out.stderr
    out = cli(*args, "--output", str(tmp_path / "out.jsonl"),
              env={"EDGESHARD_TOKEN": token("alice")})
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 30


def test_tokens_are_added_and_revoked_without_a_restart(secured, tmp_path):
    coord, tokens, *_ = secured
    original = tokens.read_text()
    try:
        out = cli("tokens", "add", "--file", str(tokens), "--name", "carol", "--role", "infer")
        assert out.returncode == 0, out.stderr
        fresh = out.stdout.strip()
        assert fresh and fresh not in tokens.read_text()  # only its digest is kept
        carol = CoordinatorClient(coord.address, token=fresh)
        try:
            assert wait_for(lambda: _answers(carol), what="the new token to be accepted")
            out = cli("tokens", "revoke", "--file", str(tokens), "--name", "carol")
            assert out.returncode == 0 and "revoked 1 token(s) of 'carol'" in out.stdout
            wait_for(lambda: not _answers(carol), what="the revoked token to be refused")
        finally:
            carol.close()
    finally:
        tokens.write_text(original)


def _answers(client: CoordinatorClient) -> bool:
    try:
        client.nodes(timeout=5)
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        return False


def test_a_node_whose_join_token_is_revoked_leaves_the_fleet(secured, shipped_repository,
                                                            tmp_path):
    coord, tokens, _, _, admin = secured
    original = tokens.read_text()
    late = start_node("node-2", shipped_repository, tmp_path, extra_args=[
        "--workers", "1", "--coordinator", coord.address],
        env={"EDGESHARD_JOIN_TOKEN": token("node-2")})
    try:
        wait_for(lambda: {n.node_id: n.state for n in admin.nodes()}.get("node-2") == "live",
                 what="node-2 live")
        out = cli("tokens", "revoke", "--file", str(tokens), "--name", "node-2")
        assert out.returncode == 0, out.stderr
        # Its heartbeats are refused from the next reload on; health checks alone no
        # longer keep it live.
        wait_for(lambda: {n.node_id: n.state for n in admin.nodes()}.get("node-2")
                 in ("dead", None), what="node-2 to leave the fleet")
        assert {n.node_id: n.state for n in admin.nodes()}["node-1"] == "live"
    finally:
        late.stop(grace=1)
        tokens.write_text(original)


def test_a_bad_token_file_stops_the_coordinator_at_start(tmp_path):
    bad = tmp_path / "tokens.toml"
    bad.write_text('[[token]]\nname = "x"\nroles = ["root"]\ntoken = "t"\n')
    out = cli("serve", "--port", "0", "--state-dir", str(tmp_path / "s"),
              "--auth-tokens", str(bad))
    assert out.returncode == 1, out.stderr  # exits as for an unusable TLS file
    assert (f"cannot start: auth_tokens: {bad}: token 'x': roles: a list of infer, jobs, "
            "admin, node") in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("tokens", "add", "--file", str(bad), "--name", "y", "--role", "jobs")
    assert out.returncode == 2 and "token 'x': roles" in out.stderr


def test_a_node_with_a_malformed_join_token_does_not_start(shipped_repository):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    out = subprocess.run([sys.executable, "-m", "edge_node", "--model-repository",
                          str(shipped_repository), "--port", "0", "--join-token", "a b"],
                         capture_output=True, text=True, timeout=60, env=clean)
    assert out.returncode == 2
    assert "join_token: a token is up to 512 printable ASCII" in out.stderr
