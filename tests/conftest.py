"""Fixtures shared by every test package: fresh PostgreSQL databases.

PostgreSQL tests skip, with the reason, only when the server cannot be reached
(where it is: tests/pg.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from tests.pg import PG_HOST, PG_PORT, admin_connection


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh, uniquely named databases; drops all of them at session end."""
    try:
        admin, user = admin_connection()
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
