"""Engines configured for several processes writing one database at once.

The Ray driver (trials, events) and the API (jobs, cancels) write concurrently.
On PostgreSQL that needs nothing special. On SQLite it needs three things, set
here on every new connection:

* WAL journal mode, so readers never block the writer nor the writer readers;
* ``busy_timeout``, so a writer waits for the write lock instead of failing
  with "database is locked";
* write transactions that start with ``BEGIN IMMEDIATE``. A deferred
  transaction that reads and then writes holds a read snapshot; if another
  connection commits meanwhile, SQLite must refuse the upgrade to a write lock
  at once (SQLITE_BUSY_SNAPSHOT) and the busy timeout does not help. Taking the
  write lock at BEGIN makes the wait happen where busy_timeout covers it.
  Read-only transactions stay deferred so they never wait for writers.

To control BEGIN ourselves, pysqlite's own transaction handling is turned off
(``isolation_level = None``) and a ``begin`` event emits the statement; this is
the recipe in SQLAlchemy's SQLite dialect documentation. A connection asks for
an immediate transaction with ``execution_options(regtune_begin="IMMEDIATE")``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

BUSY_TIMEOUT_MS = 30_000
BEGIN_OPTION = "regtune_begin"


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity (PostgreSQL's json type rejects them): use null.

    Diverging trials do report ``loss: nan``; losing the value beats losing the report.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, which Ray and torch metrics often are."""
    for attr in ("tolist", "item"):
        convert = getattr(value, attr, None)
        if callable(convert):
            return _finite(convert())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """The JSON serialiser of every JSON column.

    Values without NaN or infinities (nearly all) are written as they are; only
    when ``allow_nan=False`` refuses one (or a key JSON cannot take) is the value
    copied with them as null (and every key as a string).
    Copying every value first cost about a quarter of the JSON time of a
    population's result (K members' metrics and events per epoch).
    """
    try:
        return json.dumps(value, default=_json_default, allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_finite(value), default=_json_default, allow_nan=False)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def _ensure_parent_dir(url: URL) -> None:
    database = url.database or ""
    if _is_memory(url) or database.startswith("file:"):
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL, retrying while another connection holds the lock.

    Switching a fresh database's journal mode needs an exclusive lock, and
    SQLite reports "database is locked" for it without calling the busy
    handler; two processes opening a new database at once would hit it.
    Once the file is in WAL mode (a property of the file) this is a no-op.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cursor = dbapi_conn.cursor()
        try:
            # busy_timeout first: switching to WAL itself may have to wait for a lock.
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` with the settings above; creates a SQLite file's directory."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": dumps}
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent_dir(parsed)
        kwargs["connect_args"] = {"check_same_thread": False}
        if _is_memory(parsed):
            # One shared connection, or every checkout would see an empty database.
            # Fine for tests and throwaway use; not for concurrent writers.
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(parsed, **kwargs)
        _setup_sqlite(engine)
        return engine
    kwargs["pool_pre_ping"] = True  # survive database restarts in a long-lived API
    return sa.create_engine(parsed, **kwargs)
