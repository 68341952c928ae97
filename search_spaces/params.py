"""The searchable parameters: canonical names, aliases, bounds and defaults.

Every trial receives a *complete* parameter dict (``resolve_params``): what the
search sampled, the spec's constants, and these defaults for the rest. Training
code therefore never invents a default of its own, and the MLflow params of a
trial show every knob that shaped it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ParamType = Literal["float", "int", "str"]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: ParamType
    default: Any
    minimum: float | None = None  # inclusive unless min_exclusive
    maximum: float | None = None  # inclusive unless max_exclusive
    min_exclusive: bool = False
    max_exclusive: bool = False
    doc: str = ""

    def check(self, value: Any) -> str | None:
        """An error message for an out-of-domain value, or None."""
        if self.type == "str":
            return None if isinstance(value, str) else "must be a string"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if self.type == "int" and float(value) != int(value):
            return f"must be an integer, got {value!r}"
        if self.minimum is not None:
            if value < self.minimum or (self.min_exclusive and value == self.minimum):
                op = ">" if self.min_exclusive else ">="
                return f"must be {op} {self.minimum}, got {value!r}"
        if self.maximum is not None:
            if value > self.maximum or (self.max_exclusive and value == self.maximum):
                op = "<" if self.max_exclusive else "<="
                return f"must be {op} {self.maximum}, got {value!r}"
        return None


PARAMS: dict[str, ParamInfo] = {
    p.name: p
    for p in (
        ParamInfo("reg_lambda", "float", 0.0, minimum=0.0,
                  doc="penalty strength λ in λ·(l1_ratio·‖w‖₁ + (1−l1_ratio)·½‖w‖₂²)"),
        ParamInfo("l1_ratio", "float", 0.0, minimum=0.0, maximum=1.0,
                  doc="0 = pure L2, 1 = pure L1, between = elastic net"),
        ParamInfo("huber_delta", "float", 1.0, minimum=0.0, min_exclusive=True,
                  doc="Smooth-L1/Huber transition δ (study 000's 'epsilon')"),
        ParamInfo("focal_gamma", "float", 2.0, minimum=0.0,
                  doc="focal-loss focusing γ; γ = 0 is cross-entropy"),
        ParamInfo("focal_alpha", "float", 1.0, minimum=0.0, min_exclusive=True, maximum=1.0,
                  doc="focal-loss scalar weight α (1 = unweighted)"),
        ParamInfo("reg_start_step", "int", 0, minimum=0,
                  doc="optimizer step (counted across epochs) at which regularization switches on"),
        ParamInfo("reg_ramp_steps", "int", 0, minimum=0,
                  doc="steps over which regularization ramps linearly from 0 to full after the start"),
        ParamInfo("smooth_l1_weight", "float", 0.0, minimum=0.0, maximum=1.0,
                  doc="study 000's mode: from the start step the prediction loss becomes "
                      "(1−w)·loss + w·smooth_l1(δ); 0 turns the mode off"),
        ParamInfo("lr", "float", 0.1, minimum=0.0, min_exclusive=True, doc="learning rate"),
        ParamInfo("batch_size", "int", 64, minimum=1, maximum=65536, doc="minibatch size"),
        ParamInfo("momentum", "float", 0.9, minimum=0.0, maximum=1.0, max_exclusive=True,
                  doc="SGD momentum"),
        ParamInfo("dropout", "float", 0.0, minimum=0.0, maximum=1.0, max_exclusive=True,
                  doc="dropout probability in the MLP's hidden layers"),
        ParamInfo("loss", "str", "cross_entropy", doc="the prediction loss, when it is searched"),
    )
}

ALIASES: dict[str, str] = {"epsilon": "huber_delta"}

#: Parameters that change the *scale* of the loss itself: a loss-valued objective
#: compared across different values of these would compare different units.
LOSS_SHAPING: frozenset[str] = frozenset(
    {"loss", "huber_delta", "focal_gamma", "focal_alpha", "smooth_l1_weight"}
)


def canonical(name: str) -> str:
    return ALIASES.get(name, name)
