"""docker-compose.yml as Compose sees it, without Docker: YAML (anchors and merge keys)
plus Compose's variable interpolation, so tests can compare resolved values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
#: For several hosts: the head host's override and the GPU hosts' worker.
MULTIHOST_FILE = REPO / "docker" / "compose.multihost.yml"
GPU_HOST_FILE = REPO / "docker" / "compose.gpu-host.yml"
ALL_FILES = (COMPOSE_FILE, MULTIHOST_FILE, GPU_HOST_FILE)
ENV_EXAMPLE = REPO / ".env.example"

# $$ | ${NAME} | ${NAME:-x} ${NAME-x} ${NAME:?x} ${NAME?x} ${NAME:+x} ${NAME+x} | $NAME
_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
                  r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(KeyError):
    pass


def interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if (value is None if op == "-" else unset_or_empty) else value
        if op in (":?", "?"):
            if value is None if op == "?" else unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if (value is None if op == "+" else unset_or_empty) else arg
        return value or ""

    return _VAR.sub(sub, text)


def interpolate(obj: Any, env: Mapping[str, str]) -> Any:
    if isinstance(obj, str):
        return interpolate_str(obj, env)
    if isinstance(obj, list):
        return [interpolate(v, env) for v in obj]
    if isinstance(obj, dict):
        return {k: interpolate(v, env) for k, v in obj.items()}
    return obj


def raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def load(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """A compose file after YAML merge keys and interpolation with ``env``."""
    data = interpolate(raw(path), env)
    return {k: v for k, v in data.items() if not k.startswith("x-")}


def variables(obj: Any) -> dict[str, str | None]:
    """Every variable the compose file reads -> its operator (None, ':-', ':?', ...)."""
    found: dict[str, str | None] = {}
    if isinstance(obj, str):
        for match in _VAR.finditer(obj):
            name = match.group("braced") or match.group("bare")
            if name:
                found.setdefault(name, match.group("op"))
    elif isinstance(obj, list):
        for v in obj:
            found.update({k: op for k, op in variables(v).items() if k not in found})
    elif isinstance(obj, dict):
        for v in obj.values():
            found.update({k: op for k, op in variables(v).items() if k not in found})
    return found


def defaults(text: str) -> dict[str, str]:
    """``${NAME:-default}`` occurrences in a string -> {NAME: default}."""
    return {m.group("braced"): m.group("arg") or "" for m in _VAR.finditer(text)
            if m.group("braced") and m.group("op") in (":-", "-")}


def env_file(path: Path = ENV_EXAMPLE) -> tuple[dict[str, str], set[str]]:
    """(active NAME=value lines, names mentioned in commented-out NAME=value lines)."""
    active: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        if m.group(1):
            mentioned.add(m.group(2))
        else:
            active[m.group(2)] = m.group(3).split(" #")[0].strip()
    return active, mentioned


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def volume_mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) for short-syntax volumes."""
    out = {}
    for spec in service.get("volumes") or []:
        parts = spec.split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, parts[2] if len(parts) > 2 else "rw")
    return out


def size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).strip().lower())
    assert m, f"not a size: {text!r}"
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2)]
