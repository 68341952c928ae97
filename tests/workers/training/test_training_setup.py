"""build_setup from spec + params, and the ready-made study specs."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest

from search_spaces import catalog, load_spec_file
from search_spaces.params import PARAMS
from workers.training import Trainer, TrialSetup, build_setup
from workers.training.setup import DATA_ROOT_ENV

SPECS = Path(__file__).resolve().parents[3] / "search_spaces"
STUDIES = ["study-002-losses-digits.yaml", "study-000-smooth-l1-midtraining.yaml",
           "study-004-lambda-grid.yaml"]


def test_build_setup_fields(make_spec, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    spec = make_spec(model={"hidden_sizes": [32, 16]},
                     train={"epochs": 3, "optimizer": "adam", "seed": 11, "lr": 0.01})
    params = spec.resolve_params({"reg_lambda": 0.01})
    setup = build_setup(spec, params)
    assert isinstance(setup, TrialSetup)
    assert (setup.task, setup.kind, setup.model) == ("digits", "classification", "mlp")
    assert setup.hidden_sizes == (32, 16) and setup.channels == (16, 32)
    assert (setup.optimizer, setup.epochs, setup.seed, setup.loss) == ("adam", 3, 11, "cross_entropy")
    assert set(setup.params) == set(PARAMS) and setup.params["reg_lambda"] == 0.01
    assert setup.params["lr"] == 0.01 and setup.data_root is None
    assert pickle.loads(pickle.dumps(setup)) == setup  # travels to Ray workers


def test_default_model_per_kind(make_spec) -> None:
    spec = make_spec(task="diabetes", objective={"loss": "mse", "metric": "val_rmse"},
                     model={})
    assert build_setup(spec, spec.resolve_params({})).model == catalog.DEFAULT_MODEL["regression"]
    spec = make_spec(model={})
    assert build_setup(spec, spec.resolve_params({})).model == catalog.DEFAULT_MODEL["classification"]


def test_data_root_from_env_or_argument(make_spec, monkeypatch, tmp_path) -> None:
    spec = make_spec()
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert build_setup(spec, spec.resolve_params({})).data_root == tmp_path
    assert build_setup(spec, spec.resolve_params({}), data_root=tmp_path / "x").data_root == tmp_path / "x"


def test_incomplete_or_invalid_params_refused(make_spec) -> None:
    spec = make_spec()
    params = spec.resolve_params({})
    with pytest.raises(ValueError, match="resolve_params"):
        build_setup(spec, {"reg_lambda": 0.1})
    with pytest.raises(ValueError, match="l1_ratio"):
        build_setup(spec, {**params, "l1_ratio": 2.0})
    with pytest.raises(ValueError, match="unknown loss"):
        build_setup(spec, {**params, "loss": "nope"})


def test_regression_loss_on_regression_only(make_spec) -> None:
    spec = make_spec(task="diabetes", objective={"loss": "mse", "metric": "val_rmse"}, model={})
    with pytest.raises(ValueError, match="does not apply to a regression"):
        build_setup(spec, {**spec.resolve_params({}), "loss": "focal"})


def test_table_setup_trains_from_data_root(make_spec, tmp_path, monkeypatch, cpu) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=np.where(x[:, 0] > 0, "pos", "neg"))
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "t.parquet")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    spec = make_spec(task="table", task_options={"path": "data/t.parquet", "target": "y"},
                     train={"epochs": 3, "batch_size": 16, "lr": 0.1})
    trainer = Trainer(build_setup(spec, spec.resolve_params({})), cpu)
    m = [trainer.train_epoch() for _ in range(3)][-1]
    assert m["step"] == 3 * catalog.steps_per_epoch(catalog.split_sizes(120, 0.2)[0], 16)
    assert m["val_accuracy"] > 0.8


@pytest.mark.parametrize("name", STUDIES)
def test_study_spec_validates_and_every_grid_point_builds(name: str) -> None:
    spec = load_spec_file(SPECS / name)
    assert spec.name == Path(name).stem and spec.search.algorithm == "grid"
    axes = spec.grid_axes()
    points = list(itertools.product(*axes.values()))
    assert spec.planned_trials() == len(points) == spec.search.num_trials
    for combo in points:
        setup = build_setup(spec, spec.resolve_params(dict(zip(axes, combo))))
        assert setup.epochs == spec.train.epochs


def test_study_002_compares_the_002_losses() -> None:
    spec = load_spec_file(SPECS / STUDIES[0])
    assert spec.grid_axes() == {"loss": ["l1", "cross_entropy", "focal"], "focal_gamma": [0.5, 2.0]}
    assert spec.objective.metric == "val_accuracy" and spec.task == "digits"
    assert (spec.train.batch_size, spec.train.epochs, spec.train.lr, spec.train.seed) == (128, 30, 0.1, 1)


def test_study_000_switches_mid_training(cpu) -> None:
    spec = load_spec_file(SPECS / STUDIES[1])
    assert spec.objective.loss == "mse" and spec.model.name == "linear"
    assert spec.constants()["smooth_l1_weight"] == 1.0 and "huber_delta" in spec.searched()
    info = catalog.TASKS[spec.task]
    total = spec.train.epochs * catalog.steps_per_epoch(info.train_size_bound(), spec.train.batch_size)
    starts = spec.grid_axes()["reg_start_step"]
    assert 0 in starts and any(0.4 * total <= s <= 0.6 * total for s in starts)
    setup = build_setup(spec, spec.resolve_params({"huber_delta": 1.0, "reg_start_step": 580}))
    first = Trainer(setup, cpu).train_epoch()  # also proves the objective metric is reported
    assert first["reg_active"] == 0 and spec.objective.metric in first


def test_study_004_is_a_log_lambda_grid() -> None:
    spec = load_spec_file(SPECS / STUDIES[2])
    axes = spec.grid_axes()
    assert axes["l1_ratio"] == [0.0, 0.5, 1.0]
    lams = axes["reg_lambda"]
    assert lams[0] == 0.0 and lams[1:] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    ratios = [b / a for a, b in zip(lams[1:], lams[2:])]
    assert ratios == pytest.approx([10.0] * len(ratios))


def test_study_trials_fit_the_cpu_budget() -> None:
    """A whole grid must run in minutes on 2 CPUs: bound the optimizer steps of each."""
    for name in STUDIES:
        spec = load_spec_file(SPECS / name)
        info = catalog.TASKS[spec.task]
        steps = spec.train.epochs * catalog.steps_per_epoch(info.train_size_bound(),
                                                            spec.train.batch_size)
        assert steps * spec.planned_trials() <= 20_000, name
