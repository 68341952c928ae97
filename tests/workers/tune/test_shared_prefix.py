"""search.share_prefixes: a population trial trains shared prefixes once and reports
every member's every epoch as independent training gives it: exactly with
exact_prefixes, within the population tolerance when the group is batched (default).

In-process (no Ray): ``train_members`` is fed to the driver's own per-unit dedup
(``reporting._Units`` through ``member_units``), so what is checked is what the
callbacks would write to MLflow and the store.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from search_spaces import SearchSpec
from workers.training import Trainer, build_setup
from workers.tune.population import MEMBERS, member_results
from workers.tune.reporting import _Units
from workers.tune.shared_prefix import ArrivalRungs, SharedProgress, train_members
from workers.tune.space import trial_params

#: digits, 1437 training rows / 256 = 6 steps per epoch, 3 epochs = 18 steps.
T = 18


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(scheduler: str = "none", epochs: int = 3, exact: bool = True) -> SearchSpec:
    return SearchSpec.model_validate({
        "name": "shared", "task": "digits", "objective": {"metric": "val_accuracy"},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": epochs, "batch_size": 256, "lr": 0.2, "seed": 1},
        "space": {"reg_start_step": {"low": 0, "high": 17, "type": "int"},
                  "reg_lambda": {"low": 1e-4, "high": 1e-2, "log": True},
                  "l1_ratio": 0.5},
        "search": {"algorithm": "random", "population": 8, "share_prefixes": True,
                   "exact_prefixes": exact, "scheduler": scheduler, "grace_period": 1, "reduction_factor": 2}})


@dataclass
class _Trial:
    trial_id: str
    config: dict[str, Any]


class _Recorder:
    """What the driver's callbacks would record: per unit, each fresh (epoch, metrics)."""

    def __init__(self, spec: SearchSpec, configs: list[dict[str, Any]]) -> None:
        self.spec, self.trial = spec, _Trial("t0", {MEMBERS: configs})
        self.units = _Units()
        self.records: dict[str, list[tuple[int, dict[str, float]]]] = {}
        self.results: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[int, SharedProgress]] = []
        self.progress: SharedProgress | None = None

    def emit(self, result: dict[str, Any], save: bool) -> None:
        assert self.spec.objective.metric in result  # Tune needs the metric in every result
        self.results.append(copy.deepcopy(result))
        if save:
            assert self.progress is not None
            self.checkpoints.append((len(self.results), copy.deepcopy(self.progress)))
        self.record(result)

    def record(self, result: dict[str, Any]) -> None:
        for unit, _, metrics, epoch in self.units.fresh(self.spec, self.trial, result):
            assert int(metrics["epoch"]) == epoch
            self.records.setdefault(unit, []).append((epoch, dict(metrics)))

    def run(self, setups: list[Any], progress: SharedProgress | None = None) -> Any:
        self.progress = progress or SharedProgress()
        return train_members(self.spec, setups, torch.device("cpu"), self.emit, self.progress)


def _independent(setup: Any) -> list[dict[str, float]]:
    trainer = Trainer(setup, torch.device("cpu"))
    return [trainer.train_epoch() for _ in range(setup.epochs)]


def _configs(starts: list[int], lambdas: list[float], **extra: Any) -> list[dict[str, Any]]:
    return [{"reg_start_step": s, "reg_lambda": lam, **extra} for s, lam in zip(starts, lambdas)]


def _setups(spec: SearchSpec, configs: list[dict[str, Any]]) -> list[Any]:
    return [build_setup(spec, trial_params(spec, c)) for c in configs]


def _asha_run(exact: bool) -> tuple[SearchSpec, list, list, "_Recorder", Any]:
    """8 members under ASHA over 4 epochs, run whole; checks that stops happen at rungs."""
    spec = _spec("asha", epochs=4, exact=exact)
    starts = [2, 5, 8, 14, 20, 23, 9, 30]
    configs = _configs(starts, [1e-2, 1e-4, 3e-2, 1e-3, 1e-2, 1e-4, 3e-2, 1e-3])
    setups = _setups(spec, configs)
    whole = _Recorder(spec, configs)
    stats = whole.run(setups)
    lengths = {u: len(r) for u, r in whole.records.items()}
    assert len(lengths) == 8 and min(lengths.values()) < 4 and max(lengths.values()) == 4
    assert all(n in (1, 2, 4) for n in lengths.values())  # stops happen at rungs
    return spec, configs, setups, whole, stats


def test_every_member_and_epoch_is_reported_exactly_as_independent_training() -> None:
    spec = _spec()
    starts = [0, 3, 6, 7, 11, 12, 17, 40]  # mid-epoch forks, a boundary, one never starting
    configs = _configs(starts, [1e-3, 1e-2, 1e-3, 3e-3, 1e-4, 1e-2, 1e-3, 1e-3])
    setups = _setups(spec, configs)
    recorder = _Recorder(spec, configs)
    stats = recorder.run(setups)
    assert stats.shared_members == list(range(8)) and not stats.batched_members
    for i, setup in enumerate(setups):
        alone = _independent(setup)
        got = recorder.records[f"t0-m{i}"]
        assert [e for e, _ in got] == [1, 2, 3]
        assert [m for _, m in got] == alone  # bit-identical, every metric
    # One trunk to step 17 (the 40 finishes on it: the trunk runs all 18), then branches.
    forks = [min(s, T) for s in starts]
    assert stats.steps == T + sum(T - f for f in forks if f < T)
    assert stats.independent_steps == 8 * T
    final = recorder.results[-1]
    assert final["prefix_steps"] == stats.steps and final["members_active"] == 0
    assert final[spec.objective.metric] == max(m["val_accuracy"]
                                                for m in member_results(final).values())


def test_members_that_cannot_share_train_batched_beside_the_shared_ones() -> None:
    spec = _spec()
    configs = _configs([6, 12, 9, 9], [1e-3, 1e-3, 1e-3, 1e-3])
    configs[2]["lr"], configs[3]["lr"] = 0.05, 0.1  # alone in their prefix groups
    setups = _setups(spec, configs)
    recorder = _Recorder(spec, configs)
    stats = recorder.run(setups)
    assert stats.shared_members == [0, 1] and stats.batched_members == [2, 3]
    for i, setup in enumerate(setups):
        alone = _independent(setup)
        got = [m for _, m in recorder.records[f"t0-m{i}"]]
        if i in (0, 1):
            assert got == alone
        else:  # batched: equal within the population trainer's tolerance
            for a, b in zip(got, alone):
                for key in a:
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_arrival_rungs_follow_ashas_cutoff() -> None:
    rungs = ArrivalRungs(_spec("asha", epochs=8), SharedProgress())
    assert rungs.rung_epochs == {1, 2, 4}
    assert rungs.keep(0, 1, {"val_accuracy": 0.5})  # first at the rung: nothing to beat
    assert rungs.keep(1, 1, {"val_accuracy": 0.6})
    assert not rungs.keep(2, 1, {"val_accuracy": 0.4})  # below the median of 0.5, 0.6
    assert rungs.keep(3, 1, {"val_accuracy": 0.55})
    assert rungs.keep(3, 1, {"val_accuracy": 0.0})  # recorded already: its decision holds
    assert rungs.keep(2, 3, {"val_accuracy": 0.0})  # not a rung


def test_early_stopped_members_end_at_rungs_and_a_restart_skips_finished_members(
        tmp_path: Path) -> None:
    spec, configs, setups, whole, stats = _asha_run(exact=True)
    for i, setup in enumerate(setups):
        alone = _independent(setup)
        got = [m for _, m in whole.records[f"t0-m{i}"]]
        assert got == alone[:len(got)]
        assert [e for e, _ in whole.records[f"t0-m{i}"]] == list(range(1, len(got) + 1))
    assert stats.steps < stats.independent_steps

    # The trial dies two results after its middle checkpoint; Ray restarts it from
    # that checkpoint, reporting to the same callbacks.
    assert len(whole.checkpoints) >= 2
    at, saved = whole.checkpoints[len(whole.checkpoints) // 2]
    saved.save(tmp_path)
    assert SharedProgress.load(tmp_path) == saved  # the checkpoint's JSON round trip
    restarted = _Recorder(spec, configs)
    for result in whole.results[:at + 2]:
        restarted.record(result)
    again = restarted.run(setups, copy.deepcopy(saved))
    assert saved.done and again.steps < stats.steps  # finished members are not retrained
    assert restarted.records == whole.records  # the same outcome, every epoch once


def _close(got: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert set(a) == set(b) and (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_batched_groups_report_every_member_within_tolerance_for_the_same_steps() -> None:
    """The default: a prefix group trains as one batched population forking rows off a
    batched trunk, for the compute of the exact plan and several times less time."""
    spec = _spec(exact=False)
    starts = [0, 3, 6, 7, 11, 12, 17, 40]
    configs = _configs(starts, [1e-3, 1e-2, 1e-3, 3e-3, 1e-4, 1e-2, 1e-3, 1e-3])
    setups = _setups(spec, configs)
    recorder = _Recorder(spec, configs)
    stats = recorder.run(setups)
    assert stats.shared_members == list(range(8)) and not stats.batched_members
    assert "batched with shared prefixes" in stats.plan
    for i, setup in enumerate(setups):
        got = recorder.records[f"t0-m{i}"]
        assert [e for e, _ in got] == [1, 2, 3]
        _close([m for _, m in got], _independent(setup))
    forks = [min(s, T) for s in starts]
    assert stats.steps == T + sum(T - f for f in forks if f < T)  # the same member-steps
    assert stats.independent_steps == 8 * T
    final = recorder.results[-1]
    assert final["prefix_steps"] == stats.steps and final["members_active"] == 0


def test_batched_groups_stop_at_rungs_and_a_restart_skips_finished_members(
        tmp_path: Path) -> None:
    spec, configs, setups, whole, stats = _asha_run(exact=False)
    for i, setup in enumerate(setups):
        got = [m for _, m in whole.records[f"t0-m{i}"]]
        _close(got, _independent(setup)[:len(got)])
    assert stats.steps < stats.independent_steps
    at, saved = whole.checkpoints[len(whole.checkpoints) // 2]
    restarted = _Recorder(spec, configs)
    for result in whole.results[:at + 2]:
        restarted.record(result)
    again = restarted.run(setups, copy.deepcopy(saved))
    assert saved.done and again.steps < stats.steps
    assert {u: [e for e, _ in r] for u, r in restarted.records.items()} == \
        {u: [e for e, _ in r] for u, r in whole.records.items()}
    for unit, records in whole.records.items():
        _close([m for _, m in restarted.records[unit]], [m for _, m in records])
