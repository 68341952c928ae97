"""Alembic environment for regtune's tables.

Used two ways: programmatically by :mod:`service.store.migrate`, which passes an
open connection (already in a locked transaction) in ``config.attributes``; or
by the ``alembic`` CLI with ``-x url=...`` or ``sqlalchemy.url``. Either way the
version table is ``regtune_alembic_version`` and only ``regtune_`` tables are
considered, so a database shared with MLflow keeps MLflow's tables and
``alembic_version`` untouched, also by autogenerate.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from service.store.engine import make_engine
from service.store.schema import VERSION_TABLE, include_object, metadata

config = context.config


def configure_options() -> dict[str, Any]:
    return {
        "target_metadata": metadata,
        "version_table": VERSION_TABLE,
        "include_object": include_object,
        "compare_type": True,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        "render_as_batch": True,
    }


def _do_run(connection: Any) -> None:
    context.configure(connection=connection, **configure_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _do_run(connection)
        return
    url = (config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
           or config.get_main_option("sqlalchemy.url"))
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _do_run(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    url = (config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
           or config.get_main_option("sqlalchemy.url"))
    context.configure(url=url, literal_binds=True, **configure_options())
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
