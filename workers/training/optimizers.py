"""Optimizers, one registry entry per name in ``search_spaces.catalog.OPTIMIZERS``.

The penalty is part of the loss (see penalties.py), so no optimizer here is given
``weight_decay``: the only regularization is the one the spec describes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]


def _sgd(parameters: Iterable[nn.Parameter], params: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=float(params["lr"]),
                           momentum=float(params["momentum"]))


def _adam(parameters: Iterable[nn.Parameter], params: Mapping[str, Any]) -> torch.optim.Optimizer:
    # ``momentum`` does not apply: Adam keeps its default betas (0.9, 0.999).
    return torch.optim.Adam(parameters, lr=float(params["lr"]))


OPTIMIZERS: dict[str, OptimizerFactory] = {"sgd": _sgd, "adam": _adam}

#: param_group keys each optimizer takes from the trial params (reapplied after a
#: restore, so a checkpoint's stored learning rate never overrides the setup's).
HYPERPARAMS: dict[str, tuple[str, ...]] = {"sgd": ("lr", "momentum"), "adam": ("lr",)}


def build_optimizer(name: str, parameters: Iterable[nn.Parameter],
                    params: Mapping[str, Any]) -> torch.optim.Optimizer:
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}") from None
    return factory(parameters, params)


def apply_hyperparams(name: str, optimizer: torch.optim.Optimizer,
                      params: Mapping[str, Any]) -> None:
    """Set the setup's lr/momentum on every param group (after ``load_state_dict``)."""
    for group in optimizer.param_groups:
        for key in HYPERPARAMS[name]:
            group[key] = float(params[key])
