"""TLS everywhere with real processes on loopback (issue 10, item 1): a coordinator and
nodes on mutual TLS run a job, tritonclient infers through it, the CLI needs its client
certificate, mismatches fail clearly, daemons refuse plaintext off loopback, bad files
are named, a node serves a renewed certificate without restarting, and the demo runs
over mTLS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from coordinator.api.clients import OIPClient
from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.launcher import start_coordinator, start_node, tls_args
from coordinator.cli.main import main
from coordinator.jobs.items import ItemSource
from coordinator.jobs.model import JobState
from edgeshard.certs import DevCA, write_file, write_fleet_pki
from edgeshard.tls import TLSFiles, channel_credentials

pytestmark = pytest.mark.timeout(180)

FAST = ["--heartbeat-interval-s", "0.3", "--probe-interval-s", "0.3",
        "--probe-timeout-s", "0.5", "--suspect-after-s", "1.0", "--dead-after-s", "2.0"]


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=90, env={**clean, **(env or {})})


def client_flags(pki, name: str = "client") -> list[str]:
    return tls_args(pki, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    write_fleet_pki(out, ["node-1", "node-2"])
    return out


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory, pki, shipped_repository):
    """A coordinator and two registered nodes, every link on mutual TLS."""
    workdir = tmp_path_factory.mktemp("tls-fleet")
    procs = []
    try:
        coord = start_coordinator("coordinator", workdir / "state", workdir,
                                  extra_args=[*FAST, *tls_args(pki, "coordinator")])
        procs.append(coord)
        for name in ("node-1", "node-2"):
            procs.append(start_node(name, shipped_repository, workdir, extra_args=[
                "--workers", "1", "--coordinator", coord.address, *tls_args(pki, name)]))
        client = CoordinatorClient(coord.address, credentials=channel_credentials(
            TLSFiles(pki / "client.pem", pki / "client.key", pki / "ca.pem")))
        deadline = time.monotonic() + 30
        while sum(n.state == "live" for n in client.nodes()) < 2:
            assert time.monotonic() < deadline, client.nodes()
            time.sleep(0.1)
        yield coord, client
        client.close()
    finally:
        for proc in procs:
            proc.stop(grace=2)


def test_a_job_over_mutual_tls_loses_and_repeats_nothing(tls_fleet, holdout):
    coord, client = tls_fleet
    assert {n.node_id: n.source for n in client.nodes()} == {"node-1": "registered",
                                                             "node-2": "registered"}
    images, labels = holdout
    ids = [f"item-{i}" for i in range(600)]
    job_id = client.submit(edgeshard_models.EDGE_MODEL,
                           ItemSource.from_arrays(ids, images[:600]), shard_size=50).job_id
    states = [s.state for s in client.watch(job_id, interval=0.1, timeout=60)]
    assert states[-1] == JobState.DONE
    records = list(client.results(job_id))
    seen = Counter(r.id for r in records)
    assert sum(1 for i in ids if i not in seen) == 0  # lost
    assert sum(c - 1 for c in seen.values()) == 0  # duplicated
    assert set(seen) == set(ids)
    truth = dict(zip(ids, labels[:600].tolist(), strict=True))
    assert np.mean([truth[r.id] == r.label for r in records]) > 0.9
    assert {r.node for r in records} == {"node-1", "node-2"}


def test_tritonclient_infers_through_a_tls_coordinator(tls_fleet, pki, holdout):
    coord, _ = tls_fleet
    client = tc.InferenceServerClient(
        coord.address, ssl=True, root_certificates=str(pki / "ca.pem"),
        private_key=str(pki / "client.key"), certificate_chain=str(pki / "client.pem"))
    try:
        images, labels = holdout
        inp = tc.InferInput("image", [8, *images.shape[1:]], "UINT8")
        inp.set_data_from_numpy(images[:8])
        result = client.infer(edgeshard_models.EDGE_MODEL, [inp],
                              outputs=[tc.InferRequestedOutput("label")])
        assert (result.as_numpy("label") == labels[:8]).mean() >= 0.75
    finally:
        client.close()


def test_cli_with_its_client_certificate_lists_the_nodes(tls_fleet, pki):
    coord, _ = tls_fleet
    out = run("coordinator", "nodes", "--coordinator", coord.address, *client_flags(pki))
    assert out.returncode == 0, out.stderr
    assert "node-1" in out.stdout and "node-2" in out.stdout
    env = {"EDGESHARD_TLS_CA": str(pki / "ca.pem"), "EDGESHARD_TLS_CERT":
           str(pki / "client.pem"), "EDGESHARD_TLS_KEY": str(pki / "client.key")}
    out = run("coordinator", "jobs", "--coordinator", coord.address, env=env)
    assert out.returncode == 0, out.stderr


def test_cli_without_a_client_certificate_is_refused_with_a_tls_hint(tls_fleet, pki):
    coord, _ = tls_fleet
    out = run("coordinator", "nodes", "--coordinator", coord.address,
              "--tls-ca", str(pki / "ca.pem"))
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("edge-coordinator nodes: TLS handshake failed: "), out.stderr
    assert "check --tls-ca/--tls-cert" in line and "Traceback" not in out.stderr


def test_plaintext_cli_against_a_tls_coordinator_fails_clearly(tls_fleet):
    coord, _ = tls_fleet
    out = run("coordinator", "nodes", "--coordinator", coord.address)
    assert out.returncode == 1
    assert "it may require TLS; check --tls-ca/--tls-cert/--tls-key" in out.stderr, out.stderr


def test_tls_cli_against_a_plaintext_server_fails_clearly(node, pki):
    out = run("coordinator", "nodes", "--coordinator", node.address, *client_flags(pki))
    assert out.returncode == 1
    assert "edge-coordinator nodes: TLS handshake failed: " in out.stderr, out.stderr
    assert "WRONG_VERSION_NUMBER" in out.stderr


def test_cli_names_a_missing_tls_file(tmp_path):
    out = run("coordinator", "nodes", "--tls-ca", str(tmp_path / "nope.pem"))
    assert out.returncode == 2
    assert f"edge-coordinator nodes: --tls-ca: cannot read {tmp_path / 'nope.pem'}" \
        in out.stderr, out.stderr


def test_daemons_refuse_plaintext_off_loopback_unless_insecure(shipped_repository, tmp_path):
    message = ("host: refusing to serve plaintext on non-loopback address '0.0.0.0': give "
               "--tls-cert and --tls-key")
    out = run("edge_node", "--model-repository", str(shipped_repository), "--host", "0.0.0.0",
              "--port", "0")
    assert out.returncode == 2 and message in out.stderr and "--insecure" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run("coordinator", "serve", "--host", "0.0.0.0", "--port", "0",
              "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    out = run("coordinator", "serve", "--port", "0", "--state-dir", str(tmp_path / "state"),
              env={"EDGESHARD_HOST": "0.0.0.0"})
    assert out.returncode == 2 and message in out.stderr, out.stderr
    node = start_node("open", shipped_repository, tmp_path,
                      extra_args=["--host", "0.0.0.0", "--insecure", "--workers", "1"])
    coord = start_coordinator("open-coord", tmp_path / "state", tmp_path,
                              extra_args=["--host", "0.0.0.0", "--insecure"])
    try:
        assert OIPClient(f"127.0.0.1:{node.info['grpc_port']}").server_ready()
        assert "plaintext" in coord.log_tail()
    finally:
        node.stop(grace=1)
        coord.stop(grace=1)


def test_daemons_name_a_bad_certificate_or_key(shipped_repository, pki, tmp_path):
    missing = tmp_path / "missing.pem"
    out = run("edge_node", "--model-repository", str(shipped_repository), "--port", "0",
              "--tls-cert", str(missing), "--tls-key", str(pki / "node-1.key"))
    assert out.returncode == 1
    assert f"cannot start: --tls-cert: cannot read {missing}" in out.stderr, out.stderr
    out = run("coordinator", "serve", "--port", "0", "--state-dir", str(tmp_path / "s"),
              "--tls-cert", str(pki / "coordinator.pem"), "--tls-key", str(pki / "client.key"))
    assert out.returncode == 1
    assert (f"cannot start: --tls-key: {pki / 'client.key'} is not the key of the "
            f"certificate in {pki / 'coordinator.pem'}") in out.stderr, out.stderr
    out = run("coordinator", "serve", "--port", "0", "--state-dir", str(tmp_path / "s"),
              "--tls-cert", str(pki / "coordinator.pem"))
    assert out.returncode == 2 and "--tls-key: required with --tls-cert" in out.stderr


def test_a_node_serves_a_renewed_certificate_without_restarting(shipped_repository,
                                                                tmp_path):
    old, new = DevCA.create("old CA"), DevCA.create("new CA")
    for name, ca in (("old", old), ("new", new)):
        write_file(tmp_path / f"{name}-ca.pem", ca.issued.cert_pem, 0o644)
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    pair = old.issue("node-1")
    write_file(cert, pair.cert_pem, 0o644)
    write_file(key, pair.key_pem, 0o600)
    node = start_node("node-1", shipped_repository, tmp_path, extra_args=[
        "--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key)])

    def ready(ca: str) -> bool:  # on a new connection each time
        client = OIPClient(node.address, credentials=channel_credentials(
            TLSFiles(ca=tmp_path / f"{ca}-ca.pem")))
        try:
            return client.server_ready(timeout=3)
        except Exception:  # noqa: BLE001 - a refused handshake
            return False
        finally:
            client.close()

    try:
        assert ready("old") and not ready("new")
        renewed = new.issue("node-1")
        write_file(key, renewed.key_pem, 0o600)
        write_file(cert, renewed.cert_pem, 0o644)
        deadline = time.monotonic() + 15
        while not ready("new"):
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.2)
        assert not ready("old")
        assert node.process.poll() is None  # the same process, never restarted
        assert "TLS certificate reloaded" in node.log_tail(50)
    finally:
        node.stop(grace=1)


def test_certs_command_writes_the_fleet_and_refuses_to_overwrite(tmp_path, capsys):
    out_dir = tmp_path / "tls"
    assert main(["certs", "--out", str(out_dir), "--nodes", "2", "--hosts", "edge.example",
                 "10.1.2.3"]) == 0
    printed = capsys.readouterr().out
    for name in ("ca", "coordinator", "node-1", "node-2", "client"):
        assert (out_dir / f"{name}.pem").exists() and f"{out_dir / name}.key" in printed
        assert (out_dir / f"{name}.key").stat().st_mode & 0o777 == 0o600
    assert "edge.example, 10.1.2.3" in printed and "--tls-ca" in printed
    before = (out_dir / "ca.key").read_bytes()
    assert main(["certs", "--out", str(out_dir), "--nodes", "1"]) == 2
    assert "--force replaces them" in capsys.readouterr().err
    assert (out_dir / "ca.key").read_bytes() == before
    assert main(["certs", "--out", str(out_dir), "--nodes", "1", "--force"]) == 0


def test_demo_over_mutual_tls_with_a_node_killed_loses_and_repeats_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "coordinator", "demo", "--tls", "--kill-one",
                          "--nodes", "2", "--repeat", "2", "--online", "10",
                          "--workdir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert "mutual TLS on every link" in report
    assert re.search(r"^lost\s+0$", report, re.M) and re.search(r"^duplicated\s+0$", report,
                                                                 re.M), report
    assert "killed (SIGKILL) part-way" in report
    for log in ("coordinator", "node-1", "node-2", "cloud"):
        assert "(mutual TLS" in (tmp_path / "demo" / f"{log}.log").read_text()


def test_a_plaintext_node_says_why_it_cannot_register_with_a_tls_coordinator(
        tls_fleet, tmp_path, shipped_repository):
    coord, client = tls_fleet
    node = start_node("plain", shipped_repository, tmp_path, extra_args=[
        "--workers", "1", "--coordinator", coord.address])
    try:
        deadline = time.monotonic() + 30
        while "cannot register with coordinator" not in node.log_path.read_text():
            assert time.monotonic() < deadline, node.log_path.read_text()
            time.sleep(0.2)
        log = node.log_path.read_text()
        assert "it may require TLS; check --tls-ca/--tls-cert/--tls-key" in log
        assert "plain" not in {n.node_id for n in client.nodes()}
    finally:
        node.stop(grace=2)


@pytest.mark.parametrize("args, message", [
    (["--hosts", "bad!host"], "--hosts: 'bad!host' is neither a DNS name nor an IP address"),
    (["--nodes", "-1"], "--nodes must be >= 0"),
])
def test_certs_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    out = run("coordinator", "certs", "--out", str(tmp_path / "pki"), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "pki").exists()


def test_certs_refuses_a_file_as_out(tmp_path):
    (tmp_path / "taken").write_text("x")
    out = run("coordinator", "certs", "--out", str(tmp_path / "taken"))
    assert out.returncode == 2
    assert f"--out: {tmp_path / 'taken'} is a file; give a directory" in out.stderr
