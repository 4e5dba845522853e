"""MemberBook: the nodes replicas of one store tell each other of (both backends)."""

from __future__ import annotations

import time

from coordinator.fleet.membership import Member
from coordinator.jobs.members import MemberBook
from coordinator.jobs.schema import SCHEMA_VERSION
from coordinator.jobs.store import JobStore
from tests.coordinator.jobs.older_schema import make_older, stored_version


def test_each_replica_learns_the_nodes_the_others_heard(store_location):
    a, b = JobStore(store_location), JobStore(store_location)  # two coordinators' handles
    try:
        book_a, book_b = MemberBook(a.database), MemberBook(b.database)
        n1 = Member("n1", "10.0.0.1:8001", 8, 1)
        n2 = Member("n2", "10.0.0.2:8001", 4, 3)
        assert book_a.share([n1], 30.0) == [n1]
        assert book_b.share([n2], 30.0) == [n1, n2]  # B learns n1, publishes n2
        moved = Member("n1", "10.0.0.9:8001", 16, 2)  # re-registered elsewhere, resized
        assert book_a.share([moved], 30.0) == [moved, n2]
    finally:
        a.close()
        b.close()


def test_nodes_nobody_heard_lately_are_not_shared_and_later_forgotten(store_location):
    store = JobStore(store_location)
    try:
        book = MemberBook(store.database, forget_after_s=0.4)
        book.share([Member("n1", "10.0.0.1:8001", 8)], 30.0)
        time.sleep(0.25)
        assert book.share([], 0.2) == []  # heard 0.25 s ago: not within 0.2 s
        assert [m.node_id for m in book.share([], 30.0)] == ["n1"]  # still kept
        time.sleep(0.25)
        assert book.share([], 30.0) == []  # silent for longer than forget_after_s: deleted
        count = store.database.read(lambda db: db.execute(
            "SELECT COUNT(*) FROM fleet_members").fetchone()[0])
        assert count == 0
    finally:
        store.close()


def test_a_version_7_store_gains_the_members_table(store_location):
    make_older(store_location, 7)
    store = JobStore(store_location)  # upgraded in place
    try:
        assert stored_version(store) == SCHEMA_VERSION
        n1 = Member("n1", "10.0.0.1:8001", 8)
        assert MemberBook(store.database).share([n1], 30.0) == [n1]
    finally:
        store.close()
