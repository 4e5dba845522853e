"""Several coordinator replicas on one real PostgreSQL job store, with real edge nodes.

Any replica answers any Jobs call; a replica SIGKILLed mid-job loses and repeats nothing:
the others re-queue the shards its pullers held and finish the job.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

from coordinator.api.clients import OIPClient
from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.launcher import start_coordinator, start_node
from tests.conftest import FAST_MEMBERSHIP
from tests.coordinator.jobs.test_fleet_jobs import (
    EDGE,
    PACED,
    check_exactly_once,
    job_items,
    wait_done_items,
    wait_finished,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        proc.kill()


def wait_live(client: CoordinatorClient, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(n.state == "live" for n in client.nodes()) < count:
        assert time.monotonic() < deadline, f"{client.address}: {client.nodes()}"
        time.sleep(0.1)


def wait_for_leases(pg_url: str, address: str, timeout: float = 30.0) -> int:
    """How many shards the replica serving at ``address`` holds leased, once it holds any
    (read from the shared store itself)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while True:
            held = conn.execute(
                "SELECT COUNT(*) FROM shards s JOIN replicas r ON r.replica_id = s.owner "
                "WHERE s.state = 'leased' AND r.address = %s", (address,)).fetchone()[0]
            if held:
                return held
            assert time.monotonic() < deadline, f"{address} never held a lease"
            time.sleep(0.005)


def replica(name: str, pg_url: str, tmp_path, processes: list):
    proc = start_coordinator(name, tmp_path / name, tmp_path, extra_args=[
        *FAST_MEMBERSHIP, "--state-url", pg_url, "--replica-timeout-s", "3"])
    processes.append(proc)
    return proc


def test_a_replica_killed_mid_job_loses_and_repeats_nothing(tmp_path, pg_url, processes,
                                                             shipped_repository, holdout):
    a = replica("replica-a", pg_url, tmp_path, processes)
    b = replica("replica-b", pg_url, tmp_path, processes)
    for i in range(3):
        processes.append(start_node(f"n{i}", shipped_repository, tmp_path, extra_args=[
            "--coordinator", a.address, "--coordinator", b.address, "--workers", "1",
            *PACED]))
    via_a, via_b = CoordinatorClient(a.address), CoordinatorClient(b.address)
    try:
        wait_live(via_a, 3)
        wait_live(via_b, 3)
        items, truth = job_items(holdout, 8)
        status = via_a.submit(EDGE, items, shard_size=16, job_id="replicated-job")
        # The other replica sees the job at once and works on it too.
        assert via_b.get(status.job_id).total_items == len(truth)
        wait_done_items(via_b, status.job_id, len(truth) // 3)
        held = wait_for_leases(pg_url, a.address)  # so that the kill orphans some
        a.kill()  # SIGKILL mid-job
        final = wait_finished(via_b, status.job_id)
        assert final.state == "done", final
        check_exactly_once(via_b, status.job_id, truth)
        assert final.requeued_shards >= held  # B gave the dead replica's shards back
        assert "leased by coordinator replicas that stopped" in b.log_path.read_text()
    finally:
        via_a.close()
        via_b.close()


def test_any_replica_answers_for_a_job_submitted_on_another(tmp_path, pg_url, processes,
                                                            shipped_repository, holdout):
    a = replica("replica-a", pg_url, tmp_path, processes)
    b = replica("replica-b", pg_url, tmp_path, processes)
    processes.append(start_node("n0", shipped_repository, tmp_path, extra_args=[
        "--coordinator", a.address, "--workers", "1", *PACED]))
    via_a, via_b = CoordinatorClient(a.address), CoordinatorClient(b.address)
    try:
        wait_live(via_a, 1)
        items, truth = job_items(holdout, 20)
        status = via_a.submit(EDGE, items, shard_size=16, job_id="cancel-me")
        wait_done_items(via_b, status.job_id, 1)
        assert [j.job_id for j in via_b.list_jobs()] == ["cancel-me"]
        cancelled = via_b.cancel(status.job_id)
        assert cancelled.state == "cancelled"
        assert via_a.get(status.job_id).state == "cancelled"
        fetched = list(via_b.results(status.job_id))
        assert 0 < len(fetched) < len(truth)
        assert len({r.id for r in fetched}) == len(fetched)
    finally:
        via_a.close()
        via_b.close()


def test_a_node_registered_with_one_replica_serves_through_every_replica(
        tmp_path, pg_url, processes, shipped_repository, holdout):
    a = replica("replica-a", pg_url, tmp_path, processes)
    b = replica("replica-b", pg_url, tmp_path, processes)
    processes.append(start_node("n0", shipped_repository, tmp_path, extra_args=[
        "--coordinator", a.address, "--workers", "1"]))  # registers with A only
    via_a, via_b = CoordinatorClient(a.address), CoordinatorClient(b.address)
    online = OIPClient(b.address)
    try:
        wait_live(via_a, 1)
        wait_live(via_b, 1)  # learnt from the store, admitted by B's own health check
        [seen_by_b] = via_b.nodes()
        assert (seen_by_b.node_id, seen_by_b.source) == ("n0", "replica")
        images, labels = holdout
        answer = online.classify(EDGE, images[:4])
        assert answer.node == "n0"
        assert (answer.label == labels[:4]).mean() >= 0.5
        assert "registered with another replica" in b.log_path.read_text()
    finally:
        online.close()
        via_a.close()
        via_b.close()


@pytest.mark.parametrize("url, code, message", [
    ("mysql://db/jobs", 2, "state_url: not a PostgreSQL URL (scheme 'mysql')"),
    ("host=db password=SECRET", 2, "state_url: not a PostgreSQL URL (scheme '')"),
    ("postgresql://nobody@127.0.0.1:{port}/jobs", 1,
     "state_url: cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:{port}/jobs: "
     "connection failed"),
    ("postgresql://nobody:SECRET@127.0.0.1:{port}/jobs?password=SECRET", 1,
     "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:{port}/jobs?password=***"),
    # a raw [ in the password: percent-encode it (found by a newcomer: it was a traceback)
    ("postgresql://nobody:SE[CRET@127.0.0.1:{port}/jobs", 2,
     "state_url: not a valid URL; give postgresql://USER@HOST:PORT/DB and percent-encode"),
    ("postgresql://[bad", 2, "state_url: not a valid URL"),
])
def test_a_bad_state_url_is_refused_naming_it(tmp_path, url, code, message):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--port", "0", "--state-dir",
         str(tmp_path), "--state-url", url.format(port=port)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    assert message.format(port=port) in out.stderr
    assert "Traceback" not in out.stderr and "SECRET" not in out.stderr
    assert "SE[CRET" not in out.stderr


def test_a_drain_through_one_replica_reaches_the_others(tmp_path, pg_url, processes,
                                                         shipped_repository):
    a = replica("replica-a", pg_url, tmp_path, processes)
    b = replica("replica-b", pg_url, tmp_path, processes)
    processes.append(start_node("n0", shipped_repository, tmp_path, extra_args=[
        "--coordinator", f"{a.address},{b.address}", "--workers", "1"]))
    via_a, via_b = CoordinatorClient(a.address), CoordinatorClient(b.address)

    def state_on(client: CoordinatorClient, wanted: str) -> None:
        deadline = time.monotonic() + 15
        while (node := client.nodes()[0]).state != wanted:
            assert time.monotonic() < deadline, f"{client.address}: {node}"
            time.sleep(0.1)

    try:
        wait_live(via_a, 1)
        wait_live(via_b, 1)
        via_a.drain("n0")
        state_on(via_b, "draining")  # applied by B's next membership round
        via_b.drain("n0", undo=True)
        state_on(via_a, "live")
        assert "drained (recorded in the job store)" in b.log_path.read_text()
    finally:
        via_a.close()
        via_b.close()


def test_a_database_outage_mid_job_loses_and_repeats_nothing(tmp_path, processes,
                                                             shipped_repository, holdout):
    """PostgreSQL stops part-way (sessions cut) and comes back: the coordinator says so
    once, keeps serving, and the job finishes with each item exactly once, no restart."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        coordinator = replica("coordinator", server.create_database("outage"), tmp_path,
                              processes)
        for i in range(2):
            processes.append(start_node(f"n{i}", shipped_repository, tmp_path, extra_args=[
                "--coordinator", coordinator.address, "--workers", "1", *PACED]))
        client = CoordinatorClient(coordinator.address)
        try:
            wait_live(client, 2)
            items, truth = job_items(holdout, 8)
            status = client.submit(EDGE, items, shard_size=16, job_id="outage-job")
            wait_done_items(client, status.job_id, len(truth) // 3)
            server.halt()
            deadline = time.monotonic() + 30
            while not client.listing().store_fault:  # said while it lasts, in `nodes`
                assert time.monotonic() < deadline, "the outage was never reported"
                time.sleep(0.2)
            assert [n.state for n in client.nodes()] == ["live", "live"]  # still serving
            # the CLI blames the store, not the coordinator it reached (newcomer review)
            out = subprocess.run([sys.executable, "-m", "coordinator", "jobs",
                                  "--coordinator", coordinator.address],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 1, out.stdout
            assert (f"the coordinator at {coordinator.address} answers, but its job store "
                    "does not: check the database of --state-url") in out.stderr, out.stderr
            assert "is a coordinator running" not in out.stderr
            server.resume()
            final = wait_finished(client, status.job_id)
            assert final.state == "done", final
            check_exactly_once(client, status.job_id, truth)
        finally:
            client.close()
        log = coordinator.log_path.read_text()
        assert log.count("cannot write") == 1 and "writes again" in log
        assert "Traceback" not in log
    finally:
        server.stop()
