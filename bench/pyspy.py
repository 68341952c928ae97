"""py-spy's raw (collapsed) stacks, read one way for every benchmark that profiles.

Each line of ``py-spy record -f raw`` is ``frame;frame;...;frame COUNT``, frames
named relative to their sys.path entry ("execute (sqlalchemy/engine/base.py:1419)").
A sample goes to the first category (name, needles) any of whose needles occurs on
its stack, so categories are listed in priority order; its "own frame" is the
innermost frame matching ``own`` (this project's code), line numbers dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

Categories = Sequence[tuple[str, Sequence[str]]]


def read_collapsed(path: Path, categories: Categories, own: str = r"\((workers|service|search_spaces)/",
                   top: int = 8) -> dict[str, Any]:
    """{"total": samples, "categories": {name: samples}, "own_frames": [(frame, samples)]};
    empty if py-spy wrote nothing."""
    if not path.exists():
        return {}
    by_cat: Counter[str] = Counter()
    mine: Counter[str] = Counter()
    total = 0
    pattern = re.compile(own)
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        if not stack.strip():
            by_cat["no Python frame (native code)"] += count
            continue
        for name, needles in categories:
            if any(n in stack for n in needles):
                by_cat[name] += count
                break
        else:
            by_cat["other"] += count
        for frame in reversed(stack.split(";")):
            if pattern.search(frame):
                mine[re.sub(r":\d+\)$", ")", frame)] += count
                break
    return {"total": total, "categories": dict(by_cat), "own_frames": mine.most_common(top)}


def shares(profile: dict[str, Any], key: str) -> list[list[Any]]:
    """[[name, % of samples], ...], largest first, for a table."""
    total = profile.get("total") or 0
    if not total:
        return []
    items = profile[key].items() if isinstance(profile[key], dict) else profile[key]
    return [[name, 100 * n / total] for name, n in sorted(items, key=lambda x: -x[1])]
