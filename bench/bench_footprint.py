"""Footprint: resident memory and start-up time of an edge node and of a coordinator.

Usage::

    python bench/bench_footprint.py [--runs 5] [--seconds 10]

For each of ``--runs`` starts: the time from exec to SERVING (the node's ready file,
written once every worker is warm and the gRPC server answers; the coordinator's, once it
serves), then RSS (``/proc/<pid>/status`` VmRSS) idle, and RSS after ``--seconds`` of
load (4 client threads sending single-image ModelInfer to the node directly and through
the coordinator). The node serves the shipped edge model (mnist_edge, 10 KB) with
``--workers 2``; the coordinator uses its SQLite store. Prints medians and ranges, and a
Markdown table with ``--markdown``. Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeshard_models  # noqa: E402
from coordinator.cli.launcher import start_coordinator, start_node  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS, which is in KiB, over 1024)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def load(address: str, seconds: float, threads: int = 4) -> int:
    """Single-image requests from ``threads`` clients for ``seconds``; returns how many."""
    import tritonclient.grpc as tc

    done = []
    stop = time.monotonic() + seconds
    image = np.zeros((1, 28, 28), np.uint8)

    def run():
        client = tc.InferenceServerClient(address)
        inp = tc.InferInput("image", [1, 28, 28], "UINT8")
        inp.set_data_from_numpy(image)
        n = 0
        while time.monotonic() < stop:
            client.infer(edgeshard_models.EDGE_MODEL, [inp])
            n += 1
        done.append(n)
        client.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done)


def one_run(workdir: Path, seconds: float) -> dict[str, float]:
    t0 = time.monotonic()
    coordinator = start_coordinator("coordinator", workdir / "state", workdir)
    t_coord = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        node = start_node("node", edgeshard_models.repository_path(), workdir,
                          extra_args=["--workers", "2", "--coordinator", coordinator.address])
        t_node = time.monotonic() - t0
        try:
            time.sleep(1.0)  # registered, idle
            idle_node, idle_coord = rss_mb(node.process.pid), rss_mb(coordinator.process.pid)
            load(node.address, seconds / 2)
            n = load(coordinator.address, seconds / 2)
            return {"node_start_s": t_node, "coordinator_start_s": t_coord,
                    "node_idle_mb": idle_node, "coordinator_idle_mb": idle_coord,
                    "node_load_mb": rss_mb(node.process.pid),
                    "coordinator_load_mb": rss_mb(coordinator.process.pid),
                    "requests": n}
        finally:
            node.stop(grace=5)
    finally:
        coordinator.stop(grace=5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    runs = []
    for i in range(max(1, args.runs)):
        with tempfile.TemporaryDirectory(prefix="edgeshard-footprint-") as d:
            runs.append(one_run(Path(d), args.seconds))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()),
              flush=True)
    keys = [k for k in runs[0] if k != "requests"]
    if args.markdown:
        print("\n| measure | median | min | max |\n|---|---|---|---|")
    for k in keys:
        values = [r[k] for r in runs]
        line = (f"| {k} | {statistics.median(values):.2f} | {min(values):.2f} | "
                f"{max(values):.2f} |" if args.markdown else
                f"{k}: median {statistics.median(values):.2f} (min {min(values):.2f}, "
                f"max {max(values):.2f})")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
