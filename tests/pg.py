"""Where the tests' PostgreSQL server is, and an admin connection to it.

Shared by the database fixtures (tests/conftest.py) and the deployment harness
(tests/deploy/native.py). REGTUNE_TEST_PG_HOST / REGTUNE_TEST_PG_PORT /
REGTUNE_TEST_PG_USER point them elsewhere.
"""

from __future__ import annotations

import os

import psycopg2

PG_HOST = os.environ.get("REGTUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("REGTUNE_TEST_PG_PORT", "5432"))
PG_USERS = [os.environ["REGTUNE_TEST_PG_USER"]] if "REGTUNE_TEST_PG_USER" in os.environ \
    else ["postgres", "root"]


def admin_connection() -> tuple[psycopg2.extensions.connection, str]:
    """(connection to the postgres database, the user it is as), the first user that works."""
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
