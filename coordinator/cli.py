"""``edge-coordinator``: the fleet's central service and its admin commands."""

from __future__ import annotations

import argparse
import logging
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-coordinator",
        description="edgeshard coordinator: runs the fleet and its jobs.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the main job on a local fleet on loopback",
        description="Start an edge node on the shipped models, classify the shipped "
        "hold-out set through it, and print accuracy (next to the model card's), "
        "latency and throughput.",
    )
    demo.add_argument("--batch-size", type=int, default=32, help="images per request (32)")
    demo.add_argument("--concurrency", type=int, default=4, help="client threads (4)")
    demo.add_argument("--workdir", help="where node logs and ready files go (a temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from coordinator import demo

        if args.batch_size < 1 or args.concurrency < 1:
            print("edge-coordinator demo: --batch-size and --concurrency must be >= 1",
                  file=sys.stderr)
            return 2
        try:
            demo.run(args.batch_size, args.concurrency, workdir=args.workdir)
        except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
            print(f"edge-coordinator demo: failed: {exc}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
