"""``edge-coordinator``: the fleet's central service and its admin commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

import grpc

from coordinator.config import CoordinatorConfig, build
from edgeshard import VERSION
from edgeshard.lifecycle import run_until_signal
from edgeshard.settings import SettingsError, add_flags, config_file_from

log = logging.getLogger("coordinator")

DEFAULT_COORDINATOR = os.environ.get("EDGESHARD_COORDINATOR", "127.0.0.1:8000")

SERVE_EPILOG = """\
Every option can also come from the environment (EDGESHARD_<OPTION>) or a TOML file
given with --config (keys like state_dir, top level or under [coordinator]). Flags win
over the environment, which wins over the file.

Example:
  edge-coordinator serve --port 8000 --node 10.0.0.5:8001 --node 10.0.0.6:8001 \\
      --state-dir /var/lib/edgeshard --metrics-port 9100
"""


def parser() -> argparse.ArgumentParser:
    """The ``edge-coordinator`` argument parser with all its subcommands."""
    p = argparse.ArgumentParser(
        prog="edge-coordinator",
        description="edgeshard coordinator: one Open Inference Protocol front for a fleet of "
        "edge nodes, sharded batch jobs, and the admin commands for both.",
    )
    p.add_argument("--version", action="version", version=f"edge-coordinator {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the coordinator service",
                           description="Run the coordinator: membership, routing, jobs.",
                           epilog=SERVE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", type=Path, help="TOML config file; env EDGESHARD_CONFIG")
    add_flags(serve, CoordinatorConfig)

    def with_target(sp):
        sp.add_argument("--coordinator", default=DEFAULT_COORDINATOR,
                        help="coordinator HOST:PORT (env EDGESHARD_COORDINATOR; "
                        f"default {DEFAULT_COORDINATOR})")
        return sp

    submit = with_target(sub.add_parser(
        "submit", help="run a batch job and write its results as JSON lines",
        description="Submit a sharded batch job and stream its results into a JSONL file "
        "(one line per item: id, label, confidence, tier, node, model_version). Re-running "
        "the same command after an interruption resumes without repeating results."))
    submit.add_argument("--model", required=True, help="model name, e.g. mnist_edge")
    submit.add_argument("--input", required=True, type=Path,
                        help=".npy / .npz arrays or a .msgpack stream of items")
    submit.add_argument("--output", required=True, type=Path, help="results file (.jsonl)")
    submit.add_argument("--shard-size", type=int, default=0,
                        help="items per shard (default: the coordinator's)")
    submit.add_argument("--model-version", default="", help="pin a model version")
    submit.add_argument("--job-id", default="", help="job id (for idempotent retries)")
    submit.add_argument("--retry-for", type=float, default=120.0,
                        help="seconds to keep retrying while the coordinator is away")
    submit.add_argument("--no-progress", action="store_true", help="no progress bar")

    nodes = with_target(sub.add_parser("nodes", help="list the fleet's nodes"))
    nodes.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (("drain", "stop sending new work to a node"),
                       ("undrain", "let a drained node take work again")):
        sp = with_target(sub.add_parser(name, help=text))
        sp.add_argument("node", help="node id or HOST:PORT")
    jobs = with_target(sub.add_parser("jobs", help="list jobs"))
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    cancel = with_target(sub.add_parser("cancel", help="cancel a job"))
    cancel.add_argument("job_id")

    cal = sub.add_parser(
        "calibrate", help="fit temperature and pick the escalation threshold",
        description="Fit temperature scaling for the edge model on the shipped calibration "
        "split, sweep the escalation threshold against the cloud tier (escalation rate, "
        "cascade accuracy, accepted-edge accuracy, cloud calls per 1,000, oracle and "
        "random bounds), pick the threshold for an escalation budget or a target accuracy, "
        "report it on the hold-out split, and write the table (CSV, JSON) and a plot (PNG). "
        "Without --edge/--cloud a local edge node on the model repository serves both.")
    cal.add_argument("--model", default="mnist_edge", help="edge model (mnist_edge)")
    cal.add_argument("--cloud-model", default="mnist_cloud",
                     help="model name at the cloud tier (mnist_cloud)")
    cal.add_argument("--edge", help="OIP server with the edge model (default: a local node)")
    cal.add_argument("--cloud", help="OIP server with the cloud model (default: a local node)")
    cal.add_argument("--cloud-output", default="probabilities",
                     choices=("probabilities", "label"), help="cloud output with the answer")
    cal.add_argument("--policy", default="max_prob",
                     help="max_prob, margin, entropy, normalized_entropy, random (max_prob)")
    goal = cal.add_mutually_exclusive_group()
    goal.add_argument("--budget", type=float, help="escalation budget, e.g. 0.15 (default)")
    goal.add_argument("--target-accuracy", type=float, help="reach this cascade accuracy")
    cal.add_argument("--out", default="calibration", help="directory for the table and plot")
    cal.add_argument("--model-repository", help="repository for local nodes and --write")
    cal.add_argument("--write", action="store_true",
                     help="store the fitted temperature in <repo>/<model>/<version>/"
                     "calibration.json")

    from coordinator.cli.demo import add_arguments as demo_arguments

    demo_arguments(sub.add_parser(
        "demo", help="run the main job on a local fleet on loopback",
        description="Start a coordinator and N edge nodes as local processes on free "
        "loopback ports, run the shipped hold-out set as a sharded job (optionally killing "
        "one node part-way), and print a report: items, results, lost, duplicated, "
        "per-node share, throughput, latency, accuracy."))
    return p


def serve(args) -> int:
    """Run the coordinator service until SIGTERM/SIGINT; returns the exit code.

    2 on a configuration error, 1 when it cannot start or the drain cut work off, else 0.
    """
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "command")}
    try:
        config = build(flags, os.environ, config_file_from(args.config, os.environ))
    except SettingsError as exc:
        print(f"edge-coordinator: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from coordinator.errors import CoordinatorError
    from coordinator.server import CoordinatorServer

    return run_until_signal(CoordinatorServer(config),
                            (OSError, CoordinatorError, sqlite3.DatabaseError), log)


def _print_nodes(nodes, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{
            "node_id": n.node_id, "address": n.address, "state": n.state, "source": n.source,
            "models": {m.name: list(m.versions) for m in n.models}, "weight": n.weight,
            "outstanding": n.outstanding, "items_done": n.items_done,
            "latency_ms": n.load.ewma_latency_ms, "last_seen_s_ago": n.last_seen_s_ago,
        } for n in nodes], indent=2))
        return
    print(f"{'NODE':<20} {'ADDRESS':<22} {'STATE':<9} {'SOURCE':<10} {'WEIGHT':>6} "
          f"{'LAT ms':>7} {'ITEMS':>8}  MODELS")
    for n in nodes:
        models = ",".join(f"{m.name}:{'/'.join(m.versions)}" for m in n.models)
        print(f"{n.node_id:<20} {n.address:<22} {n.state:<9} {n.source:<10} {n.weight:>6.2f} "
              f"{n.load.ewma_latency_ms:>7.2f} {n.items_done:>8}  {models}")


def admin(args) -> int:
    """Run an admin subcommand (``nodes``, ``drain``, ``undrain``, ``jobs``, ``cancel``).

    Prints the answer; returns 0, or 1 when the coordinator answers with an error.
    """
    from coordinator.api.control_client import CoordinatorClient

    client = CoordinatorClient(args.coordinator)
    try:
        if args.command == "nodes":
            _print_nodes(client.nodes(), args.json)
        elif args.command in ("drain", "undrain"):
            info = client.drain(args.node, undo=args.command == "undrain")
            print(f"{info.node_id} ({info.address}) is now {info.state}")
        elif args.command == "jobs":
            jobs = client.list_jobs()
            if args.json:
                print(json.dumps([{"job_id": j.job_id, "model": j.model, "state": j.state,
                                   "total": j.total_items, "done": j.done_items}
                                  for j in jobs], indent=2))
            else:
                for j in jobs:
                    print(f"{j.job_id}  {j.model:<14} {j.state:<9} {j.done_items}/{j.total_items}"
                          f"{'  ' + j.error if j.error else ''}")
        elif args.command == "cancel":
            status = client.cancel(args.job_id)
            print(f"job {status.job_id} is {status.state} ({status.done_items}/"
                  f"{status.total_items} items answered)")
    except grpc.RpcError as exc:
        print(f"edge-coordinator {args.command}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def submit(args) -> int:
    """Run ``edge-coordinator submit``; returns the exit code.

    0 when the job finished DONE, 2 for bad input or arguments, 1 on a gRPC error or a
    job that ended otherwise.
    """
    from coordinator.cli.submit import run_submit
    from coordinator.errors import JobInputError
    from coordinator.jobs.model import JobState

    started = time.monotonic()
    try:
        outcome = run_submit(args.coordinator, args.model, args.input, args.output,
                             args.shard_size, args.job_id, args.model_version, args.retry_for,
                             progress=not args.no_progress)
    except (JobInputError, ValueError, OSError) as exc:
        print(f"edge-coordinator submit: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"edge-coordinator submit: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"job {outcome.job_id}: {outcome.state}, {outcome.written}/{outcome.total} results "
          f"in {args.output} ({time.monotonic() - started:.1f}s)"
          + (f"; error: {outcome.error}" if outcome.error else ""))
    return 0 if outcome.state == JobState.DONE else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-coordinator`` with ``argv`` (the subcommand it names); returns the exit code."""
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "submit":
        return submit(args)
    if args.command == "demo":
        from coordinator.cli.demo import main as demo_main

        return demo_main(args)
    if args.command == "calibrate":
        from coordinator.cli.calibrate import main as calibrate_main

        if args.budget is None and args.target_accuracy is None:
            args.budget = 0.15
        args.argv = list(argv if argv is not None else sys.argv[2:])
        return calibrate_main(args)
    return admin(args)


if __name__ == "__main__":
    sys.exit(main())
