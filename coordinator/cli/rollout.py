"""``edge-coordinator rollout status|start|promote|rollback``: canary rollouts.

Each asks the coordinator's Rollouts service once (admin role when tokens are on) and
prints the rollout: labels, shares, state, the comparison's verdict and statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import grpc

from coordinator.rollout.verdict import Margins

ACTIONS = ("status", "start", "promote", "rollback")
MARGIN_HELP = {
    "min_requests": "requests each version needs before a verdict",
    "error_rate": "how much higher the canary's error rate may be (absolute)",
    "latency_p95_ratio": "how many times stable's p95 latency the canary's may be",
    "confidence_ks": "KS statistic of the confidence distributions above which a lower "
                     "canary confidence rolls it back",
    "escalation_rate": "how much higher the canary's escalation rate may be (absolute)",
    "min_agreement": "least share of shadowed items with stable's top-1 label",
    "min_shadowed": "shadowed items needed before agreement counts",
    "promote_after": "canary requests after which a clean canary is promoted (0: never "
                     "automatically)",
}


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (argparse names the flag on error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def add_parser(sub, with_target) -> None:
    """Add ``rollout`` and its actions to ``sub``; ``with_target`` adds ``--coordinator``."""
    rollout = sub.add_parser(
        "rollout", help="canary rollouts: status, start, promote, rollback",
        description="Version labels per model (stable, canary): send a share of a model's "
        "unpinned online requests and job shards to a canary version (and mirror a share "
        "of stable's requests to it), compare it with stable, and roll it back "
        "automatically when it is worse by the margins.")
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = with_target(actions.add_parser("status", help="show rollouts"))
    status.add_argument("model", nargs="?", default="", help="one model (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    start = with_target(actions.add_parser(
        "start", help="start a canary", description="Start a canary rollout of MODEL."))
    start.add_argument("model", help="model name, e.g. mnist_edge")
    start.add_argument("--canary", required=True, help="the version to try (served by nodes)")
    start.add_argument("--stable", default="", help="the stable version (default: the "
                       "last rollout's, else the newest served version below the canary)")
    start.add_argument("--share", type=fraction, default=0.1,
                       help="share of unpinned requests and job shards for the canary (0.1)")
    start.add_argument("--shadow", type=fraction, default=0.0,
                       help="share of stable's requests mirrored to the canary (0)")
    defaults = Margins()
    for name, text in MARGIN_HELP.items():
        kind = type(getattr(defaults, name))
        start.add_argument("--" + name.replace("_", "-"), type=count if kind is int else float,
                           default=None, help=f"{text} ({getattr(defaults, name)})")
    for action in ("promote", "rollback"):
        sp = with_target(actions.add_parser(action, help=f"{action} the running canary"))
        sp.add_argument("model", help="model name")
        sp.add_argument("--reason", default="", help="recorded with the decision")


def start_request(args):
    """The StartRolloutRequest of ``rollout start`` arguments."""
    from protos import fleet_pb2

    margins = fleet_pb2.RolloutMargins(**{
        name: getattr(args, name) for name in MARGIN_HELP if getattr(args, name) is not None})
    return fleet_pb2.StartRolloutRequest(model=args.model, canary=args.canary,
                                         stable=args.stable, share=args.share,
                                         shadow=args.shadow, margins=margins)


def as_dict(info) -> dict:
    """A RolloutInfo as plain JSON-able data."""
    return {"model": info.model, "stable": info.stable, "canary": info.canary,
            "share": info.share, "shadow": info.shadow, "state": info.state,
            "reason": info.reason, "started_at": info.started_at,
            "decided_at": info.decided_at, "verdict": info.verdict,
            "reasons": list(info.reasons), "stats": dict(info.stats),
            "margins": {name: getattr(info.margins, name) for name in MARGIN_HELP}}


def print_rollout(info) -> None:
    """A rollout in a few lines."""
    print(f"{info.model}: stable {info.stable}, canary {info.canary} — {info.state}")
    if info.state == "running":
        print(f"  share {info.share:g}, shadow {info.shadow:g}, started "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.started_at))}; "
              f"verdict now: {info.verdict}")
    else:
        print(f"  decided {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.decided_at))}"
              f": {info.reason}")
    for reason in info.reasons:
        print(f"  worse: {reason}")
    if info.stats:
        print("  " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(info.stats.items())))


def main(args) -> int:
    """Run ``rollout ACTION``; 0, or 1 when the coordinator refuses or cannot be reached."""
    from coordinator.api.control_client import CoordinatorClient
    from coordinator.cli.admin import rpc_failure
    from protos import fleet_pb2

    client = CoordinatorClient(args.coordinator, credentials=args.credentials, token=args.token)
    try:
        if args.action == "status":
            answer = client.rollouts("Status", fleet_pb2.RolloutRef(model=args.model))
            if args.json:
                print(json.dumps([as_dict(r) for r in answer.rollouts], indent=2))
            elif not answer.rollouts:
                print("no rollouts")
            for info in answer.rollouts if not args.json else ():
                print_rollout(info)
            return 0
        if args.action == "start":
            info = client.rollouts("Start", start_request(args))
        else:
            info = client.rollouts(args.action.capitalize(),
                                   fleet_pb2.RolloutRef(model=args.model, reason=args.reason))
        print_rollout(info)
        return 0
    except grpc.RpcError as exc:
        print(f"edge-coordinator rollout {args.action}: "
              f"{rpc_failure(exc, args.coordinator, client.address, args.client_tls)}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
