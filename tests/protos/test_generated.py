"""The committed generated code is what the .proto sources produce."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import protos

REPO_ROOT = Path(protos.__file__).resolve().parent.parent
PROTOS_DIR = REPO_ROOT / "protos"


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "protos.generate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_committed_generated_code_is_up_to_date():
    result = generate("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_a_stale_file_with_a_diff(tmp_path):
    for path in PROTOS_DIR.iterdir():
        if path.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")):
            shutil.copy(path, tmp_path / path.name)
    stale = tmp_path / "oip_pb2.pyi"
    stale.write_text(stale.read_text() + "# hand edit\n")
    (tmp_path / "model_config_pb2_grpc.py").unlink()

    result = generate("--check", "--out", str(tmp_path))

    assert result.returncode == 1
    assert "-# hand edit" in result.stdout
    assert "+++ generated/protos/model_config_pb2_grpc.py" in result.stdout
    assert "stale" in result.stderr


def test_generation_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert generate("--out", str(first)).returncode == 0
    assert generate("--out", str(second)).returncode == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "oip_pb2.py" in names and "model_config_pb2.pyi" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_generated_code_imports_its_sibling_through_the_package():
    source = (PROTOS_DIR / "oip_pb2.py").read_text()
    assert "from protos import model_config_pb2" in source
