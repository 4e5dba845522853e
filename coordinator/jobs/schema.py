"""The SQLite schema of the job store, and its creation/migration.

Four tables: ``jobs`` (one row per Submit), ``shards`` (the unit of leasing; each holds its
items' ids and data once, so a restarted coordinator needs nothing else), ``results`` (one
row per answered item, ``UNIQUE(job_id, item_id)``; ``seq`` orders FetchResults) and
``spool`` (escalations waiting for the cloud, schema version 2). Version 3 counts each
job's re-queued shards and discarded duplicate results. The version
lives in ``PRAGMA user_version``; a store written by a newer schema is refused.
"""

from __future__ import annotations

import sqlite3

from coordinator.errors import CoordinatorError

SCHEMA_VERSION = 3

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

# Version 2: the escalation spool. An item the edge answered without confidence, that the
# cloud could not answer yet, waits here with its data and its edge answer (the fallback,
# final if the escalation expires); its final result is written when it leaves. Jobs count
# their cloud and degraded results as they are written, so progress reads never rescan.
SPOOL_SCHEMA = """
CREATE TABLE spool (
    spool_id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- replay order: oldest first
    job_id        TEXT NOT NULL REFERENCES jobs (job_id),
    item_id       TEXT NOT NULL,
    shard_id      INTEGER NOT NULL REFERENCES shards (shard_id),
    model         TEXT NOT NULL,                      -- the edge model (the cascade rule key)
    payload       BLOB NOT NULL,                      -- msgpack: item data + fallback answer
    bytes         INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,         -- cloud calls tried for it
    last_error    TEXT,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    UNIQUE (job_id, item_id)
);
CREATE INDEX spool_by_shard ON spool (shard_id);
-- final results the cloud gave, and edge answers kept degraded (no trailing comment on an
-- ALTER: SQLite copies it into the table's stored CREATE statement and breaks it)
ALTER TABLE jobs ADD COLUMN cloud_items INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN degraded_items INTEGER NOT NULL DEFAULT 0
"""

# Version 3: what a job survived, counted in the transaction that does it: shards given
# back to the queue (a node died, was drained, failed, answered partly or let its lease
# expire) and late duplicate results discarded (first writer wins); and each node's share
# of a job's results, kept as they are written (Watch reads it often: no rescans).
COUNTERS_SCHEMA = """
ALTER TABLE jobs ADD COLUMN requeued_shards INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN duplicate_results INTEGER NOT NULL DEFAULT 0;
CREATE TABLE job_nodes (
    job_id        TEXT NOT NULL REFERENCES jobs (job_id),
    node          TEXT NOT NULL,
    items         INTEGER NOT NULL,
    PRIMARY KEY (job_id, node)
);
INSERT INTO job_nodes (job_id, node, items)
    SELECT job_id, node, COUNT(*) FROM results GROUP BY job_id, node
"""


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty store or upgrade an older one, in the caller's transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        _run(db, SCHEMA)
        version = 1
    if version == 1:
        _run(db, SPOOL_SCHEMA)
        version = 2
    if version == 2:
        _run(db, COUNTERS_SCHEMA)
        version = 3
    if version == SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    else:
        raise CoordinatorError(
            f"{path}: job store schema version {version} is not supported (this coordinator "
            f"knows {SCHEMA_VERSION}); open it with a matching release")


def _run(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction: run the statements one by one
    # (so no comment in a script may contain a semicolon).
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
