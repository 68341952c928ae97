"""Cross-field rules of a spec, each naming the field it blames.

Kept apart from the pydantic models so each rule reads as one small function
and a test can name the rule it exercises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from search_spaces import catalog
from search_spaces.params import PARAMS

if TYPE_CHECKING:
    from search_spaces.spec import SearchSpec


def _values(param: Any) -> list[Any]:
    """The extreme or listed values a parameter can take (for domain checks)."""
    from search_spaces.spec import Choices, Range

    if isinstance(param, Range):
        return [param.low, param.high] + ([0.0] if param.include_zero else [])
    if isinstance(param, Choices):
        return list(param.choices)
    return [param]


def check_parameters(spec: "SearchSpec") -> None:
    from search_spaces.spec import Range, SpecError

    for name, param in spec.space.items():
        info = PARAMS.get(name)
        if info is None:
            raise SpecError(f"space.{name}", f"unknown parameter; known: {sorted(PARAMS)} "
                                             "(alias: epsilon = huber_delta)")
        if isinstance(param, Range) and info.type == "str":
            raise SpecError(f"space.{name}", "takes a constant or {choices: [...]}, not a range")
        if isinstance(param, Range) and info.type == "int" and param.type != "int":
            raise SpecError(f"space.{name}.type", "is an integer parameter: use type: int")
        for value in _values(param):
            if info.type == "str":
                if name == "loss" and value not in catalog.LOSSES:
                    raise SpecError(f"space.{name}",
                                    f"unknown loss {value!r}; known: {sorted(catalog.LOSSES)}")
                continue
            error = info.check(value)
            if error:
                raise SpecError(f"space.{name}", error)


def check_task(spec: "SearchSpec") -> None:
    from search_spaces.spec import SpecError

    kind = spec.task_kind
    if kind not in ("classification", "regression"):
        raise SpecError("task_options.kind", "must be classification or regression")
    losses = {spec.objective.loss}
    if "loss" in spec.space:
        losses = {str(v) for v in _values(spec.space["loss"])}
    for loss in sorted(losses):
        if kind not in catalog.LOSSES[loss]:
            field = "space.loss" if "loss" in spec.space else "objective.loss"
            raise SpecError(field, f"loss {loss!r} does not apply to a {kind} task")
    for name, _ in spec.objective.objectives():
        if kind not in catalog.METRICS[name].kinds:
            field = "objective.metrics" if spec.objective.multi else "objective.metric"
            raise SpecError(field, f"metric {name!r} is not reported for a {kind} task")
    model = spec.model.name or catalog.DEFAULT_MODEL[kind]
    info = catalog.TASKS.get(spec.task)
    if model == "cnn" and not (info and info.image):
        raise SpecError("model.name", f"cnn needs an image task; {spec.task!r} is not one")
    if kind not in catalog.MODELS[model]:
        raise SpecError("model.name", f"model {model!r} does not apply to a {kind} task")


def check_metric_guard(spec: "SearchSpec") -> None:
    """Refuse a loss-valued objective compared across loss-shaping parameters."""
    from search_spaces.spec import SpecError

    shaping = spec.loss_shaping_searched()
    # With the 000 blend on, the loss changes units at each trial's start step and
    # along its ramp, so searching when that happens also changes the loss's scale.
    blend = spec.constants().get("smooth_l1_weight", 0)
    if isinstance(blend, (int, float)) and blend > 0:
        shaping |= set(spec.searched()) & {"reg_start_step", "reg_ramp_steps"}
    for name, _ in spec.objective.objectives():
        metric = catalog.METRICS[name]
        if metric.loss_scaled and shaping:
            field = "objective.metrics" if spec.objective.multi else "objective.metric"
            raise SpecError(field,
                            f"{metric.name} is measured in the units of the loss, which "
                            f"{sorted(shaping)} change between trials, so trials are not "
                            "comparable; choose a metric such as val_accuracy, val_f1 or "
                            "val_rmse")


def check_start_step(spec: "SearchSpec") -> None:
    """A start step no trial can reach would waste the search: refuse it here."""
    from search_spaces.spec import Range, SpecError

    info = catalog.TASKS.get(spec.task)
    bound = info.train_size_bound() if info else None
    if bound is None or "reg_start_step" not in spec.space:
        return
    batch_values = [int(v) for v in _values(spec.space.get("batch_size", spec.train.batch_size))]
    smallest_batch = max(1, min(batch_values))
    total = spec.train.epochs * catalog.steps_per_epoch(bound, smallest_batch)
    param = spec.space["reg_start_step"]
    # A range is refused only when even its low end is out of reach (its upper part is
    # a legitimate "never regularize" candidate); a constant or a listed choice that
    # can never be reached is a mistake.
    candidates = [param.low] if isinstance(param, Range) else _values(param)
    latest = max(int(v) for v in candidates)
    if latest >= total:
        raise SpecError(
            "space.reg_start_step",
            f"step {latest} is never reached: training runs at most {total} optimizer steps "
            f"({spec.train.epochs} epochs x {catalog.steps_per_epoch(bound, smallest_batch)} "
            f"steps of batch {smallest_batch} over {bound} samples)")


def check_search(spec: "SearchSpec") -> None:
    from search_spaces.spec import Choices, Range, SpecError

    algorithm = spec.search.algorithm
    if spec.objective.multi and algorithm not in catalog.MULTI_OBJECTIVE_ALGORITHMS:
        raise SpecError("search.algorithm",
                        f"{algorithm} optimises one objective; for several use one of "
                        f"{list(catalog.MULTI_OBJECTIVE_ALGORITHMS)}")
    if algorithm in catalog.POPULATION_ALGORITHMS:
        if spec.search.scheduler not in (None, algorithm):
            raise SpecError("search.scheduler", f"{algorithm} schedules its trials itself; "
                                                "leave scheduler out")
        if not spec.searched():
            raise SpecError("space", f"{algorithm} needs at least one searched parameter")
        if spec.train.epochs <= spec.search.perturbation_interval:
            raise SpecError("search.perturbation_interval",
                            f"{algorithm} perturbs every {spec.search.perturbation_interval} "
                            f"epochs, so train.epochs must exceed it")
    if algorithm in catalog.POPULATION_ALGORITHMS:
        for name, param in spec.searched().items():
            if isinstance(param, Range) and param.include_zero:
                raise SpecError(f"space.{name}.include_zero",
                                f"{algorithm} perturbs values multiplicatively, so an exact 0 "
                                "cannot be explored; use a linear range from 0")
        if spec.search.warm_start is not None:
            raise SpecError("search.warm_start", f"{algorithm} does not take a warm start")
    if spec.search.population > 1:
        if algorithm in catalog.POPULATION_ALGORITHMS:
            raise SpecError("search.population", f"{algorithm} perturbs whole trials; batched "
                                                 "populations are for the Optuna samplers")
        model = spec.model.name or catalog.DEFAULT_MODEL[spec.task_kind]
        if model == "cnn":
            raise SpecError("search.population", "batched populations train linear and MLP "
                                                 "models; the CNN trains one trial at a time")
        for name in ("batch_size", "dropout"):
            if name in spec.searched():
                raise SpecError(f"space.{name}", "members of a population share one data "
                                                 f"order and architecture: {name} cannot vary "
                                                 "within it")
    if algorithm == "pb2":
        for name, param in spec.searched().items():
            if not isinstance(param, Range):
                raise SpecError(f"space.{name}", "pb2 models continuous bounds: use a range")
    if spec.objective.select == "one_standard_error" and spec.train.epochs < 2:
        raise SpecError("objective.select", "one_standard_error estimates the standard error "
                                            "from a trial's recent epochs: train.epochs >= 2")

    if spec.search.algorithm == "grid":
        for name, param in spec.searched().items():
            if not isinstance(param, Choices):
                raise SpecError(f"space.{name}",
                                "the grid algorithm needs {choices: [...]} for every searched "
                                "parameter")


def check_share_prefixes(spec: "SearchSpec") -> None:
    """Prefixes are shared among one population's members, after a start step > 0.

    Refused rather than ignored: an option that silently does nothing would let a
    user believe a search was cheaper than it is.
    """
    from search_spaces.spec import SpecError

    if not spec.search.share_prefixes:
        if spec.search.exact_prefixes:
            raise SpecError("search.exact_prefixes",
                            "exact_prefixes says how shared prefixes are trained: it needs "
                            "search.share_prefixes: true")
        return
    if spec.search.population < 2:
        raise SpecError("search.share_prefixes",
                        "shared prefixes are trained within one population: set "
                        "search.population to 2 or more (the members of a population "
                        "share their training up to their start steps)")
    start = spec.space.get("reg_start_step", PARAMS["reg_start_step"].default)
    if max(int(v) for v in _values(start)) <= 0:
        raise SpecError("search.share_prefixes",
                        "every trial regularizes from step 0, so there is no prefix to "
                        "share: set or search space.reg_start_step above 0")


RULES: tuple[Callable[["SearchSpec"], None], ...] = (
    check_parameters, check_task, check_metric_guard, check_start_step, check_search,
    check_share_prefixes,
)


def check_spec(spec: "SearchSpec") -> None:
    for rule in RULES:
        rule(spec)
