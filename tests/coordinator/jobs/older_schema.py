"""Make a fresh store look like one written by an older schema version, for upgrade tests:
the tables each later version added are dropped (add a line here with each new version)."""

from __future__ import annotations

import sqlite3

from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore

TABLES_ADDED = {6: "rollouts", 7: "hard_examples", 8: "fleet_members"}


def drops_after(version: int) -> list[str]:
    """``DROP TABLE`` statements for the tables versions after ``version`` added."""
    assert max(TABLES_ADDED) == SCHEMA_VERSION, "list the new version's tables above"
    return [f"DROP TABLE {table}" for v, table in sorted(TABLES_ADDED.items()) if v > version]


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
