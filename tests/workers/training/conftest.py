"""Fixtures shared by the training-library tests: small specs and setups."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from search_spaces import SearchSpec
from workers.training import TrialSetup, build_setup


def _spec(**overrides: Any) -> SearchSpec:
    data: dict[str, Any] = {
        "name": "t", "task": "digits",
        "objective": {"loss": "cross_entropy", "metric": "val_accuracy"},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 4, "batch_size": 128, "lr": 0.1, "seed": 3},
    }
    data.update(overrides)
    return SearchSpec.model_validate(data)


@pytest.fixture
def make_spec() -> Callable[..., SearchSpec]:
    """A small valid spec; keyword arguments replace whole top-level sections."""
    return _spec


@pytest.fixture
def make_setup() -> Callable[..., TrialSetup]:
    """``make_setup(params={...}, **spec_sections)``: a setup with resolved params."""

    def make(params: dict[str, Any] | None = None, **overrides: Any) -> TrialSetup:
        spec = _spec(**overrides)
        return build_setup(spec, spec.resolve_params(params or {}))

    return make


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")
