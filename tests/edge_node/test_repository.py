"""Broken models are refused at load with a clear reason; the other models keep serving."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

import edgeshard_models
from coordinator.cli.launcher import LaunchError, start_node
from edge_node.errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError
from edge_node.repository import ModelRepository

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL


def infer_ok(address, model):
    client = tc.InferenceServerClient(address)
    try:
        inp = tc.InferInput("image", [1, 28, 28], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8))
        return client.infer(model, [inp]).as_numpy("label").shape == (1,)
    finally:
        client.close()


def test_shipped_repository_loads(shipped_repository):
    repo = ModelRepository(shipped_repository)
    repo.load()
    assert sorted(repo.models) == sorted([EDGE, CLOUD])
    assert all(not e.failures for e in repo.models.values())
    assert repo.resolve(EDGE).version == "1"
    with pytest.raises(ModelNotFoundError, match="model_name"):
        repo.resolve("nope")


def test_corrupt_file_refused_by_checksum(repo_copy):
    path = repo_copy / EDGE / "1" / "model.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    repo = ModelRepository(repo_copy)
    repo.load()
    assert "sha256" in repo.models[EDGE].failures["1"]
    with pytest.raises(ModelUnavailableError, match="sha256"):
        repo.resolve(EDGE)
    assert repo.resolve(CLOUD).version == "1"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "bad-config", "labels"])
def test_broken_model_refused_and_others_serve(repo_copy, start, damage):
    version_dir = repo_copy / EDGE / "1"
    model = version_dir / "model.tflite"
    if damage == "garbage":
        model.write_bytes(b"this is not a flatbuffer" * 10)
        (version_dir / "manifest.json").unlink()  # get past the checksum to the loader
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[:200])
        (version_dir / "manifest.json").unlink()
    elif damage == "missing":
        model.unlink()
    elif damage == "bad-config":
        (repo_copy / EDGE / "config.toml").write_text("name = [unclosed\n")
    elif damage == "labels":
        cfg = (repo_copy / EDGE / "config.toml").read_text()
        (repo_copy / EDGE / "config.toml").write_text(cfg.replace('"9"]', '"9", "10"]'))
    proc = start(repo_copy, name=f"broken-{damage}")
    assert infer_ok(proc.address, CLOUD)
    client = tc.InferenceServerClient(proc.address)
    try:
        assert not client.is_model_ready(EDGE)
        with pytest.raises(Exception) as err:
            client.get_model_metadata(EDGE)
        assert "mnist_edge" in str(err.value)
    finally:
        client.close()
    assert "refused" in proc.log_tail(50)


def test_newest_version_served_and_old_pinnable(repo_copy, start):
    import shutil

    shutil.copytree(repo_copy / EDGE / "1", repo_copy / EDGE / "2")
    proc = start(repo_copy, name="two-versions")
    client = tc.InferenceServerClient(proc.address)
    try:
        inp = tc.InferInput("image", [1, 28, 28], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8))
        assert client.infer(EDGE, [inp]).get_response().model_version == "2"
        assert client.infer(EDGE, [inp], model_version="1").get_response().model_version == "1"
        assert list(client.get_model_metadata(EDGE).versions) == ["1", "2"]
    finally:
        client.close()


def test_calibration_temperature_is_applied(repo_copy, start):
    (repo_copy / EDGE / "1" / "calibration.json").write_text(json.dumps({"temperature": 4.0}))
    proc = start(repo_copy, name="calibrated")
    client = tc.InferenceServerClient(proc.address)
    try:
        config = client.get_model_config(EDGE).config
        assert config.parameters["temperature"].string_value == "4.0"
    finally:
        client.close()


def test_bad_calibration_file_refuses_version(repo_copy):
    (repo_copy / EDGE / "1" / "calibration.json").write_text('{"temperature": -1}')
    repo = ModelRepository(repo_copy)
    repo.load()
    assert "temperature" in repo.models[EDGE].failures["1"]


def test_no_loadable_model_exits_with_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LaunchError) as err:
        start_node("empty", tmp_path / "empty", tmp_path, timeout=30)
    assert "no model could be loaded" in str(err.value)


def test_repository_not_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        ModelRepository(tmp_path / "missing").load()


def test_grpc_status_for_unavailable_model(repo_copy, start):
    (repo_copy / EDGE / "1" / "model.tflite").unlink()
    proc = start(repo_copy, name="missing-edge")
    from protos import oip_pb2
    from protos.oip_service import InferenceStub

    channel = grpc.insecure_channel(proc.address)
    try:
        req = oip_pb2.ModelInferRequest(model_name=EDGE)
        with pytest.raises(grpc.RpcError) as err:
            InferenceStub(channel).ModelInfer(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "model file missing" in err.value.details()
    finally:
        channel.close()
