"""The job store's reads: a job's progress, the list of jobs, its shares and results.

``JobQueries`` is a mixin of ``JobStore`` (it needs ``self.database``); ``job_state`` is
shared with the store's writes. Each read is one read transaction of the ``Database``.
"""

from __future__ import annotations

from coordinator.errors import JobNotFoundError
from coordinator.jobs.database import Database, Tx
from coordinator.jobs.model import JobProgress, ResultRow
from coordinator.jobs.results import decode_block


class JobQueries:
    """Reads of jobs and results (``JobStore`` mixes them in)."""

    database: Database

    def progress(self, job_id: str) -> JobProgress:
        """The job's state and counters; JobNotFoundError if there is no such job."""
        rows = self.database.read(lambda db: progress_rows(db, "WHERE j.job_id = ?",
                                                            (job_id,)))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r}")
        return rows[0]

    def list_jobs(self, state: str | None = None, owner: str | None = None,
                  after_job: str | None = None, limit: int | None = None) -> list[JobProgress]:
        """Jobs (those in ``state``, of ``owner``), oldest first: after ``after_job`` (a
        job id; ``JobNotFoundError`` if there is no such job) and at most ``limit``."""
        terms = [(f"j.{column} = ?", value) for column, value in
                 (("state", state), ("owner", owner)) if value is not None]
        if after_job is not None:
            terms.append(("j.num > (SELECT num FROM jobs WHERE job_id = ?)", after_job))
        where = ("WHERE " + " AND ".join(t for t, _ in terms)) if terms else ""
        args = tuple(v for _, v in terms)

        def read(db: Tx) -> list[JobProgress]:
            if after_job is not None:
                job_state(db, after_job)  # JobNotFoundError
            return progress_rows(db, where, args, limit)

        return self.database.read(read)

    def totals(self) -> tuple[dict[str, int], int]:
        """How many jobs are in each state, and the items of running jobs still without a
        result (for the metrics)."""
        def read(db: Tx) -> tuple[dict[str, int], int]:
            rows = db.execute("SELECT state, COUNT(*), SUM(total_items - done_items) "
                              "FROM jobs GROUP BY state").fetchall()
            counts = {state: int(count) for state, count, _ in rows}
            remaining = sum(int(left or 0) for state, _, left in rows if state == "running")
            return counts, remaining
        return self.database.read(read)

    def shares(self, job_id: str) -> dict[str, int]:
        """How many of the job's results each node produced."""
        def read(db: Tx) -> dict[str, int]:
            job_state(db, job_id)
            return dict(db.execute("SELECT node, items FROM job_nodes WHERE job_id = ? "
                                   "ORDER BY node", (job_id,)).fetchall())
        return self.database.read(read)

    def results(self, job_id: str, after_seq: int = 0, limit: int | None = None,
                max_bytes: int | None = None) -> list[ResultRow]:
        """The job's results with ``seq > after_seq``, in seq order (at most ``limit``);
        with ``max_bytes``, no further block is read once the blocks read weigh that much
        (results holding large outputs: fewer than ``limit`` does not mean the end)."""
        def read(db: Tx) -> list[ResultRow]:
            job_state(db, job_id)
            cur = db.execute("SELECT first_seq, node, model_version, body FROM result_blocks "
                             "WHERE job_id = ? AND last_seq > ? ORDER BY last_seq",
                             (job_id, after_seq))
            out: list[ResultRow] = []
            weight = 0
            while limit is None or len(out) < limit:
                if max_bytes is not None and weight >= max_bytes:
                    break
                block = cur.fetchone()
                if block is None:
                    break
                weight += len(block[3])
                out.extend(r for r in decode_block(*block) if r.seq > after_seq)
            return out if limit is None else out[:limit]
        return self.database.read(read)


def progress_rows(db: Tx, where: str, args: tuple,
                  limit: int | None = None) -> list[JobProgress]:
    """Jobs matching ``where`` (a clause over ``jobs j``, with ``args``), oldest first,
    at most ``limit``, with their counters."""
    rows = db.execute(
        "SELECT j.job_id, j.model, j.state, j.total_items, j.done_items, "
        "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id), "
        "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id AND s.state = 'done'), "
        "(SELECT COUNT(*) FROM shards s WHERE s.job_id = j.job_id AND s.state = 'leased'), "
        "j.created_at, j.finished_at, j.error, "
        "(SELECT COUNT(*) FROM spool p WHERE p.job_id = j.job_id), "
        "j.cloud_items, j.degraded_items, j.requeued_shards, j.duplicate_results, j.owner "
        f"FROM jobs j {where} ORDER BY j.num" + (f" LIMIT {int(limit)}" if limit else ""),
        args).fetchall()
    return [JobProgress(*row) for row in rows]


def job_state(db: Tx, job_id: str) -> str:
    """The job's state; ``JobNotFoundError`` if there is no such job."""
    row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFoundError(f"no job {job_id!r}")
    return row[0]
