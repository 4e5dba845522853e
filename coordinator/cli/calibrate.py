"""``edge-coordinator calibrate``: fit the edge model's temperature, sweep the escalation
threshold against the cloud tier, pick one for a budget or a target accuracy.

Data: the shipped calibration split (never trained on) to fit and choose; the shipped
hold-out split to report what the chosen threshold does on unseen items. Predictions
come from real servers over the Open Inference Protocol: the edge model from an edge
node (or the coordinator), the cloud model from the cloud tier; without addresses,
local edge-node processes are started on the model repository.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

import edgeshard_models
from coordinator.api.clients import ClientPool, cloud_transport
from coordinator.cascade.calibration import (
    SweepRow,
    apply_temperature,
    cascade_summary,
    expected_calibration_error,
    fit_temperature,
    pick_threshold,
    sweep,
    to_log_probs,
)
from coordinator.cascade.policies import EscalationPolicy
from coordinator.cli.interrupt import close_client
from edgeshard.errors import PeerStatusError
from edgeshard.manifest import ManifestError, read_manifest

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


@dataclass
class CalibrationResult:
    """Outcome of one calibration: fitted temperature, threshold sweep and chosen row.

    ``temperature`` is the one to serve with (the server's ``temperature_before`` times the
    fitted factor); ``ece_*`` are expected calibration errors on the calibration split before
    and after the fit; ``holdout`` holds the chosen threshold's figures on the hold-out split.
    """

    model: str
    policy: str
    temperature_before: float
    temperature: float  # to serve with (before x fitted)
    ece_before: float
    ece_after: float
    chosen: SweepRow
    rows: list[SweepRow]
    calibration_summary: dict
    holdout: dict  # the chosen threshold on the hold-out split

    def lines(self) -> list[str]:
        """The human-readable summary lines, ending with the ``--escalation`` flag to use."""
        c, h = self.chosen, self.holdout
        return [
            f"model {self.model}: temperature {self.temperature_before:.3f} -> "
            f"{self.temperature:.3f} (ECE {self.ece_before:.4f} -> {self.ece_after:.4f})",
            f"policy {self.policy}: threshold {c.threshold:.6g} escalates "
            f"{c.escalation_rate:.1%} of the calibration split "
            f"(cascade {c.cascade_accuracy:.4f}, random {c.random_accuracy:.4f}, "
            f"oracle {c.oracle_accuracy:.4f})",
            f"hold-out ({h['n']} items): edge only {h['edge_only_accuracy']:.4f}, "
            f"cloud only {h['cloud_only_accuracy']:.4f}, cascade {h['cascade_accuracy']:.4f} "
            f"at {h['escalation_rate']:.1%} escalated, random at that rate "
            f"{h['random_accuracy']:.4f}, oracle {h['oracle_accuracy']:.4f}, "
            f"{h['cloud_calls_per_1000']:.0f} cloud items per 1,000",
            f"use: --escalation {self.model}={self.policy}:{c.threshold:.6g}",
        ]


def _edge_outputs(clients: ClientPool, address: str, model: str, images: np.ndarray,
                  batch: int = 64) -> tuple[np.ndarray, float]:
    """Edge probabilities for ``images`` and the temperature the server applied."""
    client = clients.get(address)
    probs = [client.classify(model, images[i:i + batch], timeout=30.0,
                             with_probabilities=True).probabilities
             for i in range(0, len(images), batch)]
    temperature = client.model_parameter(model, "temperature", "1.0")
    return np.concatenate(probs), float(temperature)


def _cloud_labels(transport, cloud_model: str, images: np.ndarray, batch: int = 64):
    return np.concatenate([transport(cloud_model, images[i:i + batch], 30.0)[0]
                           for i in range(0, len(images), batch)])


# What to check when a server refuses (the model's name) or does not answer (its address).
_HINTS = {"edge server": ("--model", "--edge"), "cloud tier": ("--cloud-model", "--cloud")}


def _peer_failure(role: str, address: str, status: str, details: str) -> PeerStatusError:
    """A failed call to the ``role`` (``edge server`` or ``cloud tier``) at ``address``,
    its message naming the server and the option to check."""
    model_flag, address_flag = _HINTS[role]
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        hint = f"is it running? check {address_flag}"
    elif status in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        hint = f"check {model_flag}"
    else:
        hint = ""
    return PeerStatusError(status, f"{role} {address}: {status}: {details}"
                           + (f" ({hint})" if hint else ""))


def calibrate(edge: str, cloud: str, model: str, cloud_model: str, policy: str,
              budget: float | None, target_accuracy: float | None,
              cloud_output: str = "probabilities",
              credentials: grpc.ChannelCredentials | None = None,
              token: str | None = None) -> CalibrationResult:
    """Fit ``model``'s temperature at ``edge``; pick a ``policy`` threshold against ``cloud``.

    Exactly one of ``budget`` (fraction of items escalated) and ``target_accuracy`` is given.
    Raises ``ValueError`` for an unknown policy, bad goal or unreachable target accuracy,
    and ``PeerStatusError`` naming the server when either refuses or cannot be reached.
    """
    EscalationPolicy(policy, 0.0 if policy != "entropy" else -1.0)  # a known name?
    cal_images, cal_labels = edgeshard_models.load_calibration()
    hold_images, hold_labels = edgeshard_models.load_holdout()
    clients = ClientPool(credentials=credentials, token=token)  # None: plaintext, no token
    try:
        try:
            cal_probs, t_before = _edge_outputs(clients, edge, model, cal_images)
            hold_probs, _ = _edge_outputs(clients, edge, model, hold_images)
        except grpc.RpcError as exc:
            raise _peer_failure("edge server", edge, exc.code().name, exc.details()) from None
        transport = cloud_transport(clients, cloud, cloud_output)
        try:
            cal_cloud = _cloud_labels(transport, cloud_model, cal_images)
            hold_cloud = _cloud_labels(transport, cloud_model, hold_images)
        except PeerStatusError as exc:
            raise _peer_failure("cloud tier", cloud, exc.status, exc.details) from None
    finally:
        close_client(clients)
    t_fit = fit_temperature(to_log_probs(cal_probs), cal_labels)
    cal_scaled = apply_temperature(cal_probs, t_fit)
    hold_scaled = apply_temperature(hold_probs, t_fit)
    rows = sweep(cal_scaled, cal_probs.argmax(axis=1), cal_cloud, cal_labels, policy)
    chosen = pick_threshold(rows, budget=budget, target_accuracy=target_accuracy)
    (held,) = sweep(hold_scaled, hold_probs.argmax(axis=1), hold_cloud, hold_labels, policy,
                    thresholds=[chosen.threshold] if chosen.threshold is not None else None)
    holdout = {**cascade_summary(hold_probs.argmax(axis=1), hold_cloud, hold_labels),
               **{k: v for k, v in asdict(held).items() if k not in ("policy", "n")}}
    return CalibrationResult(
        model, policy, t_before, t_before * t_fit,
        expected_calibration_error(cal_probs, cal_labels),
        expected_calibration_error(cal_scaled, cal_labels),
        chosen, rows, cascade_summary(cal_probs.argmax(axis=1), cal_cloud, cal_labels),
        holdout)


def write_outputs(result: CalibrationResult, out_dir: Path, command: str) -> list[Path]:
    """Write the sweep table (``<model>_<policy>_sweep.csv``, ``.json``) and plot (``.png``).

    Returns the three paths. Raises ``RuntimeError`` when matplotlib is not installed.
    """
    try:
        from coordinator.cascade.report import plot, write_table  # matplotlib on demand
    except ImportError as exc:
        raise RuntimeError(f"the plot needs matplotlib ({exc}): "
                           "pip install 'edgeshard[plot]'") from None

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result.model}_{result.policy}"
    summary = {
        "command": command, "model": result.model, "policy": result.policy,
        "temperature_before": result.temperature_before, "temperature": result.temperature,
        "ece_before": result.ece_before, "ece_after": result.ece_after,
        "chosen": asdict(result.chosen), "calibration": result.calibration_summary,
        "holdout": result.holdout,
    }
    write_table(result.rows, f"{stem}_sweep.csv", f"{stem}_sweep.json", summary)
    plot(result.rows, f"{stem}_sweep.png", result.chosen,
         title=f"{result.model} -> cloud, policy {result.policy} (calibration split)",
         summary=result.calibration_summary)
    return [Path(f"{stem}_sweep.{ext}") for ext in ("csv", "json", "png")]


def write_calibration(result: CalibrationResult, version_dir: Path,
                      budget: float | None) -> Path:
    """Store the fitted temperature (and the chosen rule) next to the model version."""
    path = version_dir / CALIBRATION_FILE
    path.write_text(json.dumps({
        "temperature": result.temperature, "policy": result.policy,
        "threshold": result.chosen.threshold, "budget": budget,
        "escalation_rate": result.chosen.escalation_rate,
        "fitted_on": "calibration split", "created_at": time.time(),
    }, indent=2) + "\n")
    return path


def signed(version_dir: Path) -> bool:
    """Whether the version's manifest carries a signature (valid or not)."""
    try:
        manifest = read_manifest(version_dir)
    except ManifestError:
        return False
    return manifest is not None and manifest.signed


def local_servers(repository: Path, workdir: Path):
    """Start an edge node on ``repository`` (it serves both models); returns it."""
    from coordinator.cli.launcher import start_node

    return start_node("calibrate-node", repository, workdir, extra_args=["--workers", "1"])


def main(args) -> int:
    """Run ``edge-coordinator calibrate`` with parsed ``args``; returns the exit code.

    0 on success; 2 when calibrating fails with ``ValueError``, ``OSError`` or
    ``RuntimeError`` (a bad argument, a local node that does not start) or a server
    refuses the model; 1 when a server cannot be reached or the table or plot cannot be
    written.
    """
    import sys

    repository = Path(args.model_repository or edgeshard_models.repository_path())
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-calibrate-"))
    node = None
    try:
        edge, cloud = args.edge, args.cloud
        if not edge or not cloud:
            node = local_servers(repository, workdir)
            edge, cloud = edge or node.address, cloud or node.address
        result = calibrate(edge, cloud, args.model, args.cloud_model, args.policy,
                           args.budget, args.target_accuracy, args.cloud_output,
                           # a local node serves plaintext on loopback
                           credentials=None if node else args.credentials,
                           token=None if node else args.token)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"edge-coordinator calibrate: {exc}", file=sys.stderr)
        return 2
    except PeerStatusError as exc:
        print(f"edge-coordinator calibrate: {exc.details}", file=sys.stderr)
        return 1 if exc.retryable else 2
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for line in result.lines():
        print(line)
    command = "edge-coordinator calibrate " + " ".join(args.argv)
    try:
        written = write_outputs(result, Path(args.out), command)
    except (RuntimeError, OSError) as exc:
        print(f"edge-coordinator calibrate: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if args.write:
        versions = sorted((p for p in (repository / args.model).iterdir()
                           if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        path = write_calibration(result, versions[-1], args.budget)
        print(f"wrote {path} (restart the model's nodes to serve the new temperature)")
        if signed(versions[-1]):
            print(f"note: {versions[-1]} is signed, and its signature does not cover this "
                  f"file: sign it again (edge-coordinator sign-model --key KEY "
                  f"{versions[-1]}), or nodes with --require-signed refuse the version")
    return 0
