"""Make a fresh store look like one written by an older schema version, for upgrade tests:
what each later version added is taken away again (add a line here with each new version)."""

from __future__ import annotations

import sqlite3

from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore

TABLES_ADDED = {6: "rollouts", 7: "hard_examples", 8: "fleet_members"}
# Versions that changed tables already there: the statements that undo the change (an index
# goes before its column: neither backend drops an indexed column).
CHANGES = {9: ["DROP INDEX hard_examples_once", "ALTER TABLE hard_examples DROP COLUMN job_id"]}


def drops_after(version: int) -> list[str]:
    """The statements that undo the versions after ``version``, newest first (a later
    version may change a table an earlier one added)."""
    assert max(TABLES_ADDED.keys() | CHANGES.keys()) == SCHEMA_VERSION, \
        "list what the new version adds above"
    undo = {v: [f"DROP TABLE {table}"] for v, table in TABLES_ADDED.items()} | CHANGES
    return [statement for v in sorted(undo, reverse=True) if v > version
            for statement in undo[v]]


def make_older(location: str, version: int) -> None:
    """Create a store at ``location`` (a SQLite path or a PostgreSQL URL) and take it back
    to schema ``version`` (at least 5: older ones differ in more than tables)."""
    JobStore(location).close()
    if location.startswith("postgresql://"):
        store = JobStore(location)
        store.database.write(lambda db: ([db.execute(d) for d in drops_after(version)],
                                         db.execute("UPDATE edgeshard_schema SET version = ?",
                                                    (version,))))
        store.close()
        return
    db = sqlite3.connect(location)
    for drop in drops_after(version):
        db.execute(drop)
    db.execute(f"PRAGMA user_version={int(version)}")
    db.commit()
    db.close()


def stored_version(store: JobStore) -> int:
    """The schema version ``store``'s database records."""
    if store.database.dialect == "sqlite":
        return store.database.read(lambda db: db.execute("PRAGMA user_version").fetchone()[0])
    return store.database.read(
        lambda db: db.execute("SELECT version FROM edgeshard_schema").fetchone()[0])
