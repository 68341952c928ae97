"""The rows MLflow's SQL store holds for a run's values, and MLflow's checks on keys and
values, without importing MLflow: the part of the bulk path (``workers.tune.mlflow_bulk``)
that decides *what* is written, apart from the statements that write it.

Everything here follows MLflow 3.17's ``SqlAlchemyStore`` and ``mlflow.utils.validation``;
what MLflow would refuse or treat specially raises :class:`Refused`, and the caller
hands that call to MLflow's client.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Iterable

FLOAT_MAX = 1.7976931348623157e308  # what MLflow stores for ±inf
RUN_NAME_TAG, USER_TAG = "mlflow.runName", "mlflow.user"


class Refused(RuntimeError):
    """MLflow would refuse this or do more than write rows: its client is to do it."""


class RunNotActive(Refused):
    """The run is deleted (or gone): MLflow refuses writes to it, so do we."""


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


#: Keys MLflow always accepts (alphanumerics, "_", ".", "-"; not a path; at most 250
#: characters): checked here, without importing MLflow. Any other key goes to MLflow's
#: own validators.
PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}")
LIMITS = {"param": 6000, "tag": 8000}  # mlflow.utils.validation MAX_PARAM/TAG_VAL_LENGTH


class Validator:
    """MLflow's checks on keys and values, each distinct key checked once: what they
    reject, or would truncate, is refused. Plain keys (``PLAIN_KEY``) need no MLflow
    import, which keeps MLflow's 1.5 s import off the driver's start."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def check(self, kind: str, key: str, value: str | None = None) -> None:
        limit = LIMITS.get(kind)
        if (kind, key) not in self._seen:
            if not (isinstance(key, str) and PLAIN_KEY.fullmatch(key)):
                self._mlflow_check(kind, key)
            self._seen.add((kind, key))
        if limit is not None and (not isinstance(value, str) or len(value) > limit):
            raise Refused(f"{kind} {key!r}: not a string of at most {limit} characters")

    @staticmethod
    def _mlflow_check(kind: str, key: str) -> None:
        try:
            from mlflow.utils import validation as v

            {"param": v._validate_param_name, "tag": v._validate_tag_name,
             "metric": v._validate_metric_name}[kind](key)
            if len(key) > v.MAX_ENTITY_KEY_LENGTH:
                raise ValueError(f"{kind} key longer than {v.MAX_ENTITY_KEY_LENGTH}")
        except Exception as exc:  # noqa: BLE001 - MLflow's client says it properly
            raise Refused(f"{kind} {key!r}: {exc}") from exc


def artifact_uri(location: str, run_id: str) -> str:
    """``append_to_uri_path(location, run_id, "artifacts")`` as MLflow computes a run's
    artifact URI; a local path or plain ``file:`` URI without MLflow's import."""
    if location.startswith(("/", "file://")) and not any(c in location for c in "?#;\\"):
        return f"{location.rstrip('/')}/{run_id}/artifacts"
    from mlflow.utils.uri import append_to_uri_path

    return append_to_uri_path(location, run_id, "artifacts")


def run_row(run_id: str, experiment_id: str, run_name: str, tags: dict[str, str],
            artifact_location: str, start_time: int | None = None) -> dict[str, Any]:
    """The ``runs`` row ``MlflowClient.create_run`` makes: RUNNING, source UNKNOWN, the
    user from the ``mlflow.user`` tag, the artifact URI under the experiment's."""
    return dict(run_uuid=run_id, name=run_name, source_type="UNKNOWN", source_name="",
                entry_point_name="", user_id=tags.get(USER_TAG, "unknown"), status="RUNNING",
                start_time=int(start_time or time.time() * 1000), end_time=None,
                source_version="", lifecycle_stage="active",
                artifact_uri=artifact_uri(artifact_location, run_id),
                experiment_id=int(experiment_id), deleted_time=None)
