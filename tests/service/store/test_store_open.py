"""open_store: the URL-scheme registry, and what opening does to a SQLite path."""

from __future__ import annotations

import sqlite3

import pytest

import service.store as store_pkg
from service.store import JobStore, open_store, register_store, supported_schemes
from service.store.sql import SqlJobStore


def test_schemes_registered():
    assert {"sqlite", "postgresql", "postgresql+psycopg2"} <= set(supported_schemes())


def test_sqlite_url_opens_sql_store_and_creates_directories(tmp_path):
    path = tmp_path / "a" / "b" / "regtune.db"
    with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SqlJobStore)
        store.create_user("alice")
    assert path.exists()


def test_sqlite_pragmas(tmp_path):
    with SqlJobStore(f"sqlite:///{tmp_path / 'p.db'}") as store:
        with store.engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 30_000
            assert pragma("foreign_keys") == 1
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    assert sqlite3.connect(tmp_path / "p.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_sqlite_works_in_one_thread():
    with open_store("sqlite://") as store:
        job, _ = store.create_job(name="m", owner="me", spec={}, num_trials=1)
        assert store.get_job(job.id) == job


@pytest.mark.postgres
def test_postgresql_url_opens_sql_store(pg_url):
    with open_store(pg_url) as store:
        assert isinstance(store, SqlJobStore)
        assert store.engine.dialect.name == "postgresql"
        assert "password" not in repr(store)


def test_unknown_scheme_and_garbage():
    with pytest.raises(ValueError, match="mysql"):
        open_store("mysql://db/regtune")
    with pytest.raises(ValueError, match="not a database URL"):
        open_store("::nonsense::")


def test_register_store(monkeypatch):
    opened: list[str] = []

    class Fake(SqlJobStore):
        def __init__(self, url: str) -> None:  # noqa: D401 - no database needed
            opened.append(url)

        def close(self) -> None:
            pass

    monkeypatch.setattr(store_pkg, "_REGISTRY", dict(store_pkg._REGISTRY))
    register_store("fake", Fake)
    store = open_store("fake://somewhere/x")
    assert isinstance(store, JobStore) and opened == ["fake://somewhere/x"]
    assert "fake" in supported_schemes()


def test_only_sqlite_says_it_writes_one_transaction_at_a_time(store, backend) -> None:
    # The API queues its submits before a store that writes serially (service/api/deps.py).
    assert store.serial_writes is (backend == "sqlite")
