"""Operator drains kept in the job store, so they outlive a restart and reach every replica.

``edge-coordinator drain NODE`` on any coordinator records the node here (by id, or by
address for a node not registered yet); each coordinator's membership round applies the
recorded set to its own registry (``coordinator.fleet.membership.Membership.apply_drains``),
so a node drained through one replica gets no new work from any, within a round.
"""

from __future__ import annotations

import time

from coordinator.jobs.database import Database, Tx


class DrainBook:
    """The drained nodes of a job store's database."""

    def __init__(self, database: Database):
        self.database = database

    def record(self, node: str, drained: bool) -> None:
        """Record that an operator drained (or undrained) ``node`` (its id or address)."""
        def write(db: Tx) -> None:
            if drained:
                db.execute("INSERT INTO drained_nodes (node, since) VALUES (?, ?) "
                           "ON CONFLICT (node) DO NOTHING", (node, time.time()))
            else:
                db.execute("DELETE FROM drained_nodes WHERE node = ?", (node,))
        self.database.write(write)

    def drained(self) -> set[str]:
        """The ids (or addresses) of every node an operator has drained."""
        return {row[0] for row in self.database.read(
            lambda db: db.execute("SELECT node FROM drained_nodes").fetchall())}
