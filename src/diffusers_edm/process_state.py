"""Which Accelerate backend a process of a multi-process launch uses, decided in one place for every command."""

from __future__ import annotations

import os

import torch
from accelerate import PartialState


def multi_process_cpu() -> bool:
    """Whether this process belongs to a multi-process launch on a machine without CUDA.

    Accelerate uses its multi-CPU (gloo) backend only when asked for the CPU (``cpu=True``); without it each process
    of ``accelerate launch --multi_gpu`` / torchrun on a CPU-only machine would run alone on all of the work.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> PartialState:
    """Accelerate's ``PartialState`` of this process (gloo on a CPU-only multi-process launch)."""
    return PartialState(cpu=multi_process_cpu())
