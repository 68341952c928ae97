"""Fixtures that run the store tests on both backends.

``store`` is parametrized over SQLite (a file in tmp_path) and PostgreSQL (a
database created for this test session and dropped at its end), in the style
of Optuna's storage tests: one test body, every backend. The databases come
from ``pg_database_factory`` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from service.store.schema import ALL_TABLES
from service.store.sql import SqlJobStore

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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
