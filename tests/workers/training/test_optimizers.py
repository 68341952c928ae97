"""The trainer's optimizers: torch's update rules bit for bit, without importing
torch._dynamo (about 1 s of CPU in every fresh trial process)."""

from __future__ import annotations

import copy
import inspect
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from workers.training.optimizers import EagerAdam, EagerSGD, apply_hyperparams, build_optimizer

REPO = Path(__file__).resolve().parents[3]
PAIRS = [(EagerSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
         (EagerAdam, torch.optim.Adam, {"lr": 0.01})]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1
           ) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 8, generator=generator)
        y = torch.randint(0, 3, (32,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _same(a: Any, b: Any) -> bool:
    """Equal state dicts, tensors compared bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.mark.parametrize("eager, torch_cls, kwargs", PAIRS, ids=["sgd", "adam"])
class TestEagerOptimizers:
    """Every eager optimizer against torch's own class."""

    def test_is_torchs_class(self, eager: type, torch_cls: type, kwargs: dict) -> None:
        assert issubclass(eager, torch_cls)

    def test_same_losses_weights_and_state(self, eager: type, torch_cls: type,
                                           kwargs: dict) -> None:
        mine, theirs = _model(), _model()
        opt_mine, opt_theirs = eager(mine.parameters(), **kwargs), \
            torch_cls(theirs.parameters(), **kwargs)
        assert _train(mine, opt_mine, 12) == _train(theirs, opt_theirs, 12)
        for p, q in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(p, q)
        assert _same(opt_mine.state_dict(), opt_theirs.state_dict())

    def test_state_dicts_load_either_way(self, eager: type, torch_cls: type,
                                         kwargs: dict) -> None:
        """A checkpoint written with torch's class resumes in the eager one and back."""
        model = _model()
        first = torch_cls(model.parameters(), **kwargs)
        _train(model, first, 3)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": first.state_dict()}, buffer)
        resumed = {}
        for cls in (eager, torch_cls):
            buffer.seek(0)
            state = torch.load(buffer)
            twin = _model(seed=5)
            twin.load_state_dict(state["model"])
            opt = cls(twin.parameters(), **kwargs)
            opt.load_state_dict(state["optimizer"])
            resumed[cls] = (_train(twin, opt, 4, seed=2), opt.state_dict())
        assert resumed[eager][0] == resumed[torch_cls][0]
        assert _same(resumed[eager][1], resumed[torch_cls][1])

    def test_step_runs_without_autograd_and_restores_it(self, eager: type, torch_cls: type,
                                                        kwargs: dict) -> None:
        """The undecorated update, run with autograd on, raises (an in-place update of a
        leaf that requires grad): a step that returns turned autograd off. Step hooks
        still run, and autograd is on again afterwards."""
        model = _model()
        opt = eager(model.parameters(), **kwargs)
        seen = []
        opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
        opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
        model(torch.randn(4, 8)).sum().backward()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(RuntimeError, match="in-place"):
            inspect.unwrap(torch_cls.step)(opt)
        opt.step()
        assert torch.is_grad_enabled() and seen == ["pre", "post"]
        assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))

    def test_closure_and_pickling(self, eager: type, torch_cls: type, kwargs: dict) -> None:
        model = _model()
        opt = eager(model.parameters(), **kwargs)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = model(torch.ones(2, 8)).pow(2).mean()
            loss.backward()
            return loss

        assert isinstance(opt.step(closure), torch.Tensor)
        clone = pickle.loads(pickle.dumps(opt))  # shared-prefix forks copy trainers
        assert type(clone) is eager and type(copy.deepcopy(opt)) is eager


def test_build_optimizer_gives_the_eager_classes() -> None:
    params = {"lr": 0.1, "momentum": 0.5}
    sgd = build_optimizer("sgd", _model().parameters(), params)
    adam = build_optimizer("adam", _model().parameters(), params)
    assert type(sgd) is EagerSGD and type(adam) is EagerAdam
    apply_hyperparams("sgd", sgd, {"lr": 0.2, "momentum": 0.7})
    assert sgd.param_groups[0]["lr"] == 0.2 and sgd.param_groups[0]["momentum"] == 0.7


SCRIPT = """
import json, sys, tempfile
from pathlib import Path
import torch
from search_spaces import SearchSpec
from workers.training import Trainer, build_setup

assert "torch._dynamo" not in sys.modules, "imported by torch itself"
out = {}
for optimizer in ("sgd", "adam"):
    spec = SearchSpec.model_validate({
        "name": "t", "task": "digits",
        "objective": {"loss": "cross_entropy", "metric": "val_accuracy"},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "optimizer": optimizer}})
    setup = build_setup(spec, spec.resolve_params({}))
    trainer = Trainer(setup, torch.device("cpu"))
    trainer.train_epoch()
    where = Path(tempfile.mkdtemp())
    trainer.save(where)
    again = Trainer(setup, torch.device("cpu"))
    again.restore(where)
    again.train_epoch()
    out[optimizer] = "torch._dynamo" in sys.modules
print(json.dumps(out))
"""


def test_training_a_trial_does_not_import_torch_dynamo() -> None:
    """A fresh process builds, trains, checkpoints and restores trainers with both
    optimizers; torch._dynamo stays unimported (torch.optim's own classes import it
    at their first ``add_param_group``). If torch reorganises its decorators, this
    fails: the eager classes still train right, but the import is back."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"sgd": False, "adam": False}
