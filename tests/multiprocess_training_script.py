"""Run by test_training_script.py under a 2-process launcher: train, then record what this rank saw and holds.

Usage: multiprocess_training_script.py RANK_DIR [training arguments...]
"""

import os
import sys
from pathlib import Path

import torch

import diffusers_edm.training.train as train_module


def main() -> None:
    rank_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    seen: list[list[int]] = []
    original_step = train_module.Trainer._train_step

    def recording_step(self, batch):
        seen.append(batch["index"].tolist())
        return original_step(self, batch)

    train_module.Trainer._train_step = recording_step
    result = train_module.main(argv)
    state = result.model.state_dict()
    # Accelerate's end_training() has closed the process group by now; the launcher's variables remain.
    rank, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rank_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": {k: v.cpu() for k, v in state.items()}, "indices": seen, "num_processes": count},
               rank_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
