"""The main job on the embedded default: a local fleet with a cloud tier runs the hold-out set.

Starts, as local processes on free loopback ports: a cloud tier (an edge-node serving
the cloud model), N edge nodes (the edge model) and a coordinator. First the edge model
is calibrated on the calibration split against the cloud tier (temperature, and the
threshold for a 15 % escalation budget); then online latency is measured through the
coordinator; then the hold-out set (repeated ``--repeat`` times, each copy with its own
item ids) runs as a sharded job with the cascade on. ``--kill-one`` SIGKILLs one edge
node part-way; ``--cloud-outage S`` takes the cloud away part-way for S seconds, so the
spool fills and then empties as the cloud answers. The report counts every item.

Logs and state go to ``--workdir`` (kept) or a temporary folder, removed at exit unless
the demo failed. Ctrl-C stops every process it started and exits with 130.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import edgeshard_models
from coordinator.api.clients import OIPClient
from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.calibrate import calibrate, write_calibration
from coordinator.cli.interrupt import Interrupted, close_client
from coordinator.cli.job_monitor import waiting_reason
from coordinator.cli.launcher import NodeProcess, start_coordinator, start_node, tls_args
from coordinator.cli.progress import ProgressBar
from coordinator.jobs.items import ItemSource
from coordinator.jobs.model import JobState
from edgeshard.certs import write_fleet_pki
from edgeshard.tls import TLSFiles, channel_credentials

FAST_MEMBERSHIP = [  # a demo fleet on loopback can afford quick failure detection
    "--heartbeat-interval-s", "0.5", "--probe-interval-s", "0.5", "--probe-timeout-s", "0.5",
    "--suspect-after-s", "1.5", "--dead-after-s", "3", "--shard-deadline-s", "3",
]
COST_PER_ITEM = 0.001  # a made-up price per cloud item, to show the cost accounting


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``demo`` subcommand's options to ``p``."""
    p.add_argument("--nodes", type=int, default=3, help="edge nodes to start (3)")
    p.add_argument("--kill-one", action="store_true",
                   help="SIGKILL one edge node when the job is about a third done")
    p.add_argument("--cloud-outage", type=float, default=0.0, metavar="SECONDS",
                   help="take the cloud tier down part-way for this long")
    p.add_argument("--no-cloud", action="store_true", help="edge only, no cascade")
    p.add_argument("--budget", type=float, default=0.15,
                   help="escalation budget the calibration picks the threshold for (0.15)")
    p.add_argument("--repeat", type=int, default=10,
                   help="copies of the 1,000-image hold-out set in the job (10)")
    p.add_argument("--shard-size", type=int, default=64, help="items per shard (64)")
    p.add_argument("--online", type=int, default=300,
                   help="single-image online requests for the latency figure (300)")
    p.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    p.add_argument("--tls", action="store_true",
                   help="run every link over mutual TLS (a development CA in <workdir>/tls)")


@dataclass
class Report:
    """What the demo job did: item counts, per-node shares, timing and the cascade's figures.

    ``seconds`` is the job's wall time from the Submit call (upload included) to its end,
    the clock the progress bar's rate uses too; ``latencies_ms`` the online single-image
    latencies (ms), ``shares`` results per node id; ``cascade`` is empty when the cloud
    tier was off.
    """

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
    state: str = ""
    cascade: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The job finished DONE with no item lost or duplicated."""
        return self.lost == 0 and self.duplicated == 0 and self.state == JobState.DONE

    @property
    def throughput(self) -> float:
        """Results per second of the job's wall time (what the progress bar ends on)."""
        return self.results / max(self.seconds, 1e-9)

    @property
    def accuracy(self) -> float:
        """``correct / (results - duplicated)``: the share of results with the true label."""
        return self.correct / max(1, self.results - self.duplicated)

    def lines(self) -> list[str]:
        """The report as printable lines."""
        lat = np.asarray(self.latencies_ms or [0.0])
        out = [
            f"fleet        {self.nodes} edge node(s)"
            + (f", {self.killed} killed (SIGKILL) part-way" if self.killed else ""),
            f"job          {self.state}: {self.items} items",
            f"results      {self.results}",
            f"lost         {self.lost}",
            f"duplicated   {self.duplicated}",
            f"throughput   {self.throughput:,.0f} items/s ({self.results} results in "
            f"{self.seconds:.2f} s, Submit to done, upload included: the progress bar's rate)",
            f"accuracy     {self.accuracy:.4f}",
            f"online p50   {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms "
            f"({len(self.latencies_ms)} single-image requests via the coordinator)",
        ]
        c = self.cascade
        if c:
            out += [
                f"edge only    {c['edge_only']:.4f}",
                f"cloud only   {c['cloud_only']:.4f}",
                f"cascade      {c['cascade']:.4f} ({c['policy']} < {c['threshold']:.4g})",
                f"escalated    {c['escalated']} items ({c['escalation_rate']:.1%}); cloud "
                f"answered {c['cloud_answered']}, degraded {c['degraded']}",
                f"cloud calls  {c['cloud_calls']:.0f} calls (failed ones included), "
                f"{c['cloud_items']:.0f} items answered (job and online), "
                f"cost {c['cost']:.3f} (at {COST_PER_ITEM} per item)",
            ]
            if "spool_peak" in c:
                out.append(f"spool        peaked at {c['spool_peak']} items during the "
                           f"outage, {c['spool_left']} left")
        out.append("per-node share:")
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


def _online_latency(address: str, model: str, images: np.ndarray, count: int,
                    credentials=None) -> list[float]:
    client = OIPClient(address, credentials=credentials)
    try:
        latencies = []
        for i in range(count):
            t0 = time.perf_counter()
            client.classify(model, images[i % len(images)][None], timeout=10.0)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies
    finally:
        close_client(client)


def _metric(port: int, name: str, label: str = "") -> float:
    """Sum of a metric's samples (those whose labels contain ``label``)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line)


def _split_repository(workdir: Path) -> tuple[Path, Path]:
    """Edge and cloud repositories (copies: calibration writes into the edge one)."""
    src = edgeshard_models.repository_path()
    edge_repo, cloud_repo = workdir / "edge-models", workdir / "cloud-models"
    shutil.copytree(src / edgeshard_models.EDGE_MODEL, edge_repo / edgeshard_models.EDGE_MODEL)
    shutil.copytree(src / edgeshard_models.CLOUD_MODEL,
                    cloud_repo / edgeshard_models.CLOUD_MODEL)
    return edge_repo, cloud_repo


def _ignore_sigint() -> None:
    """Let a second Ctrl-C not cut the clean-up short (main thread only: signal's rule)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(workdir: Path, nodes: int = 3, kill_one: bool = False, repeat: int = 10,
        shard_size: int = 64, online: int = 300, out=print, progress: bool = True,
        cloud: bool = True, cloud_outage: float = 0.0, budget: float = 0.15,
        tls: bool = False) -> Report:
    """Start a local fleet (and cloud tier), calibrate, run the hold-out job; return its report.

    ``repeat`` copies of the hold-out set form the job; ``online`` single-image requests
    measure latency first; ``kill_one`` SIGKILLs an edge node a third of the way through;
    ``cloud_outage`` (seconds) takes the cloud tier down at that point; ``budget`` is the
    escalation fraction the calibration picks the threshold for; with ``tls`` every
    process and the demo's own clients use mutual TLS (certificates made into
    ``workdir/tls``). Each line of progress
    goes to ``out``; logs and state to ``workdir``, which the caller removes. Every
    process started is stopped on return, also on Ctrl-C (``KeyboardInterrupt`` is raised
    after that). Raises whatever fails (``LaunchError``, ``RuntimeError``, gRPC errors).
    """
    model = edgeshard_models.EDGE_MODEL
    images, labels = edgeshard_models.load_holdout()
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[NodeProcess] = []
    cloud_back: list[NodeProcess] = []
    outage: threading.Timer | None = None
    client = None
    try:
        edge_repo, cloud_repo = _split_repository(workdir)
        pki = workdir / "tls" if tls else None
        credentials = None
        if pki is not None:
            names = [f"node-{i + 1}" for i in range(nodes)] + ["cloud", "calibrate"]
            write_fleet_pki(pki, names, force=True)
            credentials = channel_credentials(
                TLSFiles(pki / "client.pem", pki / "client.key", pki / "ca.pem"))
            out(f"mutual TLS on every link: development CA and certificates in {pki}")
        coord_args = FAST_MEMBERSHIP + ["--shard-size", str(shard_size), "--metrics-port", "0"]
        cloud_node = calibration = None
        if cloud:
            cloud_node = start_node("cloud", cloud_repo, workdir,
                                    extra_args=["--workers", "1", *tls_args(pki, "cloud")])
            procs.append(cloud_node)
            out(f"cloud tier: an edge-node serving {edgeshard_models.CLOUD_MODEL} on "
                f"{cloud_node.address}")
            probe = start_node("calibrate", edge_repo, workdir,
                               extra_args=["--workers", "1", *tls_args(pki, "calibrate")])
            try:
                calibration = calibrate(probe.address, cloud_node.address, model,
                                        edgeshard_models.CLOUD_MODEL, "max_prob", budget, None,
                                        credentials=credentials)
            finally:
                probe.stop()
            write_calibration(calibration, edge_repo / model / "1", budget)
            out(f"calibrated on the calibration split: temperature "
                f"{calibration.temperature:.3f}, max_prob threshold "
                f"{calibration.chosen.threshold!r} for a {budget:.0%} budget")
            coord_args += [
                "--cloud", cloud_node.address,
                "--cascade", f"{model}={edgeshard_models.CLOUD_MODEL}",
                # repr: the exact value calibrate measured (already short)
                "--escalation", f"{model}=max_prob:{calibration.chosen.threshold!r}",
                "--cloud-cost-per-item", str(COST_PER_ITEM),
                "--breaker-failures", "3", "--breaker-reset-s", "1",
            ]
        out(f"starting a coordinator and {nodes} edge node(s) on loopback")
        coord = start_coordinator("coordinator", workdir / "state", workdir,
                                  extra_args=coord_args + tls_args(pki, "coordinator"))
        procs.append(coord)
        for i in range(nodes):
            procs.append(start_node(
                f"node-{i + 1}", edge_repo, workdir,
                extra_args=["--coordinator", coord.address, "--workers", "1",
                            *tls_args(pki, f"node-{i + 1}")]))
        client = CoordinatorClient(coord.address, credentials=credentials)
        _wait_live(client, nodes)
        out(f"coordinator {coord.address}: {nodes} edge node(s) live")

        latencies = (_online_latency(coord.address, model, images, online, credentials)
                     if online else [])

        ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(images))]
        truth = dict(zip(ids, np.tile(labels, repeat).tolist(), strict=True))
        items = ItemSource.from_arrays(ids, np.tile(images, (repeat, 1, 1)))
        started = time.monotonic()
        status = client.submit(model, items, shard_size)
        job_id = status.job_id
        out(f"job {job_id}: {len(ids)} items in {status.shards_total} shards")
        bar = ProgressBar(len(ids), "job", started=started) if progress else None
        killed, spool_peak = "", 0

        def restore_cloud(port: int) -> None:
            cloud_back.append(start_node("cloud-back", cloud_repo, workdir,
                                         extra_args=["--workers", "1", "--port", str(port),
                                                     *tls_args(pki, "cloud")]))
            out(f"\ncloud tier back on port {port}")

        for st in client.watch(job_id, interval=0.1):
            if bar:
                bar.update(st.done_items, waiting_reason(st, None))
            spool_peak = max(spool_peak, st.pending_escalations)
            third = st.done_items >= len(ids) // 3
            if kill_one and not killed and third and nodes > 1:
                victim = procs[-2]
                victim.kill()
                killed = victim.name
                out(f"\nkilled {killed} (SIGKILL) at {st.done_items}/{len(ids)} items")
            if cloud_outage and cloud_node and outage is None and third:
                cloud_node.kill()
                outage = threading.Timer(cloud_outage, restore_cloud,
                                         args=(cloud_node.info["grpc_port"],))
                outage.start()
                out(f"\ncloud tier down for {cloud_outage:g}s at {st.done_items} items")
            status = st
        ended = time.monotonic()
        seconds = ended - started
        if bar:
            bar.close(status.state, now=ended)
        if outage is not None:
            outage.join()
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
        if calibration is not None:
            metrics_port = coord.info["metrics_port"]
            escalated = sum(1 for r in records if r.extra.get("escalated"))
            report.cascade = {
                "policy": "max_prob", "threshold": calibration.chosen.threshold,
                "edge_only": np.mean([truth[r.id] == r.extra["edge_label"] for r in records]),
                "cloud_only": calibration.holdout["cloud_only_accuracy"],
                "cascade": report.accuracy, "escalated": escalated,
                "escalation_rate": escalated / max(1, len(records)),
                "cloud_answered": status.cloud_answered, "degraded": status.degraded,
                "cloud_calls": _metric(metrics_port, "edgeshard_coordinator_cloud_calls_total"),
                "cloud_items": _metric(metrics_port, "edgeshard_coordinator_cloud_items_total",
                                       'outcome="answered"'),
                "cost": _metric(metrics_port, "edgeshard_coordinator_cloud_cost"),
            }
            if cloud_outage:
                report.cascade.update(spool_peak=spool_peak,
                                      spool_left=status.pending_escalations)
        for line in report.lines():
            out(line)
        return report
    except KeyboardInterrupt:
        _ignore_sigint()
        raise
    finally:
        if outage is not None:
            outage.cancel()  # a cloud tier not restarted yet stays down
            outage.join()
        procs.extend(cloud_back)
        if client is not None:
            close_client(client)
        for p in reversed(procs):
            p.stop(grace=5)


def main(args) -> int:
    """Run ``edge-coordinator demo`` with parsed ``args``; returns the exit code.

    0 when the job finished DONE with no item lost or duplicated, 2 for invalid arguments,
    1 otherwise; ``Interrupted`` on Ctrl-C, once every process it started is stopped.
    Without ``--workdir`` the logs go to a temporary folder, removed at exit unless the
    demo failed; every path says which.
    """
    if args.nodes < 1 or args.repeat < 1 or args.shard_size < 1 or args.online < 0 \
            or args.cloud_outage < 0:
        print("edge-coordinator demo: --nodes, --repeat and --shard-size must be >= 1, "
              "--online and --cloud-outage >= 0", file=sys.stderr)
        return 2
    temporary = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edgeshard-demo-"))
    keep = "" if temporary else f"; logs in {workdir}"
    if temporary:
        print(f"logs in {workdir}, removed at exit unless the demo fails "
              "(--workdir DIR keeps them)")
    try:
        report = run(workdir, args.nodes, args.kill_one, args.repeat, args.shard_size,
                     args.online, cloud=not args.no_cloud, cloud_outage=args.cloud_outage,
                     budget=args.budget, tls=args.tls)
    except KeyboardInterrupt:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # end the progress bar's line
        raise Interrupted(f"edge-coordinator demo: interrupted; every process it started "
                          f"is stopped{keep or ', its logs removed'}") from None
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"edge-coordinator demo: failed: {exc}", file=sys.stderr)
        print(f"edge-coordinator demo: logs kept in {workdir}", file=sys.stderr)
        return 1
    if not report.ok:
        print(f"edge-coordinator demo: the job did not finish cleanly; logs kept in {workdir}",
              file=sys.stderr)
        return 1
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed the logs in {workdir} (--workdir DIR keeps them)")
    return 0
