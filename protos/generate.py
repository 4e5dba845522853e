"""Regenerate the committed protobuf/gRPC modules from ``protos/*.proto``.

Usage::

    python -m protos.generate            # rewrite protos/*_pb2*.py(i)
    python -m protos.generate --out DIR  # write the generated files into DIR
    python -m protos.generate --check    # exit 1, with a diff, if stale

protoc runs from the repository root with ``-I.`` so the generated code
imports its siblings as ``from protos import model_config_pb2``, which is
right when the package is installed as ``protos``. The output depends only on
the .proto sources and the pinned grpcio-tools version, so a check on another
machine with the same pins reproduces the committed bytes.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_sources() -> list[str]:
    """The .proto files, relative to the repository root, in a stable order."""
    return sorted(p.relative_to(REPO_ROOT).as_posix() for p in PROTOS_DIR.glob("*.proto"))


def generated_names(directory: Path) -> list[str]:
    """Names of the generated files in ``directory``, sorted."""
    if not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir() if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def run_protoc(out_dir: Path) -> None:
    """Generate into ``out_dir`` (files land flat, not under ``protos/``)."""
    with tempfile.TemporaryDirectory(prefix="edgeshard-protoc-") as tmp:
        # `python -m grpc_tools.protoc` adds grpc_tools' bundled well-known
        # types to the include path; cwd is the repository root so that `-I.`
        # maps protos/x.proto to the Python module protos.x_pb2.
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *proto_sources(),
        ]
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
        produced = Path(tmp) / "protos"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in generated_names(produced):
            (out_dir / name).write_bytes((produced / name).read_bytes())


def diff_against(committed: Path, fresh: Path) -> str:
    """A unified diff from the committed files to freshly generated ones."""
    chunks: list[str] = []
    for name in sorted(set(generated_names(committed)) | set(generated_names(fresh))):
        old_path, new_path = committed / name, fresh / name
        old = old_path.read_text().splitlines(keepends=True) if old_path.exists() else []
        new = new_path.read_text().splitlines(keepends=True) if new_path.exists() else []
        chunks.extend(
            difflib.unified_diff(old, new, f"committed/protos/{name}", f"generated/protos/{name}")
        )
    return "".join(chunks)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the protobuf modules into ``--out`` (default ``protos/``); returns the exit code.

    With ``--check``, generates into a temporary directory instead and, when the files in
    ``--out`` differ, prints a diff and returns 1.
    """
    parser = argparse.ArgumentParser(
        prog="python -m protos.generate", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail with a diff if the files in "
        "--out (default: protos/) differ",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="directory to write into (default: protos/)"
    )
    args = parser.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory(prefix="edgeshard-protos-check-") as tmp:
            run_protoc(Path(tmp))
            diff = diff_against(args.out or PROTOS_DIR, Path(tmp))
        if diff:
            sys.stdout.write(diff)
            sys.stderr.write("generated protobuf code is stale: run python -m protos.generate\n")
            return 1
        return 0

    run_protoc(args.out or PROTOS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
