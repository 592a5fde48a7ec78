"""Launching a test script under ``accelerate launch`` on CPU (gloo): a free port and a launch whose failure shows
the processes' output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH_TIMEOUT_S = 600

# Training options under which a sharded run (FSDP, DeepSpeed) and a DDP run can be told apart by weights compared to
# rtol 1e-4 / atol 1e-5. No learning-rate ramp: at the default ramp's first steps the weights would move by less than
# that tolerance (the tests assert that they move by far more). Adam's step m / (sqrt(v) + eps) is about +-lr for any
# gradient far above eps, however small, so a last-bit difference in a near-zero gradient (a GroupNorm weight's) would
# become a difference of order lr; eps = 1e-2 keeps such steps proportional to their gradient (the gradients that
# matter are of order 1: norms 160-320 over 42k weights). --max_grad_norm is above those norms, so no run clips.
MAX_GRAD_NORM = 1000.0
SHARDED_VS_DDP_ARGUMENTS = [
    "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "3", "--random_flip",
    "--max_grad_norm", str(MAX_GRAD_NORM), "--lr_rampup_kimg", "0", "--learning_rate", "1e-3", "--adam_epsilon", "1e-2",
]


def weights_move(before: dict, after: dict, tolerance: float = 1e-5) -> bool:
    """Whether some weight moved between two state dicts by far (100x) more than ``tolerance``."""
    return max((after[key] - before[key]).abs().max().item() for key in after) > 100 * tolerance


def free_port() -> int:
    """A TCP port nobody listens on now, for the rendezvous of one launch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: Path, launcher: list[str], arguments: list[str], **env: str) -> None:
    """``accelerate launch [launcher] script [arguments]`` offline, one thread per process, CUDA hidden (the CPU path
    also where a GPU is present), with ``env`` added; fails the test with the output's tail unless it exits 0."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", str(free_port()),
               str(script), *arguments]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    try:
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"") + (expired.stderr or b"")
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        pytest.fail(f"the launch took over {LAUNCH_TIMEOUT_S} s: {output[-4000:]}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
