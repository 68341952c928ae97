"""Shared prefixes: the plan's tree, mid-epoch forks, and bit-identity with independent runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.training import Trainer
from workers.training.prefix import plan, prefix_key, run_plan
from workers.training.step_trainer import Snapshot, StepTrainer

#: 1437 digits training rows / 128 = 12 steps per epoch, 48 steps in all.
TRAIN = {"epochs": 4, "batch_size": 128, "lr": 0.1, "seed": 3}
STEPS_PER_EPOCH = 12
REG = {"task": "regression-outliers", "objective": {"loss": "mse", "metric": "val_rmse"},
       "model": {"name": "linear"}, "train": {"epochs": 3, "batch_size": 100, "lr": 0.01}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _independent(setup, cpu) -> list[dict[str, float]]:
    trainer = Trainer(setup, cpu)
    out = []
    while not trainer.done:
        out.append(trainer.train_epoch())
    return out


def _reg(start: int, **extra) -> dict:
    return {"reg_lambda": 1e-3, "l1_ratio": 0.5, "reg_start_step": start, **extra}


def test_plan_groups_forks_and_counts_steps(make_setup) -> None:
    setups = [make_setup(params=_reg(s), train=TRAIN) for s in (30, 5, 5, 60, 0)]
    setups.append(make_setup(params=_reg(17, reg_lambda=1e-2, reg_ramp_steps=4,
                                         smooth_l1_weight=0.3), train=TRAIN))
    setups.append(make_setup(params=_reg(17, lr=0.05), train=TRAIN))  # another trunk
    p = plan(setups)
    assert [g.members for g in p.groups] == [(0, 1, 2, 3, 4, 5), (6,)]
    g = p.groups[0]
    assert (g.steps_per_epoch, g.total_steps) == (STEPS_PER_EPOCH, 48)
    assert [(b.fork_step, b.members) for b in g.branches] == [
        (0, (4,)), (5, (1, 2)), (17, (5,)), (30, (0,))]  # identical setups share a branch
    assert g.on_trunk == (3,)  # starts after the last step: never regularized
    assert g.trunk.params["reg_start_step"] >= 48 and g.trunk.params["reg_lambda"] == 0.0
    assert g.trunk_steps == 48
    assert g.steps == 48 + (48 - 0) + (48 - 5) + (48 - 17) + (48 - 30)
    assert p.independent_steps == 7 * 48
    assert p.steps == g.steps + 48
    assert p.ratio == pytest.approx(p.steps / p.independent_steps)
    assert "fork at 5: trials [1, 2]" in p.describe()


def test_prefix_key_ignores_only_what_acts_after_the_start(make_setup) -> None:
    base = make_setup(train=TRAIN)
    same = [make_setup(params=_reg(9, reg_ramp_steps=5, smooth_l1_weight=0.5, huber_delta=0.2,
                                   focal_gamma=0.5), train=TRAIN)]
    differ = [make_setup(params={"lr": 0.05}, train=TRAIN),
              make_setup(params={"dropout": 0.1}, train=TRAIN),
              make_setup(params={"loss": "focal"}, train=TRAIN),
              make_setup(train={**TRAIN, "seed": 4}),
              make_setup(train={**TRAIN, "epochs": 5})]
    assert all(prefix_key(s) == prefix_key(base) for s in same)
    assert all(prefix_key(s) != prefix_key(base) for s in differ)
    focal = [make_setup(params={"loss": "focal", "focal_gamma": g}, train=TRAIN)
             for g in (1.0, 2.0)]
    assert prefix_key(focal[0]) != prefix_key(focal[1])  # γ shapes focal's loss from step 0
    adam = [make_setup(params={"momentum": m}, train={**TRAIN, "optimizer": "adam"})
            for m in (0.5, 0.9)]
    assert prefix_key(adam[0]) == prefix_key(adam[1])  # Adam ignores momentum


def test_run_plan_equals_independent_runs_bit_for_bit(make_setup, cpu) -> None:
    # mid-epoch forks (5, 17, 30), at an epoch boundary (12, 24), at 0, ramps, the blend,
    # dropout (the global RNG stream must survive the fork), a trial that never starts
    starts = (0, 5, 12, 17, 24, 30, 100)
    setups = [make_setup(params=_reg(s, dropout=0.2, reg_ramp_steps=s % 7), train=TRAIN)
              for s in starts]
    setups.append(make_setup(params=_reg(17, dropout=0.2, reg_lambda=0.0, smooth_l1_weight=1.0),
                             train=TRAIN))
    p = plan(setups)
    assert len(p.groups) == 1
    seen: list[tuple[int, int]] = []
    run = run_plan(p, on_epoch=lambda i, m: seen.append((i, int(m["epoch"]))), device=cpu)
    for i, setup in enumerate(setups):
        assert run.histories[i] == _independent(setup, cpu), f"trial {i}"
    assert sorted(seen) == [(i, e) for i in range(len(setups)) for e in range(1, 5)]
    assert run.steps == p.steps < p.independent_steps == run.independent_steps
    assert run.steps == 48 + sum(48 - s for s in (0, 5, 12, 17, 17, 24, 30))
    assert run.forks == 7 and run.evaluations < run.independent_evaluations
    assert run.histories[6][-1]["reg_active"] == 0 and run.histories[5][-1]["reg_active"] == 1


def test_regression_plan_with_blend_equals_independent(make_setup, cpu) -> None:
    # 900 rows / 100 = 9 steps per epoch
    setups = [make_setup(params={"smooth_l1_weight": 1.0, "huber_delta": d, "reg_start_step": s},
                         **REG) for d, s in ((0.5, 4), (1.0, 13), (2.0, 0), (1.0, 22))]
    run = run_plan(plan(setups), device=cpu)
    for i, setup in enumerate(setups):
        assert run.histories[i] == _independent(setup, cpu)
    assert run.steps == 22 + (27 - 4) + (27 - 13) + 27 + (27 - 22)  # trunk to the last fork


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fork_mid_epoch_through_disk_equals_an_independent_run(make_setup, cpu, tmp_path: Path,
                                                              optimizer) -> None:
    train = {**TRAIN, "optimizer": optimizer, "lr": 0.1 if optimizer == "sgd" else 0.005}
    target = make_setup(params=_reg(19, dropout=0.3, reg_ramp_steps=6), train=train)
    trunk = StepTrainer(make_setup(params={"dropout": 0.3, "reg_start_step": 48}, train=train),
                        cpu)
    epochs = trunk.run_to(19)  # 1 epoch + 7 steps into the second
    assert (trunk.step, trunk.epoch, len(epochs)) == (19, 1, 1)
    trunk.snapshot().save(tmp_path)
    trunk.run_to(30)  # training on must not change what was saved
    child = StepTrainer.fork(target, Snapshot.load(tmp_path), cpu)
    assert child.step == 19
    tail = child.run_to(10_000)  # capped at the last step
    assert child.done and child.steps_run == 48 - 19
    assert epochs + tail == _independent(target, cpu)


def test_in_memory_branch_equals_fork_and_leaves_the_trunk_alone(make_setup, cpu) -> None:
    train = {**TRAIN, "optimizer": "adam", "lr": 0.005}
    target = make_setup(params=_reg(23, dropout=0.3, smooth_l1_weight=0.5, huber_delta=0.2,
                                    reg_ramp_steps=3), train=train)
    trunk = StepTrainer(make_setup(params={"dropout": 0.3, "reg_start_step": 48}, train=train),
                        cpu)
    head = trunk.run_to(23)
    before = [p.detach().clone() for p in trunk.trainer.model.parameters()]
    branched = trunk.branch(target)
    forked = StepTrainer.fork(target, trunk.snapshot(), cpu)
    tail = branched.run_to(48)
    assert all(torch.equal(b, p) for b, p in zip(before, trunk.trainer.model.parameters()))
    assert branched.trainer.data is trunk.trainer.data  # shared, not reloaded
    assert head + tail == head + forked.run_to(48) == _independent(target, cpu)
    with pytest.raises(ValueError, match="prefix_key"):
        trunk.branch(make_setup(params={"lr": 0.01}, train=train))


def test_step_trainer_in_odd_chunks_equals_trainer(make_setup, cpu) -> None:
    setup = make_setup(params=_reg(7, dropout=0.25), train=TRAIN)
    runner = StepTrainer(setup, cpu)
    history = []
    for target in (1, 2, 13, 13, 20, 35, 48):
        history += runner.run_to(target)
    assert runner.steps_run == 48 and runner.evaluations == 4
    assert history == _independent(setup, cpu)


def test_early_stop_skips_forks_and_saves_steps(make_setup, cpu) -> None:
    setups = [make_setup(params=_reg(s), train=TRAIN) for s in (6, 20, 40)]

    def stop_after_first_epoch(i: int, metrics: dict[str, float]) -> bool:
        return not (i in (0, 2) and metrics["epoch"] == 1)

    run = run_plan(plan(setups), on_epoch=stop_after_first_epoch, device=cpu)
    assert [len(h) for h in run.histories] == [1, 4, 1]
    assert run.stopped == {0, 2}
    full = _independent(setups[1], cpu)
    assert run.histories[1] == full
    assert run.histories[0] == _independent(setups[0], cpu)[:1]
    # trial 0 forked at 6 and its branch stopped at step 12; trial 2 never forked
    assert run.forks == 2
    assert run.steps == 20 + (12 - 6) + (48 - 20)
    assert run.independent_steps == 12 + 48 + 12


def test_snapshot_load_refuses_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Snapshot.load(tmp_path)
    torch.save({"format": 99}, tmp_path / "snapshot.pt")
    with pytest.raises(ValueError, match="format"):
        Snapshot.load(tmp_path)


def test_run_plan_skips_trials_whose_outcome_is_known(make_setup, cpu) -> None:
    """A restarted run: skipped trials train nothing, the others exactly as before."""
    setups = [make_setup(params=_reg(s), train=TRAIN) for s in (6, 18, 30, 42)]
    p = plan(setups)
    whole = run_plan(p, device=cpu)
    again = run_plan(p, device=cpu, skip={2, 3})
    assert again.histories[2] == [] and again.histories[3] == []
    assert again.histories[:2] == whole.histories[:2]
    assert again.forks == 2 and again.steps == 18 + (48 - 6) + (48 - 18)
