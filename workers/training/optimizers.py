"""Optimizers, one registry entry per name in ``search_spaces.catalog.OPTIMIZERS``.

The penalty is part of the loss (see penalties.py), so no optimizer here is given
``weight_decay``: the only regularization is the one the spec describes.

Each is torch's own optimizer class with its methods called undecorated
(:func:`eager`): torch wraps ``step``, ``zero_grad``, ``add_param_group``,
``state_dict`` and ``load_state_dict`` in decorators that exist for
``torch.compile`` and import ``torch._dynamo`` on their first call, about 0.9 s
of every fresh trial process's start here (bench B1's fresh-worker probe, in
``python -m bench --only B1``; ``tests/workers/training/test_optimizers.py`` shows
the import is gone). Nothing here is compiled, so the decorators do nothing else; the update
rules, state and ``state_dict`` are torch's, bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]

#: Methods torch decorates with ``torch._disable_dynamo`` (imports torch._dynamo).
UNDECORATED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict",
               "_accelerator_graph_capture_health_check")


def eager(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``base`` whose methods run undecorated, for eager (never compiled) training.

    The undecorated function is the innermost of the ``functools.wraps`` chain
    (``inspect.unwrap``). ``step`` keeps what its decorator does in eager mode:
    autograd off (on only for a ``differentiable`` optimizer) while it runs. Should
    torch stop exposing the wrapped functions, ``inspect.unwrap`` returns the
    decorated ones: training stays right, only the import comes back, and the test
    says so.
    """
    namespace: dict[str, Any] = {name: inspect.unwrap(getattr(base, name))
                                 for name in UNDECORATED if hasattr(base, name)}
    plain_step = inspect.unwrap(base.step)

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(bool(self.defaults.get("differentiable", False)))
            return plain_step(self, closure)
        finally:
            torch.set_grad_enabled(previous)

    step.__doc__ = base.step.__doc__
    name = f"Eager{base.__name__}"
    namespace.update(step=step, __module__=__name__, __qualname__=name,
                     __doc__=f"torch.optim.{base.__name__}, its methods undecorated (eager).")
    return type(name, (base,), namespace)


EagerSGD = eager(torch.optim.SGD)
EagerAdam = eager(torch.optim.Adam)


def _sgd(parameters: Iterable[nn.Parameter], params: Mapping[str, Any]) -> torch.optim.Optimizer:
    return EagerSGD(parameters, lr=float(params["lr"]), momentum=float(params["momentum"]))


def _adam(parameters: Iterable[nn.Parameter], params: Mapping[str, Any]) -> torch.optim.Optimizer:
    # ``momentum`` does not apply: Adam keeps its default betas (0.9, 0.999).
    return EagerAdam(parameters, lr=float(params["lr"]))


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
