"""Benchmark the coordinator: online overhead against direct node calls, and job scaling.

Usage::

    python bench/bench_fleet.py [all|online|jobs] [--markdown] [--seconds S] [--repeat R]
    python bench/bench_fleet.py hold [--nodes N] [--standalone]   # for bench/perf_analyzer.sh

``online``: a coordinator fronting 2 edge nodes (``--workers 1`` each). The same client
threads (1 and 4, one ``OIPClient`` each) send single-image and batch-32 requests either
straight to the nodes (thread i talks to node i mod 2, i.e. client-side balancing over the
same two nodes), or through ``bench/relay.py`` (a bare grpc.aio relay: the cost of one
more Python gRPC hop on this machine), or to the coordinator's OIP front: items/s, p50 /
p99 latency and the overhead over direct (throughput ratio and added p50).

``jobs``: the hold-out set repeated ``--repeat`` times (20 -> 20,000 items) as one sharded
job on 1, 2 and 3 nodes (``--workers 1`` each, a fresh coordinator per run): items/s from
Submit to the job's ``done`` (client clock) and from the coordinator's own created/finished
times, and the scaling ratio against 1 node. Every result is fetched and counted.

``hold``: start a fleet, print its addresses as JSON on one line, and keep it up until
SIGTERM / SIGINT arrives or ``--max-seconds`` pass (bench/perf_analyzer.sh uses it).

Everything runs on loopback; all loops are bounded in count and time; every process this
script starts is stopped (SIGTERM, then SIGKILL) before it exits.
Results go to docs/PERFORMANCE.md ("## Fleet (coordinator)").
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import (  # noqa: E402
    Result,
    fmt,
    machine_busy_seconds,
    machine_info,
    proc_cpu_seconds,
    served_ours,
)

import edgeshard_models  # noqa: E402
from coordinator.api.control_client import CoordinatorClient  # noqa: E402
from coordinator.cli.launcher import NodeProcess, start_coordinator, start_node  # noqa: E402
from coordinator.jobs.items import ItemSource  # noqa: E402

QUIET = ["--log-level", "WARNING"]


# -- fleet -----------------------------------------------------------------------------------
@dataclass
class Fleet:
    coordinator: NodeProcess | None
    nodes: list[NodeProcess]
    standalone: NodeProcess | None = None

    @property
    def pids(self) -> list[int]:
        procs = [self.coordinator, *self.nodes, self.standalone]
        return [p.process.pid for p in procs if p is not None]


def wait_live(address: str, n: int, timeout: float = 30.0) -> None:
    client = CoordinatorClient(address)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for x in client.nodes() if x.state == "live") >= n:
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"fewer than {n} nodes became live within {timeout:.0f}s")


@contextmanager
def fleet(nodes: int, workers: int = 1, standalone_workers: int = 0, coordinator: bool = True,
          coordinator_args: list[str] | None = None, repository: Path | None = None):
    """A coordinator (optional) with ``nodes`` registered edge nodes, plus an optional
    standalone node (not registered), serving ``repository`` (default: the shipped
    models); everything is stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-fleet-"))
    repo = Path(repository).resolve() if repository else edgeshard_models.repository_path()
    f = Fleet(None, [])
    try:
        reg: list[str] = []
        if coordinator:
            f.coordinator = start_coordinator("coordinator", workdir / "state", workdir,
                                              extra_args=QUIET + (coordinator_args or []))
            reg = ["--coordinator", f.coordinator.address]
        for i in range(nodes):
            f.nodes.append(start_node(f"node-{i + 1}", repo, workdir,
                                      extra_args=["--workers", str(workers), *reg, *QUIET]))
        if standalone_workers:
            f.standalone = start_node("standalone", repo, workdir,
                                      extra_args=["--workers", str(standalone_workers), *QUIET])
        if coordinator and nodes:
            wait_live(f.coordinator.address, nodes)
        yield f
    finally:
        for p in reversed([f.coordinator, *f.nodes, f.standalone]):
            if p is not None:
                p.stop(grace=5)
        shutil.rmtree(workdir, ignore_errors=True)


# -- online ----------------------------------------------------------------------------------
def run_online(model: str, seconds: float, warmup: float, threads: list[int],
               batches: list[int]) -> list[list[Result]]:
    """Per (batch, threads): direct to the nodes, through a bare relay, via the
    coordinator."""
    images, _ = edgeshard_models.load_holdout()
    groups = []
    with fleet(2, workers=1) as f:
        direct = [n.address for n in f.nodes]
        relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("relay.py")),
                                  *direct], stdout=subprocess.PIPE, text=True)
        try:
            relayed = [f"127.0.0.1:{int(relay.stdout.readline())}"]
            pids = [*f.pids, relay.pid]
            for batch in batches:
                for t in threads:
                    groups.append([
                        served_ours(direct, model, images, batch, t, seconds, warmup, pids,
                                    "direct (2 nodes)"),
                        served_ours(relayed, model, images, batch, t, seconds, warmup, pids,
                                    "bare relay"),
                        served_ours([f.coordinator.address], model, images, batch, t, seconds,
                                    warmup, pids, "via coordinator")])
        finally:
            relay.kill()
            relay.wait()
    return groups


def print_online(groups: list[list[Result]], markdown: bool) -> None:
    print("online: coordinator + 2 edge nodes (--workers 1 each); direct = thread i -> node "
          "i mod 2; bare relay = bench/relay.py (unparsed bytes, round robin, grpc.aio)")
    if markdown:
        print("| path | batch | client threads | items/s | p50 ms | p99 ms "
              "| / direct (items/s) | added p50 ms | fleet CPU s/s | client CPU s/s "
              "| other procs CPU s/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print(f"{'path':<20}{'batch':>6}{'thr':>5}{'items/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'ratio':>8}{'+p50 ms':>9}{'srvCPU':>8}{'cliCPU':>8}{'other':>7}{'err':>5}")
    for d, *others in groups:
        for r in (d, *others):
            ratio = fmt(r.items_per_s / d.items_per_s, 3) if r is not d else "1"
            added = fmt(r.pct(50) - d.pct(50), 2) if r is not d else "-"
            cpu = fmt(r.node_cpu_s / r.seconds, 2)
            cli = fmt(r.client_cpu_s / r.seconds, 2)
            oth = fmt(r.other_cpu_s / r.seconds, 2)
            if markdown:
                print(f"| {r.case} | {r.batch} | {r.threads} | {fmt(r.items_per_s)} "
                      f"| {fmt(r.pct(50), 2)} | {fmt(r.pct(99), 2)} | {ratio} | {added} "
                      f"| {cpu} | {cli} | {oth} |")
            else:
                print(f"{r.case:<20}{r.batch:>6}{r.threads:>5}{fmt(r.items_per_s):>11}"
                      f"{fmt(r.pct(50), 2):>9}{fmt(r.pct(99), 2):>9}{ratio:>8}{added:>9}"
                      f"{cpu:>8}{cli:>8}{oth:>7}{r.errors:>5}")


# -- jobs ------------------------------------------------------------------------------------
@dataclass
class JobRun:
    nodes: int
    items: int
    results: int
    lost: int
    duplicated: int
    state: str
    submit_s: float
    total_s: float
    server_s: float
    shares: dict[str, int]
    requeued: int
    coordinator_cpu_s: float = float("nan")
    nodes_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")
    other_cpu_s: float = float("nan")

    @property
    def items_per_s(self) -> float:
        return self.items / max(self.total_s, 1e-9)


def run_job(model: str, nodes: int, repeat: int, shard_size: int, timeout: float) -> JobRun:
    images, _ = edgeshard_models.load_holdout()
    ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(images))]
    items = ItemSource.from_arrays(ids, np.tile(images, (repeat, 1, 1)))
    with fleet(nodes, workers=1, coordinator_args=["--shard-size", str(shard_size)]) as f:
        client = CoordinatorClient(f.coordinator.address)
        coord_pid, node_pids = f.coordinator.process.pid, [n.process.pid for n in f.nodes]
        try:
            c0 = proc_cpu_seconds(coord_pid)
            n0 = sum(proc_cpu_seconds(p) for p in node_pids)
            me0, busy0 = time.process_time(), machine_busy_seconds()
            t0 = time.monotonic()
            status = client.submit(model, items, shard_size, timeout=timeout)
            t1 = time.monotonic()
            for st in client.watch(status.job_id, interval=0.05, timeout=timeout):
                status = st
                if st.state != "running":
                    break
            t2 = time.monotonic()
            cpu_c = proc_cpu_seconds(coord_pid) - c0
            cpu_n = sum(proc_cpu_seconds(p) for p in node_pids) - n0
            cpu_me = time.process_time() - me0
            other = max(0.0, machine_busy_seconds() - busy0 - cpu_c - cpu_n - cpu_me)
            if status.state == "running":  # the stream ended early: ask once more
                status = client.get(status.job_id)
            records = list(client.results(status.job_id, timeout=timeout))
        finally:
            client.close()
    seen = Counter(r.id for r in records)
    server_s = (status.finished_at - status.created_at) if status.finished_at else float("nan")
    return JobRun(nodes, len(ids), len(records), sum(1 for i in ids if i not in seen),
                  sum(c - 1 for c in seen.values()), status.state, t1 - t0, t2 - t0,
                  server_s, dict(Counter(r.node for r in records)), status.requeued_shards,
                  cpu_c, cpu_n, cpu_me, other)


def print_jobs(runs: list[JobRun], shard_size: int, markdown: bool) -> None:
    base = runs[0].items_per_s if runs and runs[0].nodes == 1 else float("nan")
    print(f"jobs: {runs[0].items if runs else 0} items, shard size {shard_size}, "
          "nodes --workers 1, fresh coordinator per run")
    if markdown:
        print("| nodes | items | state | results | lost | dup | submit s | submit->done s "
              "| items/s | server-side s | scaling vs 1 node | coordinator CPU s/s "
              "| nodes CPU s/s | client CPU s/s | other procs CPU s/s | per-node share |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    else:
        print(f"{'nodes':>5}{'items':>7}{'state':>7}{'res':>7}{'lost':>5}{'dup':>5}"
              f"{'submit':>8}{'total s':>9}{'items/s':>9}{'server s':>9}{'scale':>7}"
              f"{'coord':>7}{'nodes':>7}{'client':>7}{'other':>7}  share")
    for r in runs:
        share = ", ".join(f"{n} {c / max(1, r.results):.0%}" for n, c in sorted(r.shares.items()))
        scale = fmt(r.items_per_s / base, 2)
        cpu = [fmt(x / r.total_s, 2) for x in (r.coordinator_cpu_s, r.nodes_cpu_s,
                                                r.client_cpu_s, r.other_cpu_s)]
        if markdown:
            print(f"| {r.nodes} | {r.items:,} | {r.state} | {r.results:,} | {r.lost} "
                  f"| {r.duplicated} | {r.submit_s:.2f} | {r.total_s:.2f} "
                  f"| {fmt(r.items_per_s)} | {fmt(r.server_s, 2)} | {scale} | "
                  + " | ".join(cpu) + f" | {share} |")
        else:
            print(f"{r.nodes:>5}{r.items:>7}{r.state:>7}{r.results:>7}{r.lost:>5}"
                  f"{r.duplicated:>5}{r.submit_s:>8.2f}{r.total_s:>9.2f}"
                  f"{fmt(r.items_per_s):>9}{fmt(r.server_s, 2):>9}{scale:>7}"
                  + "".join(f"{x:>7}" for x in cpu) + f"  {share}")


# -- hold ------------------------------------------------------------------------------------
def hold(nodes: int, standalone: bool, max_seconds: float, repository: Path | None) -> int:
    stop = threading.Event()

    def on_signal(*_):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with fleet(nodes, workers=1, standalone_workers=2 if standalone else 0,
               coordinator=nodes > 0, repository=repository) as f:
        print(json.dumps({
            "coordinator": f.coordinator.address if f.coordinator else None,
            "nodes": [n.address for n in f.nodes],
            "standalone": f.standalone.address if f.standalone else None,
        }), flush=True)
        stop.wait(max_seconds)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "online", "jobs", "hold"])
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--model", default=edgeshard_models.EDGE_MODEL,
                   help=f"model ({edgeshard_models.EDGE_MODEL})")
    p.add_argument("--seconds", type=float, default=3.0, help="measured s per online case (3)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up s per online case (0.5)")
    p.add_argument("--threads", default="1,4", help="online client threads (1,4)")
    p.add_argument("--batches", default="1,32", help="online batch sizes (1,32)")
    p.add_argument("--repeat", type=int, default=20, help="hold-out copies in the job (20)")
    p.add_argument("--shard-size", type=int, default=32, help="items per shard (32)")
    p.add_argument("--job-nodes", default="1,2,3", help="node counts for jobs (1,2,3)")
    p.add_argument("--job-timeout", type=float, default=120.0, help="per-job bound (s)")
    p.add_argument("--nodes", type=int, default=2, help="hold: nodes behind the coordinator")
    p.add_argument("--standalone", action="store_true",
                   help="hold: also a standalone node with --workers 2")
    p.add_argument("--max-seconds", type=float, default=900.0, help="hold: upper bound (s)")
    p.add_argument("--repository", type=Path, default=None,
                   help="hold: model repository to serve (default: the shipped models)")
    args = p.parse_args()

    if args.what == "hold":
        return hold(max(0, min(args.nodes, 8)), args.standalone, args.max_seconds,
                    args.repository)

    seconds = min(max(args.seconds, 0.5), 30.0)
    warmup = min(max(args.warmup, 0.0), 10.0)
    threads = [int(x) for x in args.threads.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    job_nodes = [int(x) for x in args.job_nodes.split(",") if x]
    if not (1 <= args.repeat <= 100 and all(1 <= n <= 8 for n in job_nodes)
            and all(1 <= t <= 64 for t in threads) and all(1 <= b <= 64 for b in batches)):
        p.error("--repeat 1..100, node counts 1..8, threads and batches 1..64")

    for line in machine_info():
        print(line)
    print()
    failed = False
    if args.what in ("all", "online"):
        groups = run_online(args.model, seconds, warmup, threads, batches)
        print_online(groups, args.markdown)
        failed |= any(r.errors for group in groups for r in group)
        print()
    if args.what in ("all", "jobs"):
        runs = [run_job(args.model, n, args.repeat, args.shard_size, args.job_timeout)
                for n in job_nodes]
        print_jobs(runs, args.shard_size, args.markdown)
        failed |= any(r.lost or r.duplicated or r.state != "done" for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
