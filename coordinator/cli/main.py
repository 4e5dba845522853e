"""``edge-coordinator``: the fleet's central service and its admin commands."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

import grpc

from coordinator.cli.interrupt import Interrupted, exit_interrupted
from coordinator.config import CoordinatorConfig, build
from edgeshard import VERSION
from edgeshard.auth import check_token
from edgeshard.lifecycle import run_until_signal
from edgeshard.settings import SettingsError, add_flags, address_list, config_file_from
from edgeshard.tls import TLSFiles, channel_credentials

log = logging.getLogger("coordinator")

BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader went away

DEFAULT_COORDINATOR = "127.0.0.1:8000"
COORDINATOR_ENV = "EDGESHARD_COORDINATOR"
TOKEN_ENV = "EDGESHARD_TOKEN"
COORDINATOR_HELP = (
    "coordinator HOST:PORT; for several replicas of one fleet repeat the flag or separate "
    "the addresses with commas: calls go to one and move to the next when it does not "
    f"answer (env {COORDINATOR_ENV}, comma-separated; default {DEFAULT_COORDINATOR})")

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
        sp.add_argument("--coordinator", action="append", metavar="HOST:PORT[,...]",
                        help=COORDINATOR_HELP)
        return add_tls_flags(add_token_flag(sp))

    submit = with_target(sub.add_parser(
        "submit", help="run a batch job and write its results as JSON lines",
        description="Submit a sharded batch job and stream its results into a JSONL file "
        "(one line per item: id, label, confidence, tier, node, model_version for a "
        "classifier; the model's outputs for other tasks, large ones in OUTPUT.npz). "
        "Re-running the same command after an interruption resumes without repeating "
        "results."))
    submit.add_argument("--model", required=True, help="model name, e.g. mnist_edge")
    submit.add_argument("--input", required=True, type=Path,
                        help=".npy / .npz arrays or a .msgpack stream of items")
    submit.add_argument("--output", required=True, type=Path, help="results file (.jsonl)")
    submit.add_argument("--shard-size", type=int, default=0,
                        help="items per shard (default: the coordinator's)")
    submit.add_argument("--model-version", default="", help="pin a model version")
    submit.add_argument("--outputs", default="", metavar="NAME[,NAME...]",
                        help="outputs each result keeps (default: label and confidence of a "
                        "classifier, every output of other models)")
    submit.add_argument("--job-id", default="", help="job id (for idempotent retries)")
    submit.add_argument("--retry-for", type=float, default=120.0,
                        help="seconds to keep retrying while the coordinator is away")
    submit.add_argument("--no-progress", action="store_true", help="no progress bar")

    from coordinator.cli.admin import add_parsers as admin_parsers

    admin_parsers(sub, with_target)
    from coordinator.cli.rollout import add_parser as rollout_parser

    rollout_parser(sub, with_target)
    from coordinator.cli.examples import add_parser as examples_parser

    examples_parser(sub, with_target)
    from coordinator.cli.results import add_parser as results_parser

    results_parser(sub, with_target)

    cal = sub.add_parser(
        "calibrate", help="fit temperature and pick the escalation threshold",
        description="Fit temperature scaling for the edge model on the shipped calibration "
        "split (or on the fitting part of --data), sweep the escalation threshold against "
        "the cloud tier (escalation rate, cascade accuracy, accepted-edge accuracy, cloud "
        "calls per 1,000, oracle and random bounds), pick the threshold for an escalation "
        "budget or a target accuracy, report it on the hold-out split (part), and write the "
        "table (CSV, JSON) and a plot (PNG). The printed threshold is for the temperature "
        "the nodes will serve: the fitted one with --write, the current one without. "
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
    cal.add_argument("--data", metavar="FILE",
                     help="your labelled examples instead of the shipped MNIST splits: an .npz "
                     "with arrays x (inputs as the model takes them, first dimension = "
                     "examples) and y (integer class labels), or a folder with x.npy and "
                     "y.npy, or a folder of class folders 0/, 1/, ... of one-example .npy files")
    cal.add_argument("--holdout-fraction", type=float,
                     help="share of --data held out to report on (0.3); the rest fits the "
                     "temperature and picks the threshold")
    cal.add_argument("--seed", type=int, help="seed of the --data split (0)")
    cal.add_argument("--model-repository", help="repository for local nodes and --write")
    cal.add_argument("--write", action="store_true",
                     help="store the fitted temperature in <repo>/<model>/<version>/"
                     "calibration.json; the printed threshold is then for it (without "
                     "--write: for the temperature the nodes serve now)")
    add_tls_flags(cal)
    add_token_flag(cal)

    from coordinator.cli.profile import add_parser as profile_parser

    profile_parser(sub, add_tls_flags, add_token_flag)

    from coordinator.cli.certs import add_arguments as certs_arguments

    certs_arguments(sub.add_parser(
        "certs", help="make a development CA and certificates for mutual TLS",
        description="Write a development certificate authority and certificates signed by "
        "it into --out: coordinator, node-1..node-N and client (for the CLI). Each is good "
        "for TLS server and client use; SANs hold the name, localhost, 127.0.0.1, ::1 and "
        "--hosts. Keys are written 0600; existing files are kept unless --force."))

    from coordinator.cli.tokens import add_arguments as tokens_arguments

    tokens_arguments(sub.add_parser(
        "tokens", help="add, list or revoke bearer tokens (--auth-tokens file)",
        description="Keep the coordinator's token file: each token has a name and roles "
        "(infer, jobs, admin, node); the file holds only SHA-256 digests. A running "
        "coordinator reads the file again within a second of a change."))

    from coordinator.cli.signing import add_parsers as signing_parsers

    signing_parsers(sub)

    from coordinator.cli.demo import add_arguments as demo_arguments

    demo_arguments(sub.add_parser(
        "demo", help="run the main job on a local fleet on loopback",
        description="Start a coordinator and N edge nodes as local processes on free "
        "loopback ports, run the shipped hold-out set as a sharded job (optionally killing "
        "one node part-way), and print a report: items, results, lost, duplicated, "
        "per-node share, throughput, latency, accuracy."))
    return p


TLS_FLAGS = {  # field: help (env EDGESHARD_<FIELD>)
    "tls_cert": "PEM client certificate to present (a server with --tls-ca requires one)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_ca": "PEM CA bundle to verify the server against; any --tls-* option means TLS",
}


def add_token_flag(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a client command's ``--token`` to ``sp``."""
    sp.add_argument("--token", metavar="TOKEN",
                    help=f"bearer token for a coordinator started with --auth-tokens "
                    f"(env {TOKEN_ENV}, which keeps it out of ps)")
    return sp


def add_tls_flags(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a client command's ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` to ``sp``."""
    for name, text in TLS_FLAGS.items():
        sp.add_argument("--" + name.replace("_", "-"), metavar="PATH",
                        help=f"{text}; env EDGESHARD_{name.upper()}")
    return sp


def client_tls(args, env) -> TLSFiles:
    """A client command's TLS files: ``--tls-*`` flags, else ``EDGESHARD_TLS_*``."""
    return TLSFiles.of(*(getattr(args, name, None) or env.get(f"EDGESHARD_{name.upper()}")
                         for name in TLS_FLAGS))


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

    try:
        server = CoordinatorServer(config)  # reads the TLS files and the token file
    except SettingsError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return run_until_signal(server, (OSError, CoordinatorError, sqlite3.DatabaseError), log)


def submit(args) -> int:
    """Run ``edge-coordinator submit``; returns the exit code.

    0 when the job finished DONE, 2 for bad input or arguments, 1 on a gRPC error, an
    unreachable coordinator or a job that ended otherwise. Ctrl-C raises ``Interrupted``.
    """
    from coordinator.cli.admin import rpc_failure
    from coordinator.cli.submit import CoordinatorUnreachable, run_submit
    from coordinator.errors import JobInputError
    from coordinator.jobs.model import JobState

    started = time.monotonic()
    try:
        outcome = run_submit(args.coordinator, args.model, args.input, args.output,
                             args.shard_size, args.job_id, args.model_version, args.retry_for,
                             progress=not args.no_progress, credentials=args.credentials,
                             token=args.token,
                             outputs=[n for n in args.outputs.split(",") if n])
    except (JobInputError, ValueError, OSError) as exc:
        print(f"edge-coordinator submit: {exc}", file=sys.stderr)
        return 2
    except CoordinatorUnreachable as exc:
        print(f"edge-coordinator submit: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"edge-coordinator submit: "
              f"{rpc_failure(exc, args.coordinator, client_tls=args.client_tls)}",
              file=sys.stderr)
        return 1
    print(f"job {outcome.job_id}: {outcome.state}, {outcome.written}/{outcome.total} results "
          f"in {args.output} ({time.monotonic() - started:.1f}s)"
          + (f"; error: {outcome.error}" if outcome.error else ""))
    return 0 if outcome.state == JobState.DONE else 1


def coordinators(flags: list[str] | None, env) -> tuple[str, ...]:
    """The coordinators a command asks: ``--coordinator`` (repeated and/or comma-separated),
    else ``EDGESHARD_COORDINATOR`` (comma-separated), else the default. Raises
    ``SettingsError`` naming the source and the entry that is not ``HOST:PORT``."""
    if flags:
        return address_list("--coordinator", flags)
    if env.get(COORDINATOR_ENV, "").strip():
        return address_list(COORDINATOR_ENV, env[COORDINATOR_ENV])
    return (DEFAULT_COORDINATOR,)


def run_command(args, argv: list[str] | None) -> int:
    """Run the subcommand ``args`` names; returns its exit code."""
    if args.command == "serve":
        return serve(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if hasattr(args, "coordinator"):
            args.coordinator = coordinators(args.coordinator, os.environ)
        if hasattr(args, "token"):
            token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
            args.token = (check_token(token, "--token" if args.token is not None else TOKEN_ENV)
                          if token is not None else None)
        if hasattr(args, "tls_ca"):
            tls = client_tls(args, os.environ)
            args.client_tls = tls.enabled
            args.credentials = channel_credentials(tls)  # None: plaintext
    except SettingsError as exc:  # TLSError included: a bad path names flag and file
        print(f"edge-coordinator {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "submit":
        return submit(args)
    if args.command == "certs":
        from coordinator.cli.certs import main as certs_main

        return certs_main(args)
    if args.command == "tokens":
        from coordinator.cli.tokens import main as tokens_main

        return tokens_main(args)
    if args.command in ("signing-key", "sign-model"):
        from coordinator.cli.signing import main as signing_main

        return signing_main(args)
    if args.command == "demo":
        from coordinator.cli.demo import main as demo_main

        return demo_main(args)
    if args.command == "rollout":
        from coordinator.cli.rollout import main as rollout_main

        return rollout_main(args)
    if args.command == "profile":
        from coordinator.cli.profile import main as profile_main

        return profile_main(args)
    if args.command == "results":
        from coordinator.cli.results import main as results_main

        return results_main(args)
    if args.command == "export-examples":
        from coordinator.cli.examples import main as examples_main

        return examples_main(args)
    if args.command == "calibrate":
        from coordinator.cli.calibrate import main as calibrate_main

        if args.budget is None and args.target_accuracy is None:
            args.budget = 0.15
        args.argv = list(argv if argv is not None else sys.argv[2:])
        return calibrate_main(args)
    from coordinator.cli.admin import admin

    return admin(args)


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-coordinator`` with ``argv`` (the subcommand it names); returns the exit code.

    Besides each command's own codes: 141 when the reader of its output went away
    (``edge-coordinator nodes | head -3``), without a traceback. Ctrl-C ends the process
    with 130 and a one-line message (``coordinator.cli.interrupt``).
    """
    args = parser().parse_args(argv)
    try:
        code = run_command(args, argv)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
        return code
    except KeyboardInterrupt as exc:  # the process ends here: see coordinator.cli.interrupt
        exit_interrupted(str(exc) if isinstance(exc, Interrupted)
                         else f"edge-coordinator {args.command}: interrupted")
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that this does
        # not raise (and print) a second BrokenPipeError.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
