"""Preemption (issue 15): on SIGTERM / SIGUSR1 the training command finishes the optimizer step, checkpoints it on every
process, and exits with 128 + the signal's number (the shell's status of a process a signal ended); a resume from that
checkpoint ends with weights, EMA and optimizer state bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_edm.training import train as train_module
from diffusers_edm.training.checkpoints import verify_checkpoint
from diffusers_edm.training.preemption import PreemptionWatch
from diffusers_edm.training.train import main
from tiny_training import reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# 6 steps, regular checkpoints at 2, 4, 6; a validation grid at step 3 (where the 1-process run is signalled).
RUN = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--logging_steps", "2", "--random_flip"]
SIGNAL_STEP = 3
# The shell's convention for "ended by signal N", stated here independently of the package.
EXPECTED_STATUS = {signal.SIGTERM: 128 + signal.SIGTERM.value, signal.SIGUSR1: 128 + signal.SIGUSR1.value}


class SignalReachedTheTest(Exception):
    """Raised by the test's own handler: training did not catch the signal."""


@pytest.fixture
def test_signal_handlers():
    """Handlers that fail the test instead of killing pytest (what SIGTERM's default action would do); the run must
    replace them while it trains and put them back when it returns."""

    def fail(signum, frame):
        raise SignalReachedTheTest(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, fail) for sig in EXPECTED_STATUS}
    yield fail
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def signal_after_step(monkeypatch, step: int, sig: signal.Signals) -> None:
    """Raise ``sig`` in this process right after optimizer step ``step`` has updated the weights."""
    original = train_module.Trainer._train_step

    def step_then_signal(self, batch):
        result = original(self, batch)
        if self.progress.global_step + 1 == step:  # the loop counts the step after _train_step returns
            signal.raise_signal(sig)
        return result

    monkeypatch.setattr(train_module.Trainer, "_train_step", step_then_signal)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Model weights, the package's states (EMA, learning-rate schedule, step) and the optimizer state, bit for bit."""
    for name in ("model.safetensors", "training_state.safetensors"):
        first, second = load_file(a / name), load_file(b / name)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), f"{name}: {key} differs"
    assert json.loads((a / "training_state.json").read_text()) == json.loads((b / "training_state.json").read_text())
    first = torch.load(a / "optimizer.bin", weights_only=True)
    second = torch.load(b / "optimizer.bin", weights_only=True)
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys() and first["state"]
    for index, state in first["state"].items():
        for key, value in state.items():
            assert torch.equal(value, second["state"][index][key]), f"optimizer state {index}.{key} differs"


def test_sigterm_checkpoints_the_step_exits_143_and_resumes_bit_identically(
    tmp_path, tiny_config, monkeypatch, test_signal_handlers, caplog
):
    straight = tmp_path / "straight"
    main(tiny_args(straight, tiny_config, *RUN))
    reset_accelerate_state()

    out = tmp_path / "preempted"
    with monkeypatch.context() as patch:
        signal_after_step(patch, SIGNAL_STEP, signal.SIGTERM)
        with pytest.raises(SystemExit) as caught:
            main(tiny_args(out, tiny_config, *RUN))
    assert caught.value.code == EXPECTED_STATUS[signal.SIGTERM] == 143
    assert any(  # what happened, and how to go on, is logged
        "SIGTERM" in r.getMessage() and f"checkpoint-{SIGNAL_STEP}" in r.getMessage() and "resume" in r.getMessage()
        for r in caplog.records if r.levelno == logging.WARNING
    )
    # the handlers in place before the run are back (a second SIGTERM would now reach the test's handler)
    assert all(signal.getsignal(sig) is test_signal_handlers for sig in EXPECTED_STATUS)
    # the current step was finished and checkpointed, as a regular checkpoint; nothing was exported
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2", f"checkpoint-{SIGNAL_STEP}"]
    verify_checkpoint(out / f"checkpoint-{SIGNAL_STEP}")
    state = json.loads((out / f"checkpoint-{SIGNAL_STEP}" / "training_state.json").read_text())
    assert state["progress"]["global_step"] == SIGNAL_STEP
    assert not (out / "model_index.json").exists() and not list(out.glob(".export*"))

    reset_accelerate_state()
    result = main(tiny_args(out, tiny_config, *RUN, "--resume_from_checkpoint", "latest"))
    assert result.global_step == 6
    assert_same_checkpoint(straight / "checkpoint-6", out / "checkpoint-6")
    exported = "denoiser/diffusion_pytorch_model.safetensors"
    first, second = load_file(straight / exported), load_file(out / exported)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_sigusr1_on_a_checkpoint_step_exits_138_with_that_checkpoint(
    tmp_path, tiny_config, monkeypatch, test_signal_handlers
):
    out = tmp_path / "preempted"
    signal_after_step(monkeypatch, 2, signal.SIGUSR1)  # a regular checkpoint step: written once, not twice
    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, *RUN))
    assert caught.value.code == EXPECTED_STATUS[signal.SIGUSR1]
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2"]
    verify_checkpoint(out / "checkpoint-2")
    assert all(signal.getsignal(sig) is test_signal_handlers for sig in EXPECTED_STATUS)


class CountingAccelerator:
    """Stands in for Accelerate's trigger pair: counts the collectives and reports a trigger set on any process."""

    def __init__(self, num_processes: int):
        self.num_processes, self.checks, self.flag = num_processes, [], False

    def set_trigger(self):
        self.flag = True

    def check_trigger(self):
        self.checks.append(True)
        fired, self.flag = self.flag, False
        return fired


@pytest.mark.parametrize("num_processes", [1, 2])
def test_processes_synchronise_only_every_check_steps_and_one_process_never(num_processes, test_signal_handlers):
    accelerator = CountingAccelerator(num_processes)
    watch = PreemptionWatch(accelerator, check_steps=4)
    with watch.signals_caught():
        assert not any(watch.requested(step) for step in range(1, 10))
        signal.raise_signal(signal.SIGTERM)  # recorded only: nothing raised here
        stops = [step for step in range(10, 17) if watch.requested(step)]
    assert watch.received == signal.SIGTERM
    if num_processes == 1:  # its own flag, read after the very next step; no collective at all
        assert stops == list(range(10, 17)) and accelerator.checks == []
    else:  # check_trigger at steps 4, 8, 12 and 16 only: the first agreement after the signal is step 12
        assert stops[0] == 12 and len(accelerator.checks) == 4
    assert all(signal.getsignal(sig) is test_signal_handlers for sig in EXPECTED_STATUS)


# ------------------------------------------------------------------------------------------------ 2 processes
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(rank_dir: Path, signal_step: int, args: list[str]) -> subprocess.CompletedProcess:
    script = Path(__file__).with_name("multiprocess_preemption_script.py")
    command = [
        # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA the script runs it on gloo/CPU
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(rank_dir), str(signal_step), *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


def test_two_processes_agree_on_the_step_when_only_rank_0_is_signalled(tmp_path, tiny_config):
    # Rank 0 alone receives SIGTERM after step 3; the processes compare flags every 2 steps, so both stop after 4.
    run = ["--max_train_steps", "6", "--checkpointing_steps", "6", "--validation_steps", "1000",
           "--preemption_check_steps", "2", "--report_to", "none"]
    straight = tmp_path / "straight"
    finished = launch_two_processes(tmp_path / "ranks-straight", 0, tiny_args(straight, tiny_config, *run))
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]

    out = tmp_path / "preempted"
    stopped = launch_two_processes(tmp_path / "ranks-preempted", 3, tiny_args(out, tiny_config, *run))
    log = (stopped.stdout + stopped.stderr)[-4000:]
    assert stopped.returncode != 0, log  # the launcher reports its failed processes; never success
    ranks = [json.loads((tmp_path / "ranks-preempted" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [rank["signalled"] for rank in ranks] == [True, False], log
    assert [rank["exit_status"] for rank in ranks] == [143, 143], log
    assert [rank["stopped_after_step"] for rank in ranks] == [4, 4], log
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-4"]
    verify_checkpoint(out / "checkpoint-4")
    assert {p.name for p in (out / "checkpoint-4").glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    resumed = launch_two_processes(
        tmp_path / "ranks-resumed", 0, tiny_args(out, tiny_config, *run, "--resume_from_checkpoint", "latest")
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert_same_checkpoint(straight / "checkpoint-6", out / "checkpoint-6")
