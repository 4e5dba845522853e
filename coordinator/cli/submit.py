"""Client side of a batch job: submit, follow results into a JSONL file, survive restarts.

Results are appended to the output file as they are committed, one JSON line per item
(large output tensors in ``<output>.npz``: ``coordinator.cli.results_file``). A sidecar
``<output>.progress.json`` remembers the job id, the last result sequence number written
and the files' lengths at that point (saved after a flush, atomically). Re-run after an
interruption (of itself or of the coordinator), the command cuts the files back to those
lengths, dropping what was written after the last save, and fetches from that sequence
number on: no result is written twice or lost.

The sidecar exists whenever the coordinator may hold a job for this output file: it is
written once the coordinator is reachable, just before Submit (a Submit cut off may still
have landed), kept when the command is interrupted or gives up waiting, and removed when
the coordinator refuses the job or no longer knows it (nothing to resume). After the job
finishes it stays, so running the same command again writes nothing twice. Until Submit
is accepted the output file is not touched.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from coordinator.api.control_client import CoordinatorClient
from coordinator.cli.admin import described
from coordinator.cli.interrupt import Interrupted, close_client
from coordinator.cli.job_monitor import AWAY, JobMonitor
from coordinator.cli.progress import ProgressBar
from coordinator.cli.results_file import ResultsFile
from coordinator.jobs.database import STORE_ERROR_PREFIX
from coordinator.jobs.items import load_items
from coordinator.jobs.model import JobState
from edgeshard.errors import UnavailableError
from edgeshard.rpc import RETRYABLE
from edgeshard.tls import handshake_failed, handshake_hint

# A Submit refused because the coordinator is busy (its Submit streams are all taken)
# is tried again like one that could not reach it: the coordinator says "retry later".
SUBMIT_AGAIN = RETRYABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}


class CoordinatorUnreachable(UnavailableError):
    """No coordinator answered within ``--retry-for`` seconds (the message names every
    address tried and says whether the job can be resumed)."""


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


def sidecar(output: Path) -> Path:
    """The progress sidecar of ``output``: ``<output>.progress.json``."""
    return output.with_name(output.name + ".progress.json")


def _save(output: Path, job_id: str, seq: int, written: int, files: dict,
          source: dict) -> None:
    tmp = sidecar(output).with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"job_id": job_id, "last_seq": seq, "written": written,
                                   **files, **source}))
        os.replace(tmp, sidecar(output))
    finally:
        tmp.unlink(missing_ok=True)  # only left over when interrupted before the replace


class _Waiting:
    """Says once on stderr that the command waits for a coordinator (of ``addresses``),
    then keeps it on the progress line; raises ``CoordinatorUnreachable`` after
    ``retry_for`` seconds without an answer (``answered`` may be called from another
    thread)."""

    def __init__(self, addresses: str | Sequence[str], retry_for: float,
                 bar: ProgressBar | None):
        self.where = described(addresses)
        self.retry_for = retry_for
        self.bar = bar
        self.said = False
        self.give_up = time.monotonic() + retry_for
        self.client_tls = False  # whether the client speaks TLS (for the hints)

    def answered(self) -> None:
        """The coordinator answered: the next wait gets ``retry_for`` seconds again."""
        self.give_up = time.monotonic() + self.retry_for
        if self.bar and self.bar.note == AWAY:
            self.bar.update(note="")

    def away(self, why: str, next_step: str) -> None:
        """The coordinator did not answer (``why``): say so, or give up (``next_step``
        ends the message) when the time is up."""
        if time.monotonic() >= self.give_up:
            raise CoordinatorUnreachable(
                f"no answer from {self.where} ({why}) for "
                f"{self.retry_for:g} s (--retry-for); {next_step}")
        if not self.said:
            self.said = True
            line = (f"edge-coordinator submit: waiting for {self.where} ({why}); "
                    f"retrying for up to {self.retry_for:g} s (--retry-for)")
            if self.bar:
                self.bar.say(line)
            else:
                print(line, file=sys.stderr, flush=True)
        if self.bar:
            self.bar.update(note=AWAY)

    def until_reachable(self, client: CoordinatorClient, next_step: str) -> None:
        """Block until one of the client's coordinators accepts a connection (``away``
        every second until then)."""
        why = ""
        while not client.connect(1.0):
            if not why:  # once: a TLS mismatch shows only in a call's error
                why = self._tls_mismatch(client, next_step) or "not reachable"
            self.away(why, next_step)

    def reason(self, exc: grpc.RpcError) -> str:
        """Why a call failed, for the waiting line: a TLS mismatch, else the status."""
        details = exc.details() or ""
        if details.startswith(STORE_ERROR_PREFIX):  # the coordinator answers; its store does not
            return f"it answers, but {details.split(';')[0]}"
        return handshake_hint(details, self.client_tls) or exc.code().name

    def _tls_mismatch(self, client: CoordinatorClient, next_step: str) -> str:
        """Ask once; raise ``CoordinatorUnreachable`` at once when the TLS handshake
        fails (waiting does not fix certificates), return the hint for a closed socket
        (perhaps a missing client certificate), else ""."""
        try:
            client.listing(timeout=2.0)
        except grpc.RpcError as exc:
            hint = handshake_hint(exc.details() or "", self.client_tls)
            if hint and handshake_failed(exc.details() or ""):
                raise CoordinatorUnreachable(f"{hint}; {next_step}") from None
            return hint or ""
        return ""


def run_submit(coordinator: str | Sequence[str], model: str, input_path: Path, output: Path,
               shard_size: int = 0, job_id: str = "", model_version: str = "",
               retry_for: float = 120.0, progress: bool = True,
               credentials: grpc.ChannelCredentials | None = None,
               token: str | None = None, outputs: Sequence[str] = ()) -> SubmitOutcome:
    """Submit (or resume) a job and write its results; returns when it is finished.

    ``coordinator``: one address or several (see ``CoordinatorClient``); ``credentials``
    make every channel TLS; ``token`` is sent as a bearer token; ``outputs`` names the
    outputs each result keeps (empty: the model's task decides; large ones go to the
    sidecar ``<output>.npz``, see ``coordinator.cli.results_file``). A TLS handshake that
    fails is not waited out.

    Raises ``JobInputError``/``ValueError``/``OSError`` for bad input or a sidecar of
    another job, ``CoordinatorUnreachable`` after ``retry_for`` seconds without an
    answer, ``grpc.RpcError`` when the coordinator refuses, and ``Interrupted`` on Ctrl-C
    (the results so far saved; the message says whether the job can be resumed).
    """
    side = sidecar(output)
    state = json.loads(side.read_text()) if side.exists() else {}
    source = {"model": model, "input": str(Path(input_path).resolve())}
    if state and job_id and state["job_id"] != job_id:
        raise ValueError(f"--output {output} belongs to job {state['job_id']}; "
                         "choose another output file")
    mismatch = [k for k in source if k in state and state[k] != source[k]]
    if mismatch:
        raise ValueError(
            f"--output {output} holds the results of job {state['job_id']} (model "
            f"{state.get('model')}, input {state.get('input')}), not of this --model/--input; "
            f"choose another --output, or delete {output} and {side} to start over")
    job_id = job_id or state.get("job_id", "") or uuid.uuid4().hex
    last_seq, written = state.get("last_seq", 0), state.get("written", 0)
    files = {k: state[k] for k in ("offset", "npz_dir_at") if k in state}
    items = None if state else load_items(input_path)  # bad input fails before any wait
    bar = ProgressBar(None, f"job {job_id[:8]}") if progress else None
    waiting = _Waiting(coordinator, retry_for, bar)
    client = CoordinatorClient(coordinator, credentials=credentials, token=token)
    waiting.client_tls = credentials is not None
    monitor = out = None
    resume = f"run the same command again to resume job {job_id}"
    try:
        waiting.until_reachable(client, resume if state else "nothing was submitted")
        status = None
        while status is None:
            try:
                if state:
                    try:
                        status = client.get(job_id)
                        continue
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                        # Submit never landed (or the coordinator lost the job): start over.
                        last_seq = written = 0
                        files = {}
                        state = {}
                        side.unlink()
                items = items if items is not None else load_items(input_path)
                _save(output, job_id, last_seq, written, files, source)  # the job may exist now
                state = {"job_id": job_id}
                try:
                    status = client.submit(model, items, shard_size, job_id, model_version,
                                           outputs=outputs)
                except grpc.RpcError as exc:
                    if exc.code() not in SUBMIT_AGAIN and \
                            exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                        side.unlink(missing_ok=True)  # refused: there is no job to resume
                    raise
            except grpc.RpcError as exc:
                if exc.code() not in SUBMIT_AGAIN:
                    raise
                waiting.away(waiting.reason(exc), resume)
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(1.0)  # reachable but busy: ask again in a second
                waiting.until_reachable(client, resume)
        waiting.answered()
        if bar:
            bar.update(written, total=status.total_items, force=True)
        monitor = JobMonitor(client, job_id, bar, on_answer=waiting.answered)
        monitor.start()

        def checkpoint() -> None:
            _save(output, job_id, last_seq, written, out.checkpoint(), source)

        # drops lines (and sidecar arrays) written after the last save, or all: new job
        out = ResultsFile(output, files)
        while True:
            try:
                for record in client.results(job_id, after_seq=last_seq, follow=True):
                    out.write(record)
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
                if exc.code() not in RETRYABLE:
                    raise
                waiting.away(exc.code().name, resume)  # the monitor says when it answered
                time.sleep(1.0)
        monitor.stop()
        if bar:
            bar.close(status.state)
        return SubmitOutcome(job_id, status.state, status.total_items, written, status.error)
    except KeyboardInterrupt:
        if out is not None:
            checkpoint()
        if monitor:
            monitor.stop()
        if bar:
            bar.close("interrupted")
        raise Interrupted("edge-coordinator submit: interrupted; " + (
            f"job {job_id} goes on at the coordinator: run the same command again to "
            f"resume it, or `edge-coordinator cancel {job_id}`"
            if side.exists() else "nothing was submitted")) from None
    finally:
        if monitor:
            monitor.stop()
        if out is not None:
            out.close()
        close_client(client)
