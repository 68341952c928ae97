"""PopulationTrainer: K trials as one batched model must train like K Trainers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from workers.training import Trainer
from workers.training.population import PopulationTrainer, group_compatible

CLS_TRAIN = {"epochs": 3, "batch_size": 128, "lr": 0.1, "seed": 3}
REG = {"task": "regression-outliers", "objective": {"loss": "mse", "metric": "val_rmse"},
       "model": {"name": "linear"}, "train": {"epochs": 3, "batch_size": 100, "lr": 0.01,
                                              "seed": 5}}
#: Members that differ in every per-member hyperparameter.
MEMBERS = [
    {"reg_lambda": 1e-3, "l1_ratio": 0.0, "reg_start_step": 5, "lr": 0.1},
    {"reg_lambda": 1e-2, "l1_ratio": 1.0, "reg_start_step": 0, "reg_ramp_steps": 7,
     "lr": 0.05, "momentum": 0.5},
    {"reg_lambda": 3e-3, "l1_ratio": 0.5, "reg_start_step": 20, "loss": "focal",
     "focal_gamma": 2.0, "focal_alpha": 0.5, "lr": 0.2},
    {"reg_lambda": 0.0, "smooth_l1_weight": 0.5, "huber_delta": 0.3, "reg_start_step": 12,
     "reg_ramp_steps": 4, "loss": "focal", "focal_gamma": 0.5, "momentum": 0.0},
]
#: The equivalence tolerance the population promises (documented in docs/training.md).
RTOL = 1e-4
ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_close(expected: list[dict[str, float]], got: list[dict[str, float]]) -> float:
    """Same keys, same counters, every value within RTOL/ATOL; returns the worst rel. error."""
    assert len(expected) == len(got)
    worst = 0.0
    for a, b in zip(expected, got):
        assert set(a) == set(b)
        assert (a["epoch"], a["step"], a["reg_active"]) == (b["epoch"], b["step"], b["reg_active"])
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=RTOL, abs=ATOL), key
            if a[key] != 0:
                worst = max(worst, abs(a[key] - b[key]) / abs(a[key]))
    return worst


def _unbatched(setup, cpu, epochs=None) -> list[dict[str, float]]:
    trainer = Trainer(setup, cpu)
    out = []
    while not trainer.done and (epochs is None or len(out) < epochs):
        out.append(trainer.train_epoch())
    return out


def _batched(pop: PopulationTrainer, epochs=None) -> dict[int, list[dict[str, float]]]:
    out: dict[int, list[dict[str, float]]] = {i: [] for i in pop.active}
    done = 0
    while not pop.done and (epochs is None or done < epochs):
        for index, metrics in zip(pop.active, pop.train_epoch()):
            out[index].append(metrics)
        done += 1
    return out


@pytest.mark.parametrize("optimizer,dropout", [("sgd", 0.0), ("adam", 0.25)])
def test_members_match_unbatched_trainers(make_setup, cpu, optimizer, dropout) -> None:
    lr_scale = 1.0 if optimizer == "sgd" else 0.05
    setups = [make_setup(params={**p, "lr": p.get("lr", 0.1) * lr_scale, "dropout": dropout},
                         train={**CLS_TRAIN, "optimizer": optimizer}) for p in MEMBERS]
    pop = PopulationTrainer(setups, cpu)
    got = _batched(pop)
    assert pop.done and pop.epoch == 3 and pop.step == 3 * pop.steps_per_epoch
    histories = [_unbatched(s, cpu) for s in setups]
    for i, expected in enumerate(histories):
        _assert_close(expected, got[i])
    # the members really differ (a test that every member got member 0's settings fails)
    finals = [h[-1]["val_loss"] for h in histories]
    assert len({round(v, 6) for v in finals}) == len(finals)
    assert [h[-1]["reg_active"] for h in histories] == [1, 1, 1, 1]
    assert histories[2][0]["reg_active"] == 0 and histories[2][0]["weight_l1_rel"] == 1.0


def test_initial_weights_equal_trainer_initialisation(make_setup, cpu) -> None:
    setups = [make_setup(params=p, train=CLS_TRAIN) for p in MEMBERS[:2]]
    pop = PopulationTrainer(setups, cpu)
    for k, setup in enumerate(setups):
        expected = list(Trainer(setup, cpu).model.parameters())
        assert all(torch.equal(e, p[k]) for e, p in zip(expected, pop._params))


def test_regression_members_with_blend_match(make_setup, cpu) -> None:
    variants = [{}, {"smooth_l1_weight": 1.0, "huber_delta": 0.5, "reg_start_step": 9},
                {"loss": "smooth_l1", "huber_delta": 2.0, "reg_lambda": 1e-2, "l1_ratio": 1.0,
                 "reg_start_step": 14, "reg_ramp_steps": 6, "lr": 0.02},
                {"loss": "l1", "smooth_l1_weight": 0.3, "reg_lambda": 1e-3, "reg_start_step": 3}]
    setups = [make_setup(params=p, **REG) for p in variants]
    got = _batched(PopulationTrainer(setups, cpu))
    for i, setup in enumerate(setups):
        _assert_close(_unbatched(setup, cpu), got[i])
    assert set(got[0][0]) >= {"val_rmse", "val_mae", "val_r2"}


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden_sizes": [32, 16]},
                                   {"name": "linear"}])
def test_deeper_mlp_and_linear_model_match(make_setup, cpu, model) -> None:
    dropout = 0.1 if model["name"] == "mlp" else 0.0
    setups = [make_setup(params={"reg_lambda": lam, "reg_start_step": start, "dropout": dropout},
                         model=model, train={**CLS_TRAIN, "epochs": 2})
              for lam, start in ((1e-3, 3), (1e-2, 0), (0.0, 9))]
    got = _batched(PopulationTrainer(setups, cpu))
    for i, setup in enumerate(setups):
        _assert_close(_unbatched(setup, cpu), got[i])


def test_stop_compacts_and_the_rest_still_match(make_setup, cpu) -> None:
    setups = [make_setup(params=p, train=CLS_TRAIN) for p in MEMBERS]
    pop = PopulationTrainer(setups, cpu)
    first = pop.train_epoch()
    assert pop.active == [0, 1, 2, 3] and len(first) == 4
    pop.stop(1)
    assert pop.active == [0, 2, 3]
    assert all(p.shape[0] == 3 for p in pop._params)  # no compute for the stopped member
    second = pop.train_epoch()
    assert len(second) == 3
    for index, metrics in zip(pop.active, second):
        _assert_close(_unbatched(setups[index], cpu, epochs=2)[1:], [metrics])
    with pytest.raises(ValueError, match="not active"):
        pop.stop(1)
    for index in (0, 2, 3):
        pop.stop(index)
    assert pop.done and pop.active == []
    with pytest.raises(RuntimeError):
        pop.train_epoch()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_restore_mid_run_equals_uninterrupted(make_setup, cpu, tmp_path: Path,
                                                         optimizer) -> None:
    train = {**CLS_TRAIN, "optimizer": optimizer, "lr": 0.1 if optimizer == "sgd" else 0.005}
    setups = [make_setup(params={**p, "dropout": 0.2, "lr": train["lr"]}, train=train)
              for p in MEMBERS]
    straight = PopulationTrainer(setups, cpu)
    head = straight.train_epoch()
    straight.stop(2)
    rest = [straight.train_epoch(), straight.train_epoch()]

    first = PopulationTrainer(setups, cpu)
    assert first.train_epoch() == head
    first.stop(2)
    first.save(tmp_path)
    before = torch.get_rng_state()
    resumed = PopulationTrainer(setups, cpu)
    resumed.restore(tmp_path)
    assert (resumed.epoch, resumed.active) == (1, [0, 1, 3])
    assert [resumed.train_epoch(), resumed.train_epoch()] == rest  # bit-identical
    assert resumed.done
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone


def test_restore_refuses_other_setups_and_missing_file(make_setup, cpu, tmp_path) -> None:
    pop = PopulationTrainer([make_setup(train=CLS_TRAIN)], cpu)
    pop.save(tmp_path)
    other = PopulationTrainer([make_setup(model={"name": "mlp", "hidden_sizes": [8]},
                                          train=CLS_TRAIN)], cpu)
    with pytest.raises(ValueError, match="other setups"):
        other.restore(tmp_path)
    with pytest.raises(FileNotFoundError):
        pop.restore(tmp_path / "empty")


def test_member_state_dict_continues_as_an_unbatched_trainer(make_setup, cpu) -> None:
    setups = [make_setup(params=p, train=CLS_TRAIN) for p in MEMBERS[1:3]]
    for optimizer_train in ({**CLS_TRAIN}, {**CLS_TRAIN, "optimizer": "adam", "lr": 0.005}):
        setups = [make_setup(params={**p, "lr": optimizer_train["lr"]}, train=optimizer_train)
                  for p in MEMBERS[1:3]]
        pop = PopulationTrainer(setups, cpu)
        pop.train_epoch()
        trainer = Trainer(setups[1], cpu)
        trainer.load_state_dict(pop.member_state_dict(1))
        assert (trainer.epoch, trainer.step) == (pop.epoch, pop.step)
        tail = [trainer.train_epoch(), trainer.train_epoch()]
        _assert_close(_unbatched(setups[1], cpu)[1:], tail)


def test_compatibility_is_required_and_grouped(make_setup, cpu) -> None:
    a = make_setup(params={"reg_lambda": 1e-3}, train=CLS_TRAIN)
    b = make_setup(params={"lr": 0.05, "loss": "focal"}, train=CLS_TRAIN)
    other_batch = make_setup(params={"batch_size": 64}, train=CLS_TRAIN)
    other_seed = make_setup(train={**CLS_TRAIN, "seed": 4})
    other_dropout = make_setup(params={"dropout": 0.1}, train=CLS_TRAIN)
    assert group_compatible([a, other_batch, b, other_seed, other_dropout]) == [
        [0, 2], [1], [3], [4]]
    for bad in (other_batch, other_seed, other_dropout):
        with pytest.raises(ValueError, match="group_compatible"):
            PopulationTrainer([a, bad], cpu)
    with pytest.raises(ValueError, match="cannot be batched"):
        PopulationTrainer([make_setup(model={"name": "cnn"}, train=CLS_TRAIN)], cpu)
    with pytest.raises(ValueError, match="at least one"):
        PopulationTrainer([], cpu)


def test_diverging_member_does_not_break_the_others(make_setup, cpu) -> None:
    setups = [make_setup(params={"lr": 1e6}, train=CLS_TRAIN), make_setup(train=CLS_TRAIN)]
    got = _batched(PopulationTrainer(setups, cpu))
    bad = got[0][-1]
    assert not math.isfinite(bad["train_loss"]) or bad["train_loss"] > 1e3
    _assert_close(_unbatched(setups[1], cpu), got[1])
