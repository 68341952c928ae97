"""A population's checkpoints: its own format, and one member in the Trainer's format.

Split from :mod:`workers.training.population` to keep the training loop and its
persistence apart. These functions read and write the trainer's private state,
so they belong to it: :class:`PopulationTrainer` exposes them as ``state_dict``,
``load_state_dict`` and ``member_state_dict``, which are the API.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from workers.training.population_ops import ADAM_BETAS, ADAM_EPS, make_member
from workers.training.trainer import CHECKPOINT_FORMAT

if TYPE_CHECKING:
    from workers.training.population import PopulationTrainer

POPULATION_FORMAT = 1


def population_state(pop: "PopulationTrainer") -> dict[str, Any]:
    """Everything needed to continue bit-identically from this epoch boundary."""
    def copies(tensors: list[Tensor] | None) -> list[Tensor] | None:
        return None if tensors is None else [t.detach().clone() for t in tensors]

    return copy.deepcopy({
        "format": POPULATION_FORMAT,
        "structures": [s.structure() for s in pop.setups],
        "members": [m.index for m in pop._members],  # the rows' members
        "epoch": pop._epoch,
        "step": pop._step,
        "params": copies(pop._params),
        "momentum": copies(pop._momentum),
        "exp_avg": copies(pop._exp_avg),
        "exp_avg_sq": copies(pop._exp_avg_sq),
        "adam_steps": pop._adam_steps,
        "rng_cpu": pop._rng_cpu.clone(),
        "rng_cuda": None if pop._rng_cuda is None else pop._rng_cuda.clone(),
        "order_rng": pop._order.get_state(),
        "initial_norms": [None if m.initial_norms is None else list(m.initial_norms)
                          for m in pop._members],
    })


def load_population_state(pop: "PopulationTrainer", state: dict[str, Any]) -> None:
    """Continue from ``state`` (same setups' structure; hyperparameters from the setups)."""
    if state.get("format") != POPULATION_FORMAT:
        raise ValueError(f"unsupported population checkpoint format {state.get('format')!r}")
    if state["structures"] != [s.structure() for s in pop.setups]:
        raise ValueError("checkpoint belongs to a population of other setups")
    members = [int(i) for i in state["members"]]
    pop._members = [make_member(i, pop.setups[i]) for i in members]
    for m, norms in zip(pop._members, state["initial_norms"]):
        m.initial_norms = None if norms is None else (float(norms[0]), float(norms[1]))

    def load(tensors: list[Tensor] | None, grad: bool) -> list[Tensor] | None:
        if tensors is None:
            return None
        out = [t.detach().clone().to(pop.device) for t in tensors]
        return [t.requires_grad_() for t in out] if grad else out

    pop._params = load(state["params"], True) or []
    pop._momentum = load(state["momentum"], False)
    pop._exp_avg = load(state["exp_avg"], False)
    pop._exp_avg_sq = load(state["exp_avg_sq"], False)
    pop._adam_steps = int(state["adam_steps"])
    pop._epoch, pop._step = int(state["epoch"]), int(state["step"])
    pop._rng_cpu = state["rng_cpu"].cpu()
    if pop.device.type == "cuda" and state["rng_cuda"] is not None:
        pop._rng_cuda = state["rng_cuda"].cpu()
    pop._order.set_state(state["order_rng"].cpu())
    pop._hyper_cache.clear()


def member_state(pop: "PopulationTrainer", member_index: int) -> dict[str, Any]:
    """Member ``member_index``'s state in :class:`Trainer` checkpoint format.

    ``Trainer(setups[i]).load_state_dict(pop.member_state_dict(i))`` continues
    that member alone, unbatched (e.g. the last survivor of a population, or a
    PBT exploit that copies one member's weights).
    """
    positions = [k for k, m in enumerate(pop._members) if m.index == member_index]
    if not positions:
        raise ValueError(f"member {member_index} is not active (active: {pop.active})")
    k = positions[0]
    member = pop._members[k]
    model: dict[str, Tensor] = {}
    for layer, (w_name, b_name) in enumerate(pop._names):
        model[w_name] = pop._params[2 * layer][k].detach().clone()
        model[b_name] = pop._params[2 * layer + 1][k].detach().clone()
    opt_state: dict[int, dict[str, Any]] = {}
    if pop.optimizer == "sgd":
        group = {"lr": member.lr, "momentum": member.momentum, "dampening": 0,
                 "weight_decay": 0, "nesterov": False, "maximize": False, "foreach": None,
                 "differentiable": False, "fused": None}
        if pop._momentum is not None and member.momentum != 0.0:
            opt_state = {i: {"momentum_buffer": buf[k].clone()}
                         for i, buf in enumerate(pop._momentum)}
    else:
        group = {"lr": member.lr, "betas": ADAM_BETAS, "eps": ADAM_EPS, "weight_decay": 0,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": None, "decoupled_weight_decay": False}
        if pop._exp_avg is not None and pop._exp_avg_sq is not None:
            opt_state = {i: {"step": torch.tensor(float(pop._adam_steps)),
                             "exp_avg": m1[k].clone(), "exp_avg_sq": m2[k].clone()}
                         for i, (m1, m2) in enumerate(zip(pop._exp_avg, pop._exp_avg_sq))}
    group["params"] = list(range(len(pop._params)))
    return {
        "format": CHECKPOINT_FORMAT,
        "structure": member.setup.structure(),
        "epoch": pop._epoch,
        "step": pop._step,
        "model": model,
        "optimizer": {"state": opt_state, "param_groups": [group]},
        "rng_cpu": pop._rng_cpu.clone(),
        "rng_cuda": None if pop._rng_cuda is None else pop._rng_cuda.clone(),
        "order_rng": pop._order.get_state(),
        "initial_norms": None if member.initial_norms is None else list(member.initial_norms),
    }
