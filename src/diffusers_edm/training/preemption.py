"""Preemption: SIGTERM or SIGUSR1 make the training command checkpoint and exit, with a status that says so.

Cluster schedulers (SLURM's ``--signal``, cloud spot instances) send one of these signals some time before they kill a
job. The handler installed here only records the signal: no I/O and no collective may run inside a signal handler
(it interrupts the main thread anywhere, possibly inside a collective). The training loop asks :meth:`PreemptionWatch.
requested` after each optimizer step; once it says yes, every process checkpoints that same step and the command exits
with :func:`preempted_exit_status` (``128 + the signal's number``: 143 for SIGTERM, 138 for SIGUSR1 on Linux), the
shell's status of a process ended by that signal, so that a job chain does not take a preempted run for a finished one.

Which step: one process alone reads its flag after every step (no synchronisation). Several processes must agree,
since a checkpoint is written by all of them together, and any one of them may have received the signal (SLURM
signals every task; a launcher may forward it to some only). They agree with Accelerate's ``set_trigger`` (on the
process that received it) and ``check_trigger`` (a collective with a host synchronisation, on all), every
``--preemption_check_steps`` optimizer steps, so at most that many steps pass between the signal and the checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
# The exit status of a preempted run is this plus the signal's number: the shell's convention for a process that a
# signal ended (143 for SIGTERM), which schedulers and job chains already read as "did not finish".
SIGNAL_EXIT_STATUS_BASE = 128


def preempted_exit_status(signum: int) -> int:
    """The training command's exit status after it checkpointed because of signal ``signum``."""
    return SIGNAL_EXIT_STATUS_BASE + int(signum)


class TrainingPreempted(Exception):
    """Raised by the training loop after the preemption checkpoint was written on every process."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint
        super().__init__(
            f"Preempted by {signal.Signals(self.signum).name}: stopped after optimizer step {step} and saved "
            f"{str(checkpoint)!r}; resume with the same arguments and --resume_from_checkpoint latest."
        )

    @property
    def exit_status(self) -> int:
        return preempted_exit_status(self.signum)


class PreemptionWatch:
    """Records :data:`PREEMPTION_SIGNALS` while :meth:`signals_caught` is active and tells the loop when to stop."""

    def __init__(self, accelerator: Accelerator, check_steps: int):
        if int(check_steps) < 1:
            raise ValueError(f"preemption check_steps must be an integer >= 1, got {check_steps!r}.")
        self.accelerator = accelerator
        self.check_steps = int(check_steps)
        self.received: int | None = None  # the first preemption signal this process received

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    @contextmanager
    def signals_caught(self) -> Iterator[PreemptionWatch]:
        """Install the recording handler for :data:`PREEMPTION_SIGNALS`; restore the previous handlers on exit."""
        if threading.current_thread() is not threading.main_thread():
            # Python delivers signals to the main thread only, and refuses to install handlers elsewhere.
            logger.warning("Training runs outside the main thread: SIGTERM / SIGUSR1 will not checkpoint it.")
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in PREEMPTION_SIGNALS}
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, self._record)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                # None: a handler installed outside Python, which cannot be reinstalled from here.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def requested(self, step: int) -> bool:
        """Whether all processes stop after optimizer ``step``; every process must call this after every step.

        One process: its own flag, every step. Several: ``check_trigger`` every ``check_steps`` steps only (it
        synchronises the host with the device and the processes with each other).
        """
        if self.accelerator.num_processes == 1:
            return self.received is not None
        if step % self.check_steps != 0:
            return False
        if self.received is not None:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def agreed_signal(self) -> int:
        """The signal every process reports as the cause, once :meth:`requested` said yes (the highest number if
        processes received different ones). A collective: every process calls it."""
        if self.accelerator.num_processes == 1:
            return int(self.received)
        received = torch.tensor([self.received or 0], device=self.accelerator.device)
        return int(self.accelerator.gather(received).max().item())
