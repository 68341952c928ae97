"""The weight penalty: which tensors are "weights", and the elastic-net term.

Only the ``weight`` of ``Linear`` and convolution modules is penalized. Biases
shift outputs without adding capacity, and normalization scales would be pushed
towards 0 for no benefit, so shrinking them is a known way to hurt a model
without regularizing it. We decide by *module type*, not by matching parameter
names ("weight" is also the name of a BatchNorm scale), so a new model cannot
silently get its biases penalized.

The penalty is added to the loss (not applied as optimizer weight decay): decay
inside Adam is rescaled per coordinate and is then no longer the penalty the
spec's formula describes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

#: Module types whose ``.weight`` is a penalized weight matrix / kernel.
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def penalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights the penalty (and the weight_* metrics) cover, in module order."""
    return [m.weight for m in model.modules()
            if isinstance(m, WEIGHT_MODULES) and isinstance(m.weight, nn.Parameter)]


def penalty(weights: Sequence[Tensor], reg_lambda: float, l1_ratio: float) -> Tensor:
    """λ·(r·‖w‖₁ + (1−r)·½‖w‖₂²) over all ``weights`` taken as one vector.

    r = 1 is L1 (lasso), r = 0 is L2 (ridge, with the conventional ½ so the
    gradient is λw), in between is the elastic net. Terms with a zero coefficient
    are skipped, so a pure L2 penalty never differentiates |w| at 0.
    """
    if reg_lambda < 0:
        raise ValueError(f"reg_lambda must be >= 0, got {reg_lambda}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be in [0, 1], got {l1_ratio}")
    if not weights:
        return torch.zeros(())
    total = torch.zeros((), dtype=weights[0].dtype, device=weights[0].device)
    if reg_lambda == 0.0:
        return total
    if l1_ratio > 0.0:
        total = total + l1_ratio * sum(w.abs().sum() for w in weights)
    if l1_ratio < 1.0:
        total = total + (1.0 - l1_ratio) * 0.5 * sum((w * w).sum() for w in weights)
    return reg_lambda * total

