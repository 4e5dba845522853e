"""Client side of a batch job: submit, follow results into a JSONL file, survive restarts.

Results are appended to the output file as they are committed, one JSON line per item.
A sidecar ``<output>.progress.json`` remembers the job id, the last result sequence
number written and the file length at that point (saved after a flush, atomically). Re-run
after an interruption (of itself or of the coordinator), the command cuts the file back
to that length, dropping lines written after the last save, and fetches from that
sequence number on: no result is written twice or lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.progress import ProgressBar
from coordinator.jobs.items import load_items
from coordinator.jobs.model import JobState
from edgeshard.rpc import RETRYABLE

log = logging.getLogger(__name__)



@dataclass
class SubmitOutcome:
    """How a submitted job ended: its id, final state, total items and results written.

    ``written`` counts result lines in the output file over all runs; ``error`` is the
    job's error message, empty if none.
    """

    job_id: str
    state: str
    total: int
    written: int
    error: str = ""


def _sidecar(output: Path) -> Path:
    return output.with_name(output.name + ".progress.json")


def _save(output: Path, job_id: str, seq: int, written: int, offset: int) -> None:
    tmp = _sidecar(output).with_suffix(".tmp")
    tmp.write_text(json.dumps({"job_id": job_id, "last_seq": seq, "written": written,
                               "offset": offset}))
    os.replace(tmp, _sidecar(output))


def run_submit(coordinator: str, model: str, input_path: Path, output: Path,
               shard_size: int = 0, job_id: str = "", model_version: str = "",
               retry_for: float = 120.0, progress: bool = True) -> SubmitOutcome:
    """Submit (or resume) a job and write its results; returns when it is finished."""
    side = _sidecar(output)
    state = json.loads(side.read_text()) if side.exists() else {}
    if state and job_id and state["job_id"] != job_id:
        raise ValueError(f"--output {output} belongs to job {state['job_id']}; "
                         "choose another output file")
    job_id = job_id or state.get("job_id", "")
    last_seq, written = state.get("last_seq", 0), state.get("written", 0)
    offset = state.get("offset", 0)
    if output.exists():
        with open(output, "r+b") as fh:
            fh.truncate(offset)  # drop lines written after the last save (or all: new job)
    client = CoordinatorClient(coordinator)
    give_up = time.monotonic() + retry_for
    try:
        status = None
        while status is None:
            try:
                if state:
                    try:
                        status = client.get(job_id)
                        continue
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise  # NOT_FOUND: the first run died before Submit landed
                items = load_items(input_path)
                job_id = job_id or uuid.uuid4().hex
                _save(output, job_id, last_seq, written, offset)
                state = {"job_id": job_id}
                status = client.submit(model, items, shard_size, job_id, model_version)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > give_up:
                    raise
                time.sleep(1.0)
        bar = ProgressBar(status.total_items, f"job {job_id[:8]}") if progress else None
        with open(output, "ab") as out:

            def checkpoint() -> None:
                out.flush()
                _save(output, job_id, last_seq, written, out.tell())

            while True:
                try:
                    for record in client.results(job_id, after_seq=last_seq, follow=True):
                        out.write(record.as_json().encode() + b"\n")
                        last_seq, written = record.seq, written + 1
                        if written % 256 == 0:
                            checkpoint()
                        if bar:
                            bar.update(written)
                    checkpoint()
                    status = client.get(job_id)
                    if JobState(status.state).finished:
                        break
                except grpc.RpcError as exc:
                    checkpoint()
                    if exc.code() not in RETRYABLE or time.monotonic() > give_up:
                        raise
                    log.warning("coordinator unavailable (%s); resuming after seq %d",
                                exc.code().name, last_seq)
                    time.sleep(1.0)
                    continue
                give_up = time.monotonic() + retry_for
        if bar:
            bar.close(status.state)
        return SubmitOutcome(job_id, status.state, status.total_items, written, status.error)
    finally:
        client.close()
