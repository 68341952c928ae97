"""Fixtures shared by the training and Tune tests."""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a shared 2-core machine a
    second OpenMP thread mostly waits at barriers (seconds per test under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
