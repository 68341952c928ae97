"""Figures of a finished search, logged to the job's parent run in MLflow.

The trials are rebuilt as an in-memory Optuna study (parameters as the space
sampled them, values = last reported objectives), so Optuna's own plots apply
whatever algorithm ran: optimization history, parallel coordinates, parameter
importances (fANOVA), and the Pareto front when there are several objectives.
Each is logged as interactive HTML (plotly) and as PNG (matplotlib), beside a
table of all trials (CSV and HTML). A figure that cannot be drawn (too few
trials, one parameter) is skipped with a note rather than failing the job.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from search_spaces import SearchSpec
from workers.tune.history import distributions, sampled_point

log = logging.getLogger(__name__)
ARTIFACT_DIR = "figures"


def study_of(spec: SearchSpec, trials: list[Any]) -> optuna.Study:
    objectives = spec.objective.objectives()
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize"
                                            for _, m in objectives])
    for trial in sorted(trials, key=lambda t: t.index):
        values = [trial.metrics.get(metric) for metric, _ in objectives]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            continue
        point = sampled_point(spec, trial.config)
        study.add_trial(optuna.trial.create_trial(
            params=point, distributions=distributions(spec, point), values=values,
            state=optuna.trial.TrialState.COMPLETE,
            user_attrs={"trial_id": trial.trial_id, "status": trial.status}))
    return study


def _figures(spec: SearchSpec) -> dict[str, tuple[Callable, Callable]]:
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vmpl

    figures: dict[str, tuple[Callable, Callable]] = {
        "optimization_history": (vis.plot_optimization_history, vmpl.plot_optimization_history),
        "parallel_coordinate": (vis.plot_parallel_coordinate, vmpl.plot_parallel_coordinate),
        "param_importances": (vis.plot_param_importances, vmpl.plot_param_importances),
    }
    if not spec.objective.multi:
        return figures
    # Several objectives: the per-trial plots show the first; the Pareto front shows all.
    first = spec.objective.objectives()[0][0]

    def on_first(plot: Callable) -> Callable:
        return lambda study: plot(study, target=lambda t: t.values[0], target_name=first)

    figures = {name: (on_first(h), on_first(p)) for name, (h, p) in figures.items()}
    figures["pareto_front"] = (vis.plot_pareto_front, vmpl.plot_pareto_front)
    return figures


def render(spec: SearchSpec, trials: list[Any], out: Path) -> list[str]:
    """Write the figures and the trials table into ``out``; returns what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [_table(spec, trials, out)]
    written.append(_table_html(spec, trials, out))
    study = study_of(spec, trials)
    if len(study.trials) < 2:
        return written
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name, (html_fn, png_fn) in _figures(spec).items():
        try:
            html_fn(study).write_html(out / f"{name}.html", include_plotlyjs="cdn")
            written.append(f"{name}.html")
            axes = png_fn(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 6)
            figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("figure %s skipped: %s", name, exc)
    return written


def _rows(spec: SearchSpec, trials: list[Any]) -> tuple[list[str], list[list[Any]]]:
    params = sorted(spec.searched())
    metrics = [m for m, _ in spec.objective.objectives()]
    header = ["index", "trial_id", "status", "epochs", *params, *metrics, "mlflow_run_id"]
    rows = [[t.index, t.trial_id, t.status, t.iteration, *[t.config.get(p) for p in params],
             *[t.metrics.get(m) for m in metrics], t.mlflow_run_id]
            for t in sorted(trials, key=lambda t: t.index)]
    return header, rows


def _table(spec: SearchSpec, trials: list[Any], out: Path) -> str:
    header, rows = _rows(spec, trials)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    (out / "trials.csv").write_text(buffer.getvalue())
    return "trials.csv"


def _table_html(spec: SearchSpec, trials: list[Any], out: Path) -> str:
    from html import escape

    header, rows = _rows(spec, trials)
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    (out / "trials.html").write_text(f"<table border=1><tr>{head}</tr>{body}</table>")
    return "trials.html"


def log_job_figures(parent: Any, spec: SearchSpec, trials: list[Any]) -> list[str]:
    """Render and log under the parent run's ``figures/``; never fails the job."""
    try:
        with tempfile.TemporaryDirectory() as directory:
            written = render(spec, trials, Path(directory))
            parent.client.log_artifacts(parent.run_id, directory, ARTIFACT_DIR)
            return written
    except Exception as exc:  # noqa: BLE001 - figures are a report, not the result
        log.warning("could not log figures: %s", exc)
        return []
