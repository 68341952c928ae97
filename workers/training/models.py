"""Models, one registry entry per name in ``search_spaces.catalog.MODELS``.

Deliberately small: the service searches *how a model is regularized*, so the
models only need to be able to overfit the built-in tasks within a few CPU
minutes. Every model takes a flat ``(N, features)`` batch; the CNN reshapes it to
the task's image shape itself, so datasets are stored once, flat, on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn


@dataclass(frozen=True)
class ModelShape:
    """What a model factory needs: data shape plus the spec's architecture fields."""

    in_features: int
    n_outputs: int  # classes, or 1 for regression
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when the task has one
    hidden_sizes: tuple[int, ...] = (64,)
    channels: tuple[int, ...] = (16, 32)
    dropout: float = 0.0


class Linear(nn.Module):
    """One affine map: the "coefficients" of study 000's linear model."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.linear = nn.Linear(shape.in_features, shape.n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class MLP(nn.Module):
    """Linear → ReLU → Dropout per hidden size, then a linear head.

    Dropout (``params["dropout"]``) sits after each hidden activation only, never
    on the inputs or the logits, so dropout = 0 is exactly the plain MLP.
    """

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = shape.in_features
        for hidden in shape.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if shape.dropout > 0:
                layers.append(nn.Dropout(shape.dropout))
            width = hidden
        layers.append(nn.Linear(width, shape.n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNN(nn.Module):
    """3×3 conv + ReLU per entry of ``channels``, 2×2 max-pool while the map is ≥ 4 wide.

    For 8×8 digits and the default [16, 32] that is 8→4→2, then a linear head on
    the flattened map. Pooling stops at 2×2 so extra conv layers stay valid.
    """

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.image_shape is None:
            raise ValueError("the cnn model needs an image task (e.g. digits)")
        self.image_shape = shape.image_shape
        c, h, w = shape.image_shape
        layers: list[nn.Module] = []
        for out in shape.channels:
            layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, shape.n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(x).flatten(1))


MODELS: dict[str, Callable[[ModelShape], nn.Module]] = {
    "linear": Linear,
    "mlp": MLP,
    "cnn": CNN,
}


def build_model(name: str, shape: ModelShape) -> nn.Module:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(shape)
