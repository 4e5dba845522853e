"""``edge-coordinator signing-key`` and ``sign-model`` (issue 10, item 4): the key pair,
signed manifests a node accepts, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import edgeshard_models
from coordinator.cli.main import main
from coordinator.cli.signing import SIGN_MODEL_HELP, SIGNING_KEY_HELP
from edgeshard.certs import DevCA
from edgeshard.keys import key_id, load_private_key, load_public_key
from edgeshard.signing import SigningPolicy, TrustStore, verify_version

EDGE = edgeshard_models.EDGE_MODEL


@pytest.fixture(autouse=True)
def no_passphrase_env(monkeypatch):
    monkeypatch.delenv("EDGESHARD_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def keys(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["signing-key", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def version_dir(tmp_path, shipped_repository):
    model = tmp_path / "repo" / EDGE
    shutil.copytree(shipped_repository / EDGE, model)
    return model / "1"


def fails(capsys, *argv: str) -> str:
    """Run the CLI, expecting exit code 2 and one line on stderr; returns that line."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge-coordinator {argv[0]}: "), lines
    return lines[0]


@pytest.mark.parametrize("command,text", [("signing-key", SIGNING_KEY_HELP[1]),
                                          ("sign-model", SIGN_MODEL_HELP[1])])
def test_help_describes_the_command(command, text, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    # argparse wraps the description, also after a hyphen ("sign-" / "model")
    assert text in " ".join(capsys.readouterr().out.split()).replace("- ", "-")


def test_signing_key_writes_a_pair(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["signing-key", "--out", str(out), "--name", "release-2025"]) == 0
    private, public = out / "release-2025.key", out / "release-2025.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = key_id(load_public_key(public))
    assert key_id(load_private_key(private).public_key()) == kid
    printed = capsys.readouterr().out
    assert f"key id {kid}" in printed
    assert f"edge-coordinator sign-model --key {private} REPO/MODEL/VERSION" in printed
    assert f"--require-signed --trust-key {public}" in printed
    line = fails(capsys, "signing-key", "--out", str(out), "--name", "release-2025")
    assert "exist; --force replaces them" in line
    assert load_public_key(public) is not None and key_id(load_public_key(public)) == kid
    assert main(["signing-key", "--out", str(out), "--name", "release-2025", "--force"]) == 0
    assert key_id(load_public_key(public)) != kid
    assert "--out" in fails(capsys, "signing-key", "--out", str(public))
    assert "--name" in fails(capsys, "signing-key", "--out", str(out), "--name", "../x")


def test_sign_model_signs_what_a_node_verifies(keys, version_dir, capsys):
    assert main(["sign-model", "--key", str(keys / "model-signing.key"), str(version_dir)]) == 0
    printed = capsys.readouterr().out
    public = load_public_key(keys / "model-signing.pub")
    assert f"signed {EDGE} version 1 with key {key_id(public)}" in printed
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["created_by"] == "scripts/train_models.py"  # kept
    read = {"model.tflite": (version_dir / "model.tflite").read_bytes(),
            "../config.toml": (version_dir.parent / "config.toml").read_bytes()}
    policy = SigningPolicy(TrustStore.of([public]), require_signed=True)
    assert verify_version(version_dir, EDGE, read, policy).key_id == key_id(public)


def test_calibrate_knows_a_signed_version(keys, version_dir):
    from coordinator.cli.calibrate import signed

    assert not signed(version_dir)  # the shipped manifest has a sha256, no signature
    assert main(["sign-model", "--key", str(keys / "model-signing.key"), str(version_dir)]) == 0
    assert signed(version_dir)


def test_encrypted_key_with_passphrase(tmp_path, version_dir, capsys, monkeypatch):
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    out = tmp_path / "keys"
    assert main(["signing-key", "--out", str(out), "--passphrase-file", str(secret)]) == 0
    key = str(out / "model-signing.key")
    capsys.readouterr()
    line = fails(capsys, "sign-model", "--key", key, str(version_dir))
    assert line.endswith("is encrypted; give its passphrase with --passphrase-file FILE or "
                         "EDGESHARD_KEY_PASSPHRASE")
    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse\n")
    assert "wrong passphrase" in fails(capsys, "sign-model", "--key", key,
                                       "--passphrase-file", str(wrong), str(version_dir))
    assert main(["sign-model", "--key", key, "--passphrase-file", str(secret),
                 str(version_dir)]) == 0
    monkeypatch.setenv("EDGESHARD_KEY_PASSPHRASE", "correct horse")
    assert main(["sign-model", "--key", key, str(version_dir)]) == 0


def test_bad_input_is_one_line_with_the_fix_and_nothing_is_written(tmp_path, keys,
                                                                   version_dir, capsys):
    key = str(keys / "model-signing.key")
    before = (version_dir / "manifest.json").read_bytes()
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(DevCA.create().issued.key_pem)  # the TLS kind: EC P-256
    no_model = version_dir.parent / "2"
    no_model.mkdir()
    (no_model / "manifest.json").write_text("{}")
    cases = [
        (["--key", key, str(no_model)], "no model.tflite; a version directory holds the "
                                        "model as model.tflite"),
        (["--key", key, str(version_dir.parent)], f"{EDGE!r} is not a version number"),
        (["--key", key, str(tmp_path / "nope")], "no such directory"),
        (["--key", str(ec_key), str(version_dir)], "is not an Ed25519 key (EC)"),
        (["--key", str(keys / "model-signing.pub"), str(version_dir)],
         "holds a public key, not a private key"),
        (["--key", str(tmp_path / "missing.key"), str(version_dir)], "no such file"),
        (["--key", str(keys), str(version_dir)], "is a directory"),
        (["--key", key, "--passphrase-file", str(tmp_path / "nope"), str(version_dir)],
         "--passphrase-file: cannot read"),
    ]
    for args, message in cases:
        line = fails(capsys, "sign-model", *args)
        assert message in line, line
    (version_dir / "manifest.json").write_text("{broken")
    line = fails(capsys, "sign-model", "--key", key, str(version_dir))
    assert "not valid JSON" in line and "delete it to sign without them" in line
    (version_dir / "manifest.json").write_bytes(before)
    # a good directory after a bad one: nothing was signed
    fails(capsys, "sign-model", "--key", key, str(version_dir), str(no_model))
    assert (version_dir / "manifest.json").read_bytes() == before


def test_as_a_process_errors_have_no_traceback(tmp_path, version_dir):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    out = subprocess.run([sys.executable, "-m", "coordinator", "sign-model", "--key",
                          str(tmp_path / "missing.key"), str(version_dir)],
                         capture_output=True, text=True, timeout=60, env=clean)
    assert out.returncode == 2
    assert out.stderr == (f"edge-coordinator sign-model: --key: {tmp_path / 'missing.key'}: "
                          "no such file; give the Ed25519 private key file\n")
