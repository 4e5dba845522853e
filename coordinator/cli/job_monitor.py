"""What a job is waiting for, kept on the progress line while the CLI follows the job.

``waiting_reason`` is pure: a job's status and the number of live nodes serving its
model give the note ("420 items waiting for the cloud tier", "waiting for a live node
serving mnist_edge"), or "" when the job is simply running. ``JobMonitor`` polls the
coordinator for them in a background thread, and redraws the progress bar each time so
that it never stays on a stale count while the results stream is quiet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from coordinator.cli.progress import ProgressBar
from coordinator.jobs.model import JobState

AWAY = "coordinator unreachable, retrying"


def waiting_reason(status, live_nodes: int | None) -> str:
    """The note for a job's ``status`` (a ``JobStatus``): what its unanswered items wait for.

    ``live_nodes`` counts the live nodes serving the job's model (None: not known). A
    finished job waits for nothing.
    """
    if JobState(status.state).finished:
        return ""
    reasons = []
    if status.pending_escalations:
        reasons.append(f"{status.pending_escalations} items waiting for the cloud tier")
    if live_nodes == 0 and status.done_items + status.pending_escalations < status.total_items:
        reasons.append(f"waiting for a live node serving {status.model}")
    return "; ".join(reasons)


def live_nodes_serving(nodes, model: str) -> int:
    """How many of ``nodes`` (``NodeInfo`` messages) are live and serve ``model``."""
    return sum(1 for n in nodes if n.state == "live" and any(m.name == model for m in n.models))


class JobMonitor:
    """Polls ``job_id``'s status every ``interval`` seconds and keeps ``bar``'s note (if
    there is a bar) on what the job waits for (see ``waiting_reason``); ``AWAY`` while
    the coordinator does not answer. ``on_answer`` is called after each answer, so a
    caller knows the coordinator is there even while the results stream is quiet.
    ``client`` is a ``CoordinatorClient``; failures of its calls are shown, never raised.
    ``start``/``stop`` run and end the thread; ``latest`` is the last status.
    """

    def __init__(self, client, job_id: str, bar: ProgressBar | None,
                 on_answer: Callable[[], None] = lambda: None, interval: float = 1.0):
        self.client = client
        self.job_id = job_id
        self.bar = bar
        self.on_answer = on_answer
        self.interval = interval
        self.latest = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-monitor", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def poll(self) -> str:
        """Ask the coordinator once; returns the note for the bar."""
        try:
            status = self.client.get(self.job_id, timeout=5.0)
            self.on_answer()
            live = None
            before = self.latest
            if self.bar and (before is None or status.done_items == before.done_items):
                # No progress since the last poll: is anyone there to do the work?
                live = live_nodes_serving(self.client.nodes(timeout=5.0), status.model)
            self.latest = status
            note = waiting_reason(status, live)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return self.bar.note if self.bar else ""  # the client is closing
            note = AWAY
        if self.bar:
            self.bar.update(note=note)
        return note

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
            if self.bar:
                self.bar.refresh()
