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
