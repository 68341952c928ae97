"""Fixtures that run the store tests on both backends.

``store`` is parametrized over SQLite (a file in tmp_path) and PostgreSQL (a
database created for this test session and dropped at its end), in the style
of Optuna's storage tests: one test body, every backend. PostgreSQL tests skip,
with the reason, only when the server cannot be reached; set
REGTUNE_TEST_PG_HOST / REGTUNE_TEST_PG_PORT / REGTUNE_TEST_PG_USER to point
them elsewhere.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import sqlalchemy as sa

from service.store.schema import ALL_TABLES
from service.store.sql import SqlJobStore

PG_HOST = os.environ.get("REGTUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("REGTUNE_TEST_PG_PORT", "5432"))
PG_USERS = [os.environ["REGTUNE_TEST_PG_USER"]] if "REGTUNE_TEST_PG_USER" in os.environ \
    else ["postgres", "root"]

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _admin_connection() -> tuple[psycopg2.extensions.connection, str]:
    error: Exception | None = None
    for user in PG_USERS:
        try:
            conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres",
                                    connect_timeout=3)
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            return conn, user
        except psycopg2.OperationalError as exc:
            error = exc
    assert error is not None
    raise error


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh, uniquely named databases; drops all of them at session end."""
    try:
        admin, user = _admin_connection()
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {first_line}")
    created: list[str] = []

    def create() -> str:
        name = f"regtune_test_{secrets.token_hex(6)}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg2://{user}@{PG_HOST}:{PG_PORT}/{name}"

    yield create
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def pg_url(pg_database_factory: Callable[[], str]) -> str:
    """The session's shared PostgreSQL database (tables emptied before each test)."""
    return pg_database_factory()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'regtune.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def fresh_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database of the backend, never migrated (for migration tests)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_database_factory")()


@pytest.fixture
def store(store_url: str, backend: str) -> Iterator[SqlJobStore]:
    s = SqlJobStore(store_url)
    if backend == "postgresql":
        names = ", ".join(t.name for t in ALL_TABLES)
        with s.engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield s
    s.close()
