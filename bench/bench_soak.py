"""Soak: run the fleet at about 80 % of its capacity for a long time and watch it age.

Usage::

    python bench/bench_soak.py [--minutes 10] [--load 0.8] [--nodes 2] [--window 30]

A coordinator fronting ``--nodes`` edge nodes (``--workers 1`` each) on loopback. First
its capacity is measured by the same asyncio client: the closed-loop rate (16
single-image ModelInfer requests always outstanding, through the coordinator) bounds a
bisection for the highest open-loop rate whose p99 stays under ``--slo-ms`` without
errors (batching makes closed-loop throughput unreachable in open loop). Then an
open-loop client sends requests at ``--load`` x that rate, on a fixed schedule (a
request is due every 1/rate seconds whether or not earlier ones answered, so a slowdown
shows as latency, not as a lower rate), for ``--minutes``. Every ``--window`` seconds it prints the
window's throughput, p50 / p99 / max latency, errors, and the resident memory (RSS,
from /proc) of the coordinator and of each node; at the end, RSS growth from the first
window to the last and the p99 trend. A job streamed in the background (``--job-items``
items every window, one Watch and one FetchResults(follow) each) keeps the job path
busy too.

Every process it starts is stopped before it exits. Results go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fleet import fleet  # noqa: E402
from bench_serving import machine_info  # noqa: E402

import edgeshard_models  # noqa: E402
from coordinator.api.control_client import CoordinatorClient  # noqa: E402
from coordinator.jobs.items import ItemSource  # noqa: E402
from protos import codec, oip_pb2  # noqa: E402
from protos.oip_service import SERVICE_NAME  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS from /proc), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Window:
    """What one reporting window saw: latencies (s) of the requests sent in it, errors."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()


def infer_call(channel: grpc.aio.Channel):
    return channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer",
                               request_serializer=oip_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=oip_pb2.ModelInferResponse.FromString)


def infer_requests(images: np.ndarray) -> list:
    out = []
    for k in range(64):
        tensor, raw = codec.encode_input_tensor("image", images[k:k + 1])
        out.append(oip_pb2.ModelInferRequest(model_name=edgeshard_models.EDGE_MODEL,
                                             inputs=[tensor], raw_input_contents=[raw]))
    return out


async def closed_loop(address: str, seconds: float, concurrency: int,
                      images: np.ndarray) -> float:
    """Requests answered per second with ``concurrency`` requests always outstanding,
    from this same client (so the soak's rate is a share of what it can drive)."""
    channel = grpc.aio.insecure_channel(address)
    call, requests = infer_call(channel), infer_requests(images)
    answered = 0
    end = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal answered
        k = i
        while time.monotonic() < end:
            await call(requests[k % len(requests)], timeout=10)
            answered += 1
            k += concurrency

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    took = time.monotonic() - started
    await channel.close()
    return answered / took


async def open_loop(address: str, rate: float, seconds: float, images: np.ndarray,
                    windows: list[Window], window_s: float) -> None:
    """Send single-image ModelInfer at ``rate``/s for ``seconds`` on a fixed schedule;
    record each latency (s) in the window it was sent in."""
    channel = grpc.aio.insecure_channel(address)
    call, requests = infer_call(channel), infer_requests(images)
    start = time.monotonic()
    pending: set[asyncio.Task] = set()

    async def one(k: int, window: Window) -> None:
        sent = time.monotonic()
        try:
            await call(requests[k % len(requests)], timeout=10)
            window.latencies.append(time.monotonic() - sent)
        except grpc.aio.AioRpcError as exc:
            window.errors[exc.code().name] += 1

    k = 0
    while True:
        due = start + k / rate
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            await asyncio.sleep(due - now)
        w = int((due - start) // window_s)
        task = asyncio.create_task(one(k, windows[w]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        k += 1
    if pending:
        await asyncio.wait(pending, timeout=15)
    await channel.close()


def trial(address: str, rate: float, seconds: float, images: np.ndarray) -> Window:
    """One open-loop run at ``rate`` for ``seconds``: what it saw."""
    window = Window()
    asyncio.run(open_loop(address, rate, seconds, images, [window], seconds + 1))
    return window


def find_capacity(address: str, images: np.ndarray, ceiling: float, seconds: float,
                  slo_ms: float) -> float:
    """The highest open-loop rate (req/s) that keeps p99 under ``slo_ms`` without errors,
    by bisection between 0 and the closed-loop ``ceiling`` (six trials of ``seconds``)."""
    low, high = 0.0, ceiling
    for _ in range(6):
        rate = (low + high) / 2
        seen = trial(address, rate, seconds, images)
        p99 = pct([x * 1000 for x in seen.latencies], 99)
        good = not seen.errors and p99 < slo_ms
        print(f"  trial {rate:7.0f} req/s: p99 {p99:8.2f} ms, errors "
              f"{sum(seen.errors.values())} -> {'ok' if good else 'over'}", flush=True)
        low, high = (rate, high) if good else (low, rate)
    return low


def background_jobs(address: str, images: np.ndarray, items: int, window_s: float,
                    stop: threading.Event, done: list[int]) -> None:
    """A job of ``items`` items every window, followed to its end with Watch and
    FetchResults(follow); counts the results received in ``done``."""
    client = CoordinatorClient(address)
    try:
        k = 0
        while not stop.is_set():
            ids = [f"soak-{k}-{i}" for i in range(items)]
            batch = np.resize(images, (items, *images.shape[1:]))
            job = client.submit(edgeshard_models.EDGE_MODEL,
                                ItemSource.from_arrays(ids, batch)).job_id
            watcher = threading.Thread(target=lambda j=job: list(client.watch(j, timeout=300)),
                                       daemon=True)
            watcher.start()
            done.append(sum(1 for _ in client.results(job, follow=True, timeout=300)))
            watcher.join(30)
            k += 1
            stop.wait(window_s)
    finally:
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--window", type=float, default=30.0, help="seconds per report line")
    p.add_argument("--probe-seconds", type=float, default=5.0, help="seconds per trial")
    p.add_argument("--slo-ms", type=float, default=50.0,
                   help="p99 latency the capacity must keep (ms)")
    p.add_argument("--job-items", type=int, default=200, help="0: no background jobs")
    args = p.parse_args()
    images, _ = edgeshard_models.load_holdout()
    for line in machine_info():
        print(line)
    with fleet(args.nodes, workers=1) as f:
        address = f.coordinator.address
        asyncio.run(closed_loop(address, 2.0, 16, images))  # warm up
        ceiling = asyncio.run(closed_loop(address, args.probe_seconds, 16, images))
        capacity = find_capacity(address, images, ceiling, args.probe_seconds, args.slo_ms)
        rate = args.load * capacity
        seconds = args.minutes * 60
        print(f"closed loop (16 outstanding): {ceiling:.0f} req/s; capacity (the highest "
              f"open-loop rate with p99 < {args.slo_ms:g} ms and no errors): {capacity:.0f} "
              f"req/s; soak at {args.load:.0%} = {rate:.0f} req/s for {args.minutes:g} min")
        windows = [Window() for _ in range(int(seconds // args.window) + 2)]
        stop = threading.Event()
        job_results: list[int] = []
        jobs = None
        if args.job_items:
            jobs = threading.Thread(target=background_jobs, daemon=True, args=(
                address, images, args.job_items, args.window, stop, job_results))
            jobs.start()
        loop_thread = threading.Thread(daemon=True, target=lambda: asyncio.run(open_loop(
            address, rate, seconds, images, windows, args.window)))
        loop_thread.start()
        started = time.monotonic()
        pids = {"coordinator": f.coordinator.process.pid,
                **{n.name: n.process.pid for n in f.nodes}}
        print(f"{'t (s)':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'errors':>6} " + " ".join(f"{name + ' MB':>14}" for name in pids))
        rows = []
        for w in range(int(seconds // args.window)):
            # Report a window half a second after it ends: its last answers are in.
            time.sleep(max(0.0, started + (w + 1) * args.window + 0.5 - time.monotonic()))
            lat = [x * 1000 for x in windows[w].latencies]
            rss = {name: rss_mb(pid) for name, pid in pids.items()}
            row = ((w + 1) * args.window, len(lat) / args.window, pct(lat, 50), pct(lat, 99),
                   max(lat, default=float("nan")), sum(windows[w].errors.values()), rss)
            rows.append(row)
            print(f"{row[0]:>6.0f} {row[1]:>7.0f} {row[2]:>7.2f} {row[3]:>7.2f} "
                  f"{row[4]:>7.1f} {row[5]:>6} "
                  + " ".join(f"{v:>14.1f}" for v in rss.values()), flush=True)
        loop_thread.join(60)
        stop.set()
        if jobs is not None:
            jobs.join(60)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        for name in first[6]:
            print(f"RSS {name}: {first[6][name]:.1f} -> {last[6][name]:.1f} MB "
                  f"({last[6][name] - first[6][name]:+.1f})")
        p99s = [r[3] for r in rows]
        print(f"p99 first / median / last window: {p99s[0]:.2f} / "
              f"{statistics.median(p99s):.2f} / {p99s[-1]:.2f} ms; errors "
              f"{sum(r[5] for r in rows)}")
    errors = sum((w.errors for w in windows), Counter())
    if errors:
        print(f"errors by status: {dict(errors)}")
    if job_results:
        print(f"background jobs: {len(job_results)}, results {sum(job_results)} "
              f"(expected {len(job_results) * args.job_items})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
