"""Audit sampling with real processes (issue 13 item 5's acceptance): a coordinator with a
cascade and audit sampling, an edge node that hot-swaps mnist_edge to a worse version, an
edge-node serving mnist_cloud as the cloud tier, and ``export-examples`` as an operator
types it.

The worse version is version 1's model file with the rows of its last layer (weights,
bias and their per-channel scales) rotated by one class: the same confidences, but the
top-1 label of every item moved to the next class, as if the label map were shuffled
inside the model. Its agreement with the cloud falls from ~0.97 to ~0.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc
from ai_edge_litert.interpreter import Interpreter

import edgeshard_models
from coordinator.cli.launcher import start_node
from coordinator.jobs.items import ItemSource
from tests.conftest import Fleet

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL
pytestmark = pytest.mark.timeout(300)
AUDIT = ("--cascade", f"{EDGE}={CLOUD}", "--escalation", f"{EDGE}=max_prob:0.9",
         "--audit", f"{EDGE}=0.5", "--agreement-window", "40", "--agreement-min-items", "20",
         "--agreement-warn", "0.8", "--metrics-port", "0")


def rotated_version(repo, version: str = "2") -> None:
    """Add mnist_edge ``version``: version 1 with its output classes rotated by one."""
    src = repo / EDGE / "1" / "model.tflite"
    data = bytearray(src.read_bytes())
    it = Interpreter(model_path=str(src))
    for d in it.get_tensor_details():
        if "logits_1" not in d["name"] or d["shape"][0] != 10:
            continue  # the last layer's weights [10, K] and bias [10]
        rows = [it.get_tensor(d["index"]), d["quantization_parameters"]["scales"].astype(
            np.float32)]
        for old in rows:
            at = data.find(old.tobytes())
            assert at >= 0 and data.count(old.tobytes()) == 1, d["name"]
            data[at:at + old.nbytes] = np.roll(old, 1, axis=0).tobytes()
    assert data != src.read_bytes()
    target = repo / EDGE / version
    target.mkdir()
    (target / "model.tflite").write_bytes(bytes(data))
    manifest = json.loads((repo / EDGE / "1" / "manifest.json").read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (target / "manifest.json").write_text(json.dumps(manifest))


def agreement(page: str, version: str, source: str = "audit", name="cloud_agreement"):
    pattern = (rf'^edgeshard_coordinator_{name}\{{model="{EDGE}",segment="cam-1",'
               rf'source="{source}",version="{version}"\}} (\S+)$')
    found = re.search(pattern, page, re.M)
    return None if found is None else float(found.group(1))


def scrape(fleet) -> str:
    port = fleet.coordinator.info["metrics_port"]
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


class Traffic:
    def __init__(self, fleet, images):
        self.client = tc.InferenceServerClient(fleet.coordinator.address)
        self.images = images
        self.k = 0

    def send(self) -> str:
        image = self.images[self.k % len(self.images)][None]
        self.k += 1
        inp = tc.InferInput("image", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        answer = self.client.infer(EDGE, [inp], request_id=f"r{self.k}",
                                   parameters={"segment": "cam-1"})
        return answer.get_response().model_version

    def until(self, done, most: int, what: str) -> None:
        for _ in range(most // 10):
            if done():
                return
            for _ in range(10):
                self.send()
        assert done(), what


def counter(page: str, name: str, outcome: str) -> float:
    found = re.search(rf'^edgeshard_coordinator_{name}_total\{{model="{EDGE}",'
                      rf'outcome="{outcome}"\}} (\S+)$', page, re.M)
    return 0.0 if found is None else float(found.group(1))


def settle(fleet, timeout: float = 60.0) -> None:
    """Wait until the audit queue and the example writer are idle: every compared item
    (audited, or escalated and answered) stored, and nothing changing for a second."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        page = scrape(fleet)
        now = (counter(page, "audit_items", "compared"),
               counter(page, "escalation_items", "answered"),
               counter(page, "hard_examples", "stored"))
        if now == last and now[2] == now[0] + now[1]:
            return
        last = now
        time.sleep(1.0)
    raise AssertionError(f"examples not settled: {last}")


def export(fleet, *args):
    return subprocess.run([sys.executable, "-m", "coordinator", "export-examples", *args,
                           "--coordinator", fleet.coordinator.address],
                          capture_output=True, text=True, timeout=120)


def cloud_labels(cloud, x) -> np.ndarray:
    client = tc.InferenceServerClient(cloud.address)
    labels = []
    try:
        for start in range(0, len(x), 64):  # the cloud model's max_batch_size
            inp = tc.InferInput("image", list(x[start:start + 64].shape), "UINT8")
            inp.set_data_from_numpy(x[start:start + 64])
            labels.append(client.infer(CLOUD, [inp]).as_numpy("probabilities").argmax(axis=1))
    finally:
        client.close()
    return np.concatenate(labels)


def test_agreement_falls_when_the_edge_model_gets_worse_and_examples_carry_cloud_labels(
        tmp_path, shipped_repository, holdout):
    repo = tmp_path / "repository"
    shutil.copytree(shipped_repository, repo)
    fleet = Fleet(tmp_path, repo)
    try:
        cloud = start_node("cloud", shipped_repository, tmp_path, extra_args=["--workers", "1"])
        fleet.nodes.append(cloud)
        fleet.start_coordinator("--cloud", cloud.address, *AUDIT)
        fleet.add_node("edge-1", "--model-poll-s", "0.2")
        fleet.wait_live(1)
        traffic = Traffic(fleet, holdout[0])
        traffic.until(lambda: agreement(scrape(fleet), "1") is not None, 300,
                      "no agreement gauge for version 1")
        before = agreement(scrape(fleet), "1")
        assert before >= 0.85, before
        assert agreement(scrape(fleet), "1", name="cloud_agreement_low") == 0

        rotated_version(repo)  # the node hot-swaps to the worse version
        traffic.until(lambda: traffic.send() == "2", 300, "version 2 never served")
        traffic.until(lambda: agreement(scrape(fleet), "2") is not None, 300,
                      "no agreement gauge for version 2")
        page = scrape(fleet)
        after = agreement(page, "2")
        assert after <= 0.3, after  # the gauge moved: the worse model disagrees
        assert agreement(page, "2", name="cloud_agreement_low") == 1
        assert agreement(page, "1") == before  # version 1's window is kept apart
        assert re.search(rf'edgeshard_coordinator_audit_items_total\{{model="{EDGE}",'
                         r'outcome="compared"\} [1-9]', page)
        assert "edge/cloud agreement of mnist_edge version 2 segment cam-1 on audit items" \
            in fleet.coordinator.log_path.read_text()

        # A job with auditing on: results are the cascade's, untouched by the audit.
        images = holdout[0][:64]
        status = fleet.client.submit(EDGE, ItemSource.from_arrays(
            [f"job-{k}" for k in range(64)], images), shard_size=32, params={"segment": "cam-1"})
        deadline = time.monotonic() + 60
        while fleet.client.get(status.job_id).state == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        records = list(fleet.client.results(status.job_id))
        assert len(records) == 64
        for r in records:
            if not r.extra["escalated"]:
                assert r.tier == "edge" and r.label == r.extra["edge_label"]
                assert "cloud_label" not in r.extra
        settle(fleet)  # every audit answered and every example written

        out = tmp_path / "hard.npz"
        done = export(fleet, EDGE, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert f"examples of {EDGE}" in done.stdout and str(out) in done.stdout
        data = np.load(out)
        assert set(data.files) == {"x", "y", "edge_label", "edge_confidence",
                                   "cloud_confidence", "source", "segment", "version", "id"}
        n = len(data["y"])
        assert n > 40 and data["x"].shape == (n, 28, 28) and data["x"].dtype == np.uint8
        np.testing.assert_array_equal(data["y"], cloud_labels(cloud, data["x"]))
        assert set(data["source"]) == {"audit", "escalated"}
        assert set(data["version"]) == {"1", "2"} and set(data["segment"]) == {"cam-1"}
        assert any(i.startswith("job-") for i in data["id"])  # the job path audits too
        v2 = data["version"] == "2"
        assert (data["edge_label"][v2] != data["y"][v2]).mean() > 0.7
        audited = export(fleet, EDGE, "--out", str(tmp_path / "audited.npz"), "--source", "audit",
                         "--no-progress")
        assert audited.returncode == 0, audited.stderr
        only = np.load(tmp_path / "audited.npz")
        assert set(only["source"]) == {"audit"}
        assert len(only["y"]) == int((data["source"] == "audit").sum())

        # Bad input: one line naming the argument, no traceback, nothing written.
        for args, code, text in [
                (("nope", "--out", str(tmp_path / "a.npz")), 1, "MODEL: unknown model 'nope'"),
                ((CLOUD, "--out", str(tmp_path / "a.npz")), 1,
                 f"MODEL: no hard examples of {CLOUD} are stored yet"),
                ((EDGE, "--out", str(tmp_path / "missing" / "a.npz")), 2,
                 "--out: cannot write"),
                ((EDGE, "--out", str(tmp_path / "a.csv")), 2, "--out: "),
                ((EDGE, "--out", str(tmp_path)), 2, "--out: ")]:
            bad = export(fleet, *args)
            assert bad.returncode == code and text in bad.stderr, (args, bad.stderr)
            assert "Traceback" not in bad.stderr
        assert not (tmp_path / "a.npz").exists()
        traffic.client.close()
    finally:
        fleet.close()
