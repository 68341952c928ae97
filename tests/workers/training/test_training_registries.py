"""Registries implement exactly the catalogue's names; plugins arrive via entry points."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from search_spaces import catalog
from workers.training import Trainer
from workers.training.losses import LOSSES, build_loss
from workers.training.models import MODELS, ModelShape, build_model
from workers.training.optimizers import OPTIMIZERS
from workers.training.tasks import TASKS, load_task, plugin_entry_points

PACKAGE = Path(__file__).resolve().parents[3] / "workers" / "training"


def test_registries_match_catalog() -> None:
    assert set(LOSSES) == set(catalog.LOSSES)
    assert set(MODELS) == set(catalog.MODELS)
    assert set(OPTIMIZERS) == set(catalog.OPTIMIZERS)
    assert set(TASKS) == set(catalog.TASKS)


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_each_loss_builds_for_exactly_its_kinds(name: str, kind: str) -> None:
    params = {"huber_delta": 1.0, "focal_gamma": 2.0, "focal_alpha": 1.0}
    if kind not in catalog.LOSSES[name]:
        with pytest.raises(ValueError):
            build_loss(name, kind, params)
        return
    fn = build_loss(name, kind, params)
    if kind == "classification":
        out = fn(torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]))
    else:
        out = fn(torch.randn(5, 1), torch.randn(5))
    assert out.shape == (5,) and bool((out >= 0).all())


@pytest.mark.parametrize("name", sorted(catalog.MODELS))
def test_each_model_maps_flat_rows_to_outputs(name: str) -> None:
    shape = ModelShape(in_features=64, n_outputs=10, image_shape=(1, 8, 8),
                       hidden_sizes=(8, 8), channels=(4, 4, 4), dropout=0.2)
    assert build_model(name, shape)(torch.randn(3, 64)).shape == (3, 10)


def test_cnn_refuses_non_image_data() -> None:
    with pytest.raises(ValueError, match="image"):
        build_model("cnn", ModelShape(in_features=10, n_outputs=2))


FIXED_TASKS = sorted(n for n, info in catalog.TASKS.items() if info.n_samples is not None)


@pytest.mark.parametrize("name", FIXED_TASKS)
def test_builtin_task_kind_matches_catalog(name: str) -> None:
    data = load_task(name).load({}, None)
    assert data.kind == catalog.TASKS[name].kind
    assert (data.image_shape is not None) == catalog.TASKS[name].image


# --- plugins ---------------------------------------------------------------------

PLUGIN_MODULE = '''
import torch
from workers.training.tasks.base import TaskData

class Toy:
    name = "toy-xor"
    def load(self, options, data_root):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(200, 2, generator=g)
        y = ((x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)).long()
        return TaskData("classification", x[:160], y[:160], x[160:], y[160:], n_classes=2)

def make_task():
    return Toy()
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real distribution on sys.path declaring a ``regtune.tasks`` entry point."""
    (tmp_path / "regtune_toy_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "regtune_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: regtune-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{catalog.TASK_ENTRY_POINT_GROUP}]\ntoy-xor = regtune_toy_plugin:make_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog.plugin_task_names.cache_clear()
    yield "toy-xor"
    catalog.plugin_task_names.cache_clear()
    sys.modules.pop("regtune_toy_plugin", None)


def test_plugin_task_discovered_from_dist_info_and_trains(installed_plugin: str, make_setup,
                                                          cpu: torch.device) -> None:
    assert installed_plugin in plugin_entry_points()
    assert installed_plugin in catalog.task_names()  # the spec validator sees it too
    setup = make_setup(task=installed_plugin, train={"epochs": 1, "batch_size": 32})
    metrics = Trainer(setup, cpu).train_epoch()
    assert metrics["step"] == catalog.steps_per_epoch(160, 32)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def test_plugin_lookup_uses_entry_points_group(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    class FakeEntryPoint:
        name = "fake"

        def load(self):
            return lambda: object()  # a factory returning a non-task

    def fake_entry_points(*, group: str):
        seen.append(group)
        return [FakeEntryPoint()]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    with pytest.raises(TypeError, match="no load"):
        load_task("fake")
    assert seen and set(seen) == {catalog.TASK_ENTRY_POINT_GROUP}
    with pytest.raises(ValueError, match="unknown task"):
        load_task("not-installed")


def test_plugin_cannot_shadow_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    class Shadow:
        name = "digits"

        def load(self):
            raise AssertionError("a plugin must never replace a built-in task")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda *, group: [Shadow()])
    assert "digits" not in plugin_entry_points()
    assert type(load_task("digits")).__name__ == "DigitsTask"


# --- import hygiene ----------------------------------------------------------------

FORBIDDEN = {"ray", "mlflow", "service", "fastapi"}


def test_package_source_never_imports_ray_mlflow_service_fastapi() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_package_loads_none_of_them() -> None:
    code = textwrap.dedent(f"""
        import sys
        import workers.training, workers.training.trainer, workers.training.tasks
        bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})
        print(bad)
        sys.exit(1 if bad else 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
