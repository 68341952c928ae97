"""Turn request bytes into a validated :class:`SearchSpec`, or field-named errors.

YAML is parsed with ``yaml.safe_load`` only (no Python tags, nothing executed)
and both formats are bounded in size before parsing, so a hostile body costs at
most ``MAX_SPEC_BYTES`` of work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from search_spaces.spec import SearchSpec, SpecError

MAX_SPEC_BYTES = 64 * 1024
_UNION_TAGS = {"range", "choices", "constant", "str", "int", "float", "bool"}
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class InvalidSpec(ValueError):
    """The spec could not be parsed or validated; ``errors`` name each field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def _join(loc: tuple[Any, ...], extra: str = "") -> str:
    parts = [str(p) for p in loc if str(p) not in _UNION_TAGS]
    if extra:
        parts.append(extra)
    return ".".join(parts) or "body"


def errors_of(exc: ValidationError) -> list[FieldError]:
    """Dotted field paths for pydantic errors, including SpecErrors raised inside."""
    out: list[FieldError] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecError):
            out.append(FieldError(_join(loc, cause.field), cause.message))
            continue
        message = err.get("msg", "invalid")
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        out.append(FieldError(_join(loc), message))
    return out


def parse_document(body: bytes | str, content_type: str | None = None) -> Any:
    """Bytes to a Python object: YAML for a YAML content type, else JSON."""
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidSpec([FieldError("body", f"spec larger than {MAX_SPEC_BYTES} bytes")])
    media = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        if media in YAML_TYPES:
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8"))
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        kind = "YAML" if media in YAML_TYPES else "JSON"
        raise InvalidSpec([FieldError("body", f"not valid {kind}: {exc}".splitlines()[0])])


def validate_spec(data: Any) -> SearchSpec:
    if not isinstance(data, dict):
        raise InvalidSpec([FieldError("body", "the spec must be a mapping")])
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(errors_of(exc)) from None
    except SpecError as exc:  # raised outside pydantic's wrapping
        raise InvalidSpec([FieldError(exc.field, exc.message)]) from None


def load_spec(body: bytes | str, content_type: str | None = None) -> SearchSpec:
    return validate_spec(parse_document(body, content_type))


def load_spec_file(path: str | Path) -> SearchSpec:
    p = Path(path)
    ctype = "application/yaml" if p.suffix in (".yaml", ".yml") else "application/json"
    return load_spec(p.read_bytes(), ctype)


def builtin_spec_files() -> list[Path]:
    """The ready-made specs shipped beside this package."""
    here = Path(__file__).parent
    return sorted([*here.glob("*.yaml"), *here.glob("*.json")])
