"""Canary rollouts kept in the job store, so that a decision outlives a restart and
reaches every replica.

One row per model (``rollouts``, schema version 6): its stable and canary versions, the
traffic shares, the margins, the state and the decision. Rows are plain dicts here
(column -> value; ``margins`` and ``stats`` as dicts): ``coordinator.rollout`` turns
them into its records, so the store knows nothing of the canary's logic.
"""

from __future__ import annotations

import json
from typing import Any

from coordinator.jobs.database import Database, Tx

COLUMNS = ("model", "stable", "canary", "share", "shadow", "margins", "state", "reason",
           "stats", "started_at", "decided_at")
JSON_COLUMNS = ("margins", "stats")


class RolloutBook:
    """The rollouts of a job store's database."""

    def __init__(self, database: Database):
        self.database = database

    def save(self, row: dict[str, Any]) -> None:
        """Insert or replace the rollout of ``row['model']``."""
        values = tuple(json.dumps(row[c], sort_keys=True) if c in JSON_COLUMNS else row[c]
                       for c in COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])

        def write(db: Tx) -> None:
            db.execute(f"INSERT INTO rollouts ({', '.join(COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(COLUMNS))}) "
                       f"ON CONFLICT (model) DO UPDATE SET {updates}", values)
        self.database.write(write)

    def load(self) -> list[dict[str, Any]]:
        """Every model's rollout, by model name."""
        rows = self.database.read(lambda db: db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM rollouts ORDER BY model").fetchall())
        return [{c: json.loads(v) if c in JSON_COLUMNS else v
                 for c, v in zip(COLUMNS, row, strict=True)} for row in rows]
