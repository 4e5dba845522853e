"""Benchmark placement: cost per decision and the balance/movement figures.

Run: ``python bench/bench_placement.py [--keys 20000]``. Prints one table; medians of
five timing runs. Not a test: figures go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import timeit
from collections import Counter

from coordinator.fleet.placement import (
    BoundedLoadAssigner,
    Candidate,
    moved_keys,
    pick_for_key,
    pick_least_loaded_of_two,
    rank,
    rendezvous_score,
    top_choice,
)
from coordinator.fleet.rebalance import SlowNodePolicy


def per_call_us(stmt, number: int) -> float:
    runs = timeit.repeat(stmt, number=number, repeat=5)
    return statistics.median(runs) / number * 1e6


def fleet(n: int) -> list[Candidate]:
    rng = random.Random(n)
    return [Candidate(f"node-{i}", 1.0, float(rng.randrange(8)), 16.0) for i in range(n)]


def timings() -> None:
    print("| operation | nodes | us per call |")
    print("|---|---|---|")
    score_us = per_call_us(lambda: rendezvous_score("k", "n"), 20_000)
    print(f"| rendezvous_score | 1 | {score_us:.2f} |")
    rng = random.Random(0)
    for n in (10, 100):
        policy = SlowNodePolicy()
        nodes = fleet(n)
        latencies = {c.node_id: 10.0 + (i % 7) for i, c in enumerate(nodes)}
        clock = iter(range(10**9))
        rows = [
            ("rank", lambda nodes=nodes: rank("model-a/1", nodes)),
            ("top_choice", lambda nodes=nodes: top_choice("model-a/1", nodes)),
            ("pick_for_key (eps 0.25)", lambda nodes=nodes: pick_for_key("model-a/1", nodes)),
            ("pick_least_loaded_of_two",
             lambda nodes=nodes: pick_least_loaded_of_two(nodes, rng)),
            ("SlowNodePolicy.update",
             lambda lat=latencies, clock=clock, policy=policy:
             policy.update(lat, float(next(clock)))),
        ]
        number = 2_000 if n == 10 else 300
        for name, fn in rows:
            print(f"| {name} | {n} | {per_call_us(fn, number):.1f} |")


def figures(n_keys: int) -> None:
    keys = [f"model-{i % 7}/request-{i}" for i in range(n_keys)]
    base = [Candidate(f"node-{i}") for i in range(10)]
    leave = moved_keys(keys, base, base[:3] + base[4:])
    join = moved_keys(keys, base, base + [Candidate("node-10")])
    print(f"\nkeys moved, {n_keys} keys, 10 nodes: leave {leave:.4f} (1/N 0.1000), "
          f"join {join:.4f} (1/(N+1) {1 / 11:.4f})")
    rng = random.Random(7)
    skewed = ["hot-0"] * 4000 + ["hot-1"] * 2000 + ["hot-2"] * 1000
    skewed += [f"cold-{rng.randrange(300)}" for _ in range(3000)]
    rng.shuffle(skewed)
    plain = max(Counter(top_choice(k, base) for k in skewed).values()) / 1000
    print(f"skewed 10,000 units on 10 nodes: plain HRW max/mean {plain:.2f}")
    for eps in (0.1, 0.25, 0.5):
        assigner = BoundedLoadAssigner({c.node_id: 1.0 for c in base}, epsilon=eps)
        for key in skewed:
            assigner.assign(key)
        print(f"  bounded loads eps {eps}: max/mean {assigner.max_over_mean():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    args = parser.parse_args()
    timings()
    figures(args.keys)


if __name__ == "__main__":
    main()
