"""What drift monitoring adds to a request at the node: ``DriftWindows.observe``.

Usage::

    python bench/bench_drift.py [--min-runs N]

Times the whole per-request step (sampling counter, ``ext.window_stats`` of the input
and of the confidences, the window update under its lock) for the shipped ``mnist_edge``
version and its profile on 1 and 20 MNIST images, and for a 480x640x3 uint8 frame
against a 3-channel profile; compiled kernel and NumPy reference. Each figure is the
median of single calls. Results go to docs/PERFORMANCE.md ("Drift statistics").
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeshard_models  # noqa: E402
from edge_node.drift import DriftWindows  # noqa: E402
from edge_node.repository import ModelRepository  # noqa: E402
from edgeshard.profile import Histogram, InputStats  # noqa: E402


def median_us(fn, min_runs: int) -> float:
    times = []
    for _ in range(min_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-runs", type=int, default=2000)
    args = parser.parse_args()
    import ext

    repo = ModelRepository(edgeshard_models.repository_path())
    repo.load()
    mv = repo.models[edgeshard_models.EDGE_MODEL].versions["1"]
    rgb = dataclasses.replace(mv, profile=dataclasses.replace(mv.profile, input=InputStats(
        "uint8", 3, (1, 1, 1), (0.0,) * 3, (1.0,) * 3, Histogram(0.0, 256.0, (1,) * 32))))
    images, _ = edgeshard_models.load_holdout()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    cases = [("1 MNIST image [1,28,28]", mv, images[:1]),
             ("20 MNIST images [20,28,28]", mv, images[:20]),
             ("1 frame [1,480,640,3]", rgb, frame)]
    print(f"ext implementation: {ext.IMPLEMENTATION}; cpu count {os.cpu_count()}")
    print("| case | per request µs (median) |")
    print("|---|---:|")
    for name, version, x in cases:
        windows = DriftWindows(window_items=1000)
        conf = np.full(len(x), 0.9, np.float32)
        us = median_us(lambda w=windows, v=version, x=x, c=conf: w.observe(v, "cam", x, c),
                       args.min_runs)
        print(f"| {name} | {us:,.1f} |")


if __name__ == "__main__":
    main()
