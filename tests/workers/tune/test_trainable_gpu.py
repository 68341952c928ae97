"""Fractional GPUs: the per-trial CUDA memory cap (no GPU here: torch.cuda is faked)."""

from __future__ import annotations

import json

import torch

from search_spaces import load_spec
from workers.tune.trainable import limit_gpu_memory


def resources(**r):
    return load_spec(json.dumps({"name": "g", "task": "digits", "resources": r})).resources


def test_memory_fraction_defaults_to_the_gpu_share() -> None:
    assert resources(gpu=0.5).memory_fraction == 0.5
    assert resources(gpu=1).memory_fraction is None
    assert resources(gpu=0).memory_fraction is None
    assert resources(gpu=0.25, gpu_memory_fraction=0.4).memory_fraction == 0.4


def test_cap_is_applied_on_cuda_only(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append((fraction, str(device))))
    assert limit_gpu_memory(torch.device("cuda", 0), 0.5) is True
    assert calls == [(0.5, "cuda:0")]
    assert limit_gpu_memory(torch.device("cpu"), 0.5) is False
    assert limit_gpu_memory(torch.device("cuda", 0), None) is False
    assert calls == [(0.5, "cuda:0")]


def test_a_trial_runs_one_torch_thread_per_whole_cpu_it_holds(monkeypatch) -> None:
    """Set explicitly: a worker that imported torch before Ray set OMP_NUM_THREADS
    (a preloaded module, a setup hook) would otherwise use every core of the node."""
    from workers.tune.trainable import cpu_threads, prepare_worker

    assert [cpu_threads(c) for c in (0.25, 1, 2, 3.5)] == [1, 1, 2, 3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = torch.get_num_threads()
    try:
        spec = load_spec(json.dumps({"name": "t", "task": "digits",
                                     "resources": {"cpu": 2}}))
        torch.set_num_threads(1)
        assert prepare_worker(spec) == torch.device("cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
