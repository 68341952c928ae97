"""Task registry: built-in tasks by name, plus plugins from installed packages.

A spec names a task; it never carries an import path. Built-in names map to
zero-arg factories here (the set equals ``search_spaces.catalog.TASKS``, which a
test enforces). Any other name is looked up among the entry points of group
``catalog.TASK_ENTRY_POINT_GROUP`` ("regtune.tasks") that *installed packages*
declare — so only code the operator installed can ever be imported, and a user
can only choose among those names. An entry point loads a zero-arg factory that
returns a :class:`Task`.
"""

from __future__ import annotations

import importlib.metadata
from typing import Callable

from search_spaces import catalog
from workers.training.tasks.base import COMMON_OPTIONS, Task, TaskData, check_options
from workers.training.tasks.builtin import DiabetesTask, DigitsTask, RegressionOutliersTask
from workers.training.tasks.table import TableTask, resolve_under_root

TaskFactory = Callable[[], Task]

TASKS: dict[str, TaskFactory] = {
    "digits": lambda: DigitsTask("digits"),
    "digits-longtail": lambda: DigitsTask("digits-longtail", longtail=True),
    "regression-outliers": RegressionOutliersTask,
    "diabetes": DiabetesTask,
    "table": TableTask,
}


def plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plugin tasks by name (read from metadata; nothing imported yet).

    Looked up at call time through the ``importlib.metadata`` module attribute,
    so newly installed distributions (and tests) are seen without a restart.
    """
    found = importlib.metadata.entry_points(group=catalog.TASK_ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in TASKS}


def load_task(name: str) -> Task:
    """The task object for a built-in or installed plugin task name."""
    factory = TASKS.get(name)
    if factory is None:
        entry = plugin_entry_points().get(name)
        if entry is None:
            raise ValueError(f"unknown task {name!r}; built-in: {sorted(TASKS)}, "
                             f"installed plugins: {sorted(plugin_entry_points())}")
        factory = entry.load()
        if not callable(factory):
            raise TypeError(f"entry point {name!r} in {catalog.TASK_ENTRY_POINT_GROUP} must "
                            "load a zero-argument factory returning a task")
    task = factory()
    if not callable(getattr(task, "load", None)):
        raise TypeError(f"task {name!r}: the factory returned {type(task).__name__}, which "
                        "has no load(options, data_root) method")
    return task


__all__ = [
    "COMMON_OPTIONS", "TASKS", "Task", "TaskData", "TaskFactory", "check_options", "load_task",
    "plugin_entry_points", "resolve_under_root",
]
