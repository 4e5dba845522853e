"""The main job on the embedded default: a local fleet on loopback runs the hold-out set.

Starts a coordinator and N edge nodes (registering with it) as local processes on free
loopback ports, measures online latency through the coordinator's OIP front, then runs
the shipped MNIST hold-out set (repeated ``--repeat`` times, each copy with its own item
ids) as a sharded batch job. With ``--kill-one`` one node is SIGKILLed part-way; its
shards are re-queued to the others. The report counts every item: results, lost,
duplicated, per-node share, throughput, latency and accuracy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import edgeshard_models
from coordinator.clients import OIPClient
from coordinator.fleet_clients import CoordinatorClient
from coordinator.jobinput import ItemSource
from coordinator.launcher import NodeProcess, start_coordinator, start_node
from coordinator.progress import ProgressBar

FAST_MEMBERSHIP = [  # a demo fleet on loopback can afford quick failure detection
    "--heartbeat-interval-s", "0.5", "--probe-interval-s", "0.5", "--probe-timeout-s", "0.5",
    "--suspect-after-s", "1.5", "--dead-after-s", "3", "--shard-deadline-s", "3",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="edge nodes to start (3)")
    p.add_argument("--kill-one", action="store_true",
                   help="SIGKILL one node when the job is about a third done")
    p.add_argument("--repeat", type=int, default=10,
                   help="copies of the 1,000-image hold-out set in the job (10)")
    p.add_argument("--shard-size", type=int, default=32, help="items per shard (32)")
    p.add_argument("--online", type=int, default=300,
                   help="single-image online requests for the latency figure (300)")
    p.add_argument("--model", default=edgeshard_models.EDGE_MODEL, help="model to run")
    p.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")


@dataclass
class Report:
    nodes: int
    items: int
    results: int
    lost: int
    duplicated: int
    correct: int
    seconds: float
    shares: dict[str, int]
    killed: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    requeued: int = 0
    state: str = ""

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.results - self.duplicated)

    def lines(self) -> list[str]:
        lat = np.asarray(self.latencies_ms or [0.0])
        out = [
            f"fleet        {self.nodes} edge node(s)"
            + (f", {self.killed} killed (SIGKILL) part-way" if self.killed else ""),
            f"job          {self.state}: {self.items} items",
            f"results      {self.results}",
            f"lost         {self.lost}",
            f"duplicated   {self.duplicated}",
            f"throughput   {self.items / max(self.seconds, 1e-9):,.0f} items/s "
            f"({self.seconds:.2f} s)",
            f"accuracy     {self.accuracy:.4f}",
            f"online p50   {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms "
            f"({len(self.latencies_ms)} single-image requests via the coordinator)",
            "per-node share:",
        ]
        for node, n in sorted(self.shares.items()):
            out.append(f"  {node:<12} {n:>7} items  {n / max(1, self.results):6.1%}")
        return out


def _wait_live(client: CoordinatorClient, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for x in client.nodes() if x.state == "live") >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"fewer than {n} nodes became live within {timeout:.0f}s")


def _online_latency(address: str, model: str, images: np.ndarray, count: int) -> list[float]:
    client = OIPClient(address)
    try:
        latencies = []
        for i in range(count):
            t0 = time.perf_counter()
            client.classify(model, images[i % len(images)][None], timeout=10.0)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies
    finally:
        client.close()


def run(nodes: int = 3, kill_one: bool = False, repeat: int = 10, shard_size: int = 32,
        online: int = 300, model: str = edgeshard_models.EDGE_MODEL,
        workdir: Path | None = None, out=print, progress: bool = True) -> Report:
    images, labels = edgeshard_models.load_holdout()
    keep = workdir is not None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeshard-demo-"))
    procs: list[NodeProcess] = []
    client = None
    try:
        out(f"starting a coordinator and {nodes} edge node(s) on loopback (logs in {workdir})")
        coord = start_coordinator("coordinator", workdir / "state", workdir,
                                  extra_args=FAST_MEMBERSHIP + ["--shard-size", str(shard_size)])
        procs.append(coord)
        for i in range(nodes):
            procs.append(start_node(
                f"node-{i + 1}", edgeshard_models.repository_path(), workdir,
                extra_args=["--coordinator", coord.address, "--workers", "1"]))
        client = CoordinatorClient(coord.address)
        _wait_live(client, nodes)
        out(f"coordinator {coord.address}: {nodes} node(s) live")

        latencies = _online_latency(coord.address, model, images, online) if online else []

        ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(images))]
        truth = dict(zip(ids, np.tile(labels, repeat).tolist(), strict=True))
        items = ItemSource.from_arrays(ids, np.tile(images, (repeat, 1, 1)))
        started = time.monotonic()
        status = client.submit(model, items, shard_size)
        job_id = status.job_id
        out(f"job {job_id}: {len(ids)} items in {status.shards_total} shards")
        bar = ProgressBar(len(ids), "job") if progress else None
        killed = ""
        for st in client.watch(job_id, interval=0.1):
            if bar:
                bar.update(st.done_items)
            if kill_one and not killed and st.done_items >= len(ids) // 3 and nodes > 1:
                victim = procs[2] if nodes > 1 else procs[1]
                victim.kill()
                killed = victim.name
                out(f"\nkilled {killed} (SIGKILL) at {st.done_items}/{len(ids)} items")
            status = st
        seconds = time.monotonic() - started
        if bar:
            bar.close(status.state)
        records = list(client.results(job_id))
        seen = Counter(r.id for r in records)
        report = Report(
            nodes=nodes, items=len(ids), results=len(records),
            lost=sum(1 for i in ids if i not in seen),
            duplicated=sum(c - 1 for c in seen.values()),
            correct=sum(1 for r in records if truth.get(r.id) == r.label),
            seconds=seconds, shares=dict(Counter(r.node for r in records)),
            killed=killed, latencies_ms=latencies, state=status.state,
        )
        for line in report.lines():
            out(line)
        return report
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            p.stop(grace=5)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(args) -> int:
    if args.nodes < 1 or args.repeat < 1 or args.shard_size < 1 or args.online < 0:
        print("edge-coordinator demo: --nodes, --repeat and --shard-size must be >= 1",
              file=sys.stderr)
        return 2
    try:
        report = run(args.nodes, args.kill_one, args.repeat, args.shard_size, args.online,
                     args.model, args.workdir)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"edge-coordinator demo: failed: {exc}", file=sys.stderr)
        return 1
    return 0 if report.lost == 0 and report.duplicated == 0 and report.state == "done" else 1
