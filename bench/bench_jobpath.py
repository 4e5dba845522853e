"""Coordinator CPU per job item, with nodes that answer instantly (the coordinator is the
bottleneck).

Usage::

    python bench/bench_jobpath.py [--items 100000] [--nodes 1 4] [--shard-size 64]
    python bench/bench_jobpath.py --postgres --replicas 1 2 4 [--nodes 4] [--jobs 4]

Starts a coordinator (or ``--replicas`` of them on one PostgreSQL store, each knowing every
node) and ``--nodes`` stand-in nodes (bench/instant_node.py: same protocol as ``edge-node``,
no model) as separate processes on loopback, submits one job of ``--items`` 28x28 uint8
items, waits for it to finish, fetches every result and reports: items/s (Submit to done),
the coordinators' CPU seconds per item (µs, user + system, all threads and replicas, from
/proc; and the part spent until Submit returned, which stores the items), the stand-ins'
CPU, and lost / duplicated results (must be 0). PostgreSQL's own CPU is not counted.
Everything it starts is stopped before it exits. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
        profile: Path | None = None, state_url: str | None = None, replicas: int = 1,
        jobs: int = 1) -> dict:
    """``jobs`` jobs (``items`` in all) on fresh coordinator(s) with ``nodes`` instant
    stand-ins; their figures.

    With ``state_url`` (an empty PostgreSQL database), ``replicas`` coordinators share it;
    every replica knows every node. Job k is submitted and watched through replica
    k mod ``replicas``, all jobs at once.
    """
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-jobpath-"))
    procs, coordinators, clients = [], [], []
    try:
        for i in range(nodes):
            procs.append(start_process(f"instant-{i}", [str(HERE / "instant_node.py")],
                                       ["--max-batch", str(shard_size)], workdir))
        seeds = [arg for p in procs for arg in ("--node", p.address)]
        store = ["--state-url", state_url] if state_url else []
        for r in range(replicas):
            coordinators.append(start_coordinator(
                f"coordinator-{r}", workdir / f"state-{r}", workdir,
                extra_args=["--log-level", "WARNING", "--shard-size", str(shard_size),
                            *store, *seeds]))
        procs.extend(coordinators)
        clients = [CoordinatorClient(c.address) for c in coordinators]
        deadline = time.monotonic() + 30
        while any(sum(n.state == "live" for n in c.nodes()) < nodes for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in nodes did not become live")
            time.sleep(0.1)
        ids = [str(i) for i in range(items)]
        parts = [ids[k::jobs] for k in range(jobs)]
        sources = [ItemSource.from_arrays(p, np.zeros((len(p), 28, 28), np.uint8))
                   for p in parts]
        pids = [c.process.pid for c in coordinators]
        node_pids = [p.process.pid for p in procs[:nodes]]
        spy = None
        if profile is not None:  # py-spy (pip install py-spy) samples the first coordinator
            import subprocess

            # the py-spy next to this interpreter (a venv's bin/ is often not on PATH)
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            spy = subprocess.Popen([py_spy, "record", "--pid", str(pids[0]), "--format",
                                    "raw", "--rate", "200", "--nonblocking", "-o",
                                    str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

        def coordinator_cpu() -> float:
            return sum(proc_cpu_seconds(pid) for pid in pids)

        def one_job(k: int):
            client = clients[k % replicas]
            status = client.submit("mnist_edge", sources[k], shard_size, timeout=timeout)
            submitted[k] = coordinator_cpu()
            for update in client.watch(status.job_id, interval=0.05, timeout=timeout):
                status = update
                if update.state != "running":
                    break
            return status

        submitted = [0.0] * jobs
        c0, n0 = coordinator_cpu(), sum(proc_cpu_seconds(p) for p in node_pids)
        t0 = time.monotonic()
        with ThreadPoolExecutor(jobs) as pool:
            statuses = list(pool.map(one_job, range(jobs)))
        elapsed = time.monotonic() - t0
        cpu = coordinator_cpu() - c0
        node_cpu = sum(proc_cpu_seconds(p) for p in node_pids) - n0
        if spy is not None:
            import signal

            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        seen: Counter = Counter()
        for k, status in enumerate(statuses):
            seen.update(r.id for r in clients[k % replicas].results(status.job_id,
                                                                    timeout=timeout))
        states = sorted({s.state for s in statuses})
        return {"nodes": nodes, "replicas": replicas, "jobs": jobs, "items": items,
                "state": ",".join(states),
                "items_per_s": items / elapsed, "coordinator_us_per_item": cpu / items * 1e6,
                "coordinator_cpu_per_s": cpu / elapsed,
                "submit_us_per_item": ((submitted[0] - c0) / items * 1e6 if jobs == 1
                                       else float("nan")),
                "nodes_us_per_item": node_cpu / items * 1e6,
                "lost": sum(1 for i in ids if i not in seen),
                "duplicated": sum(c - 1 for c in seen.values())}
    finally:
        for c in clients:
            c.close()
        for p in reversed(procs):
            p.stop(grace=5)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    """Run the job once per ``--nodes`` (and ``--replicas``) value and print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--postgres", action="store_true",
                   help="keep the job store in a temporary PostgreSQL server (tests/postgres.py, "
                        "needs bash scripts/setup_postgres.sh) instead of SQLite")
    p.add_argument("--pg-bin", type=Path, help="PostgreSQL server binaries to use with "
                   "--postgres (default: Debian's newest /usr/lib/postgresql/N/bin)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1],
                   help="coordinator replicas sharing the store (more than 1 needs --postgres)")
    p.add_argument("--jobs", type=int, default=1,
                   help="split the items into this many jobs submitted at once (job k "
                        "through replica k mod --replicas)")
    p.add_argument("--profile", type=Path, help="write py-spy's raw samples of the "
                   "coordinator here (first run only)")
    args = p.parse_args()
    if max(args.replicas) > 1 and not args.postgres:
        p.error("--replicas above 1 needs --postgres (replicas share a PostgreSQL store)")
    for line in machine_info():
        print(line)
    print(f"store: {'PostgreSQL' if args.postgres else 'SQLite'}")
    print(f"| nodes | replicas | jobs | items | state | items/s | coordinator µs CPU/item "
          f"| coordinators CPU s/s | of which Submit µs/item | stand-ins µs/item | lost | dup "
          f"|  (shard size {args.shard_size})")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    server = None
    if args.postgres:
        from tests.postgres import PostgresServer

        pg_dir = tempfile.mkdtemp(prefix="edgeshard-bench-pg-")
        server = PostgresServer(args.pg_bin).start(pg_dir)
    try:
        first = True
        for n in args.nodes:
            for replicas in args.replicas:
                url = (server.create_database(f"bench_{n}_{replicas}_{args.jobs}")
                       if server is not None else None)
                r = run(args.items, n, args.shard_size, args.timeout,
                        args.profile if first else None, url, replicas, args.jobs)
                first = False
                print(f"| {n} | {replicas} | {r['jobs']} | {r['items']} | {r['state']} | "
                      f"{r['items_per_s']:,.0f} | {r['coordinator_us_per_item']:.1f} | "
                      f"{r['coordinator_cpu_per_s']:.2f} | {r['submit_us_per_item']:.1f} | "
                      f"{r['nodes_us_per_item']:.1f} | {r['lost']} | {r['duplicated']} |",
                      flush=True)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
