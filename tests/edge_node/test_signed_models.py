"""Signed models at the node (issue 10, item 4): with --require-signed --trust-key, a
tampered, re-manifested, unsigned or foreign-signed version is refused with one log line
naming its directory and reason, counted in metrics, and the newest version that passes
serves; a model with none is not served and the node says so."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc
from cryptography.hazmat.primitives.asymmetric import ed25519

import edgeshard_models
from edge_node.config import build
from edge_node.errors import ModelUnavailableError
from edge_node.repository import ModelRepository
from edgeshard.keys import key_id, new_key_pair
from edgeshard.manifest import manifest_text
from edgeshard.settings import SettingsError
from edgeshard.signing import SigningPolicy, TrustStore, sign_version

EDGE, CLOUD = edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def key():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def trust_key(tmp_path, key):
    """The public key of ``key`` as a file a node can be given with --trust-key."""
    path = tmp_path / "model-signing.pub"
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def sign(version_dir, key):
    (version_dir / "manifest.json").write_text(manifest_text(sign_version(version_dir, key)))


def new_version(model_dir, version, key):
    """A copy of version 1 as ``version``, signed with ``key``."""
    vdir = model_dir / version
    shutil.copytree(model_dir / "1", vdir)
    sign(vdir, key)
    return vdir


def remanifest(vdir, replacement: bytes) -> None:
    """Replace model.tflite and edit the manifest's digests to match, keeping the now
    stale signature: what an attacker who cannot sign would do."""
    (vdir / "model.tflite").write_bytes(replacement)
    fields = json.loads((vdir / "manifest.json").read_text())
    digest = {"sha256": hashlib.sha256(replacement).hexdigest(), "size": len(replacement)}
    fields["files"]["model.tflite"] = digest
    fields.update(digest)
    (vdir / "manifest.json").write_text(json.dumps(fields, indent=2))


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# -- configuration -----------------------------------------------------------------------

def test_require_signed_without_a_trust_key_is_a_config_error(tmp_path):
    with pytest.raises(SettingsError, match=r"^require_signed: needs at least one --trust-key"):
        build({"model_repository": "m", "require_signed": True}, {})
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('model_repository = "m"\nrequire_signed = true\n'
                        'trust_key = ["/keys/a.pub", "/keys/b.pub"]\n')
    cfg = build({}, {}, cfg_file)
    assert cfg.require_signed and [str(p) for p in cfg.trust_key] == ["/keys/a.pub",
                                                                      "/keys/b.pub"]
    env = {"EDGESHARD_TRUST_KEY": "/env/a.pub,/env/b.pub"}
    assert [str(p) for p in build({}, env, cfg_file).trust_key] == ["/env/a.pub", "/env/b.pub"]
    cfg = build({"trust_key": ["/flag/k.pub"]}, env, cfg_file)
    assert [str(p) for p in cfg.trust_key] == ["/flag/k.pub"]


def run_node(*args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    return subprocess.run([sys.executable, "-m", "edge_node", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, env=clean)


def test_node_refuses_to_start_without_a_usable_trust_key(tmp_path, shipped_repository):
    out = run_node("--model-repository", str(shipped_repository), "--require-signed")
    assert out.returncode == 2
    assert "configuration error: require_signed: needs at least one --trust-key" in out.stderr
    private = tmp_path / "signing.key"
    private.write_bytes(new_key_pair()[1])
    out = run_node("--model-repository", str(shipped_repository), "--require-signed",
                   "--trust-key", str(private))
    assert out.returncode == 1
    assert f"cannot start: --trust-key: {private} is a private key; give the public key" \
        in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# -- the repository: which version serves ------------------------------------------------

TAMPERING = {
    # name: (what is done to the copy of version 1 as version 2, the refusal's reason)
    "model file replaced": (lambda v, other: (v / "model.tflite").write_bytes(other),
                            "digest_mismatch"),
    "model file flipped": (lambda v, other: flip_a_byte(v / "model.tflite"),
                           "digest_mismatch"),
    "re-manifested": (lambda v, other: remanifest(v, other), "bad_signature"),
    "manifest deleted": (lambda v, other: (v / "manifest.json").unlink(), "manifest_missing"),
    "signed by another key": (lambda v, other: sign(v, ed25519.Ed25519PrivateKey.generate()),
                              "untrusted_key"),
    "calibration added": (lambda v, other: (v / "calibration.json").write_text(
        '{"temperature": 0.1}'), "not_covered"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_previous_version_serves_when_the_newest_is_tampered(repo_copy, key, case, caplog):
    sign(repo_copy / EDGE / "1", key)
    vdir = new_version(repo_copy / EDGE, "2", key)
    tamper, reason = TAMPERING[case]
    tamper(vdir, (repo_copy / CLOUD / "1" / "model.tflite").read_bytes())
    refusals = []
    repo = ModelRepository(repo_copy, SigningPolicy(TrustStore.of([key.public_key()]), True),
                           on_refused=lambda *r: refusals.append(r))
    with caplog.at_level(logging.INFO, logger="edge_node.repository"):
        repo.load()
    served = repo.resolve(EDGE)
    assert served.version == "1" and served.signed_by == key_id(key.public_key())
    assert repo.models[EDGE].reasons == {"2": reason}
    assert (EDGE, "2", reason) in refusals
    with pytest.raises(ModelUnavailableError, match=rf"failed to load \({reason}\)"):
        repo.resolve(EDGE, "2")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    (line,) = [m for m in lines if m.startswith(f"model {EDGE} version 2 refused")]
    assert f"({reason}): {vdir}" in line  # one line: version directory and reason
    assert f"model {EDGE}: serving version 1; newer version(s) refused: 2 ({reason})" in \
        caplog.text


def test_without_require_signed_unsigned_versions_serve_but_bad_signatures_do_not(
        repo_copy, key):
    vdir = new_version(repo_copy / EDGE, "2", key)
    remanifest(vdir, (repo_copy / EDGE / "1" / "model.tflite").read_bytes() + b"\0")
    new_version(repo_copy / EDGE, "3", ed25519.Ed25519PrivateKey.generate())
    repo = ModelRepository(repo_copy, SigningPolicy(TrustStore.of([key.public_key()])))
    repo.load()
    entry = repo.models[EDGE]
    assert sorted(entry.versions) == ["1"]  # 1 is unsigned (the shipped manifest)
    assert entry.reasons == {"2": "bad_signature", "3": "untrusted_key"}
    # A node with no key at all cannot check signatures: it checks the digests, which a
    # re-manifested version matches. That is what --trust-key is for.
    (vdir.parent / "3" / "model.tflite").write_bytes(b"corrupt")
    plain = ModelRepository(repo_copy)
    plain.load()
    assert sorted(plain.models[EDGE].versions) == ["1", "2"]
    assert plain.models[EDGE].reasons == {"3": "digest_mismatch"}


def test_model_with_no_acceptable_version_is_not_served(repo_copy, key, caplog):
    sign(repo_copy / EDGE / "1", key)  # the cloud model stays unsigned
    repo = ModelRepository(repo_copy, SigningPolicy(TrustStore.of([key.public_key()]), True))
    with caplog.at_level(logging.ERROR, logger="edge_node.repository"):
        repo.load()
    assert repo.resolve(EDGE).version == "1"
    with pytest.raises(ModelUnavailableError, match="not signed"):
        repo.resolve(CLOUD)
    assert f"model {CLOUD} is not served: every version was refused: 1 (unsigned)" in \
        caplog.text


# -- a real node -------------------------------------------------------------------------

def infer(client, version=""):
    image = tc.InferInput("image", [1, 28, 28], "UINT8")
    image.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8))
    return client.infer(EDGE, [image], model_version=version)


def test_node_serves_the_previous_version_of_a_tampered_model(repo_copy, key, trust_key,
                                                              start):
    """Acceptance: a tampered or re-manifested model is refused under --require-signed
    while the previous version serves."""
    edge = repo_copy / EDGE
    sign(edge / "1", key)
    remanifest(new_version(edge, "2", key), (repo_copy / CLOUD / "1" / "model.tflite")
               .read_bytes())                                     # re-manifested
    flip_a_byte(new_version(edge, "3", key) / "model.tflite")     # tampered
    (new_version(edge, "4", key) / "manifest.json").unlink()       # manifest deleted
    proc = start(repo_copy, "--require-signed", "--trust-key", str(trust_key),
                 "--metrics-port", "0", "--workers", "1", name="signed")
    client = tc.InferenceServerClient(proc.address)
    try:
        assert list(client.get_model_metadata(EDGE).versions) == ["1"]
        assert client.is_model_ready(EDGE) and client.is_model_ready(EDGE, "1")
        for version in ("2", "3", "4"):
            assert not client.is_model_ready(EDGE, version)
        answer = infer(client)
        response = answer.get_response()
        assert response.model_version == "1"
        assert response.parameters["model_version"].string_param == "1"
        assert answer.as_numpy("label").shape == (1,)
        with pytest.raises(Exception, match="signature does not verify"):
            infer(client, "2")
        config = client.get_model_config(EDGE).config
        assert config.parameters["signed_by"].string_value == key_id(key.public_key())
        assert not client.is_model_ready(CLOUD)  # unsigned: not served at all
    finally:
        client.close()
    log = proc.log_tail(200)
    for version, reason in (("2", "bad_signature"), ("3", "digest_mismatch"),
                            ("4", "manifest_missing")):
        assert f"model {EDGE} version {version} refused ({reason}): {edge / version}" in log
    assert f"model {EDGE}: serving version 1; newer version(s) refused: 2 (bad_signature), " \
           "3 (digest_mismatch), 4 (manifest_missing)" in log
    assert f"model {CLOUD} is not served: every version was refused: 1 (unsigned)" in log
    url = f"http://127.0.0.1:{proc.info['metrics_port']}/metrics"
    metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    assert (f'edgeshard_node_versions_refused_total{{model="{EDGE}",reason="bad_signature",'
            'version="2"} 1.0') in metrics
    assert f'edgeshard_node_model_ready{{model="{EDGE}",version="2"}} 0.0' in metrics
    assert f'edgeshard_node_model_ready{{model="{EDGE}",version="1"}} 1.0' in metrics
