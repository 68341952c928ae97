"""A job's MLflow runs written straight into an MLflow SQL store, many rows per statement.

Why: through MLflow 3.17's client a child run costs three calls before a single
metric (``create_run``, ``log_batch`` for its params, ``set_terminated``), each a
session that re-reads the run, about 4 ms of CPU apiece here, and ``log_batch``
builds an ORM object per metric value and re-reads ``latest_metrics`` on every
call. The driver makes one such run per trial (per member, for a population of
64), in a thread that competes with the trials for the cores. MLflow has no bulk
path; this is one, for exactly what the driver writes: its own child runs, and
its experiment and parent run (``workers.tune.tracking``), so that a driver on the
bulk path imports MLflow (about 2 s of CPU) only after the job's answer.
``python -m bench --only B6`` measures both ways; BENCHMARKS.md has the figures.

It writes the rows MLflow's own calls write, by MLflow's rules
(``SqlAlchemyStore.create_run``, ``log_batch``, ``update_run_info``):

* ``create_run``: a ``runs`` row as MLflow's client makes one (status RUNNING,
  source UNKNOWN, ``user_id`` from the ``mlflow.user`` tag or "unknown", the
  artifact URI under the experiment's), its tags (``mlflow.runName`` added) and
  its params, in one transaction; an experiment that is not active is refused;
* ``metrics``: one row per distinct value (NaN stored as 0 with ``is_nan``, ±inf
  as ±float max); a row already there (same key, timestamp, step, value) is
  skipped, as MLflow skips it;
* ``latest_metrics``: per key, the value with the greatest (step, timestamp,
  value), replacing the stored one only if it is strictly greater;
* ``tags``: set or replaced; ``params``: added, a changed value refused; ``end``:
  the run's status and end time. A run that is not active (deleted, missing) gets
  nothing;
* ``create_experiment``: an ``experiments`` row (workspace "default", as MLflow's
  plain SQL store writes it) and its tags, only for an absolute local artifact
  location (MLflow derives or resolves any other); lookups by experiment name and
  by run tags read what ``get_experiment_by_name`` and ``search_runs`` read.

Whatever MLflow would refuse or treat specially (a deleted run or experiment, a
key or value MLflow's validation rejects, ``mlflow.runName`` set later, an unknown
status) raises :class:`Refused`, and the caller hands that call to MLflow's
client, which writes it or says why in MLflow's words. The path is used only for a
tracking URI that is a database (SQLite or PostgreSQL) whose tables have exactly
the columns written here (checked once, by reading their names); an MLflow server
(``http://``), any other schema, or any other error leaves the client doing the
work. The writer (``workers.tune.mlflow_writer``) falls back on the first failure
and stays there.
"""

from __future__ import annotations

import logging
import operator
import os
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

import sqlalchemy as sa

from workers.tune.mlflow_rows import (RUN_NAME_TAG, Refused, RunNotActive, Validator,
                                      metric_rows, newest_per_key, run_row)

log = logging.getLogger(__name__)

SCHEMES = ("sqlite", "postgresql")  # dialects with INSERT ... ON CONFLICT
METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
KV_COLUMNS = ("key", "value", "run_uuid")
RUN_COLUMNS = ("run_uuid", "name", "source_type", "source_name", "entry_point_name",
               "user_id", "status", "start_time", "end_time", "source_version",
               "lifecycle_stage", "artifact_uri", "experiment_id", "deleted_time")
#: table -> its columns, exactly as MLflow's schema has them.
TABLES = {"metrics": METRIC_COLUMNS, "latest_metrics": METRIC_COLUMNS, "runs": RUN_COLUMNS,
          "tags": KV_COLUMNS, "params": KV_COLUMNS,
          "experiments": ("experiment_id", "name", "artifact_location", "lifecycle_stage",
                          "creation_time", "last_update_time", "workspace"),
          "experiment_tags": ("key", "value", "experiment_id")}
#: The types values are bound and read as (MLflow's column types); any other: a string.
METRIC_TYPES: dict[str, Any] = {"value": sa.Float, "timestamp": sa.BigInteger,
                                "step": sa.BigInteger, "is_nan": sa.Boolean}
TYPES: dict[str, Any] = {"start_time": sa.BigInteger,
                         "end_time": sa.BigInteger, "deleted_time": sa.BigInteger,
                         "creation_time": sa.BigInteger, "last_update_time": sa.BigInteger,
                         "experiment_id": sa.Integer}
WORKSPACE = "default"  # mlflow's DEFAULT_WORKSPACE_NAME: what its plain SQL store writes
STATUSES = ("SCHEDULED", "FAILED", "FINISHED", "RUNNING", "KILLED")


def attempt(bulk: "BulkStore | None", what: str, args: tuple[Any, ...],
            on_failure: Callable[[Exception], None]) -> tuple[bool, Any]:
    """(done, result) of one call of the bulk path, for its two callers (the parent
    run, the child runs' writer). Not done: MLflow's client is to do it, because the
    path is off (``bulk`` None), refused this call, or failed, which ``on_failure``
    hears of (the caller then turns the path off for good)."""
    if bulk is None:
        return False, None
    try:
        return True, getattr(bulk, what)(*args)
    except Refused:
        return False, None  # MLflow's client does it, or says why in MLflow's words
    except Exception as exc:  # noqa: BLE001 - MLflow's own path from now on
        on_failure(exc)
        return False, None


class BulkStore:
    """Writes a job's runs in few statements: one transaction to make a run with its
    tags and params, one per round for the metrics, tags, params and ends of every run
    written in it (:meth:`write_runs`); and finds or makes the job's experiment."""

    def __init__(self, engine: Any, tables: dict[str, Any]) -> None:
        self.engine = engine
        self.t = tables
        self.valid = Validator()
        insert = _dialect_insert(engine.dialect.name)
        many = lambda stmt: _Many(engine.dialect, stmt)  # noqa: E731
        self._insert_metrics = many(insert(tables["metrics"]).on_conflict_do_nothing())
        latest = tables["latest_metrics"]
        upsert = insert(latest)
        self._upsert_latest = many(upsert.on_conflict_do_update(
            index_elements=["key", "run_uuid"],
            set_={c: upsert.excluded[c] for c in ("value", "timestamp", "step", "is_nan")},
            where=sa.tuple_(upsert.excluded.step, upsert.excluded.timestamp, upsert.excluded.value)
            > sa.tuple_(latest.c.step, latest.c.timestamp, latest.c.value)))
        tag = insert(tables["tags"])
        self._upsert_tags = many(tag.on_conflict_do_update(index_elements=["key", "run_uuid"],
                                                           set_={"value": tag.excluded.value}))
        # The statements of every run, built once and bound per call: built per call
        # (select(...).where(...), update().values(...)) they cost more of the writer's
        # CPU than SQLite's work on them (bench B6).
        runs, experiments, params = tables["runs"], tables["experiments"], tables["params"]
        self._experiment_of = sa.select(experiments.c.artifact_location,
                                        experiments.c.lifecycle_stage).where(
            experiments.c.experiment_id == sa.bindparam("b_experiment"))
        self._run_stage = sa.select(runs.c.lifecycle_stage).where(
            runs.c.run_uuid == sa.bindparam("b_run"))
        self._params_held = sa.select(params.c.key, params.c.value).where(
            params.c.run_uuid == sa.bindparam("b_run"),
            params.c.key.in_(sa.bindparam("b_keys", expanding=True)))
        self._end_run = runs.update().where(runs.c.run_uuid == sa.bindparam("b_run")).values(
            status=sa.bindparam("b_status"), end_time=sa.bindparam("b_end"))
        self._insert_run = runs.insert()
        self._insert_tags, self._insert_params = many(tables["tags"].insert()), many(params.insert())

    @classmethod
    def for_uri(cls, uri: str) -> "BulkStore | None":
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
            store = cls(engine, _checked_tables(engine))
        except Exception as exc:  # noqa: BLE001 - any doubt: MLflow's own path
            if engine is not None:
                engine.dispose()
            log.warning("MLflow child runs go through MLflow's client: the bulk path is not "
                        "usable for this store (%s)", exc)
            return None
        return store

    def create_experiment(self, name: str, artifact_location: str | None,
                          tags: dict[str, str]) -> str:
        """A new experiment as ``MlflowClient.create_experiment`` makes it; returns its
        id. Only for an absolute local artifact location (MLflow derives the others);
        a name already taken is refused (the caller then finds that experiment)."""
        plain = artifact_location and artifact_location.startswith(("/", "file:///")) \
            and len(artifact_location) <= 256 and not any(c in artifact_location
                                                          for c in "?#;\\")
        if not (plain and isinstance(name, str) and 0 < len(name) <= 256):
            raise Refused(f"experiment {name!r} at {artifact_location!r}: MLflow's client")
        for key, value in tags.items():
            self.valid.check("tag", key, value)
        now = int(time.time() * 1000)
        try:
            with self.engine.begin() as conn:
                made = conn.execute(self.t["experiments"].insert().values(
                    name=name, artifact_location=artifact_location, lifecycle_stage="active",
                    creation_time=now, last_update_time=now, workspace=WORKSPACE)
                ).inserted_primary_key[0]
                if tags:
                    conn.execute(self.t["experiment_tags"].insert(), [
                        {"key": k, "value": v, "experiment_id": made} for k, v in tags.items()])
        except sa.exc.IntegrityError as exc:  # made meanwhile, by another driver
            raise Refused(f"experiment {name!r} exists") from exc
        return str(made)

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str],
                   params: dict[str, str] | None = None, start_time: int | None = None) -> str:
        """A new RUNNING run with its tags and params, as ``MlflowClient.create_run``
        followed by ``log_batch(params=...)``; returns its id."""
        tags = dict(tags)
        if tags.setdefault(RUN_NAME_TAG, run_name) != run_name:
            raise Refused(f"run_name {run_name!r} differs from its {RUN_NAME_TAG} tag")
        for key, value in tags.items():
            self.valid.check("tag", key, value)
        for key, value in (params or {}).items():
            self.valid.check("param", key, value)
        run_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            found = conn.execute(self._experiment_of,
                                 {"b_experiment": int(experiment_id)}).first()
            if found is None or found.lifecycle_stage != "active":
                raise Refused(f"experiment {experiment_id} is "
                              f"{'missing' if found is None else found.lifecycle_stage}")
            conn.execute(self._insert_run, run_row(run_id, experiment_id, run_name, tags,
                                                   found.artifact_location, start_time))
            self._insert_tags(conn, [
                {"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()])
            if params:
                self._insert_params(conn, [
                    {"key": k, "value": v, "run_uuid": run_id} for k, v in params.items()])
        return run_id

    def write_run(self, run_id: str, metrics: Iterable[tuple[str, float, int, int]] = (),
                  tags: dict[str, str] | None = None, end: tuple[str, int] | None = None,
                  params: dict[str, str] | None = None) -> int:
        """Metric values (key, value, timestamp, step), tags, params, then the run's end
        (status, end time in ms), in one transaction; returns the distinct values sent.
        A param already logged with another value is refused, as MLflow refuses it."""
        return self.write_runs([(run_id, metrics, tags, end, params)])

    def write_runs(self, writes: Sequence[tuple[Any, ...]]) -> int:
        """Several :meth:`write_run` calls, each its arguments as a tuple, in one
        transaction; returns the distinct values sent.

        Why: a commit costs more than a run's rows (bench B6), and the writer ends a
        round with a write for every run that reported in it (a population's K members
        at once). Any one refused (a run deleted meanwhile, a value MLflow rejects)
        refuses them all and writes nothing: the caller then writes them one by one.
        """
        prepared = [self._prepare(*args) for args in writes]
        prepared = [p for p in prepared if p is not None]
        if prepared:
            with self.engine.begin() as conn:
                for write in prepared:
                    self._apply(conn, *write)
        return sum(len(write[1]) for write in prepared)

    def _prepare(self, run_id: str, metrics: Iterable[tuple[str, float, int, int]] = (),
                 tags: dict[str, str] | None = None, end: tuple[str, int] | None = None,
                 params: dict[str, str] | None = None) -> tuple[Any, ...] | None:
        """One write's rows, checked as MLflow checks them; None: nothing to write."""
        rows = metric_rows(run_id, metrics)
        tags, params = tags or {}, params or {}
        for key, value in params.items():
            self.valid.check("param", key, value)
        for key in {row["key"] for row in rows}:
            self.valid.check("metric", key)
        if RUN_NAME_TAG in tags:
            raise Refused(f"{RUN_NAME_TAG} renames the run: MLflow's client does that")
        for key, value in tags.items():
            self.valid.check("tag", key, value)
        if end is not None and end[0] not in STATUSES:
            raise Refused(f"status {end[0]!r} is not one of {', '.join(STATUSES)}")
        if not (rows or tags or end or params):
            return None
        return run_id, rows, tags, end, params

    def _apply(self, conn: Any, run_id: str, rows: list[dict[str, Any]], tags: dict[str, str],
               end: tuple[str, int] | None, params: dict[str, str]) -> None:
        stage = conn.execute(self._run_stage, {"b_run": run_id}).scalar()
        if stage != "active":
            raise RunNotActive(f"run {run_id} is {stage or 'missing'}, not active")
        if params:
            held = dict(conn.execute(self._params_held, {"b_run": run_id,
                                                         "b_keys": list(params)}).all())
            if any(held[k] != v for k, v in params.items() if k in held):
                raise Refused(f"run {run_id}: a param already logged with another value")
            new = [{"key": k, "value": v, "run_uuid": run_id}
                   for k, v in params.items() if k not in held]
            if new:
                self._insert_params(conn, new)
        if rows:
            self._insert_metrics(conn, rows)
            self._upsert_latest(conn, newest_per_key(rows))
        if tags:
            self._upsert_tags(conn, [{"key": k, "value": v, "run_uuid": run_id}
                                     for k, v in tags.items()])
        if end is not None:
            conn.execute(self._end_run, {"b_run": run_id, "b_status": end[0],
                                         "b_end": int(end[1])})

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment of this name, or None: ``get_experiment_by_name``."""
        experiments = self.t["experiments"]
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(experiments.c.experiment_id)
                                 .where(experiments.c.name == name)).scalar()
        return None if found is None else str(found)

    def runs_tagged(self, experiment_id: str, tags: dict[str, str], label: str
                    ) -> list[tuple[str, str | None]]:
        """(run id, its ``label`` tag) of the experiment's active runs that carry all of
        ``tags``, newest first: what ``search_runs`` with those tag filters returns."""
        runs, t = self.t["runs"], self.t["tags"]
        query = sa.select(runs.c.run_uuid, sa.select(t.c.value).where(
            t.c.run_uuid == runs.c.run_uuid, t.c.key == label).scalar_subquery()).where(
            runs.c.experiment_id == int(experiment_id), runs.c.lifecycle_stage == "active")
        for key, value in tags.items():
            query = query.where(sa.exists().where(t.c.run_uuid == runs.c.run_uuid,
                                                  t.c.key == key, t.c.value == value))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(  # type: ignore[misc]
                query.order_by(runs.c.start_time.desc(), runs.c.run_uuid)).all()]

    def log_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int, int]]) -> int:
        """Metric values only; returns how many distinct values were sent."""
        return self.write_run(run_id, metrics)

    def close(self) -> None:
        self.engine.dispose()


class _Many:
    """One INSERT run over many rows (dicts keyed by column): on SQLite the statement is
    compiled once and the rows go to the DBAPI's ``executemany`` as plain tuples.

    Why: SQLAlchemy binds an executemany row by row (``construct_params`` and each
    column's type processor: 21,900 calls for 100 runs of 180 values). Bound here, a
    run made and written in a round of 16 cost 2.43 against 2.61 ms of CPU (medians of
    10 interleaved rounds, commit 1147b88's message); SQLite's own work on the same
    rows is about 1 ms (bench B6, the floor row). The values bound are the same: SQLite
    stores a bool as 0/1 and floats and ints as they are, which the Boolean, Float and
    BigInteger processors leave alone. On PostgreSQL SQLAlchemy's own executemany is
    kept: it folds the rows into multi-row VALUES, one round trip instead of one per row.
    """

    def __init__(self, dialect: Any, statement: Any) -> None:
        self.statement = statement
        self.sql: str | None = None  # SQLite: the compiled statement; row: its tuple
        self.row: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
        if dialect.name == "sqlite":
            compiled = statement.compile(dialect=dialect)
            if compiled.positiontup is None:
                raise RuntimeError("SQLite's statements are expected to bind by position")
            columns = compiled.positiontup
            get = operator.itemgetter(*columns)  # one column: a value, not a 1-tuple
            self.sql, self.row = str(compiled), get if len(columns) > 1 else lambda r: (get(r),)

    def __call__(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        if self.sql is None or self.row is None:
            conn.execute(self.statement, rows)
        else:
            conn.exec_driver_sql(self.sql, [self.row(row) for row in rows])


def _checked_tables(engine: Any) -> dict[str, Any]:
    """The tables as written here; raises unless the store's have exactly these columns.

    Checked by reading each table's column names (``SELECT * ... WHERE 1 = 0``), not
    by SQLAlchemy's reflection, which also reads every index, key and constraint. A
    driver makes two stores per job (the parent run's, before its first trial, and
    the writer's); with reflection ``for_uri`` took 21 ms of CPU for the first in a
    fresh process and 11 ms for the second, now 11 and 3.4 ms (af91794's message has
    the measurement).
    """
    meta = sa.MetaData()
    tables = {}
    with engine.connect() as conn:
        for name, columns in TABLES.items():
            found = set(conn.execute(sa.text(f"SELECT * FROM {name} WHERE 1 = 0")).keys())
            if found != set(columns):
                raise RuntimeError(f"table {name} has columns {sorted(found)}, "
                                   f"expected {sorted(columns)}")
            types = {**TYPES, **METRIC_TYPES} if columns == METRIC_COLUMNS else TYPES
            tables[name] = sa.Table(name, meta, *(
                sa.Column(column, types.get(column, sa.String),
                          primary_key=(name, column) == ("experiments", "experiment_id"))
                for column in columns))
    return tables


def _dialect_insert(dialect: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise RuntimeError(f"no INSERT ... ON CONFLICT for {dialect}")
    return insert
