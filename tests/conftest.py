"""Fixtures shared by every test package: fresh PostgreSQL databases.

PostgreSQL tests skip, with the reason, only when the server cannot be reached;
set REGTUNE_TEST_PG_HOST / REGTUNE_TEST_PG_PORT / REGTUNE_TEST_PG_USER to point
them elsewhere.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import psycopg2
import pytest

PG_HOST = os.environ.get("REGTUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("REGTUNE_TEST_PG_PORT", "5432"))
PG_USERS = [os.environ["REGTUNE_TEST_PG_USER"]] if "REGTUNE_TEST_PG_USER" in os.environ \
    else ["postgres", "root"]


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
