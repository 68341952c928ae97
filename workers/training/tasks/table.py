"""The "table" task: a user's CSV or Parquet file under the data root.

The file name comes from a spec, i.e. from a user, and the worker reads it with
the worker's permissions. So the path is untrusted input: it may only name an
existing regular ``.csv`` / ``.parquet`` file *inside* the operator-configured
data root (``REGTUNE_DATA_ROOT``), and every other shape of path is refused
before anything is opened — see :func:`resolve_under_root`. Errors quote the
user's path, never the resolved server path, since they travel back to the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from search_spaces import catalog
from workers.training.tasks.base import (KINDS, TaskData, as_features, as_labels, check_options,
                                         split_indices, standardize)

#: Allowed file suffixes (lower-cased) and the reader each selects.
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".parquet": "parquet"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # "file:", "s3:", "http:", "C:"


def resolve_under_root(root: Path | str | None, user_path: str) -> Path:
    """The real path of ``user_path`` inside ``root``, or a ValueError saying why not.

    Refused: no root configured; empty or non-string paths; NUL bytes; URLs and
    anything starting with a scheme (``file:``, ``s3://``, a drive letter);
    backslashes; absolute paths and ``~``; any ``..`` component; suffixes other
    than .csv/.parquet; paths that do not exist or are not regular files; and
    paths that — through symlinks anywhere along the way — resolve outside the
    root or to a file with another suffix. The returned path is fully resolved,
    so the caller opens exactly what was checked.
    """
    if root is None:
        raise ValueError("the table task needs a data root: the operator sets REGTUNE_DATA_ROOT")
    if not isinstance(user_path, str) or not user_path.strip():
        raise ValueError("task_options.path must be a non-empty relative path")
    shown = repr(user_path[:200])
    if "\x00" in user_path:
        raise ValueError(f"path {shown} contains a NUL byte")
    if "://" in user_path or _SCHEME.match(user_path):
        raise ValueError(f"path {shown} looks like a URL or has a scheme; give a path "
                         "relative to the data root")
    if "\\" in user_path:
        raise ValueError(f"path {shown} contains a backslash; use '/' as the separator")
    pure = PurePosixPath(user_path)
    if pure.is_absolute() or user_path.startswith("~"):
        raise ValueError(f"path {shown} must be relative to the data root, not absolute")
    if ".." in pure.parts:
        raise ValueError(f"path {shown} may not contain '..'")
    if pure.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"path {shown} must end in one of {sorted(TABLE_SUFFIXES)}")
    try:
        base = Path(root).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ValueError("the configured data root does not exist") from None
    try:
        real = (base / pure).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, symlink loop, permission
        raise ValueError(f"path {shown} does not exist under the data root") from None
    if not real.is_relative_to(base):
        raise ValueError(f"path {shown} resolves outside the data root")
    if not real.is_file():
        raise ValueError(f"path {shown} is not a regular file")
    if real.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"path {shown} links to a file that is not .csv or .parquet")
    return real


def read_table(path: Path) -> "Any":
    """A pandas DataFrame from a path already checked by :func:`resolve_under_root`."""
    import pandas as pd

    reader = TABLE_SUFFIXES[path.suffix.lower()]
    if reader == "csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def frame_to_arrays(frame: Any, target: str, kind: str, source: str
                    ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(features, targets, n_classes) with the refusals users need to fix their file."""
    import pandas as pd

    if target not in frame.columns:
        columns = [str(c) for c in frame.columns][:50]
        raise ValueError(f"{source}: no column {target!r}; columns: {columns}")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise ValueError(f"{source}: no feature columns besides the target {target!r}")
    bad = [str(c) for c in features.columns
           if not (pd.api.types.is_numeric_dtype(features[c])
                   or pd.api.types.is_bool_dtype(features[c]))]
    if bad:
        raise ValueError(f"{source}: non-numeric feature columns {bad[:20]}; encode them as "
                         "numbers before uploading (only the target may be text)")
    if features.isna().any().any() or frame[target].isna().any():
        raise ValueError(f"{source}: missing values; fill or drop them before uploading")
    x = features.to_numpy(dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: feature values must be finite")
    if kind == "classification":
        codes, classes = pd.factorize(frame[target], sort=True)
        if len(classes) < 2:
            raise ValueError(f"{source}: target {target!r} has fewer than 2 classes")
        return x, codes.astype(np.int64), len(classes)
    column = frame[target]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ValueError(f"{source}: a regression target must be numeric")
    y = frame[target].to_numpy(dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"{source}: target values must be finite")
    return x, y, None


@dataclass(frozen=True)
class TableTask:
    """Options: ``path`` (relative to the data root), ``target`` (column), ``kind``.

    Classification targets are label-encoded in sorted order of their values.
    Features are standardized with training statistics (a table's columns have
    arbitrary units, and a penalty on weights is only meaningful at a common
    scale); a regression target keeps its units.
    """

    name: str = "table"

    def load(self, options: Mapping[str, Any], data_root: Path | None) -> TaskData:
        opts = check_options(self.name, options, {"path": str, "target": str, "kind": str})
        for key in ("path", "target"):
            if key not in opts:
                raise ValueError(f"the table task needs task_options.{key}")
        kind = opts.get("kind", "classification")
        if kind not in KINDS:
            raise ValueError(f"task_options.kind must be one of {KINDS}, got {kind!r}")
        path = resolve_under_root(data_root, opts["path"])
        source = repr(opts["path"])
        x, y, n_classes = frame_to_arrays(read_table(path), opts["target"], kind, source)
        if len(x) < 2:
            raise ValueError(f"{source}: needs at least 2 rows")
        train, val = split_indices(len(x), catalog.TASKS[self.name].val_fraction,
                                   opts.get("split_seed", 0))
        x_tr, x_va = standardize(x[train], x[val])
        if kind == "classification":
            return TaskData(kind, as_features(x_tr), as_labels(y[train]), as_features(x_va),
                            as_labels(y[val]), n_classes=n_classes)
        return TaskData(kind, as_features(x_tr), as_features(y[train]), as_features(x_va),
                        as_features(y[val]))
