"""``edge-coordinator results JOB_ID``: a job's results as JSON lines, from any replica.

The lines are those ``submit`` writes (``coordinator.cli.results_file``): one per item,
in commit order. Without ``--output`` they go to standard output, every output tensor
inline; with ``--output FILE`` to the file, large outputs to its ``.npz`` sidecar as
``submit`` does. ``--follow`` waits for the results of a running job until it finishes;
``--after-seq N`` starts after the result with sequence number N: a job's results are
numbered 1, 2, ... without gaps in commit order, so a reader that stopped after N lines
goes on with ``--after-seq N``. Without ``--follow``, a running job's results so far are
written and a note on standard error says the job is still running. With several
``--coordinator`` addresses the stream moves to the next coordinator when one goes away,
resuming after the last result it delivered.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc


def add_parser(sub, with_target) -> None:
    """Add ``results`` to ``sub``; ``with_target`` adds ``--coordinator`` and TLS."""
    sp = with_target(sub.add_parser(
        "results", help="print or save a job's results as JSON lines",
        description="Fetch the results of job JOB_ID (from any coordinator of the store) "
        "as JSON lines, one per item, in commit order: the lines `submit --output` writes. "
        "Standard output unless --output."))
    sp.add_argument("job_id", metavar="JOB_ID", help="the job's id (see `edge-coordinator jobs`)")
    sp.add_argument("--output", "-o", type=Path, metavar="FILE",
                    help="write to FILE (replaced) instead of standard output; outputs with "
                    "more than 1024 elements go to FILE.npz")
    sp.add_argument("--follow", action="store_true",
                    help="wait for the results of a running job until it finishes")
    sp.add_argument("--after-seq", type=int, default=0, metavar="N",
                    help="only results after sequence number N (0: from the first); results "
                    "are numbered 1, 2, ... in commit order, so N lines already read means "
                    "--after-seq N")


def main(args) -> int:
    """Run ``results``: 0 when every result asked for was written, 2 for bad arguments, 1
    when the coordinator refuses (unknown job) or cannot be reached."""
    from coordinator.api.control_client import CoordinatorClient
    from coordinator.cli.admin import rpc_failure
    from coordinator.cli.results_file import ResultsFile

    name = "edge-coordinator results"
    if args.after_seq < 0:
        print(f"{name}: --after-seq: must be >= 0, got {args.after_seq}", file=sys.stderr)
        return 2
    if args.output is not None and args.output.is_dir():
        print(f"{name}: --output: {args.output} is a directory; give a file name",
              file=sys.stderr)
        return 2
    if args.output is not None and not args.output.parent.is_dir():
        print(f"{name}: --output: cannot write {args.output}: directory "
              f"{args.output.parent} does not exist", file=sys.stderr)
        return 2
    client = CoordinatorClient(args.coordinator, credentials=args.credentials, token=args.token)
    out = None
    try:
        client.get(args.job_id)  # an unknown job is an error before any file is made
        if args.output is not None:
            args.output.unlink(missing_ok=True)
            out = ResultsFile(args.output, {})
        for record in client.results(args.job_id, after_seq=args.after_seq,
                                     follow=args.follow):
            if out is not None:
                out.write(record)
            else:
                sys.stdout.write(record.as_json() + "\n")
        if not args.follow:
            status = client.get(args.job_id)
            if status.state == "running":  # what is committed so far: say it is not all
                print(f"{name}: job {args.job_id} is still running ({status.done_items} of "
                      f"{status.total_items} items answered); --follow waits for the rest",
                      file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"{name}: {rpc_failure(exc, args.coordinator, client.address, args.client_tls)}",
              file=sys.stderr)
        return 1
    finally:
        if out is not None:
            out.close()
        client.close()
    return 0
