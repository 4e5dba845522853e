"""``edge-coordinator profile``: write a model version's drift reference profile.

The profile (``profile.json`` in the version directory, ``edgeshard.profile``) is made
from calibration data: the shipped calibration split by default, or the ``x`` of
``--data`` (the same files ``calibrate --data`` reads). Input statistics come from the
data itself; for a classifier the confidence histogram comes from the model as an edge
server serves it (``--edge``, or a local edge node on the model repository), at the
temperature it serves. ``calibrate --write`` writes a profile too, at the temperature it
writes (``profile_at``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np

import edgeshard_models
from coordinator.api.clients import ClientPool
from coordinator.cascade.calibration import apply_temperature
from coordinator.cli.calibration_data import load_labelled
from coordinator.cli.interrupt import close_client
from coordinator.monitoring.profiles import (
    DEFAULT_BINS,
    DEFAULT_CONFIDENCE_BINS,
    build_profile,
)
from edgeshard.manifest import PROFILE_FILE, ManifestError, read_manifest
from edgeshard.profile import DriftProfile


def add_parser(sub, add_tls_flags, add_token_flag) -> None:
    """Add the ``profile`` subcommand to ``sub``."""
    p = sub.add_parser(
        "profile", help="write a model version's drift reference profile (profile.json)",
        description="Compute the drift reference profile of a model version from its "
        "calibration data (the shipped calibration split, or the x of --data): per-channel "
        "input mean and std, a histogram of input values and, for a classifier, the "
        "histogram of top-1 confidences as an edge server serves them (--edge, or a local "
        "edge node on the model repository). Writes <repo>/<model>/<version>/profile.json "
        "(or --out); nodes load it with the version and report drift windows against it.")
    p.add_argument("--model", default="mnist_edge", help="model (mnist_edge)")
    p.add_argument("--version", help="version folder (default: the newest)")
    p.add_argument("--model-repository",
                   help="repository holding the version (default: the shipped one)")
    p.add_argument("--data", metavar="FILE",
                   help="an .npz with x (inputs as clients send them) and y, or a folder "
                   "as calibrate --data takes (default: the shipped calibration split)")
    p.add_argument("--edge", help="OIP server with the model (default: a local node)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS,
                   help=f"bins of the input histogram ({DEFAULT_BINS})")
    p.add_argument("--confidence-bins", type=int, default=DEFAULT_CONFIDENCE_BINS,
                   help=f"bins of the confidence histogram ({DEFAULT_CONFIDENCE_BINS})")
    p.add_argument("--out", help="write here instead of the version folder")
    add_tls_flags(p)
    add_token_flag(p)


def confidences_at(clients: ClientPool, address: str, model: str, x: np.ndarray,
                   rescale: float = 1.0, batch: int = 64) -> tuple[np.ndarray | None, float]:
    """Top-1 confidences of ``x`` from the server at ``address`` (None when the model is
    not a classifier) and the temperature they are at: the served one times ``rescale``.
    Raises ``grpc.RpcError``."""
    client = clients.get(address)
    if client.model_parameter(model, "task", "classification") != "classification":
        return None, 1.0
    temperature = float(client.model_parameter(model, "temperature", "1.0"))
    probs = np.concatenate([
        client.classify(model, x[i:i + batch], timeout=30.0,
                        with_probabilities=True).probabilities
        for i in range(0, len(x), batch)])
    if rescale != 1.0:
        probs = apply_temperature(probs, rescale)
    return probs.max(axis=1).astype(np.float32), temperature * rescale


def profile_at(clients: ClientPool, address: str, model: str, x: np.ndarray, source: str,
               rescale: float = 1.0, bins: int = DEFAULT_BINS,
               confidence_bins: int = DEFAULT_CONFIDENCE_BINS) -> DriftProfile:
    """The profile of ``x`` with confidences from ``address`` (at its temperature times
    ``rescale``). Raises ``grpc.RpcError`` and ``ValueError``."""
    confidences, temperature = confidences_at(clients, address, model, x, rescale)
    return build_profile(x, confidences, bins=bins, confidence_bins=confidence_bins,
                         temperature=temperature, source=source)


def write_profile(profile: DriftProfile, path: Path) -> list[str]:
    """Write ``profile`` to ``path``; return the lines to print (with a note when the
    version is signed, as its signature does not cover the new file)."""
    path.write_bytes(profile.to_bytes())
    inp = profile.input
    lines = [f"wrote {path}: {profile.items} items, input {inp.dtype} x{inp.channels} "
             f"mean {', '.join(f'{m:.4g}' for m in inp.mean)} std "
             f"{', '.join(f'{s:.4g}' for s in inp.std)}"
             + (f", confidences at temperature {profile.temperature:.4g}"
                if profile.confidence is not None else ", no confidences (not a classifier)")]
    try:
        manifest = read_manifest(path.parent)
    except ManifestError:
        manifest = None
    if path.name == PROFILE_FILE and manifest is not None and manifest.signed:
        lines.append(f"note: {path.parent} is signed, and its signature does not cover this "
                     f"file: sign it again (edge-coordinator sign-model --key KEY "
                     f"{path.parent}), or nodes with --require-signed refuse the version")
    lines.append("restart (or hot-swap) the model's nodes to report drift against it")
    return lines


def main(args: argparse.Namespace) -> int:
    """Run ``edge-coordinator profile``: 0 written, 2 bad arguments or data (or a model the
    server refuses), 1 a server that cannot be reached or a file that cannot be written."""
    repository = Path(args.model_repository or edgeshard_models.repository_path())
    try:
        for flag, bins in (("--bins", args.bins), ("--confidence-bins", args.confidence_bins)):
            if not 2 <= bins <= 1024:  # before any server is asked
                raise ValueError(f"{flag}: must be in 2..1024, got {bins}")
        folder = repository / args.model
        versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=int) if folder.is_dir() else []
        version = args.version or (versions[-1] if versions else None)
        if version is None or version not in versions:
            raise ValueError(f"--version: {folder} holds no version folder "
                             f"{version or '(1/, 2/, ...)'}; give --model-repository and "
                             "--model of a model with versions")
        if args.data is not None:
            data = load_labelled(args.data)
            x, source = data.x, f"{data.source} ({len(data.x)} examples)"
        else:
            x, _ = edgeshard_models.load_calibration()
            source = f"the shipped calibration split ({len(x)} MNIST images)"
    except (ValueError, OSError) as exc:
        print(f"edge-coordinator profile: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-profile-"))
    node = None
    clients = None
    try:
        edge = args.edge
        if not edge:
            from coordinator.cli.launcher import start_node

            node = start_node("profile-node", repository, workdir, extra_args=["--workers", "1"])
            edge = node.address
        clients = ClientPool(credentials=None if node else args.credentials,
                             token=None if node else args.token)
        profile = profile_at(clients, edge, args.model, x, source, bins=args.bins,
                             confidence_bins=args.confidence_bins)
    except ValueError as exc:
        print(f"edge-coordinator profile: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"edge-coordinator profile: edge server {edge}: {exc.code().name}: "
              f"{exc.details()}", file=sys.stderr)
        return 1 if exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                   grpc.StatusCode.DEADLINE_EXCEEDED) else 2
    except (OSError, RuntimeError) as exc:
        print(f"edge-coordinator profile: {exc}", file=sys.stderr)
        return 1
    finally:
        if clients is not None:
            close_client(clients)
        if node is not None:
            node.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    path = Path(args.out) if args.out else folder / version / PROFILE_FILE
    try:
        lines = write_profile(profile, path)
    except OSError as exc:
        print(f"edge-coordinator profile: --out: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
