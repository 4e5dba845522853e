"""The node's side of drift monitoring: profile.json in a version (parsed, refused when
malformed, covered by signatures) and the rolling windows of ext.window_stats."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import edgeshard_models
from edge_node.drift import OTHER, DriftWindows, check_segment
from edge_node.errors import InvalidInputError
from edge_node.repository import ModelRepository
from edgeshard.manifest import manifest_text
from edgeshard.profile import ProfileError, parse_profile
from edgeshard.signing import SigningPolicy, TrustStore, sign_version

EDGE = edgeshard_models.EDGE_MODEL


def shipped_profile(repository):
    return json.loads((repository / EDGE / "1" / "profile.json").read_text())


def test_shipped_versions_carry_a_profile_of_the_calibration_split(shipped_repository):
    repo = ModelRepository(shipped_repository)
    repo.load()
    profile = repo.models[EDGE].versions["1"].profile
    assert profile.items == 500 and profile.input.dtype == "uint8"
    assert profile.input.histogram.total == 500 * 28 * 28
    assert profile.confidence.total == 500


@pytest.mark.parametrize("change,field", [
    (lambda p: p.update(format="v0"), "format"),
    (lambda p: p["input"].update(dtype="int16"), "input.dtype"),
    (lambda p: p["input"].update(mean=[1.0, 2.0]), "input.mean"),
    (lambda p: p["input"]["histogram"].__setitem__(3, -1), "input.histogram[3]"),
    (lambda p: p["input"].update(hi=-1), "input.hi"),
    (lambda p: p["confidence"].update(histogram=[0, 0]), "confidence.histogram"),
    (lambda p: p.update(temperature=0), "temperature"),
])
def test_a_malformed_profile_refuses_the_version_naming_file_and_field(repo_copy, change,
                                                                       field):
    body = shipped_profile(repo_copy)
    change(body)
    path = repo_copy / EDGE / "1" / "profile.json"
    path.write_text(json.dumps(body))
    repo = ModelRepository(repo_copy)
    repo.load()
    failure = repo.models[EDGE].failures["1"]
    assert failure.startswith(f"{path}: {field}: "), failure
    assert "edge-coordinator profile" in failure
    assert repo.models[edgeshard_models.CLOUD_MODEL].versions  # others still serve


def test_a_profile_that_is_not_json_names_the_file():
    with pytest.raises(ProfileError, match=r"^where/profile.json: not JSON"):
        parse_profile(b"{", "where/profile.json")


def test_a_signature_covers_the_profile(repo_copy):
    key = ed25519.Ed25519PrivateKey.generate()
    vdir = repo_copy / EDGE / "1"
    manifest = sign_version(vdir, key)
    assert "profile.json" in manifest["files"]
    (vdir / "manifest.json").write_text(manifest_text(manifest))
    policy = SigningPolicy(TrustStore.of([key.public_key()]), True)
    repo = ModelRepository(repo_copy, policy)
    repo.load()
    assert repo.models[EDGE].versions["1"].profile is not None
    profile = vdir / "profile.json"
    profile.write_text(profile.read_text().replace('"items": 500', '"items": 501'))
    repo = ModelRepository(repo_copy, policy)
    repo.load()
    assert repo.models[EDGE].reasons["1"] == "digest_mismatch"
    assert "profile.json" in repo.models[EDGE].failures["1"]


@pytest.fixture(scope="module")
def version(shipped_repository):
    repo = ModelRepository(shipped_repository)
    repo.load()
    return repo.models[EDGE].versions["1"]


def test_windows_roll_over_the_newest_items(version):
    windows = DriftWindows(window_items=100)
    zeros, ones = np.zeros((30, 28, 28), np.uint8), np.full((30, 28, 28), 255, np.uint8)
    for _ in range(4):
        windows.observe(version, "cam", zeros, np.full(30, 0.99, np.float32))
    for _ in range(4):
        windows.observe(version, "cam", ones, np.full(30, 0.5, np.float32))
    refs, (w,) = windows.snapshot([version])
    assert refs[0].profile is version.profile
    assert w.items == 120 and w.segment == "cam"  # the newest batches holding >= 100
    assert w.histogram[-1] == 120 * 784 and sum(w.histogram) == 120 * 784
    assert w.total == (120 * 784 * 255.0,) and w.count == (120 * 784,)
    assert w.confidence[10] == 120  # 0.5 in bin 10 of 20


def test_segments_are_bounded_and_sampling_skips_requests(version):
    windows = DriftWindows(sample_every=2, max_segments=2)
    x = np.zeros((1, 28, 28), np.uint8)
    for segment in ("a", "b", "c", "d", "a", "b", "c", "d"):
        windows.observe(version, segment, x, None)
    _, snapshot = windows.snapshot([version])
    # every other request is sampled: 0, 2, 4, 6 (segments a, c, a, c)
    assert {w.segment: w.items for w in snapshot} == {"a": 2, "c": 2}
    windows = DriftWindows(max_segments=2)
    for segment in ("a", "b", "c", "d"):
        windows.observe(version, segment, x, None)
    _, snapshot = windows.snapshot([version])
    assert {w.segment: w.items for w in snapshot} == {"a": 1, "b": 1, OTHER: 2}
    assert windows.snapshot([])[1] == []  # an unloaded version's windows are dropped


def test_inputs_on_another_scale_are_not_counted(version, caplog):
    windows = DriftWindows()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            windows.observe(version, "", np.zeros((2, 28, 28, 1), np.float32), None)
    assert windows.snapshot([version])[1] == []
    assert caplog.text.count("inputs of dtype float32") == 1


def test_no_profile_no_window():
    windows = DriftWindows()
    mv = SimpleNamespace(profile=None, key=("m", "1"))
    windows.observe(mv, "", np.zeros((1, 4), np.uint8), None)
    assert windows.snapshot([])[1] == []


@pytest.mark.parametrize("value", [3, "a b", "x" * 65, "caméra"])
def test_bad_segment_names_are_refused_naming_the_parameter(value):
    with pytest.raises(InvalidInputError) as err:
        check_segment(value)
    assert err.value.field == "parameters.segment"
    assert check_segment(None) == "" and check_segment("camera-07") == "camera-07"


def test_serving_processes_share_windows_through_a_directory(tmp_path, version):
    from edge_node.drift import merge_windows, read_windows, write_windows

    x = np.zeros((3, 28, 28), np.uint8)
    mine, theirs = DriftWindows(), DriftWindows()
    mine.observe(version, "cam", x, np.full(3, 0.9, np.float32))
    theirs.observe(version, "cam", x, np.full(3, 0.9, np.float32))
    theirs.observe(version, "other", x[:1], None)
    write_windows(tmp_path, 1, theirs.snapshot([version])[1])
    write_windows(tmp_path, 0, mine.snapshot([version])[1])  # its own file is skipped
    shared = read_windows(tmp_path, 0)
    assert sorted(w.segment for w in shared) == ["cam", "other"]
    merged = {w.segment: w for w in merge_windows(mine.snapshot([version])[1] + shared)}
    assert merged["cam"].items == 6 and sum(merged["cam"].confidence) == 6
    assert merged["cam"].count == (6 * 784,) and merged["other"].items == 1
    assert read_windows(tmp_path, 0, max_age=-1) == []  # a dead process's file is stale


def test_a_large_input_is_read_by_every_kth_row_keeping_channels_in_step():
    from edge_node.drift import MAX_VALUES_PER_REQUEST, _rows_sample

    small = np.zeros((2, 28, 28), np.uint8)
    assert _rows_sample(small) is small  # small inputs are read whole
    frame = np.zeros((1, 480, 640, 3), np.uint8)
    frame[..., 1] = 7  # channel 1 everywhere
    frame[:, 1::2] = 200  # odd rows differ: a row stride must not lose the channel order
    sample = _rows_sample(frame)
    assert sample.flags.c_contiguous and sample.shape[0] == 1 and sample.shape[2:] == (640, 3)
    assert sample.size <= MAX_VALUES_PER_REQUEST * 1.1
    assert sample.shape[1] >= 30
    rows = np.arange(480)[::480 // sample.shape[1] + (480 % sample.shape[1] > 0)]
    np.testing.assert_array_equal(sample, frame[:, rows[:sample.shape[1]]])
    table = np.zeros((100_000, 4), np.float32)  # 2-D: every k-th item
    assert _rows_sample(table).shape[1] == 4
    assert _rows_sample(table).size <= MAX_VALUES_PER_REQUEST
