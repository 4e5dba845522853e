"""Scale simulation: the coordinator's real job machinery driving up to 256 simulated nodes.

Usage::

    python bench/bench_scale.py [--nodes 1 2 4 ... 256] [--items 50000 | --items-per-node 2048]
        [--shard-size 64] [--service-us-per-item 200] [--die-fraction 0.1]
        [--shards-per-node 2] [--node-workers 1] [--timeout 300] [--scenarios die join]

A 2-core machine cannot show scaling with real node processes (bench_fleet.py): they share
the cores with the coordinator. Here everything runs in ONE process, and only the nodes are
simulated.

Real: ``coordinator.jobs.store.JobStore`` (SQLite in a temp dir, fsynced commits), the
``coordinator.fleet.registry.Registry`` with every node admitted through
``coordinator.fleet.membership.Membership`` (a health check each), and the
``coordinator.jobs.dispatcher.Dispatcher`` with ``--shards-per-node`` pullers per node, its
lease sweeper and its re-queueing. Nodes die the way membership sees it: their health
checks fail, the registry's clock is moved past ``dead_after`` and one membership round
(probe every node, then ``sweep``) marks them dead, which fires the dispatcher's
``node_gone`` (``requeue_node``); their calls still in flight then fail with
``PeerStatusError("UNAVAILABLE")`` as a refused connection would.

Simulated: ``run_shard(node, lease)``. A node has ``--node-workers`` slots (one by default,
like a device that runs one batch at a time) served first come, first served: a shard runs
``service time x items`` from the moment it arrives or a slot frees, on the node's own
timeline, and the calling puller sleeps until it is done (an Event wait, which releases the
GIL like waiting on the network), then gets ``coordinator.jobs.runner.edge_output`` (int64
labels, float32 confidences). With one slot the node's second puller only pipelines: its
shard is queued at the node when the first finishes. Not in the path: gRPC, protobuf, and
the ``Forwarder``'s per-node accounting (two registry lock operations per shard) that
``ShardRunner`` adds in the real coordinator.

Per node count N, two scenarios:

* ``die``: N nodes; ``k = round(die_fraction x N)`` of them (at most N-1; none below 5
  nodes at 0.1) die once a third of the items have results.
* ``join``: N-1 nodes; one more is admitted once a third of the items have results.

Figures (``s`` = service s/item, ``c = min(node_workers, shards_per_node)`` slots per node,
``W = items x s / c`` node-seconds of work):

* run s: job stored (Submit done) to the last result committed; submit s is ``create_job``.
* ideal s: the run time with zero coordinator overhead and no lost work, a third of ``W``
  on the first fleet and two thirds on the second: die ``W/(3N) + 2W/(3(N-k))``, join
  ``W/(3(N-1)) + 2W/(3N)``, plain ``W/N``. Efficiency = ideal / run. It also pays for shard
  granularity (the last shards leave nodes idle) and, on deaths, the half-done shards redone.
* coordinator CPU: ``time.process_time()`` over the run (all threads). The simulated nodes
  only sleep and build the result rows (which a real coordinator builds too, when it decodes
  the node's answer), so process CPU ~ coordinator CPU. Utilisation = CPU s / run s: near
  1.0 the coordinator is CPU-saturated (the GIL and the store's one lock serialize nearly
  all of it, whatever the core count); far below 1.0 while efficiency falls, it is waiting,
  not computing. Other procs = the machine's busy CPU (/proc/stat) minus ours, per second.
* membership s: the one membership round that kills the nodes (die), or the admission of
  the new node (join): how long the membership thread is held up.
* requeued: the job's count in the store (``JobProgress.requeued_shards``), and in
  parentheses the dispatcher's ``requeued`` metric, which leaves out the leases that pullers
  of a no longer routable node give back; expired leases: those the sweeper re-queued
  (a lease held for ``lease_s``). Moved = requeued / shards. On a join work stealing moves
  nothing: 0 expected.
* new node share (join): the new node's results / the items without a result at the join;
  a fair share is about 1/N.
* lost / dup: every result is read back with ``JobStore.results``: ids never answered, ids
  answered twice. Must be 0 / 0.

Loops are bounded in time (``--timeout`` per job) and count; threads are stopped
(``Dispatcher.close``) and the temp dir removed. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_serving import machine_busy_seconds, machine_info  # noqa: E402

from coordinator.config import CoordinatorConfig  # noqa: E402
from coordinator.fleet.membership import Membership  # noqa: E402
from coordinator.fleet.registry import Registry  # noqa: E402
from coordinator.jobs.dispatcher import Dispatcher  # noqa: E402
from coordinator.jobs.items import ItemSource  # noqa: E402
from coordinator.jobs.model import Lease  # noqa: E402
from coordinator.jobs.runner import ShardOutput, edge_output  # noqa: E402
from coordinator.jobs.store import JobStore  # noqa: E402
from edgeshard.errors import PeerStatusError  # noqa: E402

MODEL = "sim_model"
MODELS = {MODEL: ("1",)}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(CoordinatorConfig)}
RESULT_PAGE = 50_000


class SimNode:
    """One simulated edge node: ``workers`` slots, ``service_s`` per item, FIFO.

    The node's own timeline decides when a shard runs: it starts when the shard arrives or
    when a slot frees, whichever is later, as on a real device. The calling puller only
    sleeps until then, so a thread slow to get the GIL delays the answer's delivery, as a
    real coordinator would, but never the node's next shard.
    """

    def __init__(self, index: int, service_s: float, workers: int, deadline_s: float):
        self.name = f"sim-{index:03d}"
        self.address = f"{self.name}:9000"
        self.service_s = service_s
        self.deadline_s = deadline_s
        self.free_at = [0.0] * workers  # when each slot is next free (monotonic s)
        self.lock = threading.Lock()
        self.healthy = True  # what its health check answers
        self.dead = threading.Event()  # set: calls fail as a refused connection would

    def probe(self) -> dict[str, tuple[str, ...]] | None:
        """The health check: the served models, or None when not SERVING."""
        return MODELS if self.healthy else None

    def run_shard(self, lease: Lease) -> ShardOutput:
        """Run one shard on the earliest free slot and answer every item."""
        n = len(lease.ids)
        with self.lock:
            now = time.monotonic()
            slot = min(range(len(self.free_at)), key=self.free_at.__getitem__)
            finish = max(now, self.free_at[slot]) + self.service_s * n
            self.free_at[slot] = finish
        if finish - now > self.deadline_s:
            self.dead.wait(self.deadline_s)
            raise PeerStatusError("DEADLINE_EXCEEDED", f"{self.name}: too slow")
        if self.dead.is_set() or self.dead.wait(max(0.0, finish - time.monotonic())):
            raise PeerStatusError("UNAVAILABLE", f"{self.name}: connection refused "
                                  "(simulated node died)")
        labels = np.arange(n, dtype=np.int64) % 10
        return edge_output(lease.ids, labels, np.full(n, 0.9, np.float32), self.name, "1")


class SimClock:
    """The registry's clock: monotonic time plus a skip, to age nodes without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def run_case(scenario: str, n: int, items: int, args: argparse.Namespace) -> dict:
    """One job on a fresh store, registry and dispatcher; its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-scale-"))
    service_s = args.service_us_per_item * 1e-6
    nodes = {}
    clock = SimClock()
    registry = Registry(DEFAULTS["suspect_after_s"], DEFAULTS["dead_after_s"], clock=clock)
    membership = Membership(registry, lambda address, _timeout: nodes[address].probe(),
                            interval=DEFAULTS["probe_interval_s"],
                            timeout=DEFAULTS["probe_timeout_s"])
    store = JobStore(str(workdir / "jobs.sqlite3"))
    done_items = [0]
    count_lock = threading.Lock()
    third, finished = threading.Event(), threading.Event()

    def committed(_node_id: str, accepted: int, _duplicates: int) -> None:
        with count_lock:
            done_items[0] += accepted
            total = done_items[0]
        if total * 3 >= items:
            third.set()
        if total >= items:
            finished.set()

    def admit(index: int) -> SimNode:
        node = SimNode(index, service_s, args.node_workers, DEFAULTS["shard_deadline_s"])
        nodes[node.address] = node
        registry.add_candidate(node.address, "seed", node_id=node.name)
        if not membership.probe_now(node.address):
            raise RuntimeError(f"{node.name} was not admitted")
        return node

    expired = [0]
    sweep = store.requeue_expired  # counted on the way through: leases that ran out

    def requeue_expired(now: float) -> list[tuple[int, str]]:
        gone = sweep(now)
        expired[0] += len(gone)
        return gone

    store.requeue_expired = requeue_expired
    dispatcher = Dispatcher(store, registry,
                            lambda rec, lease: nodes[rec.address].run_shard(lease),
                            shards_per_node=args.shards_per_node,
                            lease_s=DEFAULTS["lease_s"], on_commit=committed)
    r = {"scenario": scenario, "nodes": n, "items": items, "changed": 0, "state": "?",
         "share": None, "membership_s": None, "shards": math.ceil(items / args.shard_size)}
    try:
        for i in range(n if scenario == "die" else n - 1):
            admit(i)
        dispatcher.start()
        time.sleep(0.2)  # let the pullers reach their idle wait
        source = ItemSource.from_arrays([str(i) for i in range(items)],
                                        np.zeros((items, *args.item_shape), np.uint8))
        t0 = time.monotonic()
        job_id = store.create_job(MODEL, source, args.shard_size).job_id
        dispatcher.notify()
        c1, t1, b1 = time.process_time(), time.monotonic(), machine_busy_seconds()
        deadline = t1 + args.timeout
        third.wait(max(0.0, deadline - time.monotonic()))
        with count_lock:
            done_at_change = done_items[0]
        if scenario == "die":
            k = min(n - 1, round(args.die_fraction * n))
            victims = list(nodes.values())[n - k:]
            for node in victims:
                node.healthy = False
            clock.offset += DEFAULTS["dead_after_s"] + 1.0  # their silence, without the wait
            m0 = time.monotonic()
            membership.run_round()  # probes fail -> suspect; sweep -> dead -> requeue_node
            r["membership_s"] = time.monotonic() - m0
            for node in victims:
                node.dead.set()
            r["changed"] = k
        elif n > 1:
            m0 = time.monotonic()
            new = admit(n - 1)  # on_live -> the dispatcher starts its pullers
            r["membership_s"] = time.monotonic() - m0
            r["changed"] = 1
        state = "running"
        while not finished.wait(0.5) and time.monotonic() < deadline:
            state = store.progress(job_id).state  # a failed job ends the wait too
            if state != "running":
                break
        c2, t2, b2 = time.process_time(), time.monotonic(), machine_busy_seconds()
        progress = store.progress(job_id)
        r["state"] = state = progress.state
        if state == "running":
            store.cancel(job_id)
            r["state"] = "timeout"
        dispatcher.close()
        seen = Counter()
        by_node = Counter()
        after = 0
        for _ in range(items // RESULT_PAGE + 2):
            page = store.results(job_id, after_seq=after, limit=RESULT_PAGE)
            if not page:
                break
            seen.update(row.item_id for row in page)
            by_node.update(row.node for row in page)
            after = page[-1].seq
        if scenario == "join" and n > 1:
            r["share"] = by_node[new.name] / max(1, items - done_at_change)
        w = items * service_s / min(args.node_workers, args.shards_per_node)
        if scenario == "die":
            ideal = w / (3 * n) + 2 * w / (3 * (n - r["changed"]))
        else:
            ideal = w / (3 * (n - 1)) + 2 * w / (3 * n) if n > 1 else w
        r.update(submit_s=t1 - t0, run_s=t2 - t1, ideal_s=ideal, cpu_us=(c2 - c1) / items * 1e6,
                 cpu_util=(c2 - c1) / (t2 - t1), dispatcher_requeued=dispatcher.requeued,
                 other_cpu=(b2 - b1 - (c2 - c1)) / (t2 - t1), expired=expired[0],
                 requeued=getattr(progress, "requeued_shards", dispatcher.requeued),
                 lost=sum(1 for i in range(items) if str(i) not in seen),
                 dup=sum(c - 1 for c in seen.values()))
        return r
    finally:
        dispatcher.close()
        membership.close()
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)


def row(r: dict) -> str:
    """One Markdown table row for ``run_case``'s figures."""
    change = (f"{r['changed']} died" if r["scenario"] == "die"
              else f"{r['nodes'] - 1}+1 joined")
    share = "-" if r["share"] is None else f"{r['share']:.3f} ({1 / r['nodes']:.3f})"
    member = "-" if r["membership_s"] is None else f"{r['membership_s']:.2f}"
    return (f"| {r['scenario']} | {r['nodes']} | {change} | {r['items']:,} | {r['shards']:,} "
            f"| {r['state']} | {r['submit_s']:.2f} | {r['run_s']:.2f} | {r['ideal_s']:.2f} "
            f"| {r['ideal_s'] / r['run_s']:.2f} | {r['items'] / r['run_s']:,.0f} "
            f"| {r['shards'] / r['run_s']:,.0f} | {r['cpu_us']:.1f} | {r['cpu_util']:.2f} "
            f"| {r['other_cpu']:.2f} | {member} | {r['requeued']} ({r['dispatcher_requeued']}) "
            f"| {r['expired']} "
            f"| {r['requeued'] / r['shards']:.4f} | {share} | {r['lost']} | {r['dup']} |")


HEADER = ("| scenario | nodes | change at 1/3 | items | shards | state | submit s | run s "
          "| ideal s | efficiency | items/s | shards/s | coordinator µs CPU/item "
          "| coordinator CPU utilisation | other procs CPU s/s | membership s "
          "| requeued (dispatcher metric) | expired leases "
          "| moved (requeued/shards) | new node share (fair 1/N) | lost | dup |\n"
          "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|---:|---:|---:|---:|---:|")


def commit_ms(workdir: Path, count: int = 50) -> float:
    """Median ms of one fsynced SQLite commit (WAL, synchronous=FULL, as the store) here."""
    db = sqlite3.connect(str(workdir / "probe.sqlite3"), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (x INTEGER)")
        times = []
        for i in range(count):
            t = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (i,))
            db.execute("COMMIT")
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3
    finally:
        db.close()


def main() -> int:
    """Run each scenario per ``--nodes`` value and print one Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--items", type=int, help="items per job (default 50,000)")
    size.add_argument("--items-per-node", type=int,
                      help="items per job = this x nodes (weak scaling)")
    p.add_argument("--shard-size", type=int, default=DEFAULTS["shard_size"])
    p.add_argument("--service-us-per-item", type=float, default=200.0)
    p.add_argument("--die-fraction", type=float, default=0.1)
    p.add_argument("--shards-per-node", type=int, default=DEFAULTS["shards_per_node"])
    p.add_argument("--node-workers", type=int, default=1,
                   help="shards one simulated node runs at once")
    p.add_argument("--item-shape", type=int, nargs="+", default=[28, 28])
    p.add_argument("--scenarios", nargs="+", choices=["die", "join"], default=["die", "join"])
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per job")
    p.add_argument("--log-level", default="ERROR")
    args = p.parse_args()
    if min(args.nodes) < 1 or not 0 <= args.die_fraction < 1:
        p.error("--nodes must be >= 1 and --die-fraction in [0, 1)")
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    for line in machine_info():
        print(line)
    probe_dir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-scale-"))
    try:
        fsync_ms = commit_ms(probe_dir)
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    print(f"sqlite      one fsynced commit (WAL, synchronous=FULL) {fsync_ms:.2f} ms median, "
          f"in {tempfile.gettempdir()}")
    print(f"settings    shard size {args.shard_size}, service {args.service_us_per_item:g} "
          f"µs/item, {args.shards_per_node} pullers/node, {args.node_workers} slot(s)/node, "
          f"die fraction {args.die_fraction:g}, items of shape {tuple(args.item_shape)}")
    print()
    print(HEADER, flush=True)
    for n in args.nodes:
        items = args.items_per_node * n if args.items_per_node else args.items or 50_000
        for scenario in args.scenarios:
            if scenario == "join" and n == 1:
                continue
            r = run_case(scenario, n, items, args)
            print(row(r), flush=True)
    load = os.getloadavg()
    print(f"\nloadavg     {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (after the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
