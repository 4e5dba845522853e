"""Hard examples in the job store (schema version 7), on SQLite and PostgreSQL: written,
read back page by page, bounded per model, a job's item kept once per source (version 9);
the background writer never blocks."""

from __future__ import annotations

from collections import Counter

import numpy as np

from coordinator.cascade.audit import Comparison
from coordinator.jobs.examples import ExampleBook, ExampleWriter
from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore
from tests.coordinator.jobs.older_schema import make_older, stored_version


def comparison(n, model="m", start=0, source="audit", job_id=""):
    ids = [f"{model}-{start + k}" for k in range(n)]
    items = (np.arange(n * 4, dtype=np.uint8) + start).reshape(n, 2, 2)
    return Comparison(model, "3", "cam-1", source, ids, items, np.arange(n) % 3,
                      np.full(n, 0.95, np.float32), np.arange(n) % 2,
                      np.full(n, 0.5, np.float32), job_id)


def stored(store):
    """(job_id, item_id, source) of every stored example, oldest first."""
    return store.database.read(lambda db: [tuple(r) for r in db.execute(
        "SELECT job_id, item_id, source FROM hard_examples ORDER BY seq").fetchall()])


def test_examples_round_trip_and_only_the_newest_are_kept_per_model(store_location):
    store = JobStore(store_location)
    try:
        book = ExampleBook(store.database, keep=5)
        assert book.add([comparison(4), comparison(3, model="other")]) == 7
        assert book.add([comparison(3, start=4, source="escalated")]) == 3
        assert book.counts() == {"m": 5, "other": 3}
        first = book.page("m", limit=2)
        rest = book.page("m", after_seq=first[-1].seq)
        examples = first + rest
        assert [e.item_id for e in examples] == [f"m-{k}" for k in range(2, 7)]
        e = examples[-1]  # m-6: the third item of the second write
        assert (e.source, e.version, e.segment, e.edge_label, e.cloud_label) == (
            "escalated", "3", "cam-1", 2, 0)
        assert e.item.dtype == np.uint8 and e.item.shape == (2, 2)
        np.testing.assert_array_equal(e.item, comparison(3, start=4).items[2])
        assert abs(e.edge_confidence - 0.95) < 1e-6 and abs(e.cloud_confidence - 0.5) < 1e-6
        assert book.page("missing") == []
    finally:
        store.close()


def test_a_version_6_store_gains_hard_examples(store_location):
    make_older(store_location, 6)
    store = JobStore(store_location)  # upgraded in place
    try:
        assert stored_version(store) == SCHEMA_VERSION
        assert ExampleBook(store.database).add([comparison(2)]) == 2
    finally:
        store.close()


def test_a_job_item_is_kept_once_per_source(store_location):
    store = JobStore(store_location)
    try:
        book = ExampleBook(store.database)
        assert book.add([comparison(3, source="escalated", job_id="j1")]) == 3
        # the shard re-run: the same items escalated again, stored once
        assert book.add([comparison(3, source="escalated", job_id="j1")]) == 0
        # in one batch, a re-run's items next to new ones: only the new ones are written
        assert book.add([comparison(2, start=2, source="escalated", job_id="j1")]) == 1
        assert book.add([comparison(3, source="audit", job_id="j1")]) == 3  # another source
        assert book.add([comparison(3, source="escalated", job_id="j2")]) == 3  # another job
        assert book.counts() == {"m": 10}
        rows = stored(store)
        assert len(rows) == len(set(rows)) == 10
        assert [r for r in rows if r[0] == "j1" and r[2] == "escalated"] == [
            ("j1", f"m-{k}", "escalated") for k in range(4)]
        assert [r[1] for r in rows if r[0] == "j2"] == ["m-0", "m-1", "m-2"]
    finally:
        store.close()


def test_online_comparisons_are_all_kept_even_with_repeated_item_ids(store_location):
    store = JobStore(store_location)
    try:
        book = ExampleBook(store.database)
        assert book.add([comparison(2, source="escalated")]) == 2
        assert book.add([comparison(2, source="escalated"), comparison(2)]) == 4
        assert book.counts() == {"m": 6}
        assert sorted(stored(store)) == sorted(
            [("", "m-0", "escalated"), ("", "m-1", "escalated")] * 2
            + [("", "m-0", "audit"), ("", "m-1", "audit")])
    finally:
        store.close()


def test_a_version_8_store_keeps_its_examples_and_then_keeps_job_items_once(store_location):
    store = JobStore(store_location)
    try:
        assert ExampleBook(store.database).add([comparison(2), comparison(2)]) == 4
    finally:
        store.close()
    make_older(store_location, 8)  # the rows stay, without job ids
    store = JobStore(store_location)  # upgraded in place
    try:
        assert stored_version(store) == SCHEMA_VERSION
        book = ExampleBook(store.database)
        assert stored(store) == [("", "m-0", "audit"), ("", "m-1", "audit")] * 2
        assert book.add([comparison(2, job_id="j1")]) == 2
        assert book.add([comparison(2, job_id="j1")]) == 0
        assert book.counts() == {"m": 6}
    finally:
        store.close()


def test_the_writer_drops_what_does_not_fit_and_survives_a_store_error(tmp_path):
    store = JobStore(str(tmp_path / "jobs.db"))
    outcomes = Counter()
    book = ExampleBook(store.database)
    writer = ExampleWriter(book, max_items=5,
                           on_outcome=lambda m, o, n: outcomes.update({o: n}))
    assert writer.keep(comparison(4))
    assert not writer.keep(comparison(2))  # full: dropped at once, never waited for
    assert writer.flush() == 4
    assert outcomes == {"stored": 4, "dropped": 2}
    store.close()  # the store goes away: the batch is dropped, counted, nothing raises
    assert writer.keep(comparison(1))
    assert writer.flush() == 0
    assert outcomes == {"stored": 4, "dropped": 3}


def test_the_writer_bounds_its_buffer_in_bytes_too(tmp_path):
    store = JobStore(str(tmp_path / "jobs.db"))
    try:
        outcomes = Counter()
        writer = ExampleWriter(ExampleBook(store.database), max_bytes=20,
                               on_outcome=lambda m, o, n: outcomes.update({o: n}))
        assert writer.keep(comparison(4))  # 16 bytes of items
        assert not writer.keep(comparison(2))  # 8 more would pass 20
        assert writer.flush() == 4 and outcomes == {"stored": 4, "dropped": 2}
    finally:
        store.close()
