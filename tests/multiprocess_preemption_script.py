"""Run by the preemption test under a 2-process launcher: train, sending SIGTERM to rank 0 only after a chosen step.

Usage: multiprocess_preemption_script.py RANK_DIR SIGNAL_STEP [training arguments...]   (SIGNAL_STEP 0: no signal)

Writes ``RANK_DIR/rank<k>.json``: whether this rank was signalled, its exit status and the step it stopped after.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import diffusers_edm.training.train as train_module


def main() -> None:
    rank_dir, signal_step, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rank, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    trainers, signalled = [], []
    original_step = train_module.Trainer._train_step

    def step_then_signal(self, batch):
        if not trainers:
            trainers.append(self)
        result = original_step(self, batch)
        if rank == 0 and self.progress.global_step + 1 == signal_step:
            signalled.append(True)
            signal.raise_signal(signal.SIGTERM)
        return result

    train_module.Trainer._train_step = step_then_signal
    status = 0
    try:
        train_module.main(argv)
    except SystemExit as stop:
        status = stop.code
    rank_dir.mkdir(parents=True, exist_ok=True)
    record = {"signalled": bool(signalled), "exit_status": status, "stopped_after_step": trainers[0].progress.global_step}
    (rank_dir / f"rank{rank}.json").write_text(json.dumps(record))
    # Exit only once every rank has written its record: the launcher stops the other processes as soon as one of them
    # exits with a failure status.
    deadline = time.monotonic() + 60
    while len(list(rank_dir.glob("rank*.json"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(status)


if __name__ == "__main__":
    main()
