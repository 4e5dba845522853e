"""``edge-coordinator calibrate``: fit the edge model's temperature, sweep the escalation
threshold against the cloud tier, pick one for a budget or a target accuracy.

Data: by default the shipped calibration split (never trained on) to fit and choose, and
the shipped hold-out split to report what the chosen threshold does on unseen items. With
``--data`` the user's own labelled examples (``coordinator.cli.calibration_data``), split
deterministically into a fitting part and a hold-out part; any classification model,
its number of classes taken from its output. Predictions come from real servers over the
Open Inference Protocol: the edge model from an edge node (or the coordinator), the cloud
model from the cloud tier; without addresses, local edge-node processes are started on
the model repository.

Which temperature a threshold is for: a node applies the temperature of the
``calibration.json`` it loaded at start. The fitted temperature is served only after
``--write`` (and a restart of the model's nodes); until then the nodes serve the one they
report (``temperature_before``). The threshold printed on the ``use:`` line is picked on
the probabilities of the temperature that will be served: the fitted one with
``--write``, the current one without (the threshold for the fitted temperature is printed
as well, marked as needing ``--write``). Each printed threshold is the shortest decimal
making the same decisions (``cascade.calibration.short_threshold``), and the hold-out
figures are those of that exact printed value.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import grpc
import numpy as np

import edgeshard_models
from coordinator.api.clients import ClientPool, cloud_transport
from coordinator.cascade.calibration import (
    apply_temperature,
    cascade_summary,
    expected_calibration_error,
    fit_temperature,
    pick_threshold,
    short_threshold,
    sweep,
    to_log_probs,
)
from coordinator.cascade.policies import EscalationPolicy
from coordinator.cli.calibration_data import (
    Examples,
    check_labels,
    load_labelled,
    shipped_examples,
    split_examples,
)
from coordinator.cli.calibration_result import CalibrationResult, ThresholdChoice
from coordinator.cli.interrupt import close_client
from edgeshard.errors import PeerStatusError
from edgeshard.manifest import PROFILE_FILE, ManifestError, read_manifest

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DEFAULT_HOLDOUT_FRACTION = 0.3
"""Share of ``--data`` examples held out to report on (the rest fit and choose)."""
DEFAULT_SEED = 0
"""Seed of the ``--data`` split."""


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


def _peer_failure(role: str, address: str, status: str, details: str,
                  own_data: bool = False) -> PeerStatusError:
    """A failed call to the ``role`` (``edge server`` or ``cloud tier``) at ``address``,
    its message naming the server and the option to check (``--data`` when the user's
    examples are refused)."""
    model_flag, address_flag = _HINTS[role]
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        hint = f"is it running? check {address_flag}"
    elif own_data and status == "INVALID_ARGUMENT":
        hint = "check --data: x must hold inputs of the shape and dtype the model takes"
    elif status in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        hint = f"check {model_flag}"
    else:
        hint = ""
    return PeerStatusError(status, f"{role} {address}: {status}: {details}"
                           + (f" ({hint})" if hint else ""))


def _choose(policy: str, budget: float | None, target_accuracy: float | None,
            temperature: float, fit: tuple, hold: tuple, ex: Examples) -> ThresholdChoice:
    """Sweep ``fit = (probs, edge_pred, cloud_pred)`` (probabilities as served at
    ``temperature``), pick a threshold, shorten it, and measure it on ``hold``."""
    fit_probs, fit_edge, fit_cloud = fit
    hold_probs, hold_edge, hold_cloud = hold
    rows = sweep(fit_probs, fit_edge, fit_cloud, ex.fit_y, policy)
    picked = pick_threshold(rows, budget=budget, target_accuracy=target_accuracy)
    spec = EscalationPolicy(policy, picked.threshold).spec if picked.threshold is not None \
        else None
    ids = np.arange(len(ex.fit_y)) if spec is not None and spec.needs_ids else None
    threshold = picked.threshold if spec is None else short_threshold(
        policy, picked.threshold, spec.score(fit_probs, ids))
    (chosen,) = sweep(fit_probs, fit_edge, fit_cloud, ex.fit_y, policy,
                      thresholds=None if threshold is None else [threshold])
    (held,) = sweep(hold_probs, hold_edge, hold_cloud, ex.hold_y, policy,
                    thresholds=None if threshold is None else [threshold])
    assert chosen.escalated == picked.escalated  # short_threshold keeps the decisions
    holdout = {**cascade_summary(hold_edge, hold_cloud, ex.hold_y),
               **{k: v for k, v in asdict(held).items() if k != "policy"}}
    return ThresholdChoice(temperature, replace(picked, threshold=threshold), rows, holdout)


def calibrate(edge: str, cloud: str, model: str, cloud_model: str, policy: str,
              budget: float | None, target_accuracy: float | None,
              cloud_output: str = "probabilities",
              credentials: grpc.ChannelCredentials | None = None,
              token: str | None = None, *, examples: Examples | None = None,
              serve_fitted: bool = True) -> CalibrationResult:
    """Fit ``model``'s temperature at ``edge``; pick a ``policy`` threshold against ``cloud``.

    Exactly one of ``budget`` (fraction of items escalated) and ``target_accuracy`` is given.
    ``examples`` default to the shipped splits; user examples have their labels checked
    against the model's number of classes (its probabilities' width). ``serve_fitted``
    says whether the fitted temperature will be served (it is written): the ``served``
    threshold is picked for it, else for the temperature the edge server applies now.
    Raises ``ValueError`` for an unknown policy, bad goal, labels outside the model's
    classes or an unreachable target accuracy, and ``PeerStatusError`` naming the server
    when either refuses or cannot be reached.
    """
    EscalationPolicy(policy, 0.0 if policy != "entropy" else -1.0)  # a known name?
    own = examples is not None
    ex = examples if examples is not None else shipped_examples()
    clients = ClientPool(credentials=credentials, token=token)  # None: plaintext, no token
    try:
        try:
            cal_probs, t_before = _edge_outputs(clients, edge, model, ex.fit_x)
            if own:
                check_labels(np.concatenate([ex.fit_y, ex.hold_y]), cal_probs.shape[1])
            hold_probs, _ = _edge_outputs(clients, edge, model, ex.hold_x)
        except grpc.RpcError as exc:
            raise _peer_failure("edge server", edge, exc.code().name, exc.details(),
                                own) from None
        transport = cloud_transport(clients, cloud, cloud_output)
        try:
            cal_cloud = _cloud_labels(transport, cloud_model, ex.fit_x)
            hold_cloud = _cloud_labels(transport, cloud_model, ex.hold_x)
        except PeerStatusError as exc:
            raise _peer_failure("cloud tier", cloud, exc.status, exc.details, own) from None
    finally:
        close_client(clients)
    cal_edge, hold_edge = cal_probs.argmax(axis=1), hold_probs.argmax(axis=1)
    t_fit = fit_temperature(to_log_probs(cal_probs), ex.fit_y)
    cal_scaled = apply_temperature(cal_probs, t_fit)
    hold_scaled = apply_temperature(hold_probs, t_fit)
    fitted = _choose(policy, budget, target_accuracy, t_before * t_fit,
                     (cal_scaled, cal_edge, cal_cloud), (hold_scaled, hold_edge, hold_cloud), ex)
    # Without a write the nodes keep their temperature: choose on what they serve now.
    served = fitted if serve_fitted else _choose(
        policy, budget, target_accuracy, t_before,
        (cal_probs, cal_edge, cal_cloud), (hold_probs, hold_edge, hold_cloud), ex)
    return CalibrationResult(
        model, policy, t_before, t_before * t_fit,
        expected_calibration_error(cal_probs, ex.fit_y),
        expected_calibration_error(cal_scaled, ex.fit_y),
        served, fitted, cascade_summary(cal_edge, cal_cloud, ex.fit_y),
        ex.fit_name, ex.description)


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
        "served_temperature": result.served.temperature, "written": result.written,
        "chosen": asdict(result.chosen), "calibration": result.calibration_summary,
        "holdout": result.holdout, "data": result.data,
    }
    if not result.written:
        summary["fitted"] = {"temperature": result.temperature,
                             "chosen": asdict(result.fitted.chosen),
                             "holdout": result.fitted.holdout}
    write_table(result.rows, f"{stem}_sweep.csv", f"{stem}_sweep.json", summary)
    plot(result.rows, f"{stem}_sweep.png", result.chosen,
         title=f"{result.model} -> cloud, policy {result.policy} ({result.fit_name}, "
               f"temperature {result.served.temperature:.4g})",
         summary=result.calibration_summary)
    return [Path(f"{stem}_sweep.{ext}") for ext in ("csv", "json", "png")]


def write_calibration(result: CalibrationResult, version_dir: Path,
                      budget: float | None) -> Path:
    """Store the fitted temperature (and the rule chosen for it) next to the model version."""
    path = version_dir / CALIBRATION_FILE
    chosen = result.fitted.chosen
    path.write_text(json.dumps({
        "temperature": result.temperature, "policy": result.policy,
        "threshold": chosen.threshold, "budget": budget,
        "escalation_rate": chosen.escalation_rate,
        "fitted_on": result.fit_name, "data": result.data, "created_at": time.time(),
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
    ``RuntimeError`` (a bad argument, unusable ``--data``, a local node that does not
    start) or a server refuses the model; 1 when a server cannot be reached or the table
    or plot cannot be written. ``--data`` is read and checked before any server is asked.
    """
    import sys

    repository = Path(args.model_repository or edgeshard_models.repository_path())
    try:
        examples = _user_examples(args)
        version_dir = _version_dir(repository, args.model) if args.write else None
    except (ValueError, OSError) as exc:
        print(f"edge-coordinator calibrate: {exc}", file=sys.stderr)
        return 2
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
                           token=None if node else args.token,
                           examples=examples, serve_fitted=args.write)
        profile = None
        if version_dir is not None:  # the drift reference, at the temperature written
            profile = _profile(edge, args, node is not None, examples, result)
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
    if version_dir is not None:
        path = write_calibration(result, version_dir, args.budget)
        print(f"wrote {path} (restart the model's nodes to serve the new temperature; "
              "the threshold above is for it)")
        if signed(version_dir):
            print(f"note: {version_dir} is signed, and its signature does not cover this "
                  f"file: sign it again (edge-coordinator sign-model --key KEY "
                  f"{version_dir}), or nodes with --require-signed refuse the version")
        from coordinator.cli.profile import write_profile

        for line in write_profile(profile, version_dir / PROFILE_FILE)[:1]:
            print(line + " (drift reference at the new temperature)")
    return 0


def _profile(edge: str, args, local: bool, examples: Examples | None,
             result: CalibrationResult):
    """The drift reference profile of the fitting data, its confidences at the fitted
    temperature (``coordinator.cli.profile``)."""
    from coordinator.cli.profile import profile_at

    ex = examples if examples is not None else shipped_examples()
    clients = ClientPool(credentials=None if local else args.credentials,
                         token=None if local else args.token)
    try:
        return profile_at(clients, edge, args.model, ex.fit_x,
                          f"the {ex.fit_name} of calibrate ({len(ex.fit_x)} examples)",
                          rescale=result.temperature / result.temperature_before)
    except grpc.RpcError as exc:
        raise _peer_failure("edge server", edge, exc.code().name, exc.details(),
                            examples is not None) from None
    finally:
        close_client(clients)


def _user_examples(args) -> Examples | None:
    """The ``--data`` examples split as asked; None for the shipped splits."""
    fraction, seed = args.holdout_fraction, args.seed
    if args.data is None:
        if fraction is not None or seed is not None:
            flag = "--holdout-fraction" if fraction is not None else "--seed"
            raise ValueError(f"{flag}: only applies to --data (the shipped splits are fixed)")
        return None
    return split_examples(load_labelled(args.data),
                          DEFAULT_HOLDOUT_FRACTION if fraction is None else fraction,
                          DEFAULT_SEED if seed is None else seed)


def _version_dir(repository: Path, model: str) -> Path:
    """The newest version folder of ``model`` in ``repository``, where ``--write`` writes."""
    folder = repository / model
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name)) if folder.is_dir() else []
    if not versions:
        raise ValueError(f"--write: {folder} holds no version folder (1/, 2/, ...): give "
                         "--model-repository with the model the nodes serve")
    return versions[-1]
