"""resolve_under_root against hostile paths: nothing outside the data root is ever returned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.training.tasks.table import TABLE_SUFFIXES, resolve_under_root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data root with good files and traps, and a secret directory beside it."""
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "good.csv").write_text("a,b\n1,2\n")
    (root / "sub" / "nested.parquet").write_bytes(b"PAR1")
    (root / "notes.txt").write_text("x")
    (root / "dir.csv").mkdir()
    (outside / "secret.csv").write_text("s\n1\n")
    os.symlink(outside / "secret.csv", root / "escape.csv")  # file link out of the root
    os.symlink(outside, root / "outdir")  # directory link out of the root
    os.symlink(root / "notes.txt", root / "renamed.csv")  # in the root, wrong real suffix
    os.symlink(root / "good.csv", root / "alias.csv")  # in the root: fine
    os.symlink(root / "loop1.csv", root / "loop2.csv")
    os.symlink(root / "loop2.csv", root / "loop1.csv")
    return root, outside


def test_accepts_relative_paths_inside(tree) -> None:
    root, _ = tree
    assert resolve_under_root(root, "good.csv") == (root / "good.csv").resolve()
    assert resolve_under_root(str(root), "sub/nested.parquet") == (root / "sub" / "nested.parquet").resolve()
    assert resolve_under_root(root, "./sub//nested.parquet").name == "nested.parquet"
    assert resolve_under_root(root, "alias.csv") == (root / "good.csv").resolve()
    assert resolve_under_root(root, "GOOD.CSV".lower()).suffix in TABLE_SUFFIXES


HOSTILE = {
    "absolute": "/etc/passwd",
    "absolute csv": "/tmp/x.csv",
    "dotdot": "../outside/secret.csv",
    "dotdot inside": "sub/../good.csv",
    "deep dotdot": "sub/../../outside/secret.csv",
    "file url": "file:///etc/passwd",
    "file scheme": "file:good.csv",
    "http": "http://example.com/x.csv",
    "s3": "s3://bucket/x.csv",
    "embedded url": "sub/http://x.csv",
    "drive": "C:/data/x.csv",
    "backslash dotdot": "..\\outside\\secret.csv",
    "backslash": "sub\\nested.parquet",
    "home": "~/x.csv",
    "nul": "good.csv\x00.txt",
    "empty": "",
    "blank": "   ",
    "other extension": "notes.txt",
    "double extension": "good.csv.exe",
    "no extension": "good",
    "missing": "missing.csv",
    "directory": "dir.csv",
    "symlink out": "escape.csv",
    "through dir symlink": "outdir/secret.csv",
    "symlink to txt": "renamed.csv",
    "symlink loop": "loop1.csv",
}


@pytest.mark.parametrize("path", list(HOSTILE.values()), ids=list(HOSTILE))
def test_refuses_hostile_paths(tree, path: str) -> None:
    root, _ = tree
    with pytest.raises(ValueError):
        resolve_under_root(root, path)


def test_refuses_non_string_and_missing_root(tree) -> None:
    root, _ = tree
    with pytest.raises(ValueError, match="REGTUNE_DATA_ROOT"):
        resolve_under_root(None, "good.csv")
    with pytest.raises(ValueError):
        resolve_under_root(root, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data root does not exist"):
        resolve_under_root(root / "nope", "good.csv")


def test_errors_do_not_reveal_server_paths(tree) -> None:
    root, outside = tree
    with pytest.raises(ValueError) as info:
        resolve_under_root(root, "escape.csv")
    assert str(outside) not in str(info.value) and str(root) not in str(info.value)


PIECES = ["..", ".", "", "sub", "good.csv", "nested.parquet", "escape.csv", "outdir",
          "secret.csv", "~", "file:", "http:", "//", "\\", "C:", "notes.txt", "dir.csv",
          "renamed.csv", "%2e%2e", "\x00", " "]


def _check(root: Path, outside: Path, user_path: str) -> None:
    try:
        got = resolve_under_root(root, user_path)
    except ValueError:
        return
    real_root = root.resolve()
    assert got.is_relative_to(real_root) and not got.is_relative_to(outside.resolve())
    assert got.is_file() and got.suffix in TABLE_SUFFIXES
    assert not os.path.isabs(user_path) and ".." not in user_path.split("/")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6), st.booleans())
def test_composed_paths_never_escape(tree, parts, leading_slash) -> None:
    root, outside = tree
    _check(root, outside, ("/" if leading_slash else "") + "/".join(parts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40))
def test_arbitrary_text_never_escapes(tree, text) -> None:
    root, outside = tree
    _check(root, outside, text)
