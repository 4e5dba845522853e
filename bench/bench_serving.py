"""Benchmark an edge node's serving path against raw interpreter throughput, in one run.

Usage::

    python bench/bench_serving.py [--markdown] [--seconds S] [--model NAME]
    python bench/bench_serving.py --repository bench/models --model mobilenet_v2_035
    python bench/bench_serving.py --processes 1,2   # the same 2 interpreters in 1 or 2 processes
    python bench/bench_serving.py --interpreters 4 --processes 1,4 --threads 16 --batches 1 \
        --bare   # scaling over serving processes, on a machine with >= 4 free cores

1. Anchor: the raw ai-edge-litert ``Interpreter`` on the model, one interpreter per
   thread (1 and ``--interpreters``, default 2, threads), batch 1 and 32, inputs already
   quantized (pure ``invoke``).
2. Served: an ``edge-node --workers 2`` process on loopback (with ``--processes 1,2``:
   also ``--processes 2 --workers 1``, the same two interpreters in two serving
   processes behind one port), driven by N client threads
   (N = 1, 4, 8), each with its own ``OIPClient`` sending raw UINT8 images (the node
   resizes / quantizes), batch 1 and 32: items/s, p50 / p99 latency per request, and the
   ratio served / raw (raw = the ``--interpreters``-thread anchor at the same batch size).
3. Stock client: ``tritonclient.grpc`` at batch 32 with 4 threads, same node.
4. With ``--bare``: ``bench/bare_server.py`` with as many interpreters, batch 1, the
   same clients: a Python gRPC server that only parses, invokes and answers. The node's
   own cost is what it adds over this server; the rest is Python gRPC on the machine.

CPU seconds used by the node process and by this (client) process are reported per case:
on a 2-core machine the client threads share the cores with the node. Every loop is
bounded in time and count; the node is stopped (SIGTERM, then SIGKILL) on exit.
Results go to docs/PERFORMANCE.md ("## Serving (edge node)").
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeshard_models  # noqa: E402
from coordinator.api.clients import OIPClient  # noqa: E402
from coordinator.cli.launcher import start_node  # noqa: E402

MAX_REQUESTS_PER_THREAD = 200_000  # a hard bound next to the time bound
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> list[str]:
    import grpc

    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - informational only
        litert = "?"
    flags = cpu_flags()
    simd = "AVX-512F" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    load = os.getloadavg()
    return [
        f"date        {datetime.date.today().isoformat()}",
        f"nproc       {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})",
        f"cpu         {cpu_model()} ({simd})",
        f"python      {platform.python_version()}, numpy {np.__version__}, "
        f"grpcio {grpc.__version__}, ai-edge-litert {litert}",
        f"loadavg     {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (before the run)",
    ]


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds (all cores, all processes) spent not idle since boot, from /proc/stat."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(v) - v[3] - v[4]) / CLK_TCK  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return float("nan")


# -- results -------------------------------------------------------------------------------
@dataclass
class Result:
    case: str
    client: str
    batch: int
    threads: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    node_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")
    errors: int = 0
    other_cpu_s: float = float("nan")  # every other process on the machine, same window

    @property
    def items_per_s(self) -> float:
        return self.requests * self.batch / max(self.seconds, 1e-9)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


# -- anchor: raw interpreter ---------------------------------------------------------------
def model_file(repository: Path, model: str) -> Path:
    root = repository / model
    versions = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1] / "model.tflite"


def model_images(path: Path, count: int = 1000) -> np.ndarray:
    """UINT8 images for the served cases: the MNIST hold-out for a 28x28x1 model, else
    seeded random images of the model's input size (the node resizes nothing then)."""
    from ai_edge_litert.interpreter import Interpreter

    shape = tuple(Interpreter(model_path=str(path)).get_input_details()[0]["shape"][1:])
    if shape == (28, 28, 1):
        return edgeshard_models.load_holdout()[0]
    return np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)


def raw_invoke(path: Path, batch: int, threads: int, seconds: float) -> Result:
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for _ in range(threads):
        it = Interpreter(model_path=str(path), num_threads=1)
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [batch, *inp["shape_signature"][1:]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        rng = np.random.default_rng(0)
        if np.issubdtype(inp["dtype"], np.integer):
            info = np.iinfo(inp["dtype"])
            data = rng.integers(info.min, info.max + 1, size=inp["shape"], dtype=inp["dtype"])
        else:  # a float model: normalized input
            data = rng.standard_normal(inp["shape"]).astype(inp["dtype"])
        it.set_tensor(inp["index"], data)  # pre-quantized, set once: the loop is pure invoke
        for _ in range(20):
            it.invoke()
        interpreters.append(it)

    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        it = interpreters[i]
        barrier.wait()
        n = 0
        while n < 5_000_000:
            it.invoke()
            n += 1
            if n % 64 == 0 and time.perf_counter() >= stop_at[0]:
                break
        counts[i] = n

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    cpu0, busy0 = time.process_time(), machine_busy_seconds()
    barrier.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    mine = time.process_time() - cpu0
    return Result("raw invoke", "-", batch, threads, sum(counts), elapsed, [],
                  client_cpu_s=mine, other_cpu_s=max(0.0, machine_busy_seconds() - busy0 - mine))


# -- served ----------------------------------------------------------------------------------
def drive(make_call, threads: int, seconds: float, warmup: float, pids: list[int]) -> tuple:
    """Run ``threads`` loops of ``call()`` (thread i's from ``make_call(i)``) for ``seconds``
    after ``warmup``; returns (requests, elapsed, latencies_ms, (server CPU s of ``pids``,
    client CPU s of this process, CPU s of everything else on the machine), errors)."""
    calls = [make_call(i) for i in range(threads)]
    lat: list[list[float]] = [[] for _ in range(threads)]
    errs = [0] * threads
    barrier = threading.Barrier(threads + 1)
    times = {"start": 0.0, "end": 0.0}

    def loop(i: int) -> None:
        call = calls[i]
        barrier.wait()  # warm-up starts
        while time.perf_counter() < times["start"]:
            call()
        out = lat[i]
        n = 0
        while n < MAX_REQUESTS_PER_THREAD:
            t0 = time.perf_counter()
            if t0 >= times["end"]:
                break
            try:
                call()
            except Exception:  # noqa: BLE001 - counted and reported
                errs[i] += 1
                continue
            finally:
                n += 1
            out.append((time.perf_counter() - t0) * 1000)

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    now = time.perf_counter()
    times["start"] = now + warmup
    times["end"] = times["start"] + seconds
    barrier.wait()
    time.sleep(max(0.0, times["start"] - time.perf_counter()))
    node0, me0 = sum(proc_cpu_seconds(p) for p in pids), time.process_time()
    busy0 = machine_busy_seconds()
    for w in workers:
        w.join(timeout=warmup + seconds + 60)
    finished = time.perf_counter()
    node_cpu = sum(proc_cpu_seconds(p) for p in pids) - node0
    client_cpu = time.process_time() - me0
    other = max(0.0, machine_busy_seconds() - busy0 - node_cpu - client_cpu)  # tick jitter
    elapsed = max(finished, times["end"]) - times["start"]
    all_lat = [x for per in lat for x in per]
    return len(all_lat), elapsed, all_lat, (node_cpu, client_cpu, other), sum(errs)


def served_ours(addresses: list[str], model: str, images: np.ndarray, batch: int,
                threads: int, seconds: float, warmup: float, pids: list[int],
                label: str = "served") -> Result:
    """Client threads with our OIPClient, spread over ``addresses`` round-robin."""
    clients: list[OIPClient] = []
    lock = threading.Lock()

    def make_call(i: int):
        # a TCP connection per client thread, as separate client processes would have
        # (gRPC otherwise shares one between channels to the same address)
        client = OIPClient(addresses[i % len(addresses)], own_connection=True)
        with lock:
            clients.append(client)
        client.wait_ready(10)
        x = np.ascontiguousarray(images[:batch])
        return lambda: client.classify(model, x, timeout=30.0)

    try:
        n, elapsed, lat, (scpu, ccpu, other), errs = drive(make_call, threads, seconds, warmup,
                                                           pids)
    finally:
        for c in clients:
            c.close()
    return Result(label, "OIPClient", batch, threads, n, elapsed, lat, scpu, ccpu, errs, other)


def served_triton(address: str, model: str, images: np.ndarray, batch: int, threads: int,
                  seconds: float, warmup: float, pids: list[int],
                  label: str = "served") -> Result:
    import tritonclient.grpc as tc

    clients = []
    lock = threading.Lock()

    def make_call(_: int):
        client = tc.InferenceServerClient(address, channel_args=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.use_local_subchannel_pool", 1)])  # a connection of its own, as above
        with lock:
            clients.append(client)
        x = np.ascontiguousarray(images[:batch])
        inp = tc.InferInput("image", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        outs = [tc.InferRequestedOutput("label"), tc.InferRequestedOutput("confidence")]

        def call():
            r = client.infer(model, [inp], outputs=outs, client_timeout=30.0)
            r.as_numpy("label")
            r.as_numpy("confidence")

        return call

    try:
        n, elapsed, lat, (ncpu, ccpu, other), errs = drive(make_call, threads, seconds, warmup,
                                                           pids)
    finally:
        for c in clients:
            c.close()
    return Result(label, "tritonclient", batch, threads, n, elapsed, lat, ncpu, ccpu, errs,
                  other)


# -- report ----------------------------------------------------------------------------------
def fmt(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"  # noqa: PLR0124 - NaN check


def report(raw: dict[tuple[int, int], Result], served: list[Result], markdown: bool,
           interpreters: int = 2) -> None:
    k = interpreters
    if markdown:
        print("| case | client | batch | client threads | items/s | p50 ms | p99 ms "
              f"| served / raw ({k} thr) | node CPU s/s | client CPU s/s | other procs CPU s/s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (batch, threads), r in sorted(raw.items()):
            print(f"| raw invoke (pre-quantized) | - | {batch} | {threads} interpreter(s) "
                  f"| {fmt(r.items_per_s)} | - | - | - | - | {fmt(r.client_cpu_s / r.seconds, 2)} "
                  f"| {fmt(r.other_cpu_s / r.seconds, 2)} |")
        for r in served:
            anchor = raw.get((r.batch, k))
            ratio = r.items_per_s / anchor.items_per_s if anchor else float("nan")
            print(f"| {r.case} | {r.client} | {r.batch} | {r.threads} "
                  f"| {fmt(r.items_per_s)} | {fmt(r.pct(50), 2)} | {fmt(r.pct(99), 2)} "
                  f"| {fmt(ratio, 3)} | {fmt(r.node_cpu_s / r.seconds, 2)} "
                  f"| {fmt(r.client_cpu_s / r.seconds, 2)} "
                  f"| {fmt(r.other_cpu_s / r.seconds, 2)} |")
        return
    print(f"{'case':<24}{'client':<14}{'batch':>6}{'thr':>5}{'items/s':>12}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'/raw':>8}{'nodeCPU':>9}{'cliCPU':>8}{'other':>7}{'err':>5}")
    for (batch, threads), r in sorted(raw.items()):
        print(f"{'raw invoke':<24}{'-':<14}{batch:>6}{threads:>5}{fmt(r.items_per_s):>12}"
              f"{'':>34}{fmt(r.client_cpu_s / r.seconds, 2):>8}"
              f"{fmt(r.other_cpu_s / r.seconds, 2):>7}")
    for r in served:
        anchor = raw.get((r.batch, k))
        ratio = r.items_per_s / anchor.items_per_s if anchor else float("nan")
        print(f"{r.case:<24}{r.client:<14}{r.batch:>6}{r.threads:>5}"
              f"{fmt(r.items_per_s):>12}{fmt(r.pct(50), 2):>9}{fmt(r.pct(99), 2):>9}"
              f"{fmt(ratio, 3):>8}{fmt(r.node_cpu_s / r.seconds, 2):>9}"
              f"{fmt(r.client_cpu_s / r.seconds, 2):>8}{fmt(r.other_cpu_s / r.seconds, 2):>7}"
              f"{r.errors:>5}")


def serve_cases(repository: Path, args, processes: int, images: np.ndarray,
                batches: list[int], thread_counts: list[int], seconds: float,
                warmup: float) -> list[Result]:
    """Every served case against one node of ``args.interpreters`` interpreters in
    ``processes`` processes."""
    workers = args.interpreters // processes
    label = f"edge-node {processes}x{workers}"  # processes x workers
    workdir = Path(tempfile.mkdtemp(prefix="edgeshard-bench-"))
    node = start_node("bench-node", repository, workdir,
                      extra_args=["--workers", str(workers), "--processes", str(processes),
                                  "--log-level", "WARNING"])
    served: list[Result] = []
    try:
        pids = [node.process.pid, *node.info.get("processes", [])]
        for batch in batches:
            for threads in thread_counts:
                served.append(served_ours([node.address], args.model, images, batch, threads,
                                          seconds, warmup, pids, label))
        if not args.no_triton:
            served.append(served_triton(node.address, args.model, images, 32, 4, seconds,
                                        warmup, pids, label))
    finally:
        node.stop(grace=5)
        shutil.rmtree(workdir, ignore_errors=True)
    return served


def bare_cases(path: Path, images: np.ndarray, thread_counts: list[int], seconds: float,
               warmup: float, interpreters: int) -> list[Result]:
    """Batch-1 requests to bench/bare_server.py with the node's number of interpreters."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("bare_server.py")), str(path),
         str(interpreters)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = f"127.0.0.1:{int(server.stdout.readline())}"
        return [served_ours([address], "bare", images, 1, threads, seconds, warmup,
                            [server.pid], "bare gRPC server")
                for threads in thread_counts]
    finally:
        server.kill()
        server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per case (4)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per case (1)")
    p.add_argument("--model", default=edgeshard_models.EDGE_MODEL,
                   help=f"model to serve ({edgeshard_models.EDGE_MODEL})")
    p.add_argument("--repository", type=Path, default=edgeshard_models.repository_path(),
                   help="model repository (default: the shipped models; the benchmark "
                   "MobileNetV2 is in bench/models, made by scripts/make_bench_model.py)")
    p.add_argument("--threads", default="1,4,8", help="client thread counts (1,4,8)")
    p.add_argument("--batches", default="1,32", help="batch sizes (1,32)")
    p.add_argument("--no-triton", action="store_true", help="skip the tritonclient case")
    p.add_argument("--bare", action="store_true",
                   help="also drive bench/bare_server.py (parse, invoke, answer: the least a "
                        "Python gRPC server costs) at batch 1 with the same clients")
    p.add_argument("--interpreters", type=int, default=2,
                   help="interpreters of the served node, over all its processes (2); the "
                        "raw anchor runs this many threads too")
    p.add_argument("--processes", default="1",
                   help="serving process counts to compare, each dividing --interpreters, "
                        "e.g. 1,2: the node's 2 interpreters in 1 process (--workers 2) or "
                        "2 (--workers 1 each); on a machine with >= 4 free cores, "
                        "--interpreters 4 --processes 1,4 shows how requests/s scale")
    args = p.parse_args()
    seconds = min(max(args.seconds, 0.5), 30.0)
    warmup = min(max(args.warmup, 0.0), 10.0)
    thread_counts = [int(x) for x in args.threads.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    process_counts = [int(x) for x in args.processes.split(",") if x]
    k = args.interpreters
    if not 1 <= k <= 64:
        p.error("--interpreters: must be in 1..64")
    if any(n < 1 or k % n for n in process_counts):
        p.error(f"--processes: each count must divide --interpreters ({k}), e.g. 1,{k}")
    if any(t < 1 or t > 64 for t in thread_counts) or any(b < 1 or b > 64 for b in batches):
        p.error("threads and batches must be in 1..64")

    for line in machine_info():
        print(line)
    repository = args.repository.resolve()
    path = model_file(repository, args.model)
    print(f"model       {args.model} ({path}, {path.stat().st_size} bytes)")
    print(f"per case    {warmup:g} s warm-up + {seconds:g} s measured")
    print()

    raw: dict[tuple[int, int], Result] = {}
    for batch in batches:
        for threads in sorted({1, k}):
            raw[(batch, threads)] = raw_invoke(path, batch, threads, min(seconds, 3.0))

    images = model_images(path)
    served: list[Result] = []
    for processes in process_counts:
        served += serve_cases(repository, args, processes, images, batches, thread_counts,
                              seconds, warmup)

    bare = (bare_cases(path, images, thread_counts, seconds, warmup, k)
            if args.bare and 1 in batches else [])
    report(raw, [*bare, *served], args.markdown, k)
    errors = sum(r.errors for r in (*bare, *served))
    if errors:
        print(f"\n{errors} request(s) failed during the run", file=sys.stderr)
    med = statistics.median(r.items_per_s / raw[(r.batch, k)].items_per_s for r in served
                            if (r.batch, k) in raw)
    print(f"\nmedian served/raw ratio over all served cases: {med:.3f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
