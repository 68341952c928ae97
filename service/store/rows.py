"""Between the store's tables and its callers: input checks and row-to-entity conversion.

Kept apart from :mod:`service.store.sql` so the store module reads as the
transactions it runs. The checks run before any SQL, so a bad call fails with
``TypeError``/``ValueError`` naming the field instead of a driver error from
inside a statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from service.store import entities as e

JOB_ID_HEX = 12
MAX_NAME = 100


def new_job_id() -> str:
    """12 hex characters of a uuid4: short enough to type, 48 random bits."""
    return uuid.uuid4().hex[:JOB_ID_HEX]


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME} characters")


def check_fields(fields: dict[str, Any], allowed: frozenset[str], hint: str = "") -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"cannot set {', '.join(unknown)}{hint}; allowed: {sorted(allowed)}")
    for key, value in fields.items():
        if key.endswith("_at") and value is not None and (
                not isinstance(value, datetime) or value.tzinfo is None):
            raise ValueError(f"{key} must be an aware datetime, got {value!r}")


def check_strings(table: sa.Table, values: Mapping[str, Any]) -> None:
    """Reject, on every backend alike, strings PostgreSQL would reject mid-statement.

    PostgreSQL enforces VARCHAR(n) lengths (SQLite does not) and its text cannot
    hold NUL; checking first makes both backends agree and turns a driver error
    (a 500 in the API) into a ``ValueError`` naming the field.
    """
    for key, value in values.items():
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise ValueError(f"{key} must not contain NUL characters")
        length = getattr(table.c[key].type, "length", None) if key in table.c else None
        if length is not None and len(value) > length:
            raise ValueError(f"{key} is longer than {length} characters")


def findable(*keys: Any) -> bool:
    """False for a lookup key no row can have (not a string, or containing NUL,
    which PostgreSQL refuses even to compare); the caller answers "not found"."""
    return all(isinstance(k, str) and "\x00" not in k for k in keys)


def statuses(value: str | Iterable[str], known: tuple[str, ...]) -> set[str]:
    out = {value} if isinstance(value, str) else set(value)
    bad = out - set(known)
    if bad:
        raise ValueError(f"unknown status {sorted(bad)}; known: {list(known)}")
    return out


def trial_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce trial fields (numpy scalars from Ray included)."""
    values = dict(fields)
    if "status" in values:
        statuses(values["status"], e.TRIAL_STATUSES)
    if values.get("objective") is not None:
        values["objective"] = float(values["objective"])
    if "iteration" in values:
        values["iteration"] = int(values["iteration"] or 0)
    for key in ("config", "metrics"):
        if key in values:
            values[key] = dict(values[key] or {})
    if "gpu_ids" in values:
        values["gpu_ids"] = list(values["gpu_ids"] or [])
    return values


def to_user(row: Row[Any]) -> e.User:
    m = row._mapping
    return e.User(id=m["id"], name=m["name"], admin=bool(m["admin"]),
                  created_at=m["created_at"], revoked=bool(m["revoked"]))


def to_job(row: Row[Any]) -> e.Job:
    m = row._mapping
    return e.Job(
        id=m["id"], name=m["name"], owner=m["owner"], status=m["status"], spec=m["spec"],
        created_at=m["created_at"], num_trials=m["num_trials"], started_at=m["started_at"],
        finished_at=m["finished_at"], ray_submission_id=m["ray_submission_id"],
        mlflow_experiment_id=m["mlflow_experiment_id"],
        mlflow_parent_run_id=m["mlflow_parent_run_id"], error=m["error"],
        idempotency_key=m["idempotency_key"], best=m["best"])


def to_trial(row: Row[Any]) -> e.Trial:
    m = row._mapping
    return e.Trial(
        job_id=m["job_id"], trial_id=m["trial_id"], index=m["trial_index"], status=m["status"],
        config=m["config"], metrics=m["metrics"], iteration=m["iteration"],
        objective=m["objective"], mlflow_run_id=m["mlflow_run_id"], node=m["node"],
        gpu_ids=m["gpu_ids"], created_at=m["created_at"], updated_at=m["updated_at"])


def to_event(row: Row[Any]) -> e.Event:
    m = row._mapping
    return e.Event(job_id=m["job_id"], seq=m["seq"], kind=m["kind"], payload=m["payload"],
                   created_at=m["created_at"])
