"""The fleet's nodes as every replica of a shared store sees them.

A node may register with only some of the coordinator replicas of a PostgreSQL store
(``edge-node --coordinator A``). Each replica's membership round publishes the live nodes
that registered with it and reads those the others published
(``coordinator.fleet.membership.Membership.share_members``): a node heard by any replica
within ``heard_within_s`` becomes a candidate everywhere, admitted by each replica's own
health check, so every replica routes to and leases shards to the whole fleet. Times are
the database's clock (replicas' clocks may disagree). On a store of one coordinator
(SQLite) there is nobody to share with and the book is not used.
"""

from __future__ import annotations

from coordinator.fleet.membership import Member
from coordinator.jobs.database import Database, Tx


class MemberBook:
    """The ``fleet_members`` table of a shared job store. Rows not refreshed for
    ``forget_after_s`` seconds are deleted."""

    def __init__(self, database: Database, forget_after_s: float = 600.0):
        self.database = database
        self.forget_after_s = forget_after_s

    def share(self, ours: list[Member], heard_within_s: float) -> list[Member]:
        """Publish ``ours`` (the live nodes registered with this replica) as heard now, in
        one transaction; return every node some replica heard within ``heard_within_s``
        seconds (ours included)."""
        clock = self.database.clock

        def write(db: Tx) -> list[Member]:
            for m in ours:
                db.execute(
                    "INSERT INTO fleet_members (node_id, address, capacity, processes, "
                    f"heard_at) VALUES (?, ?, ?, ?, {clock}) ON CONFLICT (node_id) DO UPDATE "
                    "SET address = excluded.address, capacity = excluded.capacity, "
                    "processes = excluded.processes, heard_at = excluded.heard_at",
                    (m.node_id, m.address, m.capacity, m.processes))
            db.execute(f"DELETE FROM fleet_members WHERE heard_at < {clock} - ?",
                       (self.forget_after_s,))
            rows = db.execute("SELECT node_id, address, capacity, processes FROM "
                              f"fleet_members WHERE heard_at >= {clock} - ? ORDER BY node_id",
                              (heard_within_s,)).fetchall()
            return [Member(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

        return self.database.write(write)
