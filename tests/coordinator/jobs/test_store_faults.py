"""A job store whose disk fills: a clear refusal, nothing lost, and work that resumes by
itself once there is space (a real SQLite file on a real, small tmpfs)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

import edgeshard_models
from coordinator.errors import StoreFullError
from coordinator.jobs.items import ItemSource
from coordinator.jobs.store import JobStore
from protos import fleet_pb2

EDGE = edgeshard_models.EDGE_MODEL
pytestmark = [pytest.mark.timeout(180), pytest.mark.fault]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (root only; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it (delete it to free)."""
    filler = disk / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def images(n: int) -> np.ndarray:
    return np.zeros((n, 28, 28), np.uint8)


def test_a_full_disk_refuses_writes_clearly_and_they_resume_when_it_frees(small_disk,
                                                                         monkeypatch):
    # The fault is reported until writes work for FAULT_HOLD_S; here from the first one.
    monkeypatch.setattr("coordinator.jobs.database.FAULT_HOLD_S", 0.0)
    store = JobStore(str(small_disk / "jobs.sqlite3"))
    try:
        store.create_job("m", (None, images(10)), 5)
        filler = fill(small_disk)
        with pytest.raises(StoreFullError) as err:
            store.create_job("m", (None, images(2000)), 5)
        assert "disk full" in str(err.value)
        assert store.fault == "disk full"
        filler.unlink()
        info = store.create_job("m", (None, images(2000)), 5)  # no restart, no reopen
        assert store.fault is None and store.progress(info.job_id).total_items == 2000
    finally:
        store.close()


def test_a_job_survives_its_disk_filling_and_finishes_once_space_is_back(fleet, holdout,
                                                                         small_disk):
    fleet.state_dir = small_disk / "state"
    fleet.start_coordinator()
    fleet.add_node("n0", "--max-batch-delay-ms", "10")
    fleet.wait_live(1)
    ids = [f"{r}-{i}" for r in range(5) for i in range(len(holdout[0]))]
    job = fleet.client.submit(EDGE, ItemSource.from_arrays(ids, np.tile(holdout[0], (5, 1, 1))))
    while fleet.client.get(job.job_id).done_items < 500:
        time.sleep(0.02)
    filler = fill(small_disk)
    # A new job larger than anything SQLite's write-ahead log already holds room for
    # (writes that fit in it still succeed) cannot be stored now.
    with pytest.raises(grpc.RpcError) as err:
        fleet.client.submit(EDGE, ItemSource.from_arrays(None, np.tile(holdout[0], (20, 1, 1))))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk full" in err.value.details()
    listing = fleet.client.listing()
    assert listing.store_fault == "disk full"
    for command in ("jobs", "nodes"):  # and the admin commands say so
        out = subprocess.run([sys.executable, "-m", "coordinator", command, "--coordinator",
                              fleet.coordinator.address], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "job store: cannot write (disk full); jobs wait and resume" in out.stdout
    filler.unlink()  # space again: the job finishes without a restart
    deadline = time.monotonic() + 120
    while (status := fleet.client.get(job.job_id)).state == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status.state == "done"
    seen = Counter(r.id for r in fleet.client.results(job.job_id))
    assert set(seen) == set(ids) and max(seen.values()) == 1  # nothing lost or repeated
    deadline = time.monotonic() + 10  # reported until writes work for a while
    while fleet.client.listing().store_fault:
        assert time.monotonic() < deadline, "the store fault is still reported"
        time.sleep(0.2)
    log = fleet.coordinator.log_path.read_text()
    # Logged when writes start failing and when they work again (writes that fit the
    # write-ahead log may succeed in between), never once per retry, never a traceback.
    assert log.count("cannot write: disk full") == log.count("writes again") >= 1
    assert "Traceback" not in log and "store error" not in log
    assert fleet.client.fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=5).nodes
