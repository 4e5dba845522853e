"""The SQLite schema of the job store, and its creation/migration.

Three tables: ``jobs`` (one row per Submit), ``shards`` (the unit of leasing; each holds its
items' ids and data once, so a restarted coordinator needs nothing else) and ``results`` (one
row per answered item, ``UNIQUE(job_id, item_id)``; ``seq`` orders FetchResults). The version
lives in ``PRAGMA user_version``; a store written by a newer schema is refused.
"""

from __future__ import annotations

import sqlite3

from coordinator.errors import CoordinatorError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE jobs (
    num           INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: older jobs lease first
    job_id        TEXT NOT NULL UNIQUE,
    model         TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    params        TEXT NOT NULL,                      -- JSON object, passed to every lease
    shard_size    INTEGER NOT NULL,
    total_items   INTEGER NOT NULL,
    done_items    INTEGER NOT NULL DEFAULT 0,         -- = rows in results, kept in step
    dtype         TEXT NOT NULL,
    item_shape    TEXT NOT NULL,                      -- JSON list
    digest        TEXT NOT NULL,                      -- sha256 of the content: idempotent Submit
    created_at    REAL NOT NULL,
    finished_at   REAL,
    error         TEXT
);
CREATE TABLE shards (
    shard_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT NOT NULL REFERENCES jobs (job_id),
    idx           INTEGER NOT NULL,                   -- position within the job
    state         TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'cancelled')),
    attempt       INTEGER NOT NULL DEFAULT 0,         -- leases so far (results name theirs)
    failures      INTEGER NOT NULL DEFAULT 0,         -- attempts released as failed
    node_id       TEXT,                               -- holder of the current lease
    lease_expires REAL,
    last_error    TEXT,
    item_count    INTEGER NOT NULL,
    item_ids      BLOB NOT NULL,                      -- msgpack list of str
    payload       BLOB NOT NULL,                      -- the stacked items as .npy bytes
    UNIQUE (job_id, idx)
);
CREATE INDEX shards_by_state ON shards (state, job_id, idx);
CREATE INDEX shards_by_node ON shards (node_id) WHERE state = 'leased';
CREATE TABLE results (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- FetchResults order and resume point
    job_id        TEXT NOT NULL REFERENCES jobs (job_id),
    item_id       TEXT NOT NULL,
    shard_id      INTEGER NOT NULL REFERENCES shards (shard_id),
    attempt       INTEGER NOT NULL,
    label         INTEGER NOT NULL,
    confidence    REAL NOT NULL,
    tier          TEXT NOT NULL,
    node          TEXT NOT NULL,
    model_version TEXT NOT NULL,
    extra         TEXT NOT NULL,                      -- JSON object
    UNIQUE (job_id, item_id)
);
CREATE INDEX results_by_shard ON results (shard_id);
"""


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty store, inside the caller's transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        # executescript() would COMMIT the open transaction: run the statements one by one
        # (so no comment in SCHEMA may contain a semicolon).
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        raise CoordinatorError(
            f"{path}: job store schema version {version} is not supported (this coordinator "
            f"knows {SCHEMA_VERSION}); open it with a matching release")
