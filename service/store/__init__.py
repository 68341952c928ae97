"""The job store: where regtune keeps users, jobs, trials and events.

``open_store(url)`` is the only constructor the rest of the service should
call. It looks the URL's scheme up in a registry instead of an if/elif chain,
so another backend (or a fake, in tests) is one ``register_store`` call away.
Built-in implementations are imported lazily, so importing this package (for
the entities, say) does not pull in SQLAlchemy and Alembic.

URLs are SQLAlchemy URLs::

    sqlite:///data/regtune.db                  # embedded default, one machine
    postgresql://user@db.internal/regtune      # team deployment (may share MLflow's database)
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import make_url

from service.store.base import (JOB_UPDATABLE, TRIAL_FIELDS, Conflict, JobStore, NotFound,
                                StoreError)
from service.store.entities import (ACTIVE, CANCELLED, FAILED, JOB_STATUSES, QUEUED, RUNNING,
                                    SUCCEEDED, TERMINAL, TRIAL_STATUSES, TRIAL_TERMINAL, Event,
                                    Job, Trial, User)

StoreFactory = Callable[[str], JobStore]


def _sql_store(url: str) -> JobStore:
    from service.store.sql import SqlJobStore

    return SqlJobStore(url)


_REGISTRY: dict[str, StoreFactory] = {
    "sqlite": _sql_store,
    "sqlite+pysqlite": _sql_store,
    "postgresql": _sql_store,
    "postgresql+psycopg2": _sql_store,
}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Make ``open_store`` use ``factory`` for URLs whose scheme is ``scheme``."""
    _REGISTRY[scheme] = factory


def supported_schemes() -> list[str]:
    return sorted(_REGISTRY)


def open_store(url: str) -> JobStore:
    """Open (creating or migrating as needed) the store at ``url``."""
    try:
        scheme = make_url(url).drivername
    except Exception as exc:  # sqlalchemy.exc.ArgumentError, but keep the message ours
        raise ValueError(f"not a database URL: {url!r}") from exc
    factory = _REGISTRY.get(scheme)
    if factory is None:
        raise ValueError(f"no job store for {scheme!r} URLs; supported: {supported_schemes()}")
    return factory(url)


__all__ = [
    "ACTIVE", "CANCELLED", "Conflict", "Event", "FAILED", "JOB_STATUSES", "JOB_UPDATABLE", "Job",
    "JobStore", "NotFound", "QUEUED", "RUNNING", "SUCCEEDED", "StoreError", "TERMINAL",
    "TRIAL_FIELDS", "TRIAL_STATUSES", "TRIAL_TERMINAL", "Trial", "User", "open_store",
    "register_store", "supported_schemes",
]
