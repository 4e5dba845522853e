"""The job store's schema on SQLite and PostgreSQL, and its creation/migration.

Tables: ``jobs`` (one row per Submit), ``shards`` (the unit of leasing; each holds its
items' ids and data once, so a restarted coordinator needs nothing else), ``spool``
(escalations waiting for the cloud, schema version 2), ``job_nodes`` (each node's share,
version 3), ``jobs.owner`` (who submitted the job: a token's name, version 5) and,
since version 4, ``result_blocks`` (final results, one row per write of
many items: see ``coordinator.jobs.results``) with ``shards.marks`` (one byte per item: 0
open, 1 final result, 2 in the spool: what makes each result exactly-once) and
``replicas`` (coordinator processes sharing the store, with their last heartbeat) and
``drained_nodes`` (operator drains, kept across restarts and seen by every replica) and,
since version 6, ``rollouts`` (each model's version labels and canary decision) and, since
version 7, ``hard_examples`` (escalated and audited items with the cloud's answers) and,
since version 8, ``fleet_members`` (the nodes each replica heard, for the others:
``coordinator.jobs.members``) and, since version 9, ``hard_examples.job_id`` (a job's
item is kept once per source: ``coordinator.jobs.examples``). Until
version 3 results were one row per item (``results``); version 4 converts them.

SQLite keeps the version in ``PRAGMA user_version`` and upgrades step by step; a
PostgreSQL store (``coordinator.jobs.schema_postgres``) is created at the current version
(``edgeshard_schema``). A store written by a newer schema is refused.
"""

from __future__ import annotations

import json
import sqlite3

import msgpack
import numpy as np

from coordinator.errors import CoordinatorError
from coordinator.jobs.examples import EXAMPLE_JOBS_SCHEMA, EXAMPLES_SCHEMA
from coordinator.jobs.model import ResultBatch
from coordinator.jobs.results import INSERT_BLOCK, encode_body

SCHEMA_VERSION = 9

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


# Version 4: results stored as blocks (one row per shard write instead of one per item),
# per-job seqs, item marks on the shard, lease owners and coordinator replicas. A shard's
# items move to ``shard_data``, written once: SQLite rewrites a whole row, blobs included,
# on every UPDATE, and a shard's state changes at least twice.
BLOCKS_SCHEMA = """
ALTER TABLE jobs ADD COLUMN result_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE shards ADD COLUMN marks BLOB;
ALTER TABLE shards ADD COLUMN owner TEXT;
CREATE TABLE shard_data (
    shard_id      INTEGER PRIMARY KEY REFERENCES shards (shard_id),
    item_ids      BLOB NOT NULL,                      -- msgpack list of str
    payload       BLOB NOT NULL                       -- the stacked items as .npy bytes
);
CREATE TABLE result_blocks (
    job_id        TEXT NOT NULL REFERENCES jobs (job_id),
    last_seq      INTEGER NOT NULL,                   -- the job's seqs first_seq..last_seq
    first_seq     INTEGER NOT NULL,
    shard_id      INTEGER NOT NULL REFERENCES shards (shard_id),
    attempt       INTEGER NOT NULL,                   -- 0: written by the spool
    node          TEXT NOT NULL,
    model_version TEXT NOT NULL,
    items         INTEGER NOT NULL,
    body          BLOB NOT NULL,                      -- msgpack columns (results.encode_body)
    PRIMARY KEY (job_id, last_seq)
);
CREATE TABLE replicas (
    replica_id    TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    started_at    REAL NOT NULL,
    seen_at       REAL NOT NULL
);
CREATE TABLE drained_nodes (
    node          TEXT PRIMARY KEY,                   -- node id (or address) an operator drained
    since         REAL NOT NULL
);
CREATE INDEX jobs_running ON jobs (num) WHERE state = 'running'
"""

# Version 5: a job's owner, the name of the bearer token that submitted it ('' without
# authentication); only it (or an admin) may read or cancel the job.
OWNERS_SCHEMA = """
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''
"""

# Version 6: each model's version labels (stable, canary) and its canary rollout: the
# traffic shares, the margins (JSON), the state and the decision with its reason and
# statistics (JSON), so that a decision outlives a restart and reaches every replica.
# One script for both backends (SQLite gives DOUBLE PRECISION the REAL affinity).
ROLLOUTS_SCHEMA = """
CREATE TABLE rollouts (
    model         TEXT PRIMARY KEY,
    stable        TEXT NOT NULL,
    canary        TEXT NOT NULL,
    share         DOUBLE PRECISION NOT NULL,
    shadow        DOUBLE PRECISION NOT NULL,
    margins       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'promoted', 'rolled_back')),
    reason        TEXT NOT NULL DEFAULT '',
    stats         TEXT NOT NULL DEFAULT '{}',
    started_at    DOUBLE PRECISION NOT NULL,
    decided_at    DOUBLE PRECISION NOT NULL DEFAULT 0
)
"""

# Version 8: the nodes each replica of a shared store heard from (heard_at: the database's
# clock), so a node registered with one replica is known to all.
MEMBERS_SCHEMA = """
CREATE TABLE fleet_members (
    node_id       TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    capacity      INTEGER NOT NULL,
    processes     INTEGER NOT NULL,
    heard_at      DOUBLE PRECISION NOT NULL
)
"""


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty SQLite store or upgrade an older one, in the caller's
    transaction."""
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
    if version == 3:
        _run(db, BLOCKS_SCHEMA)
        _convert_results(db)
        version = 4
    if version == 4:
        _run(db, OWNERS_SCHEMA)
        version = 5
    if version == 5:
        _run(db, ROLLOUTS_SCHEMA)
        version = 6
    if version == 6:
        _run(db, EXAMPLES_SCHEMA)
        version = 7
    if version == 7:
        _run(db, MEMBERS_SCHEMA)
        version = 8
    if version == 8:
        _run(db, EXAMPLE_JOBS_SCHEMA)
        version = 9
    if version == SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    else:
        raise _too_new(path, version)


def _too_new(where: str, version: int) -> CoordinatorError:
    return CoordinatorError(
        f"{where}: job store schema version {version} is not supported (this coordinator "
        f"knows {SCHEMA_VERSION}); open it with a matching release")


def _convert_results(db: sqlite3.Connection) -> None:
    """Version 3 -> 4: each per-item result row becomes a one-item block keeping its seq
    (so resume points stay valid); marks come from results and spool; the next seqs of
    every job start after the largest old one; shard items move to ``shard_data``."""
    positions: dict[int, dict[str, int]] = {}
    marks: dict[int, bytearray] = {}

    def mark(shard_id: int, item_id: str, value: int) -> None:
        if shard_id not in positions:
            ids, count = db.execute("SELECT item_ids, item_count FROM shards WHERE shard_id = ?",
                                    (shard_id,)).fetchone()
            positions[shard_id] = {i: k for k, i in enumerate(msgpack.unpackb(ids))}
            marks[shard_id] = bytearray(count)
        marks[shard_id][positions[shard_id][item_id]] = value

    for (seq, job_id, item_id, shard_id, attempt, label, conf, tier, node, version,
         extra) in db.execute("SELECT seq, job_id, item_id, shard_id, attempt, label, "
                              "confidence, tier, node, model_version, extra FROM results "
                              "ORDER BY seq").fetchall():
        body = encode_body(ResultBatch([item_id], np.array([label], np.int64),
                                       np.array([conf], np.float64), node, version, [tier],
                                       [json.loads(extra)]))
        db.execute(INSERT_BLOCK, (job_id, seq, seq, shard_id, attempt, node, version, 1, body))
        mark(shard_id, item_id, 1)
    for shard_id, item_id in db.execute("SELECT shard_id, item_id FROM spool").fetchall():
        mark(shard_id, item_id, 2)
    db.executemany("UPDATE shards SET marks = ? WHERE shard_id = ?",
                   [(bytes(m), shard_id) for shard_id, m in marks.items()])
    db.execute("UPDATE jobs SET result_seq = (SELECT COALESCE(MAX(seq), 0) FROM results)")
    db.execute("DROP TABLE results")
    db.execute("INSERT INTO shard_data (shard_id, item_ids, payload) "
               "SELECT shard_id, item_ids, payload FROM shards")
    db.execute("ALTER TABLE shards DROP COLUMN item_ids")
    db.execute("ALTER TABLE shards DROP COLUMN payload")


def _run(db, script: str) -> None:
    # executescript() would COMMIT the open transaction: run the statements one by one
    # (so no comment in a script may contain a semicolon).
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
