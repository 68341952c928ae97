"""Which device a trial trains on.

Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it granted a trial, so inside a
trial "the" CUDA device (``cuda`` = index 0 of the visible ones) is the trial's
own GPU; a trial granted no GPU sees none and trains on the CPU. Nothing here
asks Ray anything: the environment already says it.
"""

from __future__ import annotations

import torch


def select_device() -> torch.device:
    """CUDA when this process can see a GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
