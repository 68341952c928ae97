"""K small trials trained as one batched model in one process (issue 7, B2).

Trials of the digits MLP (or the linear model) are far too small to keep a CPU
core busy: per optimizer step the unbatched :class:`~workers.training.trainer.Trainer`
spends most of its time in Python and operator dispatch, not in arithmetic. A
*population* stacks the parameters of K such trials along a leading member axis
and trains them with a few large matrix products (one ``addmm`` over all
members' stacked first-layer weights, grouped ``baddbmm`` products after it),
so one step costs a handful of operators whatever K is.

Equivalence with the unbatched trainer is the contract, member by member — to
float32 rounding, not bit for bit (grouped products round differently in the
last bit): the same initial weights and data order as ``Trainer(setups[i])``,
each member's own loss, penalty, schedule, ``lr`` and ``momentum`` as (K, 1)
tensors, an objective that is the *sum* of the members' prediction losses (so
member i's gradient is its own) with each penalty's gradient added by formula
(``population_objective``), SGD and Adam re-implemented with ``torch.optim``'s
single-tensor operations (``population_ops``), one shared dropout mask, and the
metrics of ``Trainer.train_epoch()``. docs/training.md ("Populations") spells
out each point and the measured tolerance.

Members must share what fixes the computation's *shape* or the data order
(:func:`group_compatible` groups setups; :class:`PopulationTrainer` refuses a
mixed list, the CNN, and a loss without a batched form).

Stopping a member (:meth:`PopulationTrainer.stop`) removes its rows from every
stacked tensor, so it costs nothing afterwards.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces import catalog
from workers.training import metrics as M
from workers.training.device import select_device
from workers.training.models import ModelShape, build_model
from workers.training.penalties import penalized_weights
from workers.training.population_eval import PopulationEvaluation
from workers.training.population_objective import PopulationObjective
from workers.training.population_ops import (BATCHABLE_LOSSES, _Member, _column, adam_step,
                                             make_member, sgd_step)
from workers.training.population_state import (load_population_state, member_state,
                                               population_state)
from workers.training.setup import TrialSetup
from workers.training.tasks import load_task
from workers.training.trainer import ORDER_SEED_OFFSET

POPULATION_FILE = "population.pt"
#: Models a population can batch (stacks of ``nn.Linear`` with ReLU in between).
BATCHABLE_MODELS = ("linear", "mlp")
#: Params that must be equal across members (they fix shapes, RNG use or data order).
SHARED_PARAMS = ("batch_size", "dropout")


def compatibility_key(setup: TrialSetup) -> tuple[Any, ...]:
    """What members of one population must agree on (a hashable value)."""
    return (setup.task, tuple(sorted((k, repr(v)) for k, v in setup.task_options.items())),
            setup.kind, setup.model, tuple(setup.hidden_sizes), tuple(setup.channels),
            setup.optimizer, setup.epochs, setup.seed,
            str(setup.data_root) if setup.data_root is not None else None,
            *(float(setup.params[name]) for name in SHARED_PARAMS))


def group_compatible(setups: Sequence[TrialSetup]) -> list[list[int]]:
    """Indices of ``setups`` grouped into populations, in order of first appearance.

    Each group can be handed to one :class:`PopulationTrainer`. The grouping does
    not check that a model can be batched at all (the trainer refuses a CNN).
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, setup in enumerate(setups):
        groups.setdefault(compatibility_key(setup), []).append(i)
    return list(groups.values())


class PopulationTrainer(PopulationObjective, PopulationEvaluation):
    """Trains K compatible setups as one batched model, one epoch per :meth:`train_epoch`.

    ``train_epoch()`` returns one metrics dict per *active* member, in the order
    of :attr:`active` (indices into ``setups``; stopped members are left out).
    """

    def __init__(self, setups: Sequence[TrialSetup], device: torch.device | None = None) -> None:
        setups = list(setups)
        if not setups:
            raise ValueError("a population needs at least one setup")
        if len(group_compatible(setups)) != 1:
            raise ValueError("setups differ in task, model, architecture, dropout, optimizer, "
                             "batch size, epochs, seed or data root; split them with "
                             "group_compatible(setups) and train one population per group")
        first = setups[0]
        if first.model not in BATCHABLE_MODELS:
            raise ValueError(f"model {first.model!r} cannot be batched; populations support "
                             f"{list(BATCHABLE_MODELS)} (train it with Trainer instead)")
        if first.optimizer not in ("sgd", "adam"):
            raise ValueError(f"no batched form of optimizer {first.optimizer!r}")
        self.setups = setups
        self.device = torch.device(device) if device is not None else select_device()
        data = load_task(first.task).load(first.task_options, first.data_root)
        if data.kind != first.kind:
            raise ValueError(f"task {first.task!r} produced {data.kind} data, but the spec was "
                             f"validated as {first.kind}")
        self.data = data.to(self.device)
        params = first.params
        self.batch_size = int(params["batch_size"])
        self.dropout = float(params["dropout"])
        self.epochs = first.epochs
        self.n_train = len(data.x_train)
        self.steps_per_epoch = catalog.steps_per_epoch(self.n_train, self.batch_size)
        self.optimizer = first.optimizer

        shape = ModelShape(in_features=data.in_features, n_outputs=data.n_outputs,
                           image_shape=data.image_shape, hidden_sizes=first.hidden_sizes,
                           channels=first.channels, dropout=self.dropout)
        # Exactly Trainer.__init__'s initialisation. Members share seed, model, shape and
        # dropout (the compatibility key), so every member's initial weights are these.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(first.seed)
            model = build_model(first.model, shape)
            self._rng_cpu = torch.get_rng_state()
        linears = self._linears(model)
        names = {id(p): n for n, p in model.named_parameters()}
        self._names = [(names[id(m.weight)], names[id(m.bias)]) for m in linears]
        self._rng_cuda: Tensor | None = None
        if self.device.type == "cuda":
            self._rng_cuda = self._seeded_cuda_state(first.seed)
        # Stacked leaves, [W_0, b_0, W_1, b_1, ...]; row k belongs to member self._members[k].
        self._params: list[Tensor] = []
        for module in linears:
            for tensor in (module.weight, module.bias):
                stacked = tensor.detach().unsqueeze(0).repeat(len(setups), *([1] * tensor.dim()))
                self._params.append(stacked.to(self.device).requires_grad_())
        self._members = [make_member(i, s) for i, s in enumerate(setups)]
        # Optimizer state, stacked like the params; None until the first step.
        self._momentum: list[Tensor] | None = None
        self._exp_avg: list[Tensor] | None = None
        self._exp_avg_sq: list[Tensor] | None = None
        self._adam_steps = 0
        self._order = torch.Generator(device="cpu")
        self._order.manual_seed(first.seed + ORDER_SEED_OFFSET)
        self._epoch = 0
        self._step = 0
        self._hyper_cache: dict[str, Any] = {}

    # --- construction helpers ------------------------------------------------------

    @staticmethod
    def _linears(model: nn.Module) -> list[nn.Linear]:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if [id(w) for w in penalized_weights(model)] != [id(m.weight) for m in linears]:
            raise ValueError("population batching expects a stack of Linear layers only")
        return linears

    def _seeded_cuda_state(self, seed: int) -> Tensor:
        with torch.random.fork_rng(devices=[self._cuda_index()]):
            torch.manual_seed(seed)
            # Trainer draws its initial weights on the CPU and moves them, so the CUDA
            # generator is untouched after seeding.
            return torch.cuda.get_rng_state(self.device)

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    # --- counters ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Completed epochs (shared by all members)."""
        return self._epoch

    @property
    def step(self) -> int:
        """Completed optimizer steps (shared by all members)."""
        return self._step

    @property
    def active(self) -> list[int]:
        """Indices into ``setups`` of the members still training, ascending."""
        return [m.index for m in self._members]

    @property
    def done(self) -> bool:
        """All epochs trained, or every member stopped."""
        return self._epoch >= self.epochs or not self._members

    def stop(self, member_index: int) -> None:
        """Stop training member ``member_index`` (an index into ``setups``).

        Its rows leave every stacked tensor, so the remaining steps cost what a
        population without it would cost. Stopping a stopped member is an error.
        """
        positions = [k for k, m in enumerate(self._members) if m.index == member_index]
        if not positions:
            raise ValueError(f"member {member_index} is not active (active: {self.active})")
        self._keep([k for k in range(len(self._members)) if k != positions[0]])

    def _keep(self, rows: list[int], members: list[_Member] | None = None) -> None:
        """Compact all per-member state to ``rows`` (positions); a position given twice
        copies that row (how a shared-prefix population forks a member off its trunk),
        and ``members`` are then the records of the new rows."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)

        def take(tensors: list[Tensor] | None, grad: bool) -> list[Tensor] | None:
            if tensors is None:
                return None
            out = [t.detach().index_select(0, index) for t in tensors]
            return [t.requires_grad_() for t in out] if grad else out

        self._params = take(self._params, True) or []
        self._momentum = take(self._momentum, False)
        self._exp_avg = take(self._exp_avg, False)
        self._exp_avg_sq = take(self._exp_avg_sq, False)
        self._members = [self._members[k] for k in rows] if members is None else members
        self._hyper_cache.clear()

    # --- RNG -------------------------------------------------------------------------

    @contextmanager
    def _rng_scope(self) -> Iterator[None]:
        """Like ``Trainer._rng_scope``: the population's (shared) global-RNG state."""
        devices = [self._cuda_index()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._rng_cpu)
            if self._rng_cuda is not None:
                torch.cuda.set_rng_state(self._rng_cuda, self.device)
            try:
                yield
            finally:
                self._rng_cpu = torch.get_rng_state()
                if self.device.type == "cuda":
                    self._rng_cuda = torch.cuda.get_rng_state(self.device)

    # --- the batched model ---------------------------------------------------------

    def _forward(self, x: Tensor, train: bool) -> Tensor:
        """Class-major outputs of every active member for the shared rows ``x``: (K, n_out, N).

        Activations are kept feature-major, (K, features, N): the first layer is
        then a single matrix product of all members' stacked weights (K·H, F)
        with xᵀ, later layers are grouped products (``baddbmm``), and the
        softmax of the loss runs over dim 1, which is fast on the CPU.
        """
        n_layers = len(self._params) // 2
        w, b = self._params[0], self._params[1]
        k, width = w.shape[0], w.shape[1]
        h = torch.addmm(b.reshape(k * width, 1), w.reshape(k * width, -1), x.t())
        h = h.reshape(k, width, -1)
        for layer in range(1, n_layers):
            h = torch.relu(h)
            if train and self.dropout > 0:
                # The mask nn.Dropout draws in the unbatched run (same (N, H) shape, same
                # RNG state): F.dropout of ones *is* that scaled mask (input * noise).
                noise = F.dropout(torch.ones(h.shape[2], h.shape[1], dtype=h.dtype,
                                             device=h.device), self.dropout, True)
                h = h * noise.t()
            w, b = self._params[2 * layer], self._params[2 * layer + 1]
            h = torch.baddbmm(b.unsqueeze(2), w, h)
        return h

    def _hyper(self, key: str, values: Sequence[float], dims: int) -> Tensor:
        """A cached (K, 1, ...) tensor of per-member constants."""
        cache_key = f"{key}/{dims}"
        cached = self._hyper_cache.get(cache_key)
        if cached is None:
            cached = _column(values, self._params[0], dims)
            self._hyper_cache[cache_key] = cached
        return cached

    def _optimizer_step(self) -> None:
        params = self._params
        grads = [p.grad for p in params]
        with torch.no_grad():
            if self.optimizer == "sgd":
                momenta = [m.momentum for m in self._members]
                self._momentum = sgd_step(
                    params, grads, self._momentum,  # type: ignore[arg-type]
                    lambda dims: self._hyper("momentum", momenta, dims),
                    lambda dims: self._hyper("neg_lr", [-m.lr for m in self._members], dims))
            else:
                if self._exp_avg is None or self._exp_avg_sq is None:
                    self._exp_avg = [torch.zeros_like(p) for p in params]
                    self._exp_avg_sq = [torch.zeros_like(p) for p in params]
                self._adam_steps += 1
                adam_step(params, grads, self._exp_avg, self._exp_avg_sq,  # type: ignore[arg-type]
                          self._adam_steps, [m.lr for m in self._members])

    # --- training ----------------------------------------------------------------

    def train_epoch(self) -> list[dict[str, float]]:
        """Train one epoch; one metrics dict per active member (order of :attr:`active`)."""
        if self.done:
            raise RuntimeError("the population is done (all epochs trained or all stopped)")
        x, y = self.data.x_train, self.data.y_train
        order = torch.randperm(self.n_train, generator=self._order).to(self.device)
        with self._rng_scope():
            for start in range(0, self.n_train, self.batch_size):
                idx = order[start:start + self.batch_size]
                self._train_step(x[idx], y[idx])
        self._epoch += 1
        return self.evaluate()

    def _train_step(self, xb: Tensor, yb: Tensor) -> None:
        factors = [m.schedule.factor(self._step) for m in self._members]
        for k, (m, f) in enumerate(zip(self._members, factors)):
            if f > 0.0 and m.initial_norms is None:
                m.initial_norms = M.weight_norms(self._member_weights(k))
        objective = self._objective(self._forward(xb, train=True), yb, factors)
        for p in self._params:
            p.grad = None
        objective.backward()
        self._add_penalty_grads(factors)
        self._optimizer_step()
        self._step += 1

    def _member_weights(self, position: int) -> list[Tensor]:
        return [w[position] for w in self._params[0::2]]

    # --- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically from this epoch boundary."""
        return population_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (same setups' structure; hyperparameters from the setups)."""
        load_population_state(self, state)

    def save(self, directory: Path | str) -> Path:
        """Write ``directory/population.pt`` atomically; returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / POPULATION_FILE
        tmp = directory / (POPULATION_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, target)
        return target

    def restore(self, directory: Path | str) -> None:
        """Load a checkpoint written by :meth:`save` (``weights_only``)."""
        path = Path(directory) / POPULATION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {POPULATION_FILE} in {directory}")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def member_state_dict(self, member_index: int) -> dict[str, Any]:
        """Member ``member_index``'s state in :class:`Trainer` checkpoint format.

        ``Trainer(setups[i]).load_state_dict(pop.member_state_dict(i))`` continues
        that member alone, unbatched (e.g. the last survivor of a population, or a
        PBT exploit that copies one member's weights).
        """
        return member_state(self, member_index)

__all__ = ["BATCHABLE_LOSSES", "BATCHABLE_MODELS", "PopulationTrainer", "compatibility_key",
           "group_compatible"]
