"""Batch jobs: the records that the job store, the scheduler and the servicer exchange.

Transport-free dataclasses. Where they come from: ``coordinator.jobs.items.load_items`` reads a
job's items; ``coordinator.jobs.store.JobStore`` stores jobs, leases shards and keeps results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class JobState(enum.StrEnum):
    """A job's lifecycle: ``running`` until every item has its final result (``done``),
    the client cancels it, or a shard fails too often (``failed``). Stored as its value."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """True for the three end states: nothing about the job changes any more."""
        return self is not JobState.RUNNING


class ShardState(enum.StrEnum):
    """A shard's lifecycle: ``queued`` -> ``leased`` (to one node) -> ``done``; back to
    ``queued`` when its lease is lost; ``cancelled`` with its job."""

    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ResultRow:
    """The answer for one item; ``seq`` is assigned by the store (0 before it is written).

    ``label`` and ``confidence`` are None for a model that is not a classifier;
    ``outputs`` holds the job's requested output tensors of this item (no batch dimension).
    """

    item_id: str
    label: int | None
    confidence: float | None
    tier: str
    node: str
    model_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultBatch:
    """Final answers for some items of one shard, column by column (the job path's form:
    no object per item).

    ``item_ids`` [N] str; ``labels`` integer [N] and ``confidences`` float [N], finite
    (both None for a model that is not a classifier); ``tiers`` one tier for all
    (``"edge"``) or one per item; ``extras`` None or one map per item (the cascade's
    fields); ``outputs`` None or output tensors by name, each [N, ...]; every item answered
    by ``node`` with ``model_version``.
    """

    item_ids: list[str]
    labels: np.ndarray | None
    confidences: np.ndarray | None
    node: str
    model_version: str
    tiers: str | list[str] = "edge"
    extras: list[dict[str, Any]] | None = None
    outputs: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def item_tiers(self) -> list[str]:
        """Each item's tier."""
        return [self.tiers] * len(self) if isinstance(self.tiers, str) else list(self.tiers)

    def rows(self, first_seq: int = 0) -> list[ResultRow]:
        """The batch as one ``ResultRow`` per item; seqs from ``first_seq`` (0: unassigned)."""
        n = len(self)
        tiers = self.item_tiers()
        extras = self.extras or [{}] * n
        labels = [None] * n if self.labels is None else self.labels.tolist()
        confidences = [None] * n if self.confidences is None else self.confidences.tolist()
        outputs = self.outputs or {}
        step = 1 if first_seq else 0
        return [ResultRow(i, label, conf, tier, self.node, self.model_version,
                          dict(extra), first_seq + k * step,
                          {name: array[k] for name, array in outputs.items()})
                for k, (i, label, conf, tier, extra) in enumerate(zip(
                    self.item_ids, labels, confidences, tiers, extras, strict=True))]


@dataclass(frozen=True)
class JobInfo:
    """A created job; ``existing`` is True when a retried Submit found it already stored."""

    job_id: str
    model: str
    state: JobState
    total_items: int
    shard_count: int
    created_at: float
    existing: bool = False
    owner: str = ""  # who submitted it (a token's name; '' without authentication)


@dataclass(frozen=True)
class Lease:
    """One shard handed to one node: run ``array`` (items ``ids``) and report ``attempt``."""

    job_id: str
    shard_id: int
    attempt: int
    model: str
    ids: list[str]
    array: np.ndarray
    params: dict[str, Any]
    node_id: str = ""
    lease_expires: float = 0.0


@dataclass(frozen=True)
class JobProgress:
    """A job's state and counters, as Watch and ListJobs report them."""

    job_id: str
    model: str
    state: JobState
    total_items: int
    done_items: int
    shards_total: int
    shards_done: int
    shards_leased: int
    created_at: float
    finished_at: float | None
    error: str | None
    pending_escalations: int = 0  # items waiting in the spool for the cloud
    cloud_answered: int = 0  # final results that came from the cloud
    degraded: int = 0  # final results that fell back to the edge answer
    requeued_shards: int = 0  # times a shard went back to the queue
    duplicates: int = 0  # late duplicate results discarded
    owner: str = ""  # who submitted it (a token's name; '' without authentication)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))  # as stored: its value


@dataclass(frozen=True)
class CompleteOutcome:
    """What ``complete`` did with a batch of results.

    ``accepted`` were written; ``duplicates`` were already answered (first writer wins);
    ``discarded`` arrived for a cancelled or failed job; ``stale`` means the attempt is not the
    shard's current one (the shard was re-leased meanwhile).
    """

    accepted: int
    duplicates: int
    stale: bool
    discarded: int = 0
    spooled: int = 0  # escalations now waiting in the spool
    overflow: int = 0  # escalations the full spool refused (final degraded answers)
    next_lease: Lease | None = None  # the node's next shard, when ``then_lease`` asked


@dataclass(frozen=True)
class NextLease:
    """Ask ``complete`` to lease ``node_id`` its next shard in the same transaction: for
    ``lease_seconds``, of a model in ``models`` (None: any)."""

    node_id: str
    lease_seconds: float
    models: set[str] | None = None
