"""Metric values written straight into an MLflow SQL store, many rows per statement.

Why: MLflow 3.17's ``SqlAlchemyStore.log_batch`` builds an ORM object per value,
validates each, and re-reads the run's ``latest_metrics`` on every call, and a
population of 64 members writes 64 such runs per round, in the driver, while the
trials train on the same cores. MLflow has no bulk path; this is one, for the
one thing the driver writes in bulk: the metric values of its own child runs.
``python -m bench --only B6`` measures one run's 180 values (10 epochs × 18
metrics) both ways; BENCHMARKS.md has the figures (about 5× less CPU here).

It writes exactly the rows MLflow's ``log_batch`` writes for metrics, by MLflow's
rules (``SqlAlchemyStore._log_metrics`` and ``_update_latest_metrics_if_necessary``):

* ``metrics``: one row per distinct value (NaN stored as 0 with ``is_nan``, ±inf
  as ±float max); a row already there (same key, timestamp, step, value) is
  skipped, as MLflow skips it;
* ``latest_metrics``: per key, the value with the greatest (step, timestamp,
  value), replacing the stored one only if it is strictly greater;
* nothing for a run that is not active (deleted): that is refused, and the
  caller's ``log_batch`` then says why as MLflow does.

Runs, params, tags and run status still go through MLflow's client. The path is
used only for a tracking URI that is a database (SQLite or PostgreSQL) whose
``metrics``, ``latest_metrics`` and ``runs`` tables have exactly the columns
written here (checked once, by reflection); an MLflow server (``http://``), any
other schema, or any error leaves ``log_batch`` doing the work. The writer
(``workers.tune.mlflow_writer``) falls back on the first failure and stays there.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable

import sqlalchemy as sa

log = logging.getLogger(__name__)

FLOAT_MAX = 1.7976931348623157e308  # what MLflow stores for ±inf
SCHEMES = ("sqlite", "postgresql")  # dialects with INSERT ... ON CONFLICT
METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
RUN_COLUMNS = ("run_uuid", "lifecycle_stage")


class RunNotActive(RuntimeError):
    """The run is deleted (or gone): MLflow refuses values for it, so do we."""


def sanitize(value: float) -> tuple[bool, float]:
    """(is_nan, stored value), as ``SqlAlchemyStore.sanitize_metric_value``."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, FLOAT_MAX if value > 0 else -FLOAT_MAX
    return False, float(value)


def metric_rows(run_id: str, metrics: Iterable[tuple[str, float, int, int]]
                ) -> list[dict[str, Any]]:
    """One row per distinct (key, value, timestamp, step), in first-seen order."""
    rows: dict[tuple, dict[str, Any]] = {}
    for key, raw, timestamp, step in metrics:
        is_nan, value = sanitize(float(raw))
        row = {"key": key, "value": value, "timestamp": int(timestamp), "step": int(step),
               "is_nan": is_nan, "run_uuid": run_id}
        rows.setdefault((key, value, row["timestamp"], row["step"], is_nan), row)
    return list(rows.values())


def newest_per_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per key, the row MLflow would keep in latest_metrics: max (step, timestamp, value)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = best.get(row["key"])
        if held is None or ((row["step"], row["timestamp"], row["value"])
                            > (held["step"], held["timestamp"], held["value"])):
            best[row["key"]] = row
    return list(best.values())


class BulkMetrics:
    """Inserts a run's metric values in two statements and one transaction."""

    def __init__(self, engine: Any, tables: dict[str, Any]) -> None:
        self.engine = engine
        self.metrics, self.latest, self.runs = (tables["metrics"], tables["latest_metrics"],
                                                tables["runs"])
        insert = _dialect_insert(engine.dialect.name)
        self._insert_metrics = insert(self.metrics).on_conflict_do_nothing()
        upsert = insert(self.latest)
        self._upsert_latest = upsert.on_conflict_do_update(
            index_elements=["key", "run_uuid"],
            set_={c: upsert.excluded[c] for c in ("value", "timestamp", "step", "is_nan")},
            where=sa.tuple_(upsert.excluded.step, upsert.excluded.timestamp, upsert.excluded.value)
            > sa.tuple_(self.latest.c.step, self.latest.c.timestamp, self.latest.c.value))

    @classmethod
    def for_uri(cls, uri: str) -> "BulkMetrics | None":
        """The bulk path for this tracking URI, or None where it must not be used."""
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in SCHEMES:
            return None
        engine = None
        try:
            database = sa.engine.make_url(uri).database
            if scheme == "sqlite" and not (database and os.path.isfile(database)):
                # MLflow makes its store on first use; this path never makes a database.
                raise RuntimeError(f"no SQLite file at {database!r}")
            kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} \
                if scheme == "sqlite" else {"pool_size": 1, "pool_pre_ping": True}
            engine = sa.create_engine(uri, **kwargs)
            tables = _checked_tables(engine)
        except Exception as exc:  # noqa: BLE001 - any doubt: MLflow's own path
            if engine is not None:
                engine.dispose()
            log.warning("MLflow metrics go through log_batch: the bulk path is not "
                        "usable for this store (%s)", exc)
            return None
        return cls(engine, tables)

    def log_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int, int]]) -> int:
        """Write the values for one run; returns how many distinct values were sent."""
        rows = metric_rows(run_id, metrics)
        if not rows:
            return 0
        with self.engine.begin() as conn:
            stage = conn.execute(sa.select(self.runs.c.lifecycle_stage)
                                 .where(self.runs.c.run_uuid == run_id)).scalar()
            if stage != "active":
                raise RunNotActive(f"run {run_id} is {stage or 'missing'}, not active")
            conn.execute(self._insert_metrics, rows)
            conn.execute(self._upsert_latest, newest_per_key(rows))
        return len(rows)

    def close(self) -> None:
        self.engine.dispose()


def _checked_tables(engine: Any) -> dict[str, Any]:
    """The three tables, reflected; raises unless their columns are exactly ours."""
    meta = sa.MetaData()
    wanted = {"metrics": METRIC_COLUMNS, "latest_metrics": METRIC_COLUMNS, "runs": None}
    tables = {}
    for name, columns in wanted.items():
        table = sa.Table(name, meta, autoload_with=engine)
        found = set(table.c.keys())
        if columns is not None and found != set(columns):
            raise RuntimeError(f"table {name} has columns {sorted(found)}, "
                               f"expected {sorted(columns)}")
        if columns is None and not set(RUN_COLUMNS) <= found:
            raise RuntimeError(f"table {name} lacks {sorted(set(RUN_COLUMNS) - found)}")
        tables[name] = table
    return tables


def _dialect_insert(dialect: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise RuntimeError(f"no INSERT ... ON CONFLICT for {dialect}")
    return insert

