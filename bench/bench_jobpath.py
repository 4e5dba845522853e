"""Coordinator CPU per job item, with nodes that answer instantly (the coordinator is the
bottleneck).

Usage::

    python bench/bench_jobpath.py [--items 100000] [--nodes 1 4] [--shard-size 64]

Starts a coordinator and ``--nodes`` stand-in nodes (bench/instant_node.py: same protocol
as ``edge-node``, no model) as separate processes on loopback, submits one job of
``--items`` 28x28 uint8 items, waits for it to finish, fetches every result and reports:
items/s (Submit to done), the coordinator's CPU seconds per item (µs, user + system, all
threads, from /proc; and the part spent until Submit returned, which stores the items),
the stand-ins' CPU, and lost / duplicated results (must be 0).
Everything it starts is stopped before it exits. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_serving import machine_info, proc_cpu_seconds  # noqa: E402

from coordinator.api.control_client import CoordinatorClient  # noqa: E402
from coordinator.cli.launcher import start_coordinator, start_process  # noqa: E402
from coordinator.jobs.items import ItemSource  # noqa: E402


def run(items: int, nodes: int, shard_size: int, timeout: float,
        profile: Path | None = None) -> dict:
    """One job on a fresh coordinator with ``nodes`` instant stand-ins; its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-jobpath-"))
    procs = []
    try:
        for i in range(nodes):
            procs.append(start_process(f"instant-{i}", [str(HERE / "instant_node.py")],
                                       ["--max-batch", str(shard_size)], workdir))
        seeds = [arg for p in procs for arg in ("--node", p.address)]
        coordinator = start_coordinator("coordinator", workdir / "state", workdir,
                                        extra_args=["--log-level", "WARNING", "--shard-size",
                                                    str(shard_size), *seeds])
        procs.append(coordinator)
        client = CoordinatorClient(coordinator.address)
        deadline = time.monotonic() + 30
        while sum(n.state == "live" for n in client.nodes()) < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in nodes did not become live")
            time.sleep(0.1)
        ids = [str(i) for i in range(items)]
        source = ItemSource.from_arrays(ids, np.zeros((items, 28, 28), np.uint8))
        pid, node_pids = coordinator.process.pid, [p.process.pid for p in procs[:-1]]
        spy = None
        if profile is not None:  # py-spy (pip install py-spy) samples the coordinator
            import subprocess

            spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw",
                                    "--rate", "200", "--nonblocking", "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        c0, n0 = proc_cpu_seconds(pid), sum(proc_cpu_seconds(p) for p in node_pids)
        t0 = time.monotonic()
        status = client.submit("mnist_edge", source, shard_size, timeout=timeout)
        submit_cpu = proc_cpu_seconds(pid) - c0
        for update in client.watch(status.job_id, interval=0.05, timeout=timeout):
            status = update
            if update.state != "running":
                break
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(pid) - c0
        node_cpu = sum(proc_cpu_seconds(p) for p in node_pids) - n0
        if spy is not None:
            import signal

            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        seen = Counter(r.id for r in client.results(status.job_id, timeout=timeout))
        client.close()
        return {"nodes": nodes, "items": items, "state": status.state,
                "items_per_s": items / elapsed, "coordinator_us_per_item": cpu / items * 1e6,
                "submit_us_per_item": submit_cpu / items * 1e6,
                "nodes_us_per_item": node_cpu / items * 1e6,
                "lost": sum(1 for i in ids if i not in seen),
                "duplicated": sum(c - 1 for c in seen.values())}
    finally:
        for p in reversed(procs):
            p.stop(grace=5)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    """Run the job once per ``--nodes`` value and print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--profile", type=Path, help="write py-spy's raw samples of the "
                   "coordinator here (first run only)")
    args = p.parse_args()
    for line in machine_info():
        print(line)
    print(f"| nodes | items | state | items/s | coordinator µs CPU/item | of which Submit "
          f"| stand-ins µs/item | lost | dup |  (shard size {args.shard_size})")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in args.nodes:
        r = run(args.items, n, args.shard_size, args.timeout,
                args.profile if n == args.nodes[0] else None)
        print(f"| {n} | {r['items']} | {r['state']} | {r['items_per_s']:,.0f} | "
              f"{r['coordinator_us_per_item']:.1f} | {r['submit_us_per_item']:.1f} | "
              f"{r['nodes_us_per_item']:.1f} | "
              f"{r['lost']} | {r['duplicated']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
