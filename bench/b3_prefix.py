"""B3: shared prefixes — trials that differ only from their start step share the steps before.

16 trials of one configuration (digits, MLP [64], batch 128, SGD, elastic-net
λ 1e-3 / l1_ratio 0.5) with 16 *distinct* ``reg_start_step`` values are trained
twice in the same single-threaded process, side by side:

* **independent**: one unbroken ``Trainer`` per trial;
* **shared**: :func:`workers.training.prefix.run_plan` on
  :func:`workers.training.prefix.plan` — an unregularized trunk, and each trial
  forked off it at its start step (mid-epoch when the step says so).

Compute is counted in optimizer steps (exact, machine-independent) and measured
in wall time; every metric of every epoch of every trial is compared between
the two (the promise is bit-identity, so the maximum difference should be 0).

A second table measures the *wired* path, ``search.share_prefixes`` on a
population of the same 16 trials: the population trainable's body
(``workers.tune.shared_prefix.train_members``) with its results passed through
the driver's per-member dedup, against the same independent runs, and beside it
the same members as one batched population without sharing (B2's path); plus
the ready-made ``search_spaces/study-000-shared-prefixes.yaml``.

The start steps are laid out several ways, because the saving depends only on
where they are: with T steps per trial and fork steps f_i the shared cost is
``max f_i + Σ (T − f_i)`` against ``N·T`` independent.

``python -m bench.b3_prefix [--quick]`` runs it alone and prints the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

BENCH_ID = "B3"
N_TRIALS = 16
GOAL_RATIO = 0.40
GOAL_DIFF = 1e-6
GOAL_REL = 1e-4  # the population tolerance (docs/training.md)
SPEC: dict[str, Any] = {
    "name": "b3", "task": "digits",
    "objective": {"loss": "cross_entropy", "metric": "val_accuracy"},
    "model": {"name": "mlp", "hidden_sizes": [64]},
    "train": {"epochs": 12, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "seed": 1},
}
STEPS_PER_EPOCH = math.ceil(1437 / 128)  # digits: 1437 training rows
STUDY_SPEC = Path(__file__).resolve().parent.parent / "search_spaces" / \
    "study-000-shared-prefixes.yaml"


def _command(quick: bool) -> str:
    return f"python -m bench {'--quick ' if quick else ''}--only {BENCH_ID}"


def spread(total: int, low: float, high: float, n: int = N_TRIALS) -> list[int]:
    """``n`` distinct start steps evenly spaced over [low·T, high·T)."""
    starts = sorted({int(round(total * (low + (high - low) * i / n))) for i in range(n)})
    if len(starts) != n:
        raise ValueError(f"{n} distinct start steps do not fit in [{low}, {high}) of {total}")
    return starts


#: Axis labels for the plot.
SHORT = {"uniform over the whole run [0, T)": "[0, T)", "uniform over [0.4·T, T)": "[0.4T, T)",
         "uniform over the second half [T/2, T)": "[T/2, T)",
         "4 starts in [T/2, T) × 4 λ": "4 starts in\n[T/2, T) × 4 λ"}


def layouts(total: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, per-trial sampled params) for each layout of start steps."""
    base = {"reg_lambda": 1e-3, "l1_ratio": 0.5}
    out = [
        ("uniform over the whole run [0, T)", spread(total, 0.0, 1.0)),
        ("uniform over [0.4·T, T)", spread(total, 0.4, 1.0)),
        ("uniform over the second half [T/2, T)", spread(total, 0.5, 1.0)),
    ]
    result = [(name, [{**base, "reg_start_step": s} for s in starts]) for name, starts in out]
    # λ varies too: 4 start steps × 4 λ (λ only acts after the start, so one trunk serves all)
    starts = spread(total, 0.5, 1.0, 4)
    result.append(("4 starts in [T/2, T) × 4 λ", [
        {**base, "reg_lambda": lam, "reg_start_step": s}
        for s in starts for lam in (1e-4, 1e-3, 3e-3, 1e-2)]))
    return result


def _setups(epochs: int, sampled: list[dict[str, Any]]) -> list[Any]:
    from search_spaces import SearchSpec
    from workers.training import build_setup

    spec = SearchSpec.model_validate({**SPEC, "train": {**SPEC["train"], "epochs": epochs}})
    return [build_setup(spec, spec.resolve_params(p)) for p in sampled]


#: Differences of two recorded metrics (val_loss − train_loss): near 0 late in training,
#: so their relative deviation is cancellation, not error; their terms are compared.
DIFFERENCES = frozenset({"loss_gap"})


def _max_dev(a: list[list[dict[str, float]]], b: list[list[dict[str, float]]],
             relative: bool = False, only: frozenset[str] | None = None) -> float:
    """The largest deviation of b from a over every metric of every epoch (inf if their
    shapes differ); relative: ÷ |a| (batched runs are not bit-identical), over every
    metric but DIFFERENCES; only: those metrics alone."""
    worst = 0.0
    for ha, hb in zip(a, b):
        if len(ha) != len(hb):
            return math.inf
        for ma, mb in zip(ha, hb):
            if set(ma) != set(mb):
                return math.inf
            for key in ma:
                if (only is not None and key not in only) or (relative and key in DIFFERENCES):
                    continue
                x, y = float(ma[key]), float(mb[key])
                if x != y and not (math.isnan(x) and math.isnan(y)):
                    worst = max(worst, abs(x - y) / (max(abs(x), 1e-12) if relative else 1.0))
    return worst


def _max_diff(a: list[list[dict[str, float]]], b: list[list[dict[str, float]]]) -> float:
    return _max_dev(a, b)


def _max_rel(a: list[list[dict[str, float]]], b: list[list[dict[str, float]]]) -> float:
    return _max_dev(a, b, relative=True)


def measure_layout(epochs: int, sampled: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from workers.training import Trainer
    from workers.training.prefix import plan, run_plan

    cpu = torch.device("cpu")
    setups = _setups(epochs, sampled)
    t0, c0 = time.perf_counter(), time.process_time()
    independent = []
    for setup in setups:
        trainer = Trainer(setup, cpu)
        history = []
        while not trainer.done:
            history.append(trainer.train_epoch())
        independent.append(history)
    t1, c1 = time.perf_counter(), time.process_time()
    the_plan = plan(setups)
    shared = run_plan(the_plan, device=cpu)
    t2, c2 = time.perf_counter(), time.process_time()
    starts = [int(s.params["reg_start_step"]) for s in setups]
    wired = measure_wired(_population_spec(epochs), sampled, independent,
                          (t1 - t0, c1 - c0))
    return {
        "wired": wired,
        "starts": starts, "total_steps": the_plan.groups[0].total_steps,
        "independent_steps": shared.independent_steps, "shared_steps": shared.steps,
        "planned_steps": the_plan.steps, "ratio": shared.ratio,
        "independent_s": t1 - t0, "shared_s": t2 - t1, "wall_ratio": (t2 - t1) / (t1 - t0),
        "cpu_ratio": (c2 - c1) / (c1 - c0),
        "evaluations": shared.evaluations, "independent_evaluations":
            shared.independent_evaluations, "forks": shared.forks,
        "max_diff": _max_diff(independent, shared.histories),
    }


def _population_spec(epochs: int) -> Any:
    """SPEC as one population of N_TRIALS sharing prefixes (search.share_prefixes)."""
    from search_spaces import SearchSpec

    total = epochs * STEPS_PER_EPOCH
    return SearchSpec.model_validate({
        **SPEC, "train": {**SPEC["train"], "epochs": epochs},
        "space": {"reg_start_step": {"low": 0, "high": total, "type": "int"},
                  "reg_lambda": {"low": 1e-4, "high": 1e-2, "log": True}, "l1_ratio": 0.5},
        "search": {"algorithm": "random", "num_trials": N_TRIALS, "population": N_TRIALS,
                   "share_prefixes": True, "scheduler": "none"}})


def measure_wired(spec: Any, configs: list[dict[str, Any]],
                  independent: list[list[dict[str, float]]],
                  independent_times: tuple[float, float]) -> dict[str, Any]:
    """The wired path: a population trial's body with share_prefixes, as the driver sees it.

    ``workers.tune.shared_prefix.train_members`` (what ``train_population`` runs
    with ``search.share_prefixes``) trains the members twice: with
    ``exact_prefixes`` (a trainer per branch, bit-identical) and as the default runs
    it (each prefix group one batched population forking rows off a batched trunk).
    Every result goes through the driver's own per-member dedup (``reporting._Units``
    via ``member_units``), and what that would record is compared with the
    independent runs. Only Tune's transport and the MLflow/store writes are left
    out. Then the same members as one batched population without sharing
    (``PopulationTrainer``), for comparison.
    """
    from dataclasses import dataclass

    import torch

    from workers.training import build_setup
    from workers.training.population import PopulationTrainer
    from workers.tune.population import MEMBERS
    from workers.tune.reporting import _Units
    from workers.tune.shared_prefix import train_members
    from workers.tune.space import trial_params

    @dataclass
    class Trial:  # what member_units reads of a Tune trial
        trial_id: str
        config: dict[str, Any]

    cpu = torch.device("cpu")
    setups = [build_setup(spec, trial_params(spec, c)) for c in configs]
    wall, cpu_s = independent_times

    def wired(run_spec: Any) -> dict[str, Any]:
        trial, units = Trial("b3", {MEMBERS: configs}), _Units()
        recorded: list[list[dict[str, float]]] = [[] for _ in configs]
        reports = 0

        def emit(result: dict[str, Any], checkpoint: bool) -> None:
            nonlocal reports
            reports += 1
            for unit, _, metrics, _ in units.fresh(run_spec, trial, result):
                recorded[int(unit.rsplit("-m", 1)[1])].append(dict(metrics))

        t0, c0 = time.perf_counter(), time.process_time()
        stats = train_members(run_spec, setups, cpu, emit)
        t1, c1 = time.perf_counter(), time.process_time()
        return {"steps": stats.steps, "independent_steps": stats.independent_steps,
                "ratio": stats.steps / stats.independent_steps, "wall_s": t1 - t0,
                "wall_ratio": (t1 - t0) / wall, "cpu_ratio": (c1 - c0) / cpu_s,
                "reports": reports, "max_diff": _max_diff(independent, recorded),
                "max_rel": _max_rel(independent, recorded),
                "gap_abs": _max_dev(independent, recorded, only=DIFFERENCES)}

    search = spec.search.model_copy(update={"exact_prefixes": True})
    exact = wired(spec.model_copy(update={"search": search}))
    default = wired(spec.model_copy(update={"search": search.model_copy(
        update={"exact_prefixes": False})}))
    c1 = time.process_time()
    batched = PopulationTrainer(setups, cpu)
    while not batched.done:
        batched.train_epoch()
    c2 = time.process_time()
    return {**exact, "batched_cpu_ratio": (c2 - c1) / cpu_s,
            "both_row_ratio": default["ratio"], "both_cpu_ratio": default["cpu_ratio"],
            "both_wall_ratio": default["wall_ratio"], "both_max_rel": default["max_rel"],
            "both_gap_abs": default["gap_abs"],
            "both_reports": default["reports"]}


def measure_spec_file(path: Path) -> dict[str, Any]:
    """A ready-made share_prefixes spec: its grid, independent vs the wired path."""
    import itertools

    import torch

    from search_spaces import load_spec_file
    from workers.training import Trainer, build_setup
    from workers.tune.space import trial_params

    spec = load_spec_file(path)
    axes = spec.grid_axes()
    configs = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    t0, c0 = time.perf_counter(), time.process_time()
    independent = []
    for config in configs:
        trainer = Trainer(build_setup(spec, trial_params(spec, config)), torch.device("cpu"))
        independent.append([trainer.train_epoch() for _ in range(spec.train.epochs)])
    t1, c1 = time.perf_counter(), time.process_time()
    wired = measure_wired(spec, configs, independent, (t1 - t0, c1 - c0))
    return {"name": path.name, "trials": len(configs), "independent_s": t1 - t0,
            "wired": wired}


def expected_ratio(starts: list[int], total: int) -> float:
    """(max f + Σ (T − f)) / (N·T) for fork steps f = min(start, T)."""
    forks = [min(s, total) for s in starts]
    return (max(forks) + sum(total - f for f in forks)) / (len(forks) * total)


def plot(results: list[tuple[str, dict[str, Any]]], out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tree, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.2),
                                          gridspec_kw={"width_ratios": [1.1, 1]})
    name, first = results[0]
    total = first["total_steps"]
    forks = sorted(first["starts"])
    ax_tree.plot([0, max(forks)], [0, 0], color="black", lw=3, label="trunk (shared)")
    for row, f in enumerate(forks, start=1):
        ax_tree.plot([f, f], [0, row], color="grey", lw=0.6, ls=":")
        ax_tree.plot([f, total], [row, row], color="tab:blue", lw=2,
                     label="branch (own steps)" if row == 1 else None)
    ax_tree.set_xlabel("optimizer step")
    ax_tree.set_ylabel("trial (by start step)")
    ax_tree.set_title(f"the plan: {name}", fontsize=9)
    ax_tree.legend(fontsize=7, loc="upper left")

    labels = [SHORT.get(n, n) for n, _ in results]
    x = range(len(results))
    ax_bar.bar([i - 0.27 for i in x], [r["ratio"] for _, r in results], width=0.27,
               label="optimizer steps, shared ÷ independent")
    ax_bar.bar([i for i in x], [r["cpu_ratio"] for _, r in results], width=0.27,
               label="CPU time, shared ÷ independent")
    ax_bar.bar([i + 0.27 for i in x], [r["wall_ratio"] for _, r in results], width=0.27,
               label="wall time, shared ÷ independent")
    ax_bar.axhline(GOAL_RATIO, color="tab:red", ls=":", label=f"goal ≤ {GOAL_RATIO:.0%}")
    ax_bar.set_xticks(list(x), labels, fontsize=8)
    ax_bar.set_xlabel("start steps (16 distinct, evenly spaced)")
    ax_bar.set_ylim(0, 1)
    ax_bar.set_title(f"B3: {N_TRIALS} trials with distinct start steps", fontsize=9)
    ax_bar.legend(fontsize=7)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "b3_prefix.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    repo = Path(__file__).resolve().parent.parent
    try:
        return path.resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(path)


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.monotonic()
    load_before = os.getloadavg()
    epochs = 4 if quick else SPEC["train"]["epochs"]
    total = epochs * STEPS_PER_EPOCH
    try:
        _setups(1, [{}])  # warm-up: imports, scikit-learn's loader
        from workers.training import Trainer

        Trainer(_setups(1, [{}])[0], torch.device("cpu")).train_epoch()
        results = [(name, measure_layout(epochs, sampled)) for name, sampled in layouts(total)]
        # The ready-made spec trains 16 × 1160 steps: full runs only (--quick stays short).
        study = None if quick else measure_spec_file(STUDY_SPEC)
    finally:
        torch.set_num_threads(threads)
    link = plot(results, Path(out_dir))
    rows = []
    for name, r in results:
        rows.append([name, r["total_steps"], r["independent_steps"], r["shared_steps"],
                     r["ratio"], expected_ratio(r["starts"], r["total_steps"]),
                     r["independent_s"], r["shared_s"], r["wall_ratio"], r["cpu_ratio"],
                     f"{r['evaluations']}/{r['independent_evaluations']}", r["max_diff"]])
    wired_rows = []
    for name, r in results:
        w = r["wired"]
        wired_rows.append([name, r["total_steps"], w["independent_steps"], w["steps"],
                           w["ratio"], w["cpu_ratio"], w["wall_ratio"], w["batched_cpu_ratio"],
                           w["both_row_ratio"], w["both_cpu_ratio"], w["both_max_rel"],
                           w["reports"], w["max_diff"]])
    if study is not None:
        w = study["wired"]
        wired_rows.append([f"{study['name']} ({study['trials']} trials, linear)",
                           w["independent_steps"] // study["trials"], w["independent_steps"],
                           w["steps"], w["ratio"], w["cpu_ratio"], w["wall_ratio"],
                           w["batched_cpu_ratio"], w["both_row_ratio"], w["both_cpu_ratio"],
                           w["both_max_rel"], w["reports"], w["max_diff"]])
    primary = results[0][1]
    # Judged on the product's default path (each prefix group one batched population) for
    # the uniform layout: its training CPU time, metrics within the population tolerance,
    # and the exact paths bit-identical.
    met = primary["wired"]["both_cpu_ratio"] <= GOAL_RATIO and all(
        r["max_diff"] <= GOAL_DIFF and r["wired"]["max_diff"] <= GOAL_DIFF
        and r["wired"]["both_max_rel"] <= GOAL_REL for _, r in results)
    meeting = [name for name, r in results if r["ratio"] <= GOAL_RATIO]
    n = N_TRIALS
    notes = [
        f"Each trial: digits, MLP [64], batch 128, SGD 0.1/0.9, {epochs} epochs = "
        f"{total} optimizer steps (T); the {n} trials differ only in reg_start_step "
        "(last row: 4 start steps × 4 λ). Same process, one thread, independent first, "
        "then shared.",
        f"Uniform over the whole run ({results[0][1]['starts'][:4]}…): the shared plan costs "
        f"{primary['ratio']:.0%} of the independent steps. In steps (floating-point work) "
        f"≤ {GOAL_RATIO:.0%} cannot be reached there: a trial starting at f still trains "
        f"T − f steps of its own, so evenly spread starts leave (N+1)/(2N) + (N−1)/N² = "
        f"{(n + 1) / (2 * n) + (n - 1) / n ** 2:.0%} for N = {n} (→ 50% as N grows).",
        "In general shared/independent = mean(1 − f/T) + max f/(N·T): in steps, the goal "
        f"needs the mean start step at ≥ ~2/3 of the run for N = {n}. Layouts meeting it "
        "in steps here: " + ("; ".join(meeting) if meeting else "none") + ".",
        f"How the goal is judged: compute = the CPU time of training, on the path the "
        f"service runs by default (search.share_prefixes without exact_prefixes), for the "
        f"uniform layout: {primary['wired']['both_cpu_ratio']:.0%} of the independent CPU "
        f"time (goal ≤ {GOAL_RATIO:.0%}), every recorded metric within rtol "
        f"{GOAL_REL:g} of the independent runs (max "
        f"{primary['wired']['both_max_rel']:.1e}; loss_gap = val_loss − train_loss, which "
        "nears 0, is held to its two terms: its own largest absolute deviation on the "
        f"default path is {max(r['wired']['both_gap_abs'] for _, r in results):.1e} over "
        "the rows), and the exact paths bit-identical. That "
        "saving is sharing and batching together, and for this layout it is mostly the "
        "batching: the same members batched without sharing take "
        f"{primary['wired']['batched_cpu_ratio']:.0%}. Sharing adds more the later the "
        "start steps (other rows); sharing alone, exact, is the steps column.",
        "Wall time saves less than steps: every trial is still evaluated on the full "
        "train and validation splits every epoch once it has forked (evaluations "
        "shared/independent in the table; an evaluation costs about as much as a few "
        "steps here), and each fork deep-copies the trainer (in memory, sharing the data).",
        "Max |Δ| is over every metric of every epoch of every trial, shared vs independent; "
        "0 means bit-identical.",
        "Wired path (second table): search.share_prefixes on a population of "
        f"{n} — workers.tune.shared_prefix.train_members, the body of the population "
        "trainable with share_prefixes, run in this process; each result it emits goes "
        "through the driver's own per-member dedup (reporting._Units via member_units) "
        "and max |Δ| compares what that would record, every member and epoch, with the "
        "independent runs of the first table. Left out: Ray's transport of the reports "
        "and the MLflow/store writes (the real-driver test, "
        "tests/workers/tune/test_driver_shared_prefix.py, covers those). Its step "
        "ratios equal the library's: the wiring trains nothing extra.",
        "The 'batched, no sharing' column is the same members as one batched population "
        "(PopulationTrainer, B2's path), CPU time against the same independent runs: "
        "batching runs every step of every member but several times faster per step, "
        "so for these small models on the CPU it costs less than sharing unbatched: "
        f"{min(r[7] for r in wired_rows):.0%}–{max(r[7] for r in wired_rows):.0%} of the "
        f"independent CPU time here, against {min(r[5] for r in wired_rows):.0%}–"
        f"{max(r[5] for r in wired_rows):.0%} for the shared path. Sharing saves "
        "floating-point work, batching saves per-step overhead. The default path "
        "combines them (each prefix group one "
        "workers.training.population_prefix.SharedPrefixPopulation: one batched trunk "
        "row, each member forking a row of its own at its start step): "
        f"{min(r[9] for r in wired_rows):.0%}–{max(r[9] for r in wired_rows):.0%} of the "
        "independent CPU time, for the same member-steps as the exact path, with metrics "
        "within the population's tolerance of the independent runs (max rel. dev. "
        "column). " + (
            f"{study['name']}: the ready-made spec, trained independently "
            f"({study['independent_s']:.1f} s) and through the wired path." if study else
            "The ready-made study spec runs in full mode only."),
        "The machine is shared with other sessions: wall times are noisy (load average "
        f"{load_before[0]:.1f} at the start; independent runs first, then shared, so a "
        "change in load between them skews the wall ratio). The process's CPU time is "
        "less sensitive to that; the step counts not at all. "
        f"B3 ran in {time.monotonic() - started:.0f} s.",
    ]
    return {
        "id": BENCH_ID,
        "title": "Shared prefixes: trials that differ only after their start step",
        "command": _command(quick),
        "tables": [{
            "caption": f"{n} trials with distinct start steps: independent vs shared prefix",
            "columns": ["start steps", "T", "independent steps", "shared steps",
                        "steps ratio", "formula", "independent s", "shared s", "wall ratio",
                        "CPU-time ratio",
                        "evaluations", "max |Δ| metric"],
            "rows": rows,
        }, {
            "caption": "The wired path: a population with search.share_prefixes "
                       "(train_members, reported through the driver's dedup), exact "
                       "(exact_prefixes: true) and as the service runs it by default, vs "
                       "the same trials trained independently",
            "columns": ["start steps", "T", "independent steps", "exact: steps",
                        "exact: steps ratio", "exact: CPU-time ratio", "exact: wall ratio",
                        "batched, no sharing: CPU-time ratio",
                        "default (batched groups): member-steps ratio",
                        "default: CPU-time ratio", "default: max rel. dev.",
                        "exact: reports", "exact: max |Δ| recorded"],
            "rows": wired_rows,
        }],
        "plots": [link],
        "notes": notes,
        "goal": f"{n} trials with distinct reg_start_step values cost ≤ {GOAL_RATIO:.0%} of the "
                "compute of training them independently (start steps spread uniformly over "
                "the run), with the same final metrics",
        "met": bool(met),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plots", type=Path,
                        default=Path(__file__).resolve().parent / "plots")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.plots), indent=1, default=str))
