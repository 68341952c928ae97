"""regtune's benchmarks (issue 7): ``python -m bench [--quick] [--only B1,B5]``.

Each module ``bench/bN_*.py`` exposes ``run(quick: bool, out_dir: Path) -> dict``
(see :mod:`bench.common` for the result shape); ``python -m bench`` runs them in
order and writes BENCHMARKS.md from what they return, and nothing else.
"""
