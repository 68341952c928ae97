"""SharedPrefixPopulation: a batched population that trains its members' shared prefix
once must report what PopulationTrainer reports, for less compute."""

from __future__ import annotations

import pytest
import torch

from tests.workers.training.test_training_population import _assert_close, _batched
from workers.training.population import PopulationTrainer
from workers.training.population_prefix import SharedPrefixPopulation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"epochs": 3, "batch_size": 128, "lr": 0.1, "seed": 3}
# 12 steps per epoch on digits at batch 128: 36 in all. Start steps spread over the run,
# one mid-epoch, one tie, one never reached; λ and l1_ratio differ, as do losses'
# parameters that only act after the start (focal γ is not the base loss here).
STARTS = [0, 5, 13, 13, 20, 30, 35, 60]


def _setups(make_setup, optimizer: str = "sgd", dropout: float = 0.0):
    lr = 0.1 if optimizer == "sgd" else 0.005
    return [make_setup(params={"reg_start_step": s, "reg_lambda": 1e-3 * (1 + i),
                               "l1_ratio": (i % 3) / 2, "smooth_l1_weight": 0.5 * (i % 2),
                               "lr": lr, "dropout": dropout, "focal_gamma": 0.5 + i},
                       train={**TRAIN, "optimizer": optimizer})
            for i, s in enumerate(STARTS)]


@pytest.mark.parametrize("optimizer,dropout", [("sgd", 0.0), ("adam", 0.25)])
def test_shared_prefix_population_matches_the_plain_population(make_setup, cpu, optimizer,
                                                               dropout) -> None:
    setups = _setups(make_setup, optimizer, dropout)
    shared = SharedPrefixPopulation(setups, cpu)
    assert shared.rows == 1 and shared.active == list(range(len(STARTS)))
    got = _batched(shared)
    expected = _batched(PopulationTrainer(setups, cpu))
    for i in range(len(STARTS)):
        _assert_close(expected[i], got[i])
    total = shared.epochs * shared.steps_per_epoch
    forks = [min(s, total) for s in STARTS]
    # The compute is the formula of workers.training.prefix: trunk + branches.
    assert shared.row_steps == max(forks) + sum(total - f for f in forks)
    assert shared.row_steps < len(STARTS) * total
    # the last member never started: it finishes on the trunk, unregularized
    assert got[7][-1]["reg_active"] == 0 and got[6][-1]["reg_active"] == 1
    assert shared.rows == 8  # seven forks, and the trunk, which is the last member's row


def test_stopping_a_waiting_member_or_the_trunk_keeps_the_rest_exact(make_setup, cpu) -> None:
    setups = _setups(make_setup)
    shared, plain = SharedPrefixPopulation(setups, cpu), PopulationTrainer(setups, cpu)
    first = dict(zip(shared.active, shared.train_epoch()))
    plain_first = dict(zip(plain.active, plain.train_epoch()))
    for member in (5, 7):  # 5 waits on the trunk; 7 carries the trunk (latest start)
        shared.stop(member)
        plain.stop(member)
    assert shared.active == plain.active == [0, 1, 2, 3, 4, 6]
    got, expected = _batched(shared), _batched(plain)
    for i in shared.active:
        _assert_close([plain_first[i]] + expected[i], [first[i]] + got[i])
    with pytest.raises(ValueError, match="not active"):
        shared.stop(5)


def test_members_must_share_their_prefix(make_setup, cpu) -> None:
    setups = _setups(make_setup)[:2]
    other = make_setup(params={"reg_start_step": 3, "lr": 0.05}, train=TRAIN)
    with pytest.raises(ValueError, match="prefix_key"):
        SharedPrefixPopulation([*setups, other], cpu)
    with pytest.raises(ValueError, match="not a shared-prefix"):
        SharedPrefixPopulation(setups, cpu).load_state_dict(
            PopulationTrainer(setups, cpu).state_dict())


def test_checkpoint_mid_run_continues_exactly(make_setup, cpu, tmp_path) -> None:
    """Saved after epoch 1 (some members forked, some waiting, one stopped), restored
    into a fresh population: the rest is what the uninterrupted run reports, bit for bit."""
    setups = _setups(make_setup)
    whole = SharedPrefixPopulation(setups, cpu)
    first = whole.train_epoch()
    whole.stop(3)
    whole.save(tmp_path)
    assert 1 < whole.rows < len(STARTS) and whole._pending  # mid-way through the forks
    restored = SharedPrefixPopulation(setups, cpu)
    restored.restore(tmp_path)
    assert restored.active == whole.active and restored.rows == whole.rows
    assert _batched(restored) == _batched(whole)
    assert restored.row_steps == whole.row_steps and restored.done
    assert len(first) == len(STARTS)


def test_a_waiting_member_exports_the_trunks_state(make_setup, cpu) -> None:
    setups = _setups(make_setup)
    shared = SharedPrefixPopulation(setups, cpu)
    shared.train_epoch()  # 12 steps: members starting at 13 and later still wait
    waiting, trunk = shared.member_state_dict(5), shared.member_state_dict(7)
    assert waiting.keys() == trunk.keys()
    assert all(torch.equal(waiting["model"][k], trunk["model"][k]) for k in trunk["model"])
    forked = shared.member_state_dict(0)
    assert any(not torch.equal(forked["model"][k], trunk["model"][k]) for k in trunk["model"])

