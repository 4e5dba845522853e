"""``edge-coordinator calibrate --data``: the user's own labelled examples, real processes.

The issue's acceptance: on a labelled set made from the shipped splits and saved to a
file, the printed threshold, used as printed, reproduces the reported hold-out escalation
count exactly, at the temperature the nodes serve (after ``--write``: the fitted one,
through a coordinator; without it: the current one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from coordinator.api.clients import ClientPool
from coordinator.cascade.policies import EscalationPolicy
from coordinator.cli.calibration_data import (
    MIN_PART,
    DataError,
    load_labelled,
    split_indices,
)
from coordinator.cli.launcher import start_node

pytestmark = pytest.mark.timeout(240)
EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL


@pytest.fixture(scope="module")
def labelled():
    """The shipped calibration and hold-out splits as one labelled set (1,500 examples)."""
    cal_x, cal_y = edgeshard_models.load_calibration()
    hold_x, hold_y = edgeshard_models.load_holdout()
    return np.concatenate([cal_x, hold_x]), np.concatenate([cal_y, hold_y])


def calibrate(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "coordinator", "calibrate", "--out",
                           str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=200)


def printed(stdout: str) -> tuple[str, int, int]:
    """The ``use:`` line's --escalation value and the hold-out's escalated count and size."""
    flag = re.search(r"^use: --escalation (\S+)", stdout, re.M).group(1)
    hold = re.search(r"^hold-out .* at (\d+) of (\d+) escalated", stdout, re.M)
    return flag, int(hold.group(1)), int(hold.group(2))


def documented_holdout(n: int, fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """The hold-out indices by the rule the docs state (not by the code under test)."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:round(n * fraction)])


def test_written_threshold_reproduces_the_holdout_escalations_through_a_coordinator(
        fleet, tmp_path, labelled, shipped_repository):
    repo = tmp_path / "repo"
    shutil.copytree(shipped_repository, repo)
    x, y = labelled
    np.savez(tmp_path / "labelled.npz", x=x, y=y)
    out = calibrate(tmp_path, "--data", str(tmp_path / "labelled.npz"), "--budget", "0.15",
                    "--model-repository", str(repo), "--write")
    assert out.returncode == 0, out.stdout + out.stderr
    flag, escalated, n = printed(out.stdout)
    assert flag.startswith(f"{EDGE}=max_prob:")
    hold = documented_holdout(len(y))
    assert n == len(hold) == 450 and 0 < escalated < n
    written = json.loads((repo / EDGE / "1" / "calibration.json").read_text())
    assert f"max_prob:{written['threshold']!r}" in flag
    assert "(for temperature" in out.stdout and "after --write" not in out.stdout

    # The flag as printed, on nodes that load the written calibration.json.
    fleet.repository = repo
    cloud = start_node("cloud", repo, fleet.workdir, extra_args=["--workers", "1"])
    fleet.nodes.append(cloud)
    fleet.start_coordinator("--cloud", cloud.address, "--cascade", f"{EDGE}={CLOUD}",
                            "--escalation", flag)
    edge = fleet.add_node("edge-1")
    fleet.wait_live(1)
    pool = ClientPool()
    try:
        served = float(pool.get(edge.address).model_parameter(EDGE, "temperature"))
    finally:
        pool.close()
    assert served == pytest.approx(written["temperature"], rel=1e-12) and served != 1.0
    client = tc.InferenceServerClient(fleet.coordinator.address)
    try:
        total = 0
        for i in range(0, n, 50):
            batch = x[hold[i:i + 50]]
            inp = tc.InferInput("image", list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch)
            params = client.infer(EDGE, [inp]).get_response().parameters
            total += params["escalated"].int64_param
    finally:
        client.close()
    assert total == escalated


def test_without_write_the_threshold_is_for_the_temperature_served_now(
        node, tmp_path, labelled):
    x, y = labelled
    folder = tmp_path / "labelled"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y.astype(np.float64))  # whole-number float labels are fine
    out = calibrate(tmp_path, "--data", str(folder), "--edge", node.address,
                    "--cloud", node.address, "--holdout-fraction", "0.4", "--seed", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    flag, escalated, n = printed(out.stdout)
    assert "the temperature 1 the nodes serve now" in out.stdout
    assert re.search(r"^after --write \(temperature [\d.]+, once the nodes restart\): "
                     rf"--escalation {EDGE}=max_prob:", out.stdout, re.M)
    hold = documented_holdout(len(y), 0.4, 7)
    assert n == len(hold)
    policy = EscalationPolicy("max_prob", float(flag.rsplit(":", 1)[1]))
    pool = ClientPool()
    try:
        client = pool.get(node.address)
        assert client.model_parameter(EDGE, "temperature") == "1.0"
        probs = np.concatenate([client.classify(EDGE, x[hold[i:i + 64]], timeout=30.0,
                                                with_probabilities=True).probabilities
                                for i in range(0, n, 64)])
    finally:
        pool.close()
    assert int(policy.decide(probs).sum()) == escalated
    doc = json.loads((tmp_path / "out" / f"{EDGE}_max_prob_sweep.json").read_text())
    summary = doc["summary"]
    assert summary["written"] is False and summary["served_temperature"] == 1.0
    assert summary["data"] == {"source": str(folder), "fit": len(y) - n, "holdout": n,
                               "holdout_fraction": 0.4, "seed": 7}
    assert summary["holdout"]["escalated"] == escalated


def one_line_refusal(out, *needles: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("edge-coordinator calibrate: ")
    for needle in needles:
        assert needle in out.stderr, out.stderr


def bad_files(tmp_path):
    """(name, path, words its refusal must hold) for each way a file can be unusable."""
    x = np.zeros((40, 28, 28), np.uint8)
    y = np.arange(40) % 10
    cases = [("missing", tmp_path / "nope.npz", ["--data:", "does not exist"])]
    text = tmp_path / "notes.npz"
    text.write_text("not numpy\n")
    cases.append(("not an npz", text, ["--data:", "is not an .npz file", "numpy.savez"]))
    single = tmp_path / "single.npy"
    np.save(single, x)
    cases.append(("a lone npy", single, ["--data:", "single .npy array"]))
    for name, arrays, words in [
        ("no x", {"y": y}, ["x:", "no array 'x'", "numpy.savez"]),
        ("no y", {"x": x}, ["y:", "no array 'y'", "numpy.savez"]),
        ("length mismatch", {"x": x, "y": y[:39]}, ["y:", "39 labels for 40 examples"]),
        ("too few", {"x": x[:15], "y": y[:15]}, ["x:", "15 examples are too few",
                                                 f"at least {2 * MIN_PART}"]),
        ("NaN in x", {"x": np.where(np.arange(40)[:, None, None] == 3, np.nan,
                                    x.astype(np.float32)), "y": y},
         ["x:", "example 3 contains NaN"]),
        ("NaN in y", {"x": x, "y": np.where(np.arange(40) == 5, np.nan, y)},
         ["y:", "example 5 is NaN"]),
        ("one-hot y", {"x": x, "y": np.eye(10)[y]}, ["y:", "shape [N]", "argmax"]),
        ("fractional y", {"x": x, "y": y + 0.5}, ["y:", "not a whole number"]),
        ("string x", {"x": np.array(["a"] * 40), "y": y}, ["x:", "numeric array"]),
    ]:
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(path, **arrays)
        cases.append((name, path, words))
    return cases


def test_each_unusable_file_is_refused_in_one_line_before_any_server(tmp_path):
    # No --edge: a node would be started only after the data passes, so these are quick.
    for name, path, words in bad_files(tmp_path):
        out = calibrate(tmp_path, "--data", str(path))
        one_line_refusal(out, *words)
        assert not (tmp_path / "out").exists(), name


def test_split_options_are_checked(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez(path, x=np.zeros((40, 28, 28), np.uint8), y=np.arange(40) % 10)
    one_line_refusal(calibrate(tmp_path, "--data", str(path), "--holdout-fraction", "1.5"),
                     "--holdout-fraction:", "between 0 and 1")
    one_line_refusal(calibrate(tmp_path, "--data", str(path), "--holdout-fraction", "0.1"),
                     "--holdout-fraction:", "36 to fit and 4 to hold out")
    one_line_refusal(calibrate(tmp_path, "--seed", "3"), "--seed: only applies to --data")


def test_labels_outside_the_models_classes_and_inputs_it_refuses(node, tmp_path):
    x = edgeshard_models.load_holdout()[0][:40]
    y = np.arange(40) % 10
    y[7] = 10
    np.savez(tmp_path / "labels.npz", x=x, y=y)
    one_line_refusal(calibrate(tmp_path, "--data", str(tmp_path / "labels.npz"), "--edge",
                               node.address, "--cloud", node.address),
                     "y: label 10 is outside the model's 10 classes [0, 9]")
    np.savez(tmp_path / "shape.npz", x=np.zeros((40, 5), np.float32), y=np.arange(40) % 10)
    one_line_refusal(calibrate(tmp_path, "--data", str(tmp_path / "shape.npz"), "--edge",
                               node.address, "--cloud", node.address),
                     f"edge server {node.address}: INVALID_ARGUMENT", "(check --data: x must")


def test_folder_layouts_read_like_the_npz(tmp_path):
    x = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    y = np.arange(30) % 3
    classes = tmp_path / "classes"
    for i in range(30):
        (classes / str(y[i])).mkdir(parents=True, exist_ok=True)
        np.save(classes / str(y[i]) / f"{i:03d}.npy", x[i])
    data = load_labelled(classes)
    order = np.argsort(y, kind="stable")  # class 0's files, then class 1's, ...
    assert np.array_equal(data.x, x[order]) and np.array_equal(data.y, y[order])
    assert data.y.dtype == np.int64
    (classes / "cats").mkdir()
    with pytest.raises(DataError, match=r"^--data: class folder .*cats is not named by a "):
        load_labelled(classes)
    pair = tmp_path / "pair"
    pair.mkdir()
    np.save(pair / "x.npy", x)
    with pytest.raises(DataError, match=r"^y: .*y\.npy is missing"):
        load_labelled(pair)
    np.save(pair / "y.npy", y)
    data = load_labelled(pair)
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y)


def test_split_is_deterministic_disjoint_and_as_documented():
    fit, hold = split_indices(100, 0.3, 5)
    assert len(hold) == 30 and len(fit) == 70
    assert sorted(np.concatenate([fit, hold]).tolist()) == list(range(100))
    assert np.array_equal(hold, documented_holdout(100, 0.3, 5))
    again = split_indices(100, 0.3, 5)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], hold)
    assert not np.array_equal(split_indices(100, 0.3, 6)[1], hold)


def test_write_on_a_signed_version_says_to_sign_it_again(node, tmp_path, labelled,
                                                          shipped_repository):
    from coordinator.cli.main import main

    repo = tmp_path / "repo"
    shutil.copytree(shipped_repository, repo)
    assert main(["signing-key", "--out", str(tmp_path / "keys")]) == 0
    version = repo / EDGE / "1"
    assert main(["sign-model", "--key", str(tmp_path / "keys" / "model-signing.key"),
                 str(version)]) == 0
    x, y = labelled
    np.savez(tmp_path / "labelled.npz", x=x[:300], y=y[:300])
    out = calibrate(tmp_path, "--data", str(tmp_path / "labelled.npz"), "--edge",
                    node.address, "--cloud", node.address, "--model-repository", str(repo),
                    "--write")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"wrote {version / 'calibration.json'}" in out.stdout
    assert (f"note: {version} is signed, and its signature does not cover this file: sign "
            f"it again (edge-coordinator sign-model --key KEY {version})") in out.stdout
    assert json.loads((version / "calibration.json").read_text())["fitted_on"] == "fitting part"


def test_write_names_a_repository_without_the_model(tmp_path, labelled):
    x, y = labelled
    np.savez(tmp_path / "labelled.npz", x=x[:40], y=y[:40])
    (tmp_path / "empty").mkdir()
    one_line_refusal(calibrate(tmp_path, "--data", str(tmp_path / "labelled.npz"),
                               "--model-repository", str(tmp_path / "empty"), "--write"),
                     f"--write: {tmp_path / 'empty' / EDGE} holds no version folder")
