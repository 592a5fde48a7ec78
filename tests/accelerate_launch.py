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
