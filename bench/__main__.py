"""``python -m bench [--quick] [--only B1,B5] [--output BENCHMARKS.md]``.

Runs the benchmarks in order, each in turn (they share two cores), and writes
BENCHMARKS.md from the results they return: machine facts first, then one
section per benchmark. A benchmark that fails gets a section saying so, and the
command exits non-zero; one whose module is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

from bench.common import (PLOTS, REPO, check_result, load_average, machine_info,
                          render_markdown)

#: Run order. B2 and B3 are written separately; they run when their module exists.
BENCHMARKS: dict[str, str] = {
    "B1": "bench.b1_overhead",
    "B2": "bench.b2_population",
    "B3": "bench.b3_prefix",
    "B4": "bench.b4_sample_efficiency",
    "B5": "bench.b5_api_load",
    "B6": "bench.b6_tracking",
    "B7": "bench.b7_gpu",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="regtune's benchmarks (issue 7). Runs them in order and writes "
                    "BENCHMARKS.md. Full run: under 20 minutes on 2 cores; --quick: under 2.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller versions of every benchmark (for development and CI)")
    parser.add_argument("--only", default="",
                        help="comma-separated ids to run, e.g. B1,B5 (default: all)")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md",
                        help="the markdown file to write (default: BENCHMARKS.md)")
    parser.add_argument("--plots", type=Path, default=None,
                        help="where PNG plots go (default: bench/plots for BENCHMARKS.md, "
                             "else OUTPUT-plots/ beside the output file)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    args.selected = [b for b in BENCHMARKS if not wanted or b in wanted]
    args.output = args.output.resolve()
    if args.plots is None:  # a side run must not overwrite the plots BENCHMARKS.md shows
        default = args.output == (REPO / "BENCHMARKS.md").resolve()
        args.plots = PLOTS if default else args.output.parent / f"{args.output.stem}-plots"
    return args


def load_module(module_name: str):
    """The module, or None if it does not exist (another helper's, not written yet)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def failed_result(bench_id: str, command: str, error: str) -> dict:
    title = f"{BENCHMARKS[bench_id]} failed"
    return {"id": bench_id, "title": title, "command": command, "tables": [], "plots": [],
            "notes": [f"the benchmark raised: {error}"], "goal": "—", "met": False}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for bench_id, module in BENCHMARKS.items():
            print(f"{bench_id}  {module}")
        return 0
    command = "python -m bench" + ("".join(f" {shlex.quote(a)}" for a in (argv if argv is not None
                                                                          else sys.argv[1:])))
    machine = machine_info()
    started = time.monotonic()
    results: list[dict] = []
    skipped: list[str] = []
    failed = False
    for bench_id in args.selected:
        module_name = BENCHMARKS[bench_id]
        try:
            module = load_module(module_name)
        except Exception:  # noqa: BLE001 - a broken module is reported, the rest still run
            failed = True
            results.append(failed_result(bench_id, command, traceback.format_exc(limit=3)))
            continue
        if module is None:
            skipped.append(f"{bench_id} ({module_name} is not there)")
            print(f"[bench] {bench_id}: skipped, {module_name} does not exist", file=sys.stderr)
            continue
        print(f"[bench] {bench_id}: running ({'quick' if args.quick else 'full'})",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            result = check_result(module.run(args.quick, args.plots))
        except Exception as exc:  # noqa: BLE001
            failed = True
            traceback.print_exc()
            result = failed_result(bench_id, command, f"{type(exc).__name__}: {exc}")
        took = time.monotonic() - t0
        result["notes"] = list(result["notes"]) + [f"this benchmark took {took:.0f} s"]
        print(f"[bench] {bench_id}: done in {took:.0f} s, goal met: {result['met']}",
              file=sys.stderr, flush=True)
        results.append(result)
    elapsed = time.monotonic() - started
    machine["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in load_average())
    machine["mode"] = "quick (--quick)" if args.quick else "full"
    if skipped:
        machine["skipped"] = "; ".join(skipped)
    args.output.write_text(render_markdown(results, machine, command, elapsed,
                                           base=args.output.parent))
    print(f"[bench] wrote {args.output} ({elapsed:.0f} s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
