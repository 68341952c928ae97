"""What the benchmarks share: the result shape, the markdown writer, machine facts,
subprocess helpers, and the in-trial compute timer.

A benchmark module exposes ``run(quick: bool, out_dir: Path) -> dict`` returning::

    {"id": "B1", "title": str, "command": str,        # the exact command to reproduce
     "tables": [{"caption": str, "columns": [...], "rows": [[...], ...]}],
     "plots": [str],                                   # PNGs under bench/plots/
     "notes": [str], "goal": str, "met": bool | None,
     "met_detail": str}                                # optional: the verdict per reading

``met_detail`` is for a goal judged more than one way (B2: the kernel rows and the
end-to-end rows); the summary and the section's goal line show it beside met.

``out_dir`` is where a module writes its PNGs (``bench/plots`` by default);
scratch data (service data dirs, databases) goes to temporary directories.
Plot paths may be given relative to the repository root (``bench/plots/x.png``)
or to ``bench/plots`` (``x.png``); the writer links both correctly.

This module imports neither torch nor ray nor the service, so the harness and its
smoke tests stay fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
PLOTS = REPO / "bench" / "plots"
PY = sys.executable

RESULT_KEYS = ("id", "title", "command", "tables", "plots", "notes", "goal", "met")


# --- numbers ------------------------------------------------------------------------


def efficiency(compute_s: float, slots: int, wall_s: float) -> float:
    """η = Σ trial compute ÷ (slots × wall): the share of the slots' time spent training.

    1.0 means every slot trained for the whole wall time; 0 when nothing was timed.
    """
    if slots <= 0:
        raise ValueError(f"slots must be positive, got {slots}")
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    if compute_s < 0:
        raise ValueError(f"compute time cannot be negative, got {compute_s}")
    return compute_s / (slots * wall_s)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated like numpy's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    return {"p50": percentile(seconds, 50) * 1e3, "p90": percentile(seconds, 90) * 1e3,
            "p99": percentile(seconds, 99) * 1e3,
            "max": (max(seconds) * 1e3) if seconds else float("nan")}


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant figures, the rest as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0:
            return "0"
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - magnitude)
        return f"{value:.{decimals}f}"
    return str(value)


# --- the result shape and the markdown writer -----------------------------------------


def check_result(result: dict[str, Any]) -> dict[str, Any]:
    """Raise ValueError unless ``result`` has the benchmark result shape."""
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"benchmark result lacks {missing}")
    for table in result["tables"]:
        for key in ("caption", "columns", "rows"):
            if key not in table:
                raise ValueError(f"table lacks {key!r}")
        for row in table["rows"]:
            if len(row) != len(table["columns"]):
                raise ValueError(f"row {row} does not match columns {table['columns']}")
    if result["met"] not in (True, False, None):
        raise ValueError("met must be True, False or None")
    if not isinstance(result.get("met_detail", ""), str):
        raise ValueError("met_detail must be a string")
    return result


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def render_table(table: dict[str, Any]) -> str:
    columns = [_escape(str(c)) for c in table["columns"]]
    lines = [f"**{table['caption']}**", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in table["rows"]:
        lines.append("| " + " | ".join(_escape(fmt(c)) for c in row) + " |")
    return "\n".join(lines)


def plot_link(path: str, base: Path = REPO) -> str:
    """The link to a plot from a markdown file in ``base`` (the repository root by default).

    A module may name its plot absolutely, relative to the repository root
    (``bench/plots/x.png``) or relative to ``bench/plots`` (``x.png``).
    """
    p = Path(path)
    if not p.is_absolute():
        p = REPO / p if p.parts and p.parts[0] == "bench" else PLOTS / p
    return Path(os.path.relpath(p, base)).as_posix()


def render_section(result: dict[str, Any], base: Path = REPO) -> str:
    met = result["met"]
    verdict = {True: "**met**", False: "**not met**", None: "not judged"}[met]
    if result.get("met_detail"):
        verdict += f" ({result['met_detail']})"
    out = [f"## {result['id']}: {result['title']}", "",
           f"Command: `{result['command']}`", "",
           f"Goal: {result['goal']} — {verdict}", ""]
    for table in result["tables"]:
        out += [render_table(table), ""]
    for plot in result["plots"]:
        link = plot_link(plot, base)
        out += [f"![{Path(link).stem}]({link})", ""]
    if result["notes"]:
        out += ["Notes:", ""]
        out += [f"- {note}" for note in result["notes"]]
        out.append("")
    return "\n".join(out)


def render_markdown(results: Iterable[dict[str, Any]], machine: dict[str, Any], command: str,
                    elapsed_s: float | None = None, base: Path = REPO) -> str:
    """The whole document; plot links are relative to ``base``, the file's directory."""
    results = list(results)
    readme = Path(os.path.relpath(REPO / "bench" / "README.md", base)).as_posix()
    when = machine.get("date", "")
    took = f", took {elapsed_s / 60:.1f} min" if elapsed_s is not None else ""
    out = ["# Benchmarks", "",
           f"Generated by `{command}` on {when}{took}. Every figure below was produced by "
           "that one command; each ratio compares runs made side by side in that run. "
           f"Reproduce with the command, see [bench/README.md]({readme}).", "",
           "## Machine", "", "| | |", "| --- | --- |"]
    for key, value in machine.items():
        out.append(f"| {key} | {_escape(str(value))} |")
    out.append("")
    if results:
        out += ["## Summary", "", "| benchmark | goal | met |", "| --- | --- | --- |"]
        for r in results:
            met = {True: "yes", False: "no", None: "—"}[r["met"]]
            if r.get("met_detail"):
                met += f" ({_escape(r['met_detail'])})"
            out.append(f"| {r['id']} {_escape(r['title'])} | {_escape(r['goal'])} | {met} |")
        out.append("")
    for r in results:
        out.append(render_section(r, base))
    return "\n".join(out).rstrip() + "\n"


# --- the machine ----------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "workers",
                                "search_spaces"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head + (" (service/workers modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    load = load_average()
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cores (nproc)": str(os.cpu_count()),
        "memory": f"{memory_gib():.1f} GiB",
        "CPU": cpu_model(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "mlflow": _version("mlflow"),
        "git commit": git_commit(),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


# --- subprocesses ---------------------------------------------------------------------


def repo_env(extra: dict[str, str] | None = None, *, prepend_path: str | None = None
             ) -> dict[str, str]:
    """The environment for a subprocess that imports the repo (and maybe a hook dir)."""
    env = dict(os.environ)
    paths = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if prepend_path:
        paths.insert(0, prepend_path)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None,
              log: Path | None = None) -> float:
    """Poll ``url`` until it answers 200; returns the seconds it took."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode}: {tail}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    """Stop a process we started (by its pid only), escalating to SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- background training load -------------------------------------------------------------

_BUSY = """
import sys, time, torch
torch.set_num_threads(1)
from search_spaces import SearchSpec
from workers.training import Trainer, build_setup
spec = SearchSpec.model_validate({"name": "busy", "task": "digits",
    "model": {"name": "mlp", "hidden_sizes": [256, 256]}, "train": {"epochs": 1000},
    "search": {"algorithm": "random", "num_trials": 1, "scheduler": "none"}})
trainer = Trainer(build_setup(spec, spec.resolve_params({})), "cpu")
print("busy", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    if trainer.done:
        trainer = Trainer(build_setup(spec, spec.resolve_params({})), "cpu")
    trainer.train_epoch()
"""


@contextlib.contextmanager
def busy_trainers(n: int, max_seconds: float = 900, nice: int = 0
                  ) -> Iterator[list[subprocess.Popen]]:
    """``n`` processes training a digits MLP in a loop (one thread each) until exit."""
    env = repo_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    niceness = (lambda: os.nice(nice)) if nice else None
    procs = [subprocess.Popen([PY, "-c", _BUSY, str(max_seconds)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              preexec_fn=niceness)
             for _ in range(n)]
    try:
        for p in procs:  # wait until each is past its imports and training
            line = p.stdout.readline() if p.stdout else ""
            if "busy" not in line:
                raise RuntimeError("a background trainer did not start")
        yield procs
    finally:
        for p in procs:
            stop_process(p, signal.SIGTERM, timeout=10)


# --- the in-trial compute timer ---------------------------------------------------------------
#
# Trial compute is measured inside the trial process, in every mode, the same way: the
# time spent in ``Trainer.train_epoch`` (forward, backward, optimizer steps and the
# per-epoch evaluation). Everything else a trial process does (start, imports, data
# loading, checkpoints, reporting, waiting for the driver) is overhead.
#
# The service's trials run ``workers.tune.trainable.train_trial`` in Ray worker
# processes the benchmark does not start; a ``sitecustomize`` module on PYTHONPATH
# (inherited by the Ray head, its raylet and so every worker) wraps ``train_epoch``
# when ``workers.training.trainer`` is imported, and appends one JSON line per epoch
# to the file named by REGTUNE_BENCH_COMPUTE_LOG. The code under test is not edited.

COMPUTE_LOG_ENV = "REGTUNE_BENCH_COMPUTE_LOG"

_HOOK = r'''
import os, sys
if os.environ.get("REGTUNE_BENCH_COMPUTE_LOG"):
    import importlib.abc, importlib.machinery, json, time

    def _patch(module):
        trainer_cls = module.Trainer
        inner = trainer_cls.train_epoch
        path = os.environ["REGTUNE_BENCH_COMPUTE_LOG"]

        def train_epoch(self):
            wall0 = time.time()
            start = time.perf_counter()
            out = inner(self)
            dt = time.perf_counter() - start
            line = json.dumps({"pid": os.getpid(), "trainer": id(self), "epoch": self.epoch,
                               "lam": float(self.reg_lambda), "t0": wall0, "dt": dt}) + "\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            return out

        trainer_cls.train_epoch = train_epoch

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "workers.training.trainer":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            loader_exec = spec.loader.exec_module

            def exec_module(module):
                loader_exec(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
'''


def install_compute_hook(directory: Path) -> Path:
    """Write the ``sitecustomize`` hook into ``directory``; put it first on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK)
    return directory


def read_compute_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line (never seen: lines are written with one O_APPEND write)
    return out


def scratch_dir(prefix: str) -> Path:
    """A short temporary directory (Ray's socket paths must stay under ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"rt-{prefix}-", dir="/tmp"))


KEEP_ENV = "REGTUNE_BENCH_KEEP"


def run_in_scratch(prefix: str, body: Any, *args: Any) -> Any:
    """``body(*args, scratch)`` in a fresh scratch directory, removed afterwards.

    A B1 run leaves ~0.5 GB there (checkpoints, Ray's session logs). The directory
    is kept when the body raises, or when REGTUNE_BENCH_KEEP is set, and its path
    is printed.
    """
    import shutil

    path = scratch_dir(prefix)
    ok = False
    try:
        result = body(*args, path)
        ok = True
        return result
    finally:
        if ok and not os.environ.get(KEEP_ENV):
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"[bench]   kept {path}", file=sys.stderr, flush=True)


def save_figure(fig: Any, out_dir: Path, name: str) -> str:
    """Save a matplotlib figure as ``out_dir/name``; returns the link for the result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def command_for(bench_id: str, quick: bool) -> str:
    return f"python -m bench {'--quick ' if quick else ''}--only {bench_id}"
