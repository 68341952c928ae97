"""The Trainer: metric keys, step counts, schedule, determinism and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from search_spaces import catalog
from workers.training import Trainer, select_device

CLS = {"objective": {"loss": "cross_entropy", "metric": "val_accuracy"}}
REG = {"task": "regression-outliers", "objective": {"loss": "mse", "metric": "val_rmse"},
       "model": {"name": "linear"}, "train": {"epochs": 4, "batch_size": 100, "lr": 0.01}}
COUNTERS = {"epoch", "step", "reg_active"}
#: Keys that report the schedule itself, so they differ between start steps by design.
SCHEDULE_KEYS = {"reg_active", "weight_l1_rel", "weight_l2_rel"}


def _without_schedule(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k not in SCHEDULE_KEYS}


def _metric_names(kind: str) -> set[str]:
    return {name for name, info in catalog.METRICS.items() if kind in info.kinds}


def _run(trainer: Trainer, epochs: int | None = None) -> list[dict[str, float]]:
    out = []
    while not trainer.done and (epochs is None or len(out) < epochs):
        out.append(trainer.train_epoch())
    return out


@pytest.mark.parametrize("sections,kind", [(CLS, "classification"), (REG, "regression")])
def test_metric_keys_steps_and_done(make_setup, cpu, sections, kind) -> None:
    setup = make_setup(**sections)
    trainer = Trainer(setup, cpu)
    per_epoch = catalog.steps_per_epoch(len(trainer.data.x_train), setup.params["batch_size"])
    history = _run(trainer)
    assert trainer.done and trainer.epoch == setup.epochs == len(history)
    for i, m in enumerate(history, start=1):
        assert set(m) == COUNTERS | _metric_names(kind)
        assert m["epoch"] == i and m["step"] == i * per_epoch
        assert m["loss_gap"] == pytest.approx(m["val_loss"] - m["train_loss"])
        assert all(isinstance(v, (int, float)) for v in m.values())
    assert trainer.step == setup.epochs * per_epoch
    with pytest.raises(RuntimeError):
        trainer.train_epoch()


def test_classifier_learns_and_train_loss_excludes_penalty(make_setup, cpu) -> None:
    setup = make_setup(params={"reg_lambda": 1e-3, "l1_ratio": 0.5}, **CLS)
    trainer = Trainer(setup, cpu)
    last = _run(trainer)[-1]
    assert last["val_accuracy"] > 0.8 and last["train_accuracy"] > 0.8
    plain = F.cross_entropy(trainer.predict(trainer.data.x_train), trainer.data.y_train)
    assert last["train_loss"] == pytest.approx(float(plain), rel=1e-5)


def test_penalty_exactly_zero_before_start_and_active_at_it(make_setup, cpu) -> None:
    """One step per epoch (full batch), so epoch k is step k-1: the start is observable."""
    train = {"epochs": 4, "batch_size": 2000, "lr": 0.5, "seed": 1}
    base = make_setup(train=train, **CLS)
    reg = make_setup(params={"reg_lambda": 0.05, "l1_ratio": 1.0, "reg_start_step": 2},
                     train=train, **CLS)
    a, b = _run(Trainer(base, cpu)), _run(Trainer(reg, cpu))
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    # bit-identical while the penalty is off (steps 0 and 1)
    assert [_without_schedule(m) for m in a[:2]] == [_without_schedule(m) for m in b[:2]]
    assert [m["reg_active"] for m in b] == [0, 0, 1, 1]
    assert b[2]["weight_l1"] < a[2]["weight_l1"]  # step 2 already felt it
    assert b[1]["weight_l1_rel"] == 1.0 and b[3]["weight_l1_rel"] < 1.0
    assert a[3]["weight_l1_rel"] != 1.0  # λ = 0 still tracks norms from the start step (0)


def test_smooth_l1_blend_waits_for_start_step(make_setup, cpu) -> None:
    train = {"epochs": 3, "batch_size": 1000, "lr": 0.05, "seed": 2}
    plain = make_setup(train=train, **{k: v for k, v in REG.items() if k != "train"})
    blend = make_setup(params={"smooth_l1_weight": 1.0, "huber_delta": 0.5, "reg_start_step": 1},
                       train=train, **{k: v for k, v in REG.items() if k != "train"})
    a, b = _run(Trainer(plain, cpu)), _run(Trainer(blend, cpu))
    assert _without_schedule(a[0]) == _without_schedule(b[0]) and b[0]["reg_active"] == 0
    assert a[1]["val_rmse"] != b[1]["val_rmse"] and b[1]["reg_active"] == 1


def test_strong_penalties_shrink_and_sparsify(make_setup, cpu) -> None:
    runs = {}
    for name, params in {"none": {}, "l2": {"reg_lambda": 0.05},
                         "l1": {"reg_lambda": 0.01, "l1_ratio": 1.0}}.items():
        runs[name] = _run(Trainer(make_setup(params=params, **CLS), cpu))[-1]
    assert runs["l2"]["weight_l2"] < 0.7 * runs["none"]["weight_l2"]
    assert runs["l1"]["weight_sparsity"] > runs["none"]["weight_sparsity"] + 0.1


@pytest.mark.parametrize("model", ["linear", "cnn"])
def test_other_models_train_on_digits(make_setup, cpu, model) -> None:
    setup = make_setup(model={"name": model, "channels": [16, 32]},
                       train={"epochs": 2, "batch_size": 64, "lr": 0.1})
    assert _run(Trainer(setup, cpu))[-1]["val_accuracy"] > 0.8


@pytest.mark.parametrize("sections", [CLS, REG])
def test_diverging_trial_reports_instead_of_crashing(make_setup, cpu, sections) -> None:
    train = {**sections.get("train", {"epochs": 4, "batch_size": 128}), "lr": 1e6}
    m = _run(Trainer(make_setup(**{**sections, "train": train}), cpu))[-1]
    objective = "val_accuracy" if sections is CLS else "val_rmse"
    assert m["epoch"] == 4 and objective in m
    assert not math.isfinite(m["train_loss"]) or m["train_loss"] > 1e3


def test_same_setup_same_metrics_even_interleaved(make_setup, cpu) -> None:
    setup = make_setup(params={"dropout": 0.3, "reg_lambda": 1e-3}, **CLS)
    a, b = Trainer(setup, cpu), Trainer(setup, cpu)
    before = torch.get_rng_state()
    history_a, history_b = [], []
    while not a.done:  # interleaved: each trainer must keep its own RNG streams
        history_a.append(a.train_epoch())
        torch.rand(100)  # the caller using the global RNG must not matter either
        history_b.append(b.train_epoch())
    assert history_a == history_b
    other = _run(Trainer(make_setup(params={"dropout": 0.3, "reg_lambda": 1e-3},
                                    train={"epochs": 4, "batch_size": 128, "lr": 0.1, "seed": 4},
                                    **CLS), cpu))
    assert other != history_a
    torch.rand(100)
    assert not torch.equal(torch.get_rng_state(), before)  # sanity of the check below
    c = Trainer(setup, cpu)
    state = torch.get_rng_state()
    c.train_epoch()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_restore_mid_trial_is_bit_identical(make_setup, cpu, tmp_path: Path, optimizer) -> None:
    params = {"dropout": 0.25, "reg_lambda": 1e-3, "l1_ratio": 0.5,
              "reg_start_step": 20, "reg_ramp_steps": 10}
    train = {"epochs": 4, "batch_size": 128, "lr": 0.05 if optimizer == "sgd" else 0.005,
             "optimizer": optimizer, "seed": 9}
    setup = make_setup(params=params, train=train, **CLS)
    straight = _run(Trainer(setup, cpu))

    first = Trainer(setup, cpu)
    head = _run(first, epochs=2)
    first.save(tmp_path)
    del first
    resumed = Trainer(setup, cpu)
    resumed.restore(tmp_path)
    assert (resumed.epoch, resumed.step) == (2, straight[1]["step"])
    tail = _run(resumed)
    assert head + tail == straight
    assert straight[1]["reg_active"] == 1 and straight[1]["weight_l1_rel"] != 1.0


def test_restore_regression_with_blend_via_state_dict(make_setup, cpu) -> None:
    setup = make_setup(params={"smooth_l1_weight": 0.5, "reg_start_step": 9, "reg_ramp_steps": 5},
                       **REG)
    straight = _run(Trainer(setup, cpu))
    first = Trainer(setup, cpu)
    head = _run(first, epochs=1)
    state = first.state_dict()
    _run(first)  # keep training the original: the saved state must not be aliased
    resumed = Trainer(setup, cpu)
    resumed.load_state_dict(state)
    assert head + _run(resumed) == straight


def test_restore_refuses_other_structure_and_missing_file(make_setup, cpu, tmp_path) -> None:
    trainer = Trainer(make_setup(**CLS), cpu)
    trainer.save(tmp_path)
    other = Trainer(make_setup(model={"name": "mlp", "hidden_sizes": [8]}, **CLS), cpu)
    with pytest.raises(ValueError, match="different"):
        other.restore(tmp_path)
    with pytest.raises(FileNotFoundError):
        trainer.restore(tmp_path / "empty")


def test_restore_applies_the_new_setups_learning_rate(make_setup, cpu, tmp_path) -> None:
    Trainer(make_setup(**CLS), cpu).save(tmp_path)
    faster = Trainer(make_setup(params={"lr": 0.01}, **CLS), cpu)
    faster.restore(tmp_path)
    assert all(g["lr"] == 0.01 for g in faster.optimizer.param_groups)


def test_default_device_and_data_placement(make_setup, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    trainer = Trainer(make_setup(**CLS))
    assert trainer.device.type == "cpu" and trainer.data.x_train.device.type == "cpu"
    assert next(trainer.model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trainer_deterministic_and_resumable(make_setup, tmp_path) -> None:
    setup = make_setup(params={"dropout": 0.3}, **CLS)
    device = torch.device("cuda")
    straight = _run(Trainer(setup, device))
    assert straight == _run(Trainer(setup, device))
    first = Trainer(setup, device)
    head = _run(first, epochs=2)
    first.save(tmp_path)
    resumed = Trainer(setup, device)
    resumed.restore(tmp_path)
    assert resumed.data.x_train.is_cuda and head + _run(resumed) == straight
