"""ext picks the compiled kernels when built, and the reference when told to or when it must."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import ext; print(ext.IMPLEMENTATION)"


def implementation(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "EDGESHARD_PUREPYTHON"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def compiled_built() -> bool:
    sys.path.insert(0, str(ROOT))
    try:
        return all(importlib.util.find_spec(f"ext.{m}") for m in ("_image", "_scores"))
    finally:
        sys.path.remove(str(ROOT))


def test_purepython_forces_reference():
    assert implementation(EDGESHARD_PUREPYTHON="1") == "reference"


def test_compiled_is_default_when_built():
    if not compiled_built():
        pytest.skip("compiled kernels not built")
    assert implementation() == "cython"


BLOCK_COMPILED = """
import logging, sys
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name in ("ext._image", "ext._scores"):
            raise ImportError("blocked by test: " + name)

sys.meta_path.insert(0, Block())
"""


def test_unimportable_compiled_module_falls_back_with_warning():
    """A broken compiled import must not break ext: reference plus a logged warning."""
    clean = {k: v for k, v in os.environ.items() if k != "EDGESHARD_PUREPYTHON"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_COMPILED + PROBE],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "reference"
    assert "WARNING ext " in result.stderr
    assert "compiled kernels unavailable" in result.stderr
