"""Alembic migrations on every backend: up, down, up again; and model == migrations."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store import migrate
from service.store.engine import make_engine
from service.store.schema import (ALL_TABLES, VERSION_TABLE, include_object, is_regtune_table,
                                  metadata)
from service.store.sql import SqlJobStore

REGTUNE_TABLES = {t.name for t in ALL_TABLES}


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def versions(url: str, table: str = VERSION_TABLE) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {table}"))]
    finally:
        engine.dispose()


def diff_against(url: str, target: sa.MetaData) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_object": include_object,
                "version_table": VERSION_TABLE})
            return compare_metadata(context, target)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(fresh_url):
    head = migrate.head_revision()
    migrate.upgrade(fresh_url)
    assert REGTUNE_TABLES <= table_names(fresh_url)
    assert versions(fresh_url) == [head]

    migrate.downgrade(fresh_url)
    assert {t for t in table_names(fresh_url) if is_regtune_table(t)} <= {VERSION_TABLE}
    assert versions(fresh_url) == []

    migrate.upgrade(fresh_url)
    assert versions(fresh_url) == [head]
    with SqlJobStore(fresh_url) as store:  # usable, and opening again is a no-op
        job, _ = store.create_job(name="after", owner="a", spec={}, num_trials=1)
        assert store.add_event(job.id, "k").seq == 1
    assert versions(fresh_url) == [head]


def test_model_matches_migrations(fresh_url):
    migrate.upgrade(fresh_url)
    assert diff_against(fresh_url, metadata) == []
    # The check can fail: a model with one more column differs from the migrated schema.
    drifted = sa.MetaData()
    for table in ALL_TABLES:
        table.to_metadata(drifted)
    drifted.tables["regtune_jobs"].append_column(sa.Column("priority", sa.Integer))
    diff = diff_against(fresh_url, drifted)
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "priority")]


def test_keeps_apart_from_mlflow_tables(fresh_url):
    """A PostgreSQL database shared with MLflow: its tables and alembic_version survive."""
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            conn.execute(sa.text("INSERT INTO alembic_version VALUES ('mlflow_head')"))
            conn.execute(sa.text("CREATE TABLE experiments (experiment_id INTEGER, name TEXT)"))
            conn.execute(sa.text("INSERT INTO experiments VALUES (0, 'Default')"))
    finally:
        engine.dispose()
    migrate.upgrade(fresh_url)
    assert diff_against(fresh_url, metadata) == []  # MLflow's tables are not "removed"
    migrate.downgrade(fresh_url)
    migrate.upgrade(fresh_url)
    assert versions(fresh_url, "alembic_version") == ["mlflow_head"]
    assert versions(fresh_url) == [migrate.head_revision()]
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            assert list(conn.execute(sa.text("SELECT * FROM experiments"))) == [(0, "Default")]
    finally:
        engine.dispose()


def test_concurrent_first_open(fresh_url, backend):
    """Several processes opening a brand-new database at once all succeed.

    On SQLite this once failed about one time in ten ("database is locked" from
    switching the new file to WAL), so SQLite gets several fresh files.
    """
    urls = [fresh_url] if backend != "sqlite" else [
        fresh_url.replace("fresh.db", f"fresh{i}.db") for i in range(8)]
    for url in urls:
        barrier, errors, stores = threading.Barrier(4), [], []

        def open_one() -> None:
            barrier.wait()
            try:
                stores.append(SqlJobStore(url))  # noqa: B023 - joined before url changes
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for s in stores:
            s.close()
        assert errors == [] and len(stores) == 4
        assert versions(url) == [migrate.head_revision()]


def test_plain_alembic_command_and_cli(fresh_url):
    """The packaged env also works through alembic.command with just a URL, and the CLI."""
    command.upgrade(migrate.alembic_config(fresh_url), "head")
    assert versions(fresh_url) == [migrate.head_revision()]
    assert migrate.main(["downgrade", fresh_url]) == 0
    assert versions(fresh_url) == []
    assert migrate.main(["sideways", fresh_url]) == 2


def test_open_without_migrate_leaves_database_empty(fresh_url):
    with SqlJobStore(fresh_url, migrate=False):
        pass
    assert not {t for t in table_names(fresh_url) if is_regtune_table(t)}


def test_current_revision(fresh_url):
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            assert migrate.current_revision(conn) is None
        migrate.upgrade(fresh_url, "head")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        engine.dispose()


def test_the_queue_counts_are_filled_from_the_jobs_on_upgrade(fresh_url):
    """0004 adds the per-owner counts of queued jobs, a row for every owner (their
    latest starts are looked up from them), and fills them from the jobs."""
    from datetime import datetime, timezone

    from service.store.schema import jobs, queue_owners

    command.upgrade(migrate.alembic_config(fresh_url), "0003")
    engine = make_engine(fresh_url)
    t1, t2 = (datetime(2026, 1, d, tzinfo=timezone.utc) for d in (1, 2))
    try:
        with engine.begin() as conn:
            for i, (owner, status, started) in enumerate([
                    ("alice", "queued", None), ("alice", "queued", None),
                    ("bob", "queued", None), ("bob", "running", t2),
                    ("carol", "succeeded", t1)]):
                conn.execute(jobs.insert().values(
                    id=f"{i:012x}", name="j", owner=owner, status=status, spec={},
                    num_trials=1, created_at=t1, started_at=started, event_seq=0,
                    trial_count=0))
    finally:
        engine.dispose()
    store = SqlJobStore(fresh_url)  # opening upgrades to head
    try:
        with store.engine.connect() as conn:
            kept = {o: n for o, n in conn.execute(sa.select(queue_owners))}
        assert kept == {"alice": 2, "bob": 1, "carol": 0}
        assert store.queue_counts(f"{1:012x}").backlog == {"alice": 2, "bob": 1}
        assert store.last_started_by_owner() == {"bob": t2, "carol": t1}
    finally:
        store.close()
