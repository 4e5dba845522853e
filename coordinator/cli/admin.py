"""The admin commands of ``edge-coordinator``: nodes, drain, undrain, jobs, cancel.

Each asks the coordinator's Fleet or Jobs service once and prints a table (or JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from coordinator.jobs.database import STORE_ERROR_PREFIX
from edgeshard.tls import handshake_hint

COMMANDS = {  # name: (one-line help, --help description)
    "nodes": ("list the fleet's nodes",
              "List every node the coordinator knows: id, address, state (candidate, live, "
              "suspect, dead, draining), how it joined, routing weight, smoothed latency, "
              "job items done, seconds since it was last heard from, and the models and "
              "versions it serves; then, with a cascade, the cloud tier's state."),
    "drain": ("stop sending new work to a node",
              "Drain a node: it gets no new requests or shards, and the shards it holds move "
              "to other nodes. The node keeps running; undrain lets it take work again."),
    "undrain": ("let a drained node take work again",
                "Undrain a node that was drained: it takes requests and shards again."),
    "jobs": ("list jobs",
             "List every job (with --auth-tokens: the token holder's own; an admin's: all), "
             "oldest first: id, model, state (running, done, cancelled, "
             "failed), items answered of the total, items waiting in the spool for the "
             "cloud tier, final answers the cloud gave, and answers that fell back to the "
             "edge (degraded)."),
    "cancel": ("cancel a job",
               "Cancel a job: no more shards are run; results already committed stay "
               "available. Prints the job's state and how many items were answered."),
}


STORE_FAULT_LINE = "job store: cannot write ({}); jobs wait and resume by themselves"


def add_parsers(sub, with_target) -> None:
    """Add the admin subcommands to ``sub``; ``with_target`` adds ``--coordinator``."""

    def parser(name: str) -> argparse.ArgumentParser:
        short, description = COMMANDS[name]
        return with_target(sub.add_parser(name, help=short, description=description))

    parser("nodes").add_argument("--json", action="store_true", help="machine-readable output")
    for name in ("drain", "undrain"):
        parser(name).add_argument("node", help="node id or HOST:PORT")
    parser("jobs").add_argument("--json", action="store_true", help="machine-readable output")
    parser("cancel").add_argument("job_id", help="the job's id (see `edge-coordinator jobs`)")


def print_nodes(nodes, as_json: bool, cloud=None, store_fault: str = "") -> None:
    """Print ``nodes`` (``NodeInfo`` messages) as a table, or as JSON with ``as_json``.

    The table ends with a line on the ``cloud`` tier (``CloudTierInfo``) when there is one,
    and one on the job store while it cannot write (``store_fault``).
    """
    if as_json:
        print(json.dumps([{
            "node_id": n.node_id, "address": n.address, "state": n.state, "source": n.source,
            "models": {m.name: list(m.versions) for m in n.models}, "weight": n.weight,
            "outstanding": n.outstanding, "items_done": n.items_done,
            "capacity": n.load.capacity, "processes": max(1, n.processes),
            "latency_ms": n.load.ewma_latency_ms, "last_seen_s_ago": n.last_seen_s_ago,
        } for n in nodes], indent=2))
        return
    print(f"{'NODE':<20} {'ADDRESS':<22} {'STATE':<9} {'SOURCE':<10} {'WEIGHT':>6} "
          f"{'LAT ms':>7} {'ITEMS':>8} {'SEEN s ago':>10}  MODELS")
    for n in nodes:
        models = ",".join(f"{m.name}:{'/'.join(m.versions)}" for m in n.models)
        print(f"{n.node_id:<20} {n.address:<22} {n.state:<9} {n.source:<10} {n.weight:>6.2f} "
              f"{n.load.ewma_latency_ms:>7.2f} {n.items_done:>8} {n.last_seen_s_ago:>10.1f}  "
              f"{models}")
    if cloud is not None:
        print(f"cloud tier {cloud.address}: {cloud.state}, {cloud.spooled_items} items "
              "waiting in the spool" + (f"; last error: {cloud.last_error}"
                                        if cloud.last_error and cloud.state != "ok" else ""))
    if store_fault:
        print(STORE_FAULT_LINE.format(store_fault))


# JSON key: JobStatus field ("total" and "done" keep the names earlier releases printed).
JOB_FIELDS = {"job_id": "job_id", "model": "model", "state": "state", "total": "total_items",
              "done": "done_items", "pending_escalations": "pending_escalations",
              "cloud_answered": "cloud_answered", "degraded": "degraded",
              "requeued_shards": "requeued_shards",
              "duplicates_discarded": "duplicates_discarded", "error": "error"}


def print_jobs(jobs, as_json: bool) -> None:
    """Print ``jobs`` (``JobStatus`` messages) as a table, or as JSON with ``as_json``.

    PENDING counts items waiting in the spool for the cloud tier, CLOUD final answers the
    cloud gave, DEGRADED answers that fell back to the edge.
    """
    if as_json:
        print(json.dumps([{key: getattr(j, f) for key, f in JOB_FIELDS.items()} for j in jobs],
                         indent=2))
        return
    width = max([len("JOB"), *(len(j.job_id) for j in jobs)])
    print(f"{'JOB':<{width}}  {'MODEL':<14} {'STATE':<9} {'DONE/TOTAL':>17} {'PENDING':>8} "
          f"{'CLOUD':>8} {'DEGRADED':>8}  ERROR")
    for j in jobs:
        done = f"{j.done_items}/{j.total_items}"
        print(f"{j.job_id:<{width}}  {j.model:<14} {j.state:<9} {done:>17} "
              f"{j.pending_escalations:>8} {j.cloud_answered:>8} {j.degraded:>8}  {j.error}"
              .rstrip())


def admin(args) -> int:
    """Run an admin subcommand (``nodes``, ``drain``, ``undrain``, ``jobs``, ``cancel``).

    Prints the answer; returns 0, or 1 when the coordinator answers with an error or
    cannot be reached.
    """
    from coordinator.api.control_client import CoordinatorClient

    # Moves to the next coordinator when one does not answer.
    client = CoordinatorClient(args.coordinator, credentials=args.credentials, token=args.token)
    try:
        if args.command == "nodes":
            answer = client.listing()
            print_nodes(answer.nodes, args.json,
                        answer.cloud if answer.HasField("cloud") else None, answer.store_fault)
        elif args.command in ("drain", "undrain"):
            info = client.drain(args.node, undo=args.command == "undrain")
            print(f"{info.node_id} ({info.address}) is now {info.state}")
        elif args.command == "jobs":
            print_jobs(client.list_jobs(), args.json)
            if not args.json:
                fault = client.listing().store_fault
                if fault:
                    print(STORE_FAULT_LINE.format(fault))
        elif args.command == "cancel":
            status = client.cancel(args.job_id)
            print(f"job {status.job_id} is {status.state} ({status.done_items}/"
                  f"{status.total_items} items answered)")
    except grpc.RpcError as exc:
        print(f"edge-coordinator {args.command}: "
              f"{rpc_failure(exc, args.coordinator, client.address, args.client_tls)}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def rpc_failure(exc: grpc.RpcError, addresses: str | Sequence[str],
                answered: str = "", client_tls: bool = False) -> str:
    """One line for a failed call to the coordinator(s) at ``addresses`` (every one was
    tried when the error is UNAVAILABLE), with a hint where the status suggests a wrong
    address or a TLS mismatch (``client_tls``: whether this client spoke TLS);
    ``answered`` is the address that gave the error, when known."""
    addresses = (addresses,) if isinstance(addresses, str) else tuple(addresses)
    text = f"{exc.code().name}: {exc.details()}"
    if (exc.details() or "").startswith(STORE_ERROR_PREFIX):  # an answer: the store is away
        where = answered or ", ".join(addresses)
        return (f"{text} (the coordinator at {where} answers, but its job store does not: "
                "check the database of --state-url, or the state directory's disk)")
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        hint = handshake_hint(exc.details() or "", client_tls)
        if hint:
            return f"{hint} (coordinator {', '.join(addresses)})"
        if len(addresses) == 1:
            return (f"{text} (is a coordinator running at {addresses[0]}? "
                    "set it with --coordinator or EDGESHARD_COORDINATOR)")
        return (f"{text} (no coordinator answered; tried {', '.join(addresses)}: is one "
                "of them running and reachable from here? set them with --coordinator or "
                "EDGESHARD_COORDINATOR)")
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        who = answered or (addresses[0] if len(addresses) == 1
                           else f"one of {', '.join(addresses)}")
        return f"{text} ({who} is not a coordinator: an edge node?)"
    return text


def described(addresses: str | Sequence[str]) -> str:
    """``the coordinator at A``, or ``any coordinator at A, B`` for several."""
    addresses = (addresses,) if isinstance(addresses, str) else tuple(addresses)
    if len(addresses) == 1:
        return f"the coordinator at {addresses[0]}"
    return f"any coordinator at {', '.join(addresses)}"
