"""A SIGKILLed coordinator loses no committed result and duplicates none after restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from coordinator.jobs.model import ResultRow
from coordinator.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[3]

# The child plays a coordinator: it creates a job, leases four shards, completes two, and is
# SIGKILLed in the middle of completing the third (after its result block, before COMMIT; the
# trace callback is fault injection on the store's one connection). Before dying it prints
# the committed results so the parent can check that they survive unchanged.
CHILD = """
import json, os, signal, sys
import numpy as np
from coordinator.jobs.model import ResultRow
from coordinator.jobs.store import JobStore

store = JobStore(sys.argv[1])
info = store.create_job("mnist", (None, np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2)),
                        4, {"batch": 4}, job_id="crash-test")
leases = [store.lease_next("child-node", 60, now=0) for _ in range(4)]

def answer(lease):
    return [ResultRow(i, 1000 + int(i), 0.5, "edge", "child-node", "1", {}) for i in lease.ids]

for lease in leases[:2]:
    store.complete(lease.shard_id, lease.attempt, answer(lease))
committed = [[r.item_id, r.seq, r.label] for r in store.results(info.job_id)]
print(json.dumps({"committed": committed, "killed_shard": leases[2].shard_id}), flush=True)

def kill_before_commit(sql):
    if sql.startswith("INSERT INTO job_nodes"):
        os.kill(os.getpid(), signal.SIGKILL)

store.db.set_trace_callback(kill_before_commit)
store.complete(leases[2].shard_id, leases[2].attempt, answer(leases[2]))
print("not reached", flush=True)
"""


def test_sigkilled_coordinator_loses_and_duplicates_nothing(tmp_path):
    path = str(tmp_path / "state" / "jobs.db")
    Path(path).parent.mkdir()
    child = subprocess.run([sys.executable, "-c", CHILD, path], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    report = json.loads(child.stdout.splitlines()[0])
    assert "not reached" not in child.stdout
    committed = {item: (seq, label) for item, seq, label in report["committed"]}
    assert len(committed) == 8

    store = JobStore(path)
    try:
        progress = store.progress("crash-test")
        assert (progress.state, progress.done_items, progress.shards_done) == ("running", 8, 2)
        # the killed transaction left nothing behind
        assert {r.item_id for r in store.results("crash-test")} == set(committed)
        assert store.recover() == 2
        assert store.progress("crash-test").shards_leased == 0

        # A node that worked for the dead coordinator delivers attempt 1 late: its shard is
        # queued again but not yet re-leased, and nobody answered it, so the results count.
        killed = report["killed_shard"]
        ids = [str(i) for i in range(8, 12)]
        outcome = store.complete(killed, 1, [
            ResultRow(i, 2000 + int(i), 0.5, "edge", "old-node", "1") for i in ids])
        assert (outcome.accepted, outcome.duplicates) == (4, 0)

        while (lease := store.lease_next("new-node", 60, now=100)) is not None:
            assert not set(lease.ids) & set(committed)
            store.complete(lease.shard_id, lease.attempt, [
                ResultRow(i, int(i), 0.5, "edge", "new-node", "1") for i in lease.ids])

        rows = store.results("crash-test")
        assert sorted(int(r.item_id) for r in rows) == list(range(40))  # each exactly once
        for r in rows:
            if r.item_id in committed:
                assert (r.seq, r.label) == committed[r.item_id]
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        progress = store.progress("crash-test")
        assert (progress.state, progress.done_items, progress.shards_done) == ("done", 40, 10)
    finally:
        store.close()
