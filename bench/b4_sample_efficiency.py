"""B4: sample efficiency — how much training each search needs to match the grid's best.

Runs in-process with Optuna and ``workers.training`` directly (no Ray, no service),
to stay within budget: each search is a sequential Optuna ask/tell loop whose
trials train a real :class:`~workers.training.Trainer` epoch by epoch. What comes
from the service's code:

* the samplers: ``workers.tune.algorithms`` (TPE as the service configures it:
  multivariate, grouped, constant liar, few start-up trials; seeded random; the
  ask/tell grid);
* the space: ``workers.tune.space.define_by_run`` (as the service's OptunaSearch
  uses it), and trial parameters via ``spec.resolve_params``;
* the early stopping: the service runs Ray Tune's ASHA (grace period
  ``SearchSpec.grace_epochs``: a third of the epochs unless the spec says, reduction
  factor 2); here Optuna's ``SuccessiveHalvingPruner`` with the same rungs (grace,
  2 × grace, ... epochs) and factor stands in for it. The "grace 1" rows run the
  one-epoch grace that was the default before, side by side. As in Ray's
  OptunaSearch, every epoch's objective is reported to the trial, and a stopped
  trial is told to the sampler as finished with its last value.

Differences from the service: trials run one at a time (the service runs 2 at
once, where TPE uses its constant liar and ASHA decides with fewer peers).

Compute = epochs trained, summed over trials (deterministic for a seed). The
target is the grid's best value minus a stated tolerance. Training is seeded
(``train.seed`` 0), so a configuration always trains to the same result and the
only randomness between seeds is the search's own.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import command_for, save_figure

#: Each search runs as many trials as the grid has points.
TASKS: dict[str, dict[str, Any]] = {
    "digits": {
        "spec": {"name": "bench-b4-digits", "task": "digits",
                 "objective": {"loss": "cross_entropy", "metric": "val_accuracy",
                               "mode": "max"},
                 "model": {"name": "mlp", "hidden_sizes": [64]},
                 "train": {"epochs": 16, "batch_size": 64, "momentum": 0.9, "seed": 0}},
        "ranges": {"reg_lambda": (1e-6, 1.0), "lr": (0.001, 1.0)},
        "grid": {"reg_lambda": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0],
                 "lr": [0.001, 0.01, 0.1, 1.0]},
        # val_accuracy within about one validation sample (1/360) of the grid's best
        "tolerance": ("absolute", 0.003),
    },
    "regression-outliers": {
        "spec": {"name": "bench-b4-outliers", "task": "regression-outliers",
                 "objective": {"loss": "smooth_l1", "metric": "val_rmse", "mode": "min"},
                 "train": {"epochs": 16, "batch_size": 64, "lr": 0.02, "momentum": 0.9,
                           "seed": 0}},
        "ranges": {"huber_delta": (0.05, 20.0), "reg_lambda": (1e-6, 1e-1)},
        "grid": {"huber_delta": [0.05, 0.2, 1.0, 5.0, 20.0, 0.5, 2.0, 10.0],
                 "reg_lambda": [1e-6, 1e-4, 1e-2, 1e-1]},
        "tolerance": ("relative", 0.005),  # val_rmse within 0.5% of the grid's best
    },
}
QUICK_EPOCHS = 10
QUICK_GRID = {"digits": {"reg_lambda": [1e-6, 1e-3, 1e-1, 1.0], "lr": [0.001, 0.01, 0.1, 1.0]}}

#: name -> (sampler, early stopping, grace period in epochs: None = the spec's default)
SEARCHES: dict[str, tuple[str, bool, int | None]] = {
    "tpe+asha": ("tpe", True, None),
    "random+asha": ("random", True, None),
    "tpe+asha, grace 1": ("tpe", True, 1),
    "random+asha, grace 1": ("random", True, 1),
    "random": ("random", False, None),
}


def _spec_json(task: str, algorithm: str, seed: int, quick: bool) -> dict[str, Any]:
    cfg = TASKS[task]
    grid = (QUICK_GRID.get(task) if quick else None) or cfg["grid"]
    n_points = math.prod(len(v) for v in grid.values())
    spec = {**cfg["spec"]}
    if quick:
        spec["train"] = {**spec["train"], "epochs": QUICK_EPOCHS}
    if algorithm == "grid":
        spec["space"] = {k: {"choices": sorted(v)} for k, v in grid.items()}
    else:
        spec["space"] = {k: {"low": lo, "high": hi, "log": True}
                         for k, (lo, hi) in cfg["ranges"].items()}
    spec["search"] = {"algorithm": algorithm, "num_trials": n_points, "max_concurrent": 1,
                      "scheduler": "none", "seed": seed}
    return spec


def _sampler(spec: Any) -> Any:
    """The service's sampler for the spec (whichever registry shape workers.tune has)."""
    from workers.tune import algorithms

    factories = getattr(algorithms, "SAMPLERS", None) or algorithms.ALGORITHMS
    return factories[spec.search.algorithm](spec)


def _train(spec: Any, sampled: dict[str, Any], trial: Any | None) -> tuple[float, int, list]:
    """Train one trial; report each epoch to ``trial`` and stop when it says prune.

    Returns (last objective, epochs trained, objective per epoch).
    """
    from workers.training import Trainer, build_setup

    trainer = Trainer(build_setup(spec, spec.resolve_params(sampled)), "cpu")
    metric = spec.objective.metric
    values: list[float] = []
    while not trainer.done:
        value = float(trainer.train_epoch()[metric])
        values.append(value)
        if trial is not None:
            if math.isfinite(value):
                trial.report(value, trainer.epoch)
            if trial.should_prune():
                break
    return values[-1], len(values), values


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_search(task: str, search: str, seed: int, quick: bool) -> dict[str, Any]:
    """One sequential search; returns per-trial (epochs, value) in order."""
    import optuna

    from search_spaces import SearchSpec
    from workers.tune.space import define_by_run, trial_params

    sampler_name, asha, grace = SEARCHES[search]
    spec = SearchSpec.model_validate(_spec_json(task, sampler_name, seed, quick))
    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=grace or spec.grace_epochs,
                                                     reduction_factor=2,
                                                     min_early_stopping_rate=0)
              if asha else optuna.pruners.NopPruner())
    direction = "maximize" if spec.objective.direction == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=_sampler(spec), pruner=pruner)
    space = define_by_run(spec)
    trials = []
    start = time.perf_counter()
    for _ in range(spec.search.num_trials):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **(constants or {})}
        value, epochs, _ = _train(spec, trial_params(spec, config), trial)
        if math.isfinite(value):
            study.tell(trial, value)  # a stopped trial counts as finished, as in Ray's OptunaSearch
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trials.append({"epochs": epochs, "value": value})
    return {"task": task, "search": search, "seed": seed, "trials": trials,
            "seconds": time.perf_counter() - start}


def run_grid(task: str, quick: bool) -> dict[str, Any]:
    """Every grid point trained once, full length (training is seeded: one run suffices)."""
    from search_spaces import SearchSpec

    spec = SearchSpec.model_validate(_spec_json(task, "grid", 0, quick))
    axes = spec.grid_axes()
    names = sorted(axes)
    results = {}
    start = time.perf_counter()

    def points(i: int, current: dict[str, Any]):
        if i == len(names):
            yield dict(current)
            return
        for v in axes[names[i]]:
            current[names[i]] = v
            yield from points(i + 1, current)

    for point in points(0, {}):
        value, epochs, _ = _train(spec, point, None)
        results[tuple(point[n] for n in names)] = {"epochs": epochs, "value": value}
    return {"task": task, "names": names, "results": results,
            "seconds": time.perf_counter() - start}


def grid_order(task: str, seed: int, quick: bool, grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The order in which the service's seeded grid sampler visits the points."""
    import optuna

    from search_spaces import SearchSpec
    from workers.tune.space import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SearchSpec.model_validate(_spec_json(task, "grid", seed, quick))
    study = optuna.create_study(direction="maximize", sampler=_sampler(spec))
    space = define_by_run(spec, conditional=False)
    out = []
    for _ in range(spec.search.num_trials):
        trial = study.ask()
        space(trial)
        key = tuple(trial.params[n] for n in grid["names"])
        out.append(grid["results"][key])
        study.tell(trial, 0.0)
    return out


def _job(args: tuple) -> dict[str, Any]:
    kind, task, search, seed, quick = args
    if kind == "grid":
        return run_grid(task, quick)
    return run_search(task, search, seed, quick)


# --- analysis ---------------------------------------------------------------------------------


def curve(trials: list[dict[str, Any]], mode: str) -> list[tuple[int, float]]:
    """(cumulative epochs, best-so-far) after each trial; NaN results never count."""
    out, total, best = [], 0, None
    for t in trials:
        total += t["epochs"]
        v = t["value"]
        if math.isfinite(v) and (best is None or (v > best if mode == "max" else v < best)):
            best = v
        out.append((total, best if best is not None else float("nan")))
    return out


def target_of(task: str, grid_best: float, mode: str) -> float:
    kind, tol = TASKS[task]["tolerance"]
    if kind == "absolute":
        return grid_best - tol if mode == "max" else grid_best + tol
    return grid_best * (1 - tol) if mode == "max" else grid_best * (1 + tol)


def epochs_to_target(points: list[tuple[int, float]], target: float, mode: str) -> int | None:
    for epochs, best in points:
        if math.isfinite(best) and (best >= target if mode == "max" else best <= target):
            return epochs
    return None


def _plot(task: str, curves: dict[str, list[list[tuple[int, float]]]], target: float,
          grid_best: float, metric: str, out_dir: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, runs) in enumerate(curves.items()):
        top = max(p[-1][0] for p in runs)
        xs = np.linspace(0, top, 300)
        ys = []
        for points in runs:
            ex = np.array([p[0] for p in points])
            ey = np.array([p[1] for p in points], dtype=float)
            idx = np.searchsorted(ex, xs, side="right") - 1
            ys.append(np.where(idx >= 0, ey[np.clip(idx, 0, None)], np.nan))
        ys = np.array(ys)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(ys, axis=0)
                lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
        ax.plot(xs, med, label=f"{name} (median of {len(runs)})", color=f"C{i}")
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.12)
    ax.axhline(grid_best, color="k", lw=0.8, ls="--", label="grid's best")
    ax.axhline(target, color="k", lw=0.8, ls=":", label="target (tolerance)")
    lo_all = min(target, grid_best)
    span = abs(grid_best - target) * 8 or 0.05
    if metric == "val_accuracy":
        ax.set_ylim(lo_all - span, min(1.0, grid_best + span / 2))
    else:
        ax.set_ylim(grid_best - span / 2, grid_best + span)
    ax.set_xlabel("cumulative epochs trained (all trials)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title(f"B4 {task}: best so far vs compute (band: min–max over seeds)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, f"b4_{task}.png")


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    tasks = ["digits"] if quick else list(TASKS)
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    jobs = [("grid", t, "grid", 0, quick) for t in tasks]
    jobs += [("search", t, s, seed, quick) for t in tasks for s in SEARCHES for seed in seeds]
    # Two processes, one thread each; results depend on seeds only, not on scheduling.
    with mp.get_context("spawn").Pool(2, initializer=_worker_init) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    grids = {r["task"]: r for r in results if "names" in r}
    searches = [r for r in results if "search" in r]

    rows, summary, plots, notes = [], [], [], []
    met = True
    for task in tasks:
        from search_spaces import SearchSpec

        spec = SearchSpec.model_validate(_spec_json(task, "grid", 0, quick))
        mode, metric = spec.objective.direction, spec.objective.metric
        grid = grids[task]
        values = [r["value"] for r in grid["results"].values() if math.isfinite(r["value"])]
        grid_best = max(values) if mode == "max" else min(values)
        target = target_of(task, grid_best, mode)
        kind, tol = TASKS[task]["tolerance"]
        tol_text = f"{tol:g} absolute" if kind == "absolute" else f"{tol:.1%} relative"
        curves: dict[str, list] = {}
        grid_runs = []
        for seed in seeds:
            order = grid_order(task, seed, quick, grid)
            grid_runs.append(curve(order, mode))
        curves["grid"] = grid_runs
        for name in SEARCHES:
            runs = sorted((r for r in searches if r["task"] == task and r["search"] == name),
                          key=lambda r: r["seed"])
            curves[name] = [curve(r["trials"], mode) for r in runs]
        grid_total = grid_runs[0][-1][0]
        for name, runs in curves.items():
            reach = [epochs_to_target(points, target, mode) for points in runs]
            hit = [r for r in reach if r is not None]
            finals = [points[-1][1] for points in runs]
            total = statistics.mean(points[-1][0] for points in runs)
            med = statistics.median(hit) if len(hit) == len(reach) else None
            rows.append([task, name, f"{len(hit)}/{len(reach)}",
                         statistics.median(hit) if hit else None,
                         min(hit) if hit else None, max(hit) if hit else None,
                         (med / statistics.median(
                             [r for r in (epochs_to_target(p, target, mode)
                                          for p in grid_runs) if r is not None]))
                         if med is not None else None,
                         total, statistics.mean(finals)])
            if name == "tpe+asha":
                grid_hits = [epochs_to_target(p, target, mode) for p in grid_runs]
                ok = (len(hit) == len(reach) and all(g is not None for g in grid_hits)
                      and statistics.median(hit) <= statistics.median(grid_hits))
                met = met and ok
                summary.append(f"{task}: tpe+asha reached the target in {len(hit)}/{len(reach)} "
                               f"seeds, median {statistics.median(hit) if hit else '—'} epochs "
                               f"vs the grid's median {statistics.median(grid_hits)} "
                               f"(grid total {grid_total}).")
        good = sum(1 for v in values if (v >= target if mode == "max" else v <= target))
        notes.append(f"{task}: objective {metric} ({mode}); grid of "
                     f"{len(grid['results'])} points × {spec.train.epochs} epochs; grid's best "
                     f"{grid_best:.4f}; target {target:.4f} ({tol_text} tolerance), met by "
                     f"{good} of the {len(grid['results'])} grid points; each search runs "
                     f"{len(grid['results'])} trials.")
        plot = _plot(task, curves, target, grid_best, metric, out_dir)
        if plot:
            plots.append(plot)
    notes += summary
    notes += [
        "In-process, no Ray: Optuna ask/tell with the service's samplers and define-by-run "
        "space, trials training workers.training's Trainer one at a time, one thread; ASHA is "
        "Optuna's SuccessiveHalvingPruner with Ray ASHA's rungs (the grace period, factor 2). "
        "The service runs 2 trials at once, which this does not reproduce.",
        "Epochs to target: cumulative epochs (all trials, stopped ones included) when the "
        "best-so-far first came within the tolerance of the grid's best; '—' where a seed "
        "never did. The grid's curve is its seeded visiting order (its total is fixed).",
        "The best of a trial is its last reported objective (the service's rule), so an "
        "ASHA-stopped trial counts with its value at the epoch it was stopped.",
    ]
    columns = ["task", "search", "seeds reaching target", "median epochs to target",
               "min", "max", "÷ grid's median", "epochs spent (mean)",
               "final best (mean over seeds)"]
    grace_default = SearchSpec.model_validate(_spec_json(tasks[0], "tpe", 0, quick)).grace_epochs
    notes.append(f"ASHA rungs: the +asha rows stop trials on the objective after {grace_default}, "
                 f"{2 * grace_default}, ... epochs (grace {grace_default}: the service's default "
                 "of a third of the epochs, SearchSpec.grace_epochs); the 'grace 1' rows after "
                 "1, 2, 4, 8 epochs, the default before. Where the ranking of configurations "
                 "after an epoch or two differs from their ranking at the end (a slowly "
                 "converging loss, e.g. Smooth-L1 with a small δ), a one-epoch grace stops the "
                 "eventual best ones; a longer grace spends more epochs on every trial.")
    return {"id": "B4", "title": "Sample efficiency: TPE+ASHA vs random vs grid",
            "command": command_for("B4", quick),
            "tables": [{"caption": "Compute (epochs summed over trials) needed to come within "
                                   "the tolerance of the grid's best, over seeds "
                                   f"{seeds}", "columns": columns, "rows": rows}],
            "plots": plots, "notes": notes,
            "goal": "TPE+ASHA reaches the grid's best (within tolerance) in every seed, with "
                    "no more compute than the grid (median over seeds)",
            "met": met}
