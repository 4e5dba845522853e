"""Any model through the coordinator: real third-party models (MediaPipe's, from its pip
wheel) served config-less by real edge-node processes, online and as sharded jobs, every
output compared bit for bit with the interpreter's own invoke() on the same item."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from ai_edge_litert.interpreter import Interpreter

import edgeshard_models
from coordinator.jobs.items import ItemSource
from protos import codec, oip_pb2
from protos.oip_service import InferenceStub

pytestmark = pytest.mark.timeout(240)

FACE = "face_detection_short_range.tflite"  # not batchable: [1,128,128,3] -> 2 outputs
SELFIE = "selfie_segmentation.tflite"  # batchable: [-1,256,256,3] -> [-1,256,256,1]


@pytest.fixture(scope="module")
def repository(mediapipe_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("any-model-jobs")
    for name, file in (("face", FACE), ("selfie", SELFIE)):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(mediapipe_models / file, root / name / "1" / "model.tflite")
    shutil.copytree(edgeshard_models.repository_path() / edgeshard_models.EDGE_MODEL,
                    root / edgeshard_models.EDGE_MODEL)
    return root


def make_fleet(request, tmp_path, repository, backend="sqlite"):
    from tests.conftest import Fleet

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    return Fleet(tmp_path, repository, state_url=url)


@pytest.fixture
def fleet(request, tmp_path, repository):
    f = make_fleet(request, tmp_path, repository)
    yield f
    f.close()


def direct(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """The interpreter's own answer for one input ``x`` (batch included): every output."""
    interp = Interpreter(model_path=str(path))
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(detail["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def output_names(path: Path) -> list[str]:
    return [d["name"] for d in Interpreter(model_path=str(path)).get_output_details()]


def test_online_requests_metadata_and_config_pass_through_the_coordinator(fleet, repository):
    fleet.start_coordinator()
    node = fleet.add_node("n1")
    fleet.wait_live(1)
    via, at_node = tc.InferenceServerClient(fleet.coordinator.address), \
        tc.InferenceServerClient(node.address)
    try:
        for model in ("selfie", "face"):
            assert via.get_model_metadata(model) == at_node.get_model_metadata(model)
            assert via.get_model_config(model) == at_node.get_model_config(model)
        rng = np.random.default_rng(11)
        for model, shape, name in (("selfie", (2, 256, 256, 3), "input_1"),
                                   ("face", (1, 128, 128, 3), "input")):
            x = rng.random(shape, dtype=np.float32)
            inp = tc.InferInput(name, list(shape), "FP32")
            inp.set_data_from_numpy(x)
            result = via.infer(model, [inp])
            path = repository / model / "1" / "model.tflite"
            for out_name, want in zip(output_names(path), direct(path, x), strict=True):
                got = result.as_numpy(out_name)
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want, err_msg=f"{model}:{out_name}")
            assert result.get_response().parameters["node"].string_param == "n1"
    finally:
        via.close()
        at_node.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_jobs_of_any_model_keep_every_output_bit_exact(request, tmp_path, repository,
                                                       backend):
    fleet = make_fleet(request, tmp_path, repository, backend)
    try:
        fleet.start_coordinator()
        fleet.add_node("n1")
        fleet.add_node("n2")
        fleet.wait_live(2)
        rng = np.random.default_rng(5)
        selfie = rng.random((20, 256, 256, 3), dtype=np.float32)
        ids = [f"s{i}" for i in range(20)]
        status = fleet.client.submit("selfie", ItemSource.from_arrays(ids, selfie),
                                     shard_size=4)
        faces = rng.random((3, 128, 128, 3), dtype=np.float32)
        face_status = fleet.client.submit("face", ItemSource.from_arrays(None, faces),
                                          shard_size=8, outputs=["classificators"])
        # the detector cannot batch: one item per shard, one shard per node request
        assert face_status.shards_total == 3
        for job, want_items in ((status, 20), (face_status, 3)):
            final = wait_finished(fleet.client, job.job_id)
            assert final.state == "done" and final.done_items == want_items
        records = list(fleet.client.results(status.job_id))
        assert Counter(r.id for r in records) == Counter(ids)  # exactly one per item
        path = repository / "selfie" / "1" / "model.tflite"
        (name,) = output_names(path)
        for r in records:
            assert r.label is None and r.confidence is None
            assert set(r.outputs) == {name}
            (want,) = direct(path, selfie[ids.index(r.id)][None])
            got = r.outputs[name]
            assert got.dtype == want.dtype and got.shape == want.shape[1:]
            np.testing.assert_array_equal(got, want[0], err_msg=r.id)
        path = repository / "face" / "1" / "model.tflite"
        face_records = list(fleet.client.results(face_status.job_id))
        assert sorted(r.id for r in face_records) == ["0", "1", "2"]
        for r in face_records:
            assert set(r.outputs) == {"classificators"}
            want = direct(path, faces[int(r.id)][None])[output_names(path).index(
                "classificators")]
            np.testing.assert_array_equal(r.outputs["classificators"], want[0])
    finally:
        fleet.close()


def test_submit_cli_writes_small_outputs_inline_and_large_ones_to_the_npz(fleet, repository,
                                                                          tmp_path):
    from coordinator.cli.submit import run_submit

    fleet.start_coordinator()
    fleet.add_node("n1")
    fleet.wait_live(1)
    rng = np.random.default_rng(9)
    faces = rng.random((2, 128, 128, 3), dtype=np.float32)
    np.savez(tmp_path / "faces.npz", images=faces, ids=np.array(["a", "b"]))
    out = tmp_path / "faces.jsonl"
    outcome = run_submit(fleet.coordinator.address, "face", tmp_path / "faces.npz", out,
                         progress=False)
    assert outcome.state == "done" and outcome.written == 2
    path = repository / "face" / "1" / "model.tflite"
    names = output_names(path)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["a", "b"]
    npz = np.load(tmp_path / "faces.jsonl.npz")
    for line in lines:
        assert "label" not in line and set(line["outputs"]) == set(names)
        want = dict(zip(names, direct(path, faces[["a", "b"].index(line["id"])][None]),
                        strict=True))
        regressors = line["outputs"]["regressors"]  # 896 x 16 values: in the sidecar
        assert regressors["npz"] == "faces.jsonl.npz" and regressors["shape"] == [896, 16]
        np.testing.assert_array_equal(npz[regressors["key"]], want["regressors"][0])
        scores = line["outputs"]["classificators"]  # 896 values: inline, exact as float32
        assert scores["datatype"] == "FP32" and scores["shape"] == [896, 1]
        got = np.array(scores["data"], np.float32).reshape(scores["shape"])
        np.testing.assert_array_equal(got, want["classificators"][0])


@pytest.mark.parametrize("model,array,outputs,text", [
    ("selfie", np.zeros((2, 128, 128, 3), np.float32), (),
     "item shape [128, 128, 3] does not fit selfie's input 'input_1' [-1, 256, 256, 3]"),
    ("selfie", np.zeros((2, 256, 256, 3), np.int32), (),
     "dtype int32 (INT32) does not fit selfie's input 'input_1' (FP32); send float32"),
    ("face", np.zeros((2, 128, 128, 3), np.float32), ("boxes",),
     "outputs: face has no output 'boxes'; its outputs are regressors, classificators"),
])
def test_bad_jobs_are_refused_at_submit(fleet, model, array, outputs, text):
    fleet.start_coordinator()
    fleet.add_node("n1")
    fleet.wait_live(1)
    with pytest.raises(grpc.RpcError) as err:
        fleet.client.submit(model, ItemSource.from_arrays(None, array), outputs=outputs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in err.value.details()


def test_a_cascade_rule_for_a_model_that_is_not_a_classifier_is_refused(fleet):
    # The cloud tier is never asked: the rule is refused before anything is forwarded.
    fleet.start_coordinator("--cloud", "127.0.0.1:9", "--cascade", "selfie=selfie",
                            "--escalation", "selfie=max_prob:0.9")
    fleet.add_node("n1")
    fleet.wait_live(1)
    x = np.zeros((1, 256, 256, 3), np.float32)
    tensor, raw = codec.encode_input_tensor("input_1", x)
    request = oip_pb2.ModelInferRequest(model_name="selfie", inputs=[tensor],
                                        raw_input_contents=[raw])
    with grpc.insecure_channel(fleet.coordinator.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            InferenceStub(channel).ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model 'selfie'" in err.value.details()
        assert "task 'tensor'" in err.value.details()
        # metadata still answers: only the cascade is refused
        meta = InferenceStub(channel).ModelMetadata(
            oip_pb2.ModelMetadataRequest(name="selfie"), timeout=10)
        assert meta.inputs[0].name == "input_1"
    with pytest.raises(grpc.RpcError) as err:
        fleet.client.submit("selfie", ItemSource.from_arrays(None, x))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "task 'tensor'" in err.value.details()


def wait_finished(client, job_id: str, timeout: float = 180.0):
    for status in client.watch(job_id, interval=0.1, timeout=timeout):
        if status.state != "running":
            return status
    return client.get(job_id)
