"""The real PostgreSQL server the job-store tests run on (tests/postgres.py, conftest fixtures).

These check the server behaviours the PostgreSQL job store relies on: committed data is
visible to the next transaction, each test gets its own database, ``FOR UPDATE SKIP
LOCKED`` skips rows another transaction holds, and an advisory lock is held by one session
until that session ends.
"""

from __future__ import annotations

import psycopg
import pytest

SEEN_DATABASES: dict[str, str] = {}


def test_commit_is_visible_to_the_next_transaction(pg_url):
    with psycopg.connect(pg_url) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL)")
            conn.execute("INSERT INTO items VALUES (1, 'seven'), (2, 'two')")
        with conn.transaction():
            rows = conn.execute("SELECT id, label FROM items ORDER BY id").fetchall()
    assert rows == [(1, "seven"), (2, "two")]

    with psycopg.connect(pg_url) as other:
        assert other.execute("SELECT count(*) FROM items").fetchone() == (2,)
        assert other.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        # Durability is left at the defaults: the tests see production commit semantics.
        assert other.execute("SHOW fsync").fetchone() == ("on",)
        assert other.execute("SHOW max_connections").fetchone() == ("200",)


def test_rolled_back_insert_is_not_visible(pg_url):
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY)")
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO items VALUES (1)")
            conn.execute("INSERT INTO items VALUES (1)")
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


@pytest.mark.parametrize("marker", ["first", "second"])
def test_each_test_gets_its_own_database(pg_url, marker):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        # A table of the same name in every test: it exists only in this test's database.
        conn.execute("CREATE TABLE marker (test text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (marker,))
        assert conn.execute("SELECT test FROM marker").fetchall() == [(marker,)]
    assert pg_url.endswith("/" + name)
    SEEN_DATABASES[marker] = name
    if len(SEEN_DATABASES) == 2:
        assert SEEN_DATABASES["first"] != SEEN_DATABASES["second"]


def test_databases_of_earlier_tests_are_dropped(postgres, pg_url):
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert pg_url.rsplit("/", 1)[1] in names
    if not SEEN_DATABASES:
        pytest.skip("checks the databases of test_each_test_gets_its_own_database: run them too")
    assert not names & set(SEEN_DATABASES.values())


def test_skip_locked_skips_the_row_another_transaction_holds(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE queue (id integer PRIMARY KEY, state text NOT NULL)")
        setup.execute("INSERT INTO queue SELECT i, 'pending' FROM generate_series(1, 3) i")

    claim = ("SELECT id FROM queue WHERE state = 'pending' ORDER BY id "
             "LIMIT 1 FOR UPDATE SKIP LOCKED")
    with psycopg.connect(pg_url) as a, psycopg.connect(pg_url) as b:
        assert a.execute(claim).fetchone() == (1,)       # a holds row 1, uncommitted
        assert b.execute(claim).fetchone() == (2,)       # b skips it instead of waiting
        assert b.execute(
            "SELECT id FROM queue ORDER BY id FOR UPDATE SKIP LOCKED").fetchall() == [(2,), (3,)]
        b.rollback()
        # Without SKIP LOCKED, b would wait for a: NOWAIT makes that an error to assert.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute("SELECT id FROM queue WHERE id = 1 FOR UPDATE NOWAIT")
        b.rollback()
        a.execute("UPDATE queue SET state = 'leased' WHERE id = 1")
        a.commit()
        assert b.execute(claim).fetchone() == (2,)
        b.execute("UPDATE queue SET state = 'leased' WHERE id = 2")
        b.commit()
        states = a.execute("SELECT id, state FROM queue ORDER BY id").fetchall()
    assert states == [(1, "leased"), (2, "leased"), (3, "pending")]


def test_advisory_lock_is_held_until_its_session_ends(pg_url):
    key = 4242
    first = psycopg.connect(pg_url, autocommit=True)
    with psycopg.connect(pg_url, autocommit=True) as second:
        try:
            assert first.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
            assert second.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() \
                == (False,)
            # Re-entrant for its holder; another key is free.
            assert first.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
            assert second.execute("SELECT pg_try_advisory_lock(%s)", (key + 1,)).fetchone() \
                == (True,)
        finally:
            first.close()
        # The server releases a session's advisory locks when the session ends; closing
        # the client socket ends it, but the backend may take a moment to exit.
        assert _eventually(lambda: second.execute(
            "SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,))
        held = second.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() ORDER BY objid").fetchall()
    assert held == [(key,), (key + 1,)]


def test_missing_binaries_say_how_to_install(monkeypatch, tmp_path):
    import tests.postgres as pgmod

    monkeypatch.setattr(pgmod, "BIN_ROOT", tmp_path / "no-postgresql")
    with pytest.raises(pgmod.PostgresNotInstalled, match="run bash scripts/setup_postgres.sh"):
        pgmod.PostgresServer().start(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_start_reports_the_server_log_and_cleans_up(postgres, tmp_path):
    from tests.postgres import PostgresServer, PostgresStartError

    server = PostgresServer(settings={"max_connections": "many"})
    with pytest.raises(PostgresStartError) as failure:
        server.start()
    message = str(failure.value)
    assert "server log" in message
    assert 'invalid value for parameter "max_connections": "many"' in message
    assert server.directory is None and server.port is None


def _eventually(check, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False
