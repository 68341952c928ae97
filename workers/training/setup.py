"""From (spec, sampled params) to everything one trial needs: :class:`TrialSetup`.

The Tune driver calls ``build_setup(spec, spec.resolve_params(sampled))`` and
hands the result to :class:`~workers.training.trainer.Trainer`. The setup is a
plain, picklable value (no tensors, no data) so it can travel to a Ray worker
and be logged; the data is loaded by the trainer, on the trial's machine.

Nothing is defaulted here that the spec model already defaults: the params dict
must be complete (``resolve_params`` guarantees that) and a missing name is a
bug in the caller, reported as such rather than papered over.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from search_spaces import catalog
from search_spaces.params import PARAMS
from search_spaces.spec import SearchSpec

#: Environment variable naming the directory user tables are read from.
DATA_ROOT_ENV = "REGTUNE_DATA_ROOT"


@dataclass(frozen=True)
class TrialSetup:
    """One trial's complete, static configuration."""

    task: str
    task_options: dict[str, Any]
    kind: str  # classification | regression, as the spec was validated for
    model: str
    hidden_sizes: tuple[int, ...]
    channels: tuple[int, ...]
    loss: str
    optimizer: str
    epochs: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    data_root: Path | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view (for logs and checkpoints)."""
        out = asdict(self)
        out["data_root"] = str(self.data_root) if self.data_root is not None else None
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["channels"] = list(self.channels)
        return out

    def structure(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be restored into this setup.

        Hyperparameters (lr, λ, ...) are deliberately *not* part of it: a
        scheduler may continue a checkpoint under new ones, and they are
        re-applied from this setup on restore.
        """
        return {"task": self.task, "task_options": dict(self.task_options), "kind": self.kind,
                "model": self.model, "hidden_sizes": list(self.hidden_sizes),
                "channels": list(self.channels), "optimizer": self.optimizer}


def data_root_from_env() -> Path | None:
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value) if value else None


def check_params(params: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The params, checked complete and in-domain (a sampler bug must not train silently)."""
    missing = sorted(set(PARAMS) - set(params))
    if missing:
        raise ValueError(f"params lack {missing}; pass spec.resolve_params(sampled), "
                         "which fills every parameter")
    for name, info in PARAMS.items():
        error = info.check(params[name])
        if error:
            raise ValueError(f"param {name} {error}")
    loss = str(params["loss"])
    if loss not in catalog.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(catalog.LOSSES)}")
    if kind not in catalog.LOSSES[loss]:
        raise ValueError(f"loss {loss!r} does not apply to a {kind} task")
    return dict(params)


def build_setup(spec: SearchSpec, params: Mapping[str, Any], *,
                data_root: Path | None = None) -> TrialSetup:
    """The trial setup for one sampled point of ``spec``.

    ``params`` is ``spec.resolve_params(sampled)``. ``data_root`` overrides the
    ``REGTUNE_DATA_ROOT`` environment variable (read here, i.e. on the worker).
    """
    kind = spec.task_kind
    checked = check_params(params, kind)
    model = spec.model.name or catalog.DEFAULT_MODEL[kind]
    return TrialSetup(
        task=spec.task,
        task_options=dict(spec.task_options),
        kind=kind,
        model=model,
        hidden_sizes=tuple(spec.model.hidden_sizes),
        channels=tuple(spec.model.channels),
        loss=str(checked["loss"]),
        optimizer=spec.train.optimizer,
        epochs=spec.train.epochs,
        seed=spec.train.seed,
        params=checked,
        data_root=data_root if data_root is not None else data_root_from_env(),
    )
