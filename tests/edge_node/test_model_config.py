"""Model configs with tasks: auto-config, overrides, and every refusal naming its key."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeshard_models
from edge_node.repository import ModelRepository

FACE = "face_detection_short_range.tflite"


def repo_with(tmp_path: Path, model_file: Path, config: str | None, name: str = "m") -> Path:
    (tmp_path / name / "1").mkdir(parents=True)
    shutil.copy(model_file, tmp_path / name / "1" / "model.tflite")
    if config is not None:
        (tmp_path / name / "config.toml").write_text(config)
    return tmp_path


def load(root: Path, name: str = "m"):
    repo = ModelRepository(root)
    repo.load()
    entry = repo.models[name]
    return entry, entry.latest


@pytest.fixture
def mnist_file() -> Path:
    return (edgeshard_models.repository_path() / edgeshard_models.EDGE_MODEL / "1"
            / "model.tflite")


def test_a_config_less_model_serves_as_tensors(tmp_path, mnist_file):
    entry, mv = load(repo_with(tmp_path, mnist_file, None))
    assert mv.task.kind == "tensor" and not mv.spec.configured
    assert mv.signature.batched and mv.max_batch_size == 32
    assert [(t.name, str(t.dtype), t.shape) for t in mv.task.inputs] == [
        ("serving_default_image:0", "int8", (-1, 28, 28, 1))]


def test_config_overrides_task_batching_and_labels(tmp_path, mnist_file):
    labels = ", ".join(f'"d{i}"' for i in range(10))
    root = repo_with(tmp_path, mnist_file, f"""
task = "classification"
max_batch_size = 8
labels = [{labels}]
[dynamic_batching]
max_queue_delay_ms = 2
[input]
mean = [0.1307]
std = [0.3081]
""")
    _, mv = load(root)
    assert mv.task.kind == "classification" and mv.max_batch_size == 8
    assert mv.spec.max_queue_delay_ms == 2.0 and mv.spec.labels[3] == "d3"
    assert [t.name for t in mv.task.outputs] == ["probabilities", "label", "confidence"]
    # No input.name: the model's own input name is the client-facing one.
    assert mv.task.inputs[0].name == "serving_default_image:0"
    rows, (tensor,) = mv.task.prepare({"serving_default_image:0": np.zeros((2, 28, 28),
                                                                            np.uint8)})
    assert rows == 2 and tensor.shape == (2, 28, 28, 1) and tensor.dtype == np.int8


def test_max_batch_size_zero_turns_batching_off(tmp_path, mnist_file):
    _, mv = load(repo_with(tmp_path, mnist_file, "max_batch_size = 0\n"))
    assert not mv.signature.batched and mv.task.inputs[0].shape == (1, 28, 28, 1)


@pytest.mark.parametrize("config,text", [
    ('task = "segmentation"\n', "task must be one of ['classification', 'detection', 'tensor']"),
    ("max_batch_size = 5000\n", "max_batch_size must be in 0..4096"),
    ('max_batch_size = "8"\n', "max_batch_size must be int"),
    ("[dynamic_batching]\nmax_queue_delay_ms = -1\n",
     "dynamic_batching.max_queue_delay_ms must be in 0..1000"),
    ('platform = "onnx"\n', "platform must be 'tflite'"),
    ("dequantize = 1\n", "dequantize must be bool"),
    ('task = "classification"\n[input]\nheight = 32\n',
     "input tensor shape [1, 28, 28, 1] does not match config [N,32,28,1]"),
    ('task = "classification"\nlabels = ["a", "b"]\n',
     "2 labels in config but the model has 10 classes"),
    ('task = "classification"\n[input]\nstd = [0.0]\n', "input.std values must be > 0"),
    ('task = "classification"\n[output]\nkind = "softmax"\n',
     "output.kind must be 'logits' or 'probabilities'"),
    ('task = "detection"\n[detection]\nstrides = [8]\n', "detection needs two outputs"),
    ("this is not toml", "not valid TOML"),
    ("max_batch = 4\n", "unknown key(s) max_batch (did you mean max_batch_size?)"),
    ("[dynamic_batching]\nmax_delay_ms = 2\n", "unknown key(s) dynamic_batching.max_delay_ms"),
    ("[input]\nheight = 28\n", "[input] applies to task 'classification'"),
    ('task = "classification"\n[input]\nmeen = [0.1]\n',
     "unknown key(s) input.meen (did you mean input.mean?)"),
    ('task = "classification"\n[input]\nmean = [0.1, 0.2, 0.3]\n',
     "input.mean needs 1 number, got [0.1, 0.2, 0.3]"),
])
def test_bad_configs_are_refused_naming_the_key(tmp_path, mnist_file, config, text):
    entry, mv = load(repo_with(tmp_path, mnist_file, config))
    assert mv is None
    reasons = " ".join(entry.failures.values())
    assert text in reasons, reasons


@pytest.mark.parametrize("config,text", [
    ("max_batch_size = 4\n", "max_batch_size 4: this model's batch cannot be resized"),
    ('task = "classification"\n',
     "task 'classification' needs one input and one output tensor; the model has 1 and 2"),
    ('task = "detection"\n[detection]\nstrides = [8, 16]\n',
     "has 640 anchors but the model gives 896 boxes"),
    ('task = "detection"\n[detection]\nstrides = [8, 16, 16, 16]\nboxes = "nope"\n',
     "detection.boxes and detection.scores must name two different outputs"),
    ('task = "detection"\n[detection]\nstrides = [8, 16, 16, 16]\niou_threshold = 2\n',
     "detection.iou_threshold: a number in [0.0, 1.0]"),
    ('task = "detection"\n', "detection.strides: a list of ints >= 1"),
    ('task = "detection"\n[detection]\nstrides = [8, 16, 16, 16]\nscore_treshold = 0.9\n',
     "unknown key(s) detection.score_treshold (did you mean detection.score_threshold?)"),
])
def test_task_options_that_do_not_fit_the_model_are_refused(tmp_path, mediapipe_models,
                                                            config, text):
    entry, mv = load(repo_with(tmp_path, mediapipe_models / FACE, config))
    assert mv is None
    reasons = " ".join(entry.failures.values())
    assert text in reasons, reasons


def test_dequantize_in_the_config_changes_the_declared_outputs(tmp_path, mnist_file):
    _, mv = load(repo_with(tmp_path, mnist_file, "dequantize = true\n"))
    assert mv.task.outputs[0].dtype == np.float32
    assert mv.task.inputs[0].dtype == np.int8  # inputs stay native (FP32 also accepted)
    assert np.dtype(np.float32) in mv.task.accepted_dtypes(mv.task.inputs[0].name)
