"""External TFLite delegates: a library that is missing or is not a delegate leaves the
model on the CPU, says so once in the log, in the model config and in the metrics, and the
model serves. (No hardware delegate exists on these machines: see docs/SERVING_MODELS.md.)"""

from __future__ import annotations

import ctypes.util
import re
import urllib.request

import pytest
import tritonclient.grpc as tc

import edgeshard_models
from edge_node.repository import ModelRepository
from edge_node.runtime import DelegateError, DelegateSpec, check_delegate

NOT_A_DELEGATE = ctypes.util.find_library("m") or "libm.so.6"  # loads, has no plugin ABI
MISSING = "libedgetpu-not-installed.so.1"


@pytest.mark.parametrize("library,text", [
    (MISSING, "cannot load libedgetpu-not-installed.so.1"),
    (NOT_A_DELEGATE, "is not a TFLite delegate plugin (no tflite_plugin_create_delegate"),
])
def test_check_delegate_says_why(library, text):
    with pytest.raises(DelegateError) as err:
        check_delegate(DelegateSpec(library, {"device": "usb"}))
    assert text in str(err.value)


def test_a_models_delegate_config_overrides_the_nodes(repo_copy, caplog):
    model = edgeshard_models.EDGE_MODEL
    config = repo_copy / model / "config.toml"
    config.write_text(config.read_text().replace(
        "[input]", f'[delegate]\nlibrary = "{NOT_A_DELEGATE}"\noptions = {{ device = "usb" }}\n'
        "\n[input]"))
    repo = ModelRepository(repo_copy, delegate=DelegateSpec(MISSING))
    repo.load()
    mv = repo.models[model].latest
    assert mv.runs_on == "cpu" and NOT_A_DELEGATE in mv.delegate_fallback
    other = repo.models[edgeshard_models.CLOUD_MODEL].latest  # no [delegate]: the node's
    assert other.runs_on == "cpu" and MISSING in other.delegate_fallback
    warnings = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per version, not per worker


def test_library_cpu_in_the_config_opts_out_of_the_nodes_delegate(repo_copy):
    model = edgeshard_models.EDGE_MODEL
    config = repo_copy / model / "config.toml"
    config.write_text(config.read_text().replace("[input]", '[delegate]\nlibrary = "cpu"\n'
                                                 "\n[input]"))
    repo = ModelRepository(repo_copy, delegate=DelegateSpec(MISSING))
    repo.load()
    mv = repo.models[model].latest
    assert mv.runs_on == "cpu" and mv.delegate_fallback == ""


def test_a_node_with_a_missing_delegate_serves_on_the_cpu_and_says_so(
        repo_copy, start, holdout):
    node = start(repo_copy, "--delegate", MISSING, "--delegate-option", "device=usb",
                 "--metrics-port", "0")
    client = tc.InferenceServerClient(node.address)
    try:
        params = client.get_model_config(edgeshard_models.EDGE_MODEL).config.parameters
        assert params["delegate"].string_value == "cpu"
        assert MISSING in params["delegate_fallback"].string_value
        images, labels = holdout
        inp = tc.InferInput("image", [8, 28, 28], "UINT8")
        inp.set_data_from_numpy(images[:8])
        out = client.infer(edgeshard_models.EDGE_MODEL, [inp]).as_numpy("label")
        assert (out == labels[:8]).mean() >= 0.75
    finally:
        client.close()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{node.info['metrics_port']}/metrics",
                                     timeout=10).read().decode()
    assert re.search(r'edgeshard_node_model_runs_on\{delegate="cpu",fallback="1",'
                     r'model="mnist_edge",version="1"\} 1\.0', metrics), metrics[-2000:]


@pytest.mark.parametrize("flags,text", [
    (["--delegate-option", "device=usb"], "delegate_option: needs --delegate"),
    (["--delegate", "libx.so", "--delegate-option", "novalue"],
     "delegate_option: must be KEY=VALUE"),
])
def test_bad_delegate_flags_name_the_field(shipped_repository, tmp_path, flags, text):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edge_node", "--model-repository",
                          str(shipped_repository), *flags], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert text in out.stderr
