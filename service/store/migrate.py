"""Run the store's Alembic migrations from code.

The migrations live inside the package (``service/store/migrations``) and the
Alembic ``Config`` is built here, so a pip-installed regtune can migrate its
database without an ``alembic.ini`` or a checkout. :class:`SqlJobStore` calls
:func:`upgrade_connection` every time it opens a database; that is idempotent
and cheap at head (one read of the version table).

Two processes may open a fresh database at the same moment (the API and the Ray
driver starting together). The migration transaction therefore holds a lock
first: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL. The second process waits, then finds the database at head.

From a shell, the same environment works with Alembic's CLI::

    python -m service.store.migrate upgrade sqlite:///data/regtune.db
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from service.store.engine import BEGIN_OPTION, make_engine
from service.store.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Arbitrary, fixed key for pg_advisory_xact_lock: "regtune" as a number.
_PG_LOCK_KEY = 0x72656774756E65


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Passed as an attribute, not a main option: ConfigParser would choke on
        # the '%' of URL-encoded passwords.
        cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or None for an empty database."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _run(conn: Connection, action: str, revision: str) -> None:
    """Run one Alembic command in one locked transaction on ``conn``."""
    conn = conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def upgrade_connection(conn: Connection, revision: str = "head") -> None:
    _run(conn, "upgrade", revision)


def downgrade_connection(conn: Connection, revision: str = "base") -> None:
    _run(conn, "downgrade", revision)


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: head)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            upgrade_connection(conn, revision)
    finally:
        engine.dispose()


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision`` (default: drop everything)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            downgrade_connection(conn, revision)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] not in ("upgrade", "downgrade"):
        print("usage: python -m service.store.migrate upgrade|downgrade URL [REVISION]",
              file=sys.stderr)
        return 2
    action, url = args[0], args[1]
    revision = args[2] if len(args) == 3 else ("head" if action == "upgrade" else "base")
    (upgrade if action == "upgrade" else downgrade)(url, revision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
