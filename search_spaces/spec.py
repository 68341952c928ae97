"""The search spec, version 1: the one contract between user, service and workers.

Shaped after Katib's Experiment (objective / algorithm / early stopping /
parameters): ``objective`` says what is better, ``search`` says how to look,
``space`` says where. Every section forbids unknown fields, so a typo is a 422
naming the field instead of a silently ignored setting.

Cross-field rules live in one ``model_validator`` on :class:`SearchSpec`, each
raising :class:`SpecError` with the dotted path of the offending field, so the
service can answer with ``{"field": "space.reg_lambda.low", ...}``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator,
                      model_validator)

from search_spaces import catalog
from search_spaces.params import LOSS_SHAPING, PARAMS, canonical

MAX_NAME = 100
MAX_TRIALS = 10_000
MAX_CONCURRENT = 256
MAX_EPOCHS = 10_000
MAX_CHOICES = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Scalar = Union[bool, int, float, str]


class SpecError(ValueError):
    """A rule across fields failed; ``field`` is the dotted path to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A continuous or integer interval; ``log`` samples its logarithm uniformly."""

    low: float
    high: float
    log: bool = False
    type: Literal["float", "int"] = "float"
    #: log ranges cannot reach 0; this adds exactly 0 as a candidate ("no penalty").
    include_zero: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        if not self.low < self.high:
            raise SpecError("low", f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise SpecError("low", f"a log range needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise SpecError("low", "an int range needs integer bounds")
        if self.include_zero and not self.log:
            raise SpecError("include_zero", "include_zero is for log ranges; a linear range "
                                            "reaches 0 by setting low: 0")
        return self


class Choices(_Strict):
    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)


def _param_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "choices" if "choices" in value else "range"
    if isinstance(value, (Range, Choices)):
        return "choices" if isinstance(value, Choices) else "range"
    return "constant"


#: A parameter is a constant, a range {low, high, log?, type?} or {choices: [...]}.
Param = Annotated[
    Union[Annotated[Range, Tag("range")], Annotated[Choices, Tag("choices")],
          Annotated[Scalar, Tag("constant")]],
    Discriminator(_param_kind),
]


def _known(kind: str, names: Any) -> Any:
    """A field validator refusing names outside a catalogue, listing the known ones."""

    def check(cls: Any, value: Any) -> Any:
        if value is not None and value not in names:
            raise ValueError(f"unknown {kind} {value!r}; known: {sorted(names)}")
        return value

    return classmethod(check)


class ObjectiveMetric(_Strict):
    metric: str
    mode: Literal["min", "max"] | None = None

    _metric = field_validator("metric")(_known("metric", catalog.METRICS))

    @property
    def direction(self) -> Literal["min", "max"]:
        return self.mode or catalog.METRICS[self.metric].mode


class Objective(_Strict):
    """What is better. One metric, or several (``metrics``) for a Pareto search.

    ``select`` picks the answer of /best: ``best`` (the best last value, ties to the
    earliest trial) or ``one_standard_error`` (the most regularized trial whose value
    is within one standard error of the best; see docs/spec.md).
    """

    loss: str = "cross_entropy"
    metric: str = "val_accuracy"
    mode: Literal["min", "max"] | None = None  # None: the metric's natural direction
    metrics: list[ObjectiveMetric] | None = Field(None, min_length=2, max_length=4)
    select: Literal["best", "one_standard_error"] = "best"

    @model_validator(mode="before")
    @classmethod
    def _primary_from_metrics(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("metrics"):
            first = data["metrics"][0]
            if isinstance(first, dict):
                primary = {"metric": first.get("metric"), "mode": first.get("mode")}
                # A dumped spec carries metric/mode as metrics[0]; anything else conflicts.
                for key, value in primary.items():
                    if data.get(key) not in (None, value):
                        raise SpecError("metrics", "give either metric/mode or metrics, "
                                                   "not both")
                data = {**data, **primary}
        return data

    _loss = field_validator("loss")(_known("loss", catalog.LOSSES))
    _metric = field_validator("metric")(_known("metric", catalog.METRICS))

    @model_validator(mode="after")
    def _select(self) -> "Objective":
        if self.metrics is not None:
            names = [m.metric for m in self.metrics]
            if len(set(names)) != len(names):
                raise SpecError("metrics", "each metric may appear once")
            if self.select != "best":
                raise SpecError("select", "a multi-objective search answers with its Pareto "
                                          "set; select applies to one metric")
        return self

    @property
    def direction(self) -> Literal["min", "max"]:
        return self.mode or catalog.METRICS[self.metric].mode

    @property
    def multi(self) -> bool:
        return self.metrics is not None

    def objectives(self) -> list[tuple[str, Literal["min", "max"]]]:
        if self.metrics is None:
            return [(self.metric, self.direction)]
        return [(m.metric, m.direction) for m in self.metrics]


class Model(_Strict):
    name: str | None = None  # None: the task kind's default
    hidden_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64], max_length=8)
    channels: list[Annotated[int, Field(ge=1, le=256)]] = Field(
        default_factory=lambda: [16, 32], max_length=4)

    _name = field_validator("name")(_known("model", catalog.MODELS))


class Train(_Strict):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(0.1, gt=0)
    optimizer: str = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    #: seeds model initialisation and data order; the same spec and seed give the
    #: same metrics on the same machine.
    seed: int = Field(0, ge=0, le=2**31 - 1)

    _optimizer = field_validator("optimizer")(_known("optimizer", catalog.OPTIMIZERS))


class WarmStart(_Strict):
    """Try an earlier job's best configurations first (read from MLflow)."""

    job: str = Field(pattern=r"^[0-9a-f]{12}$")
    top_k: int = Field(5, ge=1, le=100)


class Search(_Strict):
    algorithm: str = "tpe"
    num_trials: int = Field(16, ge=1, le=MAX_TRIALS)
    max_concurrent: int = Field(2, ge=1, le=MAX_CONCURRENT)
    #: None: the algorithm's natural choice (asha; pbt/pb2 schedule trials themselves;
    #: a multi-objective search stops nothing early).
    scheduler: str | None = None
    seed: int | None = Field(0, ge=0, le=2**31 - 1)
    #: Epochs before a scheduler may stop a trial. None: a third of train.epochs,
    #: rounded up (SearchSpec.grace_epochs). A one-epoch grace ranks trials before a
    #: slowly converging loss (Smooth-L1 with a small delta) or a late-starting penalty
    #: shows what it does, and stops the eventual best (bench B4 compares both).
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    perturbation_interval: int = Field(2, ge=1)  # pbt/pb2: epochs between exploit/explore
    warm_start: WarmStart | None = None
    #: K > 1 trains K trials at a time in one process as one batched model (linear and
    #: MLP models); each member keeps its own MLflow run, record and early stopping.
    #: max_concurrent then counts populations.
    population: int = Field(1, ge=1, le=256)
    #: With population K >= 2: members that agree on everything that acts before their
    #: reg_start_step train that prefix once and fork at their start step.
    share_prefixes: bool = False
    #: With share_prefixes: each group's members train as one batched population that
    #: forks rows off a batched trunk (workers.training.population_prefix; metrics within
    #: the population tolerance, several times cheaper on small models). True: each
    #: member forks a trainer of its own instead, bit-identical to training it alone.
    exact_prefixes: bool = False

    _algorithm = field_validator("algorithm")(_known("algorithm", catalog.ALGORITHMS))
    _scheduler = field_validator("scheduler")(_known("scheduler", catalog.SCHEDULERS))


class Resources(_Strict):
    """Per trial. A fractional ``gpu`` (0.5) lets two trials share one GPU; each then
    caps its CUDA memory at ``gpu_memory_fraction`` of the device (default: its GPU
    share), so one trial cannot take the memory its neighbour needs."""

    cpu: float = Field(1.0, gt=0, le=256)
    gpu: float = Field(0.0, ge=0, le=16)
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)

    @property
    def memory_fraction(self) -> float | None:
        if self.gpu_memory_fraction is not None:
            return self.gpu_memory_fraction
        return self.gpu if 0 < self.gpu < 1 else None


class SearchSpec(_Strict):
    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=MAX_NAME)
    task: str
    task_options: dict[str, Scalar] = Field(default_factory=dict, max_length=16)
    objective: Objective = Field(default_factory=Objective)
    model: Model = Field(default_factory=Model)
    train: Train = Field(default_factory=Train)
    space: dict[str, Param] = Field(default_factory=dict, max_length=len(PARAMS))
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-', starting with a letter or digit")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in catalog.task_names():
            raise ValueError(f"unknown task {v!r}; known: {sorted(catalog.task_names())}")
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, value in v.items():
            name = canonical(str(key))
            if name in out:
                raise ValueError(f"{key!r} and {name!r} name the same parameter")
            out[name] = value
        return out

    @model_validator(mode="after")
    def _cross_field(self) -> "SearchSpec":
        from search_spaces.rules import check_spec

        check_spec(self)
        return self

    # --- derived views -------------------------------------------------------

    @property
    def task_kind(self) -> str:
        """Built-in tasks know their kind; user tables and plugin tasks say it in
        ``task_options.kind`` (default classification). The trainer refuses data of
        another kind than the spec was validated for."""
        info = catalog.TASKS.get(self.task)
        if info is None or info.n_samples is None:
            return str(self.task_options.get("kind", "classification"))
        return info.kind

    def searched(self) -> dict[str, Range | Choices]:
        """The parameters that vary between trials."""
        return {k: v for k, v in self.space.items() if isinstance(v, (Range, Choices))}

    def constants(self) -> dict[str, Scalar]:
        return {k: v for k, v in self.space.items() if not isinstance(v, (Range, Choices))}

    def loss_shaping_searched(self) -> set[str]:
        return set(self.searched()) & LOSS_SHAPING

    @property
    def scheduler(self) -> str:
        """The scheduler this search runs with, after the algorithm's default."""
        if self.search.scheduler is not None:
            return self.search.scheduler
        if self.search.algorithm in catalog.POPULATION_ALGORITHMS:
            return self.search.algorithm
        return "none" if self.objective.multi else "asha"

    @property
    def grace_epochs(self) -> int:
        """The scheduler's grace period in epochs: the spec's, else ⌈epochs / 3⌉."""
        if self.search.grace_period is not None:
            return min(self.search.grace_period, self.train.epochs)
        return max(1, -(-self.train.epochs // 3))

    def grid_axes(self) -> dict[str, list[Scalar]]:
        """The grid algorithm's axes (every searched parameter is a Choices there)."""
        return {k: list(v.choices) for k, v in self.searched().items() if isinstance(v, Choices)}

    def planned_populations(self) -> int:
        """Tune trials the job runs: one per population of ``search.population`` members."""
        return -(-self.planned_trials() // self.search.population)

    def planned_trials(self) -> int:
        """Trials the job will run: a grid has a fixed number of points."""
        if self.search.algorithm != "grid":
            return self.search.num_trials
        size = 1
        for values in self.grid_axes().values():
            size *= len(values)
        return min(self.search.num_trials, size)

    def resolve_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """The complete parameter set of one trial: defaults < train < constants < sampled."""
        params: dict[str, Any] = {name: info.default for name, info in PARAMS.items()}
        params.update(lr=self.train.lr, batch_size=self.train.batch_size,
                      momentum=self.train.momentum, loss=self.objective.loss)
        params.update(self.constants())
        params.update({canonical(k): v for k, v in sampled.items()})
        for name, info in PARAMS.items():
            if info.type == "int":
                params[name] = int(params[name])
            elif info.type == "float":
                params[name] = float(params[name])
        return params
