"""The search-spec model: the single source of truth shared by service/ and workers/.

This package imports neither ``service`` nor ``workers`` (nor torch or ray), so
the API process can validate specs cheaply.
"""

from search_spaces.loading import (FieldError, InvalidSpec, builtin_spec_files, load_spec,
                                   load_spec_file, parse_document, validate_spec)
from search_spaces.spec import Choices, Range, SearchSpec, SpecError

__all__ = [
    "Choices", "FieldError", "InvalidSpec", "Range", "SearchSpec", "SpecError",
    "builtin_spec_files", "load_spec", "load_spec_file", "parse_document", "validate_spec",
]
