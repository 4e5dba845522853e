"""``edge-node``: the edge device daemon.

Configuration precedence: command-line flags > EDGESHARD_* environment > --config file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from edge_node.config import NodeConfig, build
from edge_node.errors import ModelLoadError
from edge_node.supervisor import ProcessRole, Supervisor, follow_supervisor
from edgeshard import VERSION
from edgeshard.keys import KeyFileError
from edgeshard.lifecycle import run_until_signal
from edgeshard.settings import SettingsError, add_flags, config_file_from
from edgeshard.tls import TLSError

log = logging.getLogger("edge_node")

EPILOG = """\
Every option can also come from the environment (EDGESHARD_<OPTION>, e.g.
EDGESHARD_PORT=8001) or a TOML file given with --config (keys like model_repository,
top level or under [edge_node]). Flags win over the environment, which wins over the file.

The model repository holds <model>/config.toml and <model>/<version>/model.tflite
(optionally manifest.json with its sha256, calibration.json with a temperature).
The newest version that loads is served by default.

Signed models: with --require-signed --trust-key KEY.pub a version is served only when
its manifest.json is signed by a trusted key (edge-coordinator sign-model) and matches
its files; a refused version is logged with the reason and the newest one that passes
serves. With --trust-key alone, signed versions are verified and unsigned ones served.

Examples:
  edge-node --model-repository models/repository --port 8001 --metrics-port 9101
  edge-node --model-repository /opt/models --require-signed --trust-key /etc/edgeshard/keys
"""


def parser() -> argparse.ArgumentParser:
    """The ``edge-node`` argument parser: ``--config`` plus one flag per ``NodeConfig`` field."""
    p = argparse.ArgumentParser(
        prog="edge-node",
        description="Serve TFLite models over the Open Inference Protocol (KServe v2 gRPC).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"edge-node {VERSION}")
    p.add_argument("--config", type=Path, help="TOML config file; env EDGESHARD_CONFIG")
    add_flags(p, NodeConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-node`` with ``argv`` until SIGTERM/SIGINT; returns the exit code.

    2 on a configuration error, 1 when the node cannot start (no loadable model, a port in
    use: the message names it and its flag) or the drain cut work off, 130 when
    interrupted while starting, else 0.
    """
    args = parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        config = build(flags, os.environ, config_file_from(args.config, os.environ))
    except SettingsError as exc:
        print(f"edge-node: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        role = ProcessRole.from_env(os.environ)
        if role.shares_port:
            follow_supervisor(os.environ)
    except ValueError as exc:
        print(f"edge-node: {exc}", file=sys.stderr)
        return 2
    who = f"[{role.index}/{role.count}] " if role.shares_port else ""
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
    )
    try:
        if config.processes > 1:
            daemon = Supervisor(config, sys.argv[1:] if argv is None else argv)
        else:
            from edge_node.server import EdgeNodeServer  # heavy imports after argument checks

            daemon = EdgeNodeServer(config, role)
        return run_until_signal(daemon, (ModelLoadError, OSError, TLSError, KeyFileError), log)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        print("edge-node: interrupted while starting", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
