"""Rerun the seed studies' ready-made specs and write docs/results.md with their figures.

    .venv/bin/python -m bench.studies            # all three, ~minutes on 2 CPUs
    .venv/bin/python -m bench.studies --only 004

Each spec runs through the real driver (Ray Tune, the job store, MLflow) in a
temporary data directory against a local Ray started here. The document is
written from what those runs recorded, nothing else: every table row is a trial,
every curve is an MLflow metric history.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IMAGES = DOCS / "images"

STUDIES = {
    "002": ("study-002-losses-digits.yaml", "loss",
            ["val_accuracy", "val_precision", "val_recall", "val_f1", "val_ece"],
            "Study 002: L1 vs cross-entropy vs focal (γ = 0.5, 2) on digits"),
    "000": ("study-000-smooth-l1-midtraining.yaml", "reg_start_step",
            ["val_rmse", "val_mae", "val_r2", "weight_l2_rel", "weight_l1_rel"],
            "Study 000: Smooth-L1 switched on at step 0, mid-training or late"),
    "004": ("study-004-lambda-grid.yaml", "reg_lambda",
            ["val_accuracy", "val_f1", "weight_sparsity", "weight_l1", "weight_l2"],
            "Study 004: a log-scale λ grid over L2, elastic net and L1"),
}


def _label(spec: Any, trial: Any) -> str:
    return ", ".join(f"{k}={trial.config[k]:g}" if isinstance(trial.config[k], float)
                     else f"{k}={trial.config[k]}" for k in sorted(spec.searched()))


def _table(spec: Any, trials: list[Any], metrics: list[str]) -> list[str]:
    params = sorted(spec.searched())
    lines = ["| " + " | ".join(params + metrics + ["epochs"]) + " |",
             "|" + "---|" * (len(params) + len(metrics) + 1)]
    for trial in sorted(trials, key=lambda t: t.index):
        cells = [f"{trial.config[p]:g}" if isinstance(trial.config[p], float)
                 else str(trial.config[p]) for p in params]
        cells += [f"{trial.metrics.get(m, float('nan')):.4f}" for m in metrics]
        lines.append("| " + " | ".join(cells + [str(trial.iteration)]) + " |")
    return lines


def _curves(runner: Any, job: Any, spec: Any, trials: list[Any], key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = spec.objective.metric
    history = runner.history(job, metric)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for trial in sorted(trials, key=lambda t: t.index):
        points = sorted(history.get(trial.trial_id, []))
        axes[0].plot([p[0] for p in points], [p[1] for p in points], label=_label(spec, trial))
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel(metric)
    axes[0].set_title(f"{metric} per epoch")
    axes[0].legend(fontsize=7)
    by_key: dict[Any, list[Any]] = {}
    for trial in trials:
        by_key.setdefault(str(trial.config[key]), []).append(trial.objective)
    labels = sorted(by_key, key=lambda k: (len(k), k))
    axes[1].bar(labels, [max(v) if spec.objective.direction == "max" else min(v)
                         for v in (by_key[k] for k in labels)])
    axes[1].set_xlabel(key)
    axes[1].set_ylabel(f"best final {metric}")
    axes[1].set_title(f"final {metric} by {key}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def run_study(runner: Any, key: str) -> list[str]:
    from search_spaces import load_spec_file

    filename, group, metrics, title = STUDIES[key]
    spec_path = ROOT / "search_spaces" / filename
    spec = load_spec_file(spec_path)
    started = dt.datetime.now()
    job = runner.run(runner.submit(spec.model_dump(mode="json")))
    seconds = (dt.datetime.now() - started).total_seconds()
    trials = runner.trials(job.id)
    image = IMAGES / f"results-{key}.png"
    _curves(runner, job, spec, trials, group, image)
    best = job.best or {}
    config = best.get("config", {})
    chosen = ", ".join(f"{k}={config.get(k)}" for k in sorted(spec.searched()))
    return [f"## {title}", "",
            f"Spec: `search_spaces/{filename}` ({len(trials)} trials, {spec.train.epochs} epochs, "
            f"{spec.search.algorithm}); wall time {seconds:.0f} s here.", "",
            f"Best {spec.objective.metric}: **{best.get('metric', float('nan')):.4f}** with "
            f"{chosen}.",
            "", *_table(spec, trials, metrics), "", f"![{title}](images/{image.name})", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies")
    parser.add_argument("--only", default=",".join(STUDIES), help="e.g. 000,004")
    args = parser.parse_args(argv)
    import os

    import ray

    with tempfile.TemporaryDirectory(prefix="regtune-studies-") as tmp:
        os.environ["REGTUNE_DATA_DIR"] = tmp
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("REGTUNE_DATABASE_URL", None)
        from service.settings import get_settings
        from service.store import open_store
        from workers.tune.local import LocalRunner

        get_settings.cache_clear()
        settings = get_settings()
        IMAGES.mkdir(parents=True, exist_ok=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        runner = LocalRunner(open_store(settings.database), settings)
        import torch

        sections = [
            "# Results of the seed studies' specs", "",
            "Produced by `.venv/bin/python -m bench.studies` on "
            f"{dt.date.today().isoformat()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
            f"Python {sys.version.split()[0]}, torch {torch.__version__}, ray {ray.__version__}. "
            "Each table row is one trial's last epoch; curves are the MLflow metric histories.",
            "",
        ]
        for key in args.only.split(","):
            sections += run_study(runner, key.strip())
        ray.shutdown()
    (DOCS / "results.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {DOCS / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
