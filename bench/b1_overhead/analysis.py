"""B1's numbers from the compute log: η, gaps between epochs and the rest of the
slot-time per mode, the service's phases from its event log, and the timeline plot."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.b1_overhead.workload import SLOTS
from bench.common import efficiency, save_figure


def analyse(run: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute, per-epoch gaps and the rest of the slot-time for one mode's window."""
    mine = [r for r in records if run["start"] - 1 <= r["t0"] <= run["end"]]
    compute = sum(r["dt"] for r in mine)
    trials: dict[tuple[int, int, float], list[dict[str, Any]]] = defaultdict(list)
    for r in mine:
        trials[(r["pid"], r["trainer"], r["lam"])].append(r)
    gaps = 0.0
    for epochs in trials.values():
        epochs.sort(key=lambda r: r["t0"])
        for a, b in zip(epochs, epochs[1:]):
            gaps += max(0.0, b["t0"] - (a["t0"] + a["dt"]))
    slot_time = SLOTS * run["wall"]
    steady = (max(r["t0"] + r["dt"] for r in mine) - min(r["t0"] for r in mine)) if mine else 0.0
    return {"compute": compute, "epochs": len(mine), "trials_seen": len(trials),
            "steady": steady,
            "eta_steady": efficiency(compute, SLOTS, steady) if steady > 0 else float("nan"),
            "gaps": gaps, "rest": max(0.0, slot_time - compute - gaps),
            "epoch_ms": 1e3 * compute / len(mine) if mine else float("nan"),
            "eta": efficiency(compute, SLOTS, run["wall"]) if mine else float("nan"),
            "lams": sorted({r["lam"] for r in mine})}


def service_phases(run: dict[str, Any], records: list[dict[str, Any]]) -> list[list[Any]]:
    """Where the service's wall time goes, from its own event log and the compute log."""
    def at(kind: str, last: bool = False) -> float | None:
        times = [datetime.fromisoformat(e["created_at"]).timestamp()
                 for e in run["events"] if e["kind"] == kind]
        return (max(times) if last else min(times)) if times else None

    mine = sorted((r for r in records if run["start"] - 1 <= r["t0"] <= run["end"]),
                  key=lambda r: r["t0"])
    first_epoch = mine[0]["t0"] if mine else None
    last_epoch_end = max((r["t0"] + r["dt"] for r in mine), default=None)
    marks = [("POST /v1/jobs sent", run["start"]), ("job_queued", at("job_queued")),
             ("job_launched (Ray job submitted)", at("job_launched")),
             ("job_started (driver up, MLflow parent run made)", at("job_started")),
             ("first trial_started", at("trial_started")),
             ("first epoch begins in a trial", first_epoch),
             ("last epoch ends", last_epoch_end),
             ("last trial_completed", at("trial_completed", last=True)),
             ("job_succeeded", at("job_succeeded")),
             ("/best answered", run["end"])]
    rows, previous = [], None
    for label, stamp in marks:
        if stamp is None:
            rows.append([label, None, None])
            continue
        rows.append([label, stamp - run["start"],
                     None if previous is None else stamp - previous])
        previous = stamp
    return rows


def _trial_startup(run: dict[str, Any], records: list[dict[str, Any]]) -> float | None:
    """Mean seconds from a trial_started event to that trial's first epoch (service)."""
    starts = sorted(datetime.fromisoformat(e["created_at"]).timestamp()
                    for e in run.get("events", []) if e["kind"] == "trial_started")
    firsts = sorted(min(r["t0"] for r in group) for group in _groups(run, records))
    if not starts or len(starts) != len(firsts):
        return None
    return statistics.mean(f - s for s, f in zip(starts, firsts))


def _groups(run: dict[str, Any], records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        if run["start"] - 1 <= r["t0"] <= run["end"]:
            groups[(r["pid"], r["trainer"], r["lam"])].append(r)
    return list(groups.values())


def plot_timeline(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], out_dir: Path
                  ) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.1 + 0.9 * len(runs)), sharex=True,
                             squeeze=False)
    for ax, (label, run, records) in zip(axes[:, 0], runs):
        pids = sorted({r["pid"] for r in records if run["start"] - 1 <= r["t0"] <= run["end"]})
        lane = {pid: i for i, pid in enumerate(pids)}
        for r in records:
            if run["start"] - 1 <= r["t0"] <= run["end"]:
                ax.broken_barh([(r["t0"] - run["start"], r["dt"])], (lane[r["pid"]], 0.8),
                               color=f"C{lane[r['pid']] % 10}")
        ax.axvline(run["wall"], color="k", lw=1)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since start (bars: Trainer.train_epoch, one lane per "
                           "process; black line: end)")
    fig.suptitle("B1: when the trial processes were training")
    return save_figure(fig, out_dir, "b1_timeline.png")
