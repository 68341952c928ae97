"""The spec's space as an Optuna define-by-run function.

Define-by-run (rather than a static Tune ``param_space``) is what lets a space
say "γ only where the loss is focal" and "this log range also includes 0": the
function decides, per trial, what to ask the sampler for.
"""

from __future__ import annotations

from typing import Any, Callable

from search_spaces import Choices, Range, SearchSpec

#: A parameter that only shapes some losses is sampled only where it matters,
#: when the loss itself is searched: a cross-entropy trial never gets a γ.
CONDITIONS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "focal_gamma": lambda cfg: cfg.get("loss") == "focal",
    "focal_alpha": lambda cfg: cfg.get("loss") == "focal",
    "huber_delta": lambda cfg: cfg.get("loss") == "smooth_l1"
    or float(cfg.get("smooth_l1_weight", 0.0)) > 0.0,
}

ZERO_SUFFIX = "__zero"


def _suggest(trial: Any, name: str, param: Range | Choices) -> Any:
    if isinstance(param, Choices):
        return trial.suggest_categorical(name, list(param.choices))
    if param.include_zero and trial.suggest_categorical(name + ZERO_SUFFIX, [False, True]):
        return 0 if param.type == "int" else 0.0
    if param.type == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(name, param.low, param.high, log=param.log)


class DefineByRun:
    """Sample the searched parameters; return the constants so Tune records them too.

    A class, not a closure: Tune pickles the searcher with its experiment state.
    """

    def __init__(self, spec: SearchSpec, conditional: bool = True) -> None:
        self.searched = spec.searched()
        self.constants = spec.constants()
        self.default_loss = spec.objective.loss
        self.conditional = conditional and "loss" in self.searched
        # The loss is sampled first so the conditions can read it.
        self.order = sorted(self.searched,
                            key=lambda n: (n != "loss", n != "smooth_l1_weight", n))

    def __call__(self, trial: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(self.constants)
        cfg.setdefault("loss", self.default_loss)
        for name in self.order:
            condition = CONDITIONS.get(name)
            if self.conditional and condition and not condition(cfg):
                continue
            cfg[name] = _suggest(trial, name, self.searched[name])
        return self.constants


def define_by_run(spec: SearchSpec, conditional: bool = True) -> DefineByRun:
    return DefineByRun(spec, conditional)


def trial_params(spec: SearchSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's config (sampled + constants) to the complete parameter set."""
    sampled = {k: v for k, v in config.items() if not k.endswith(ZERO_SUFFIX)}
    return spec.resolve_params(sampled)
