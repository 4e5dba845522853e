"""Hot swap on a real node: a new version under continuous load from several clients, a
corrupt version that never serves, an incompatible one refused unless forced, Triton's
repository extension (index, load, unload) through tritonclient, and the coordinator
learning the new versions from heartbeats."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from protos import oip_pb2, parameters
from protos.oip_service import InferenceStub

EDGE = edgeshard_models.EDGE_MODEL


def image_input(n: int = 1):
    inp = tc.InferInput("image", [n, 28, 28], "UINT8")
    inp.set_data_from_numpy(np.zeros((n, 28, 28), np.uint8))
    return inp


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """Several client threads inferring without pause; records versions and errors."""

    def __init__(self, address: str, threads: int = 4):
        self.address = address
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        client = tc.InferenceServerClient(self.address)
        try:
            while not self._stop.is_set():
                try:
                    version = client.infer(EDGE, [image_input(2)]).get_response().model_version
                    self.versions.append(version)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded
                    self.errors.append(str(exc))
        finally:
            client.close()

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason)
            for m in client.get_model_repository_index().models}


def test_a_new_version_switches_under_load_with_no_failed_request(repo_copy, start):
    node = start(repo_copy, "--model-poll-s", "0.2", "--workers", "2", name="swap")
    client = tc.InferenceServerClient(node.address)
    try:
        with Load(node.address) as load:
            wait_for(lambda: len(load.versions) > 50, what="traffic on version 1")
            shutil.copytree(repo_copy / EDGE / "1", repo_copy / EDGE / "tmp-2")
            (repo_copy / EDGE / "tmp-2").rename(repo_copy / EDGE / "2")  # appears whole
            wait_for(lambda: load.versions[-20:] == ["2"] * 20 and len(load.versions) > 0,
                     what="responses from version 2")
            done = len(load.versions)
            wait_for(lambda: len(load.versions) > done + 50, what="more traffic")
        assert load.errors == []
        switched = load.versions.index("2")
        assert set(load.versions[:switched]) == {"1"} and switched > 50
        assert set(load.versions[-50:]) == {"2"}
        # Both versions stay loaded (--keep-versions 2): version 1 can still be pinned.
        assert client.infer(EDGE, [image_input()], model_version="1").get_response() \
            .model_version == "1"
        assert index(client)[(EDGE, "2")] == ("READY", "")
    finally:
        client.close()


def test_a_corrupt_version_never_serves_and_says_why(repo_copy, start):
    node = start(repo_copy, "--model-poll-s", "0.2", "--metrics-port", "0", name="corrupt")
    client = tc.InferenceServerClient(node.address)
    try:
        with Load(node.address, threads=2) as load:
            wait_for(lambda: len(load.versions) > 20, what="traffic")
            bad = repo_copy / EDGE / "tmp-3"
            shutil.copytree(repo_copy / EDGE / "1", bad)
            (bad / "model.tflite").write_bytes(b"not a model" * 100)
            bad.rename(repo_copy / EDGE / "3")
            wait_for(lambda: (EDGE, "3") in index(client), what="version 3 in the index")
            done = len(load.versions)
            wait_for(lambda: len(load.versions) > done + 50, what="more traffic")
        assert load.errors == [] and set(load.versions) == {"1"}
        state, reason = index(client)[(EDGE, "3")]
        assert state == "UNAVAILABLE" and "sha256" in reason
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{node.info['metrics_port']}/metrics", timeout=10).read().decode()
        assert 'edgeshard_node_versions_refused_total{model="mnist_edge",reason="digest_mismatch",version="3"} 1.0' in metrics  # noqa: E501
        assert "mnist_edge version 3 refused (digest_mismatch)" in node.log_tail(200)
        # Polls do not retry the same broken files: refused once, not every 0.2 s.
        time.sleep(1.0)
        assert node.log_tail(400).count("version 3 refused") == 1
    finally:
        client.close()


def test_repository_extension_load_unload_and_an_incompatible_version(repo_copy, start):
    # A config-less model serves its own tensors: the int8 edge network as version 1.
    models = edgeshard_models.repository_path()
    (repo_copy / "raw" / "1").mkdir(parents=True)
    shutil.copy(models / EDGE / "1" / "model.tflite", repo_copy / "raw" / "1" / "model.tflite")
    node = start(repo_copy, name="repo-ext")  # no polling: RepositoryModelLoad drives it
    client = tc.InferenceServerClient(node.address)
    try:
        assert "model_repository" in client.get_server_metadata().extensions
        # Version 2 is the float cloud network: other input dtype, so clients would break.
        (repo_copy / "raw" / "2").mkdir()
        shutil.copy(models / edgeshard_models.CLOUD_MODEL / "1" / "model.tflite",
                    repo_copy / "raw" / "2" / "model.tflite")
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("raw")
        assert "version 1 still serves" in str(err.value)
        with pytest.raises(tc.InferenceServerException) as err:  # again: still refused
            client.load_model("raw")
        assert "raw:2:" in str(err.value) and "force=true" in str(err.value)
        state, reason = index(client)[("raw", "2")]
        assert state == "UNAVAILABLE" and "force=true" in reason
        assert "differ from version 1" in reason
        assert client.get_model_metadata("raw").inputs[0].datatype == "INT8"
        # Forced (a parameter tritonclient cannot send): version 2 serves.
        request = oip_pb2.RepositoryModelLoadRequest(model_name="raw")
        parameters.set_param(request.parameters, "force", True)
        with grpc.insecure_channel(node.address) as channel:
            InferenceStub(channel).RepositoryModelLoad(request, timeout=30)
        assert client.get_model_metadata("raw").inputs[0].datatype == "FP32"
        # An explicit copy of version 1 as version 3 loads and serves at once.
        shutil.copytree(repo_copy / EDGE / "1", repo_copy / EDGE / "3")
        client.load_model(EDGE)
        assert client.infer(EDGE, [image_input()]).get_response().model_version == "3"
        # Unload: the model is gone until loaded again.
        client.unload_model(EDGE)
        assert not client.is_model_ready(EDGE)
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer(EDGE, [image_input()])
        assert "unloaded by request" in str(err.value)
        client.load_model(EDGE)
        assert client.is_model_ready(EDGE)
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("no_such_model")
        assert "no directory 'no_such_model'" in str(err.value)
    finally:
        client.close()


def test_a_removed_version_is_unloaded_and_the_coordinator_learns_the_change(fleet,
                                                                              repo_copy):
    fleet.repository = repo_copy
    fleet.start_coordinator()
    node = fleet.add_node("n1", "--model-poll-s", "0.2")
    fleet.wait_live(1)
    shutil.copytree(repo_copy / EDGE / "1", repo_copy / EDGE / "2")
    coordinator = tc.InferenceServerClient(fleet.coordinator.address)
    direct = tc.InferenceServerClient(node.address)
    try:
        def served_by_coordinator(version):
            try:
                return coordinator.infer(EDGE, [image_input()], model_version=version) \
                    .get_response().model_version == version
            except tc.InferenceServerException:
                return False

        wait_for(lambda: served_by_coordinator("2"), what="the coordinator to route version 2")
        shutil.rmtree(repo_copy / EDGE / "2")
        wait_for(lambda: not direct.is_model_ready(EDGE, "2"), what="version 2 unloaded")
        assert direct.infer(EDGE, [image_input()]).get_response().model_version == "1"
        wait_for(lambda: served_by_coordinator("1") and not served_by_coordinator("2"),
                 what="the coordinator to forget version 2")
    finally:
        coordinator.close()
        direct.close()


def test_repository_extension_over_http_with_tritonclient_and_curl(repo_copy, start):
    import subprocess

    import tritonclient.http as th

    node = start(repo_copy, "--http-port", "0", name="repo-http")
    base = f"127.0.0.1:{node.info['http_port']}"
    client = th.InferenceServerClient(base)
    try:
        assert {"name": EDGE, "version": "1", "state": "READY", "reason": ""} in \
            client.get_model_repository_index()
        shutil.copytree(repo_copy / EDGE / "1", repo_copy / EDGE / "2")
        client.load_model(EDGE)
        assert client.get_model_metadata(EDGE)["versions"] == ["1", "2"]
        out = subprocess.run(["curl", "-sS", "-X", "POST", "-d", '{"ready": true}',
                              f"http://{base}/v2/repository/index"],
                             capture_output=True, text=True, timeout=30)
        assert '"version": "2", "state": "READY"' in out.stdout, out.stdout + out.stderr
        client.unload_model(EDGE)
        assert not client.is_model_ready(EDGE)
        out = subprocess.run(["curl", "-sS", "-w", "%{http_code}", "-X", "POST",
                              f"http://{base}/v2/repository/models/nope/load"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.endswith("404") and "no directory 'nope'" in out.stdout
    finally:
        client.close()
