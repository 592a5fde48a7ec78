"""Run by the training tests under a 2-process launcher: train, then record what this rank saw and holds.

Usage: multiprocess_training_script.py RANK_DIR [training arguments...]

Saved per rank (``RANK_DIR/rank<k>.pt``): the final weights, the data indices of each step, the number of processes,
how each ``DiTTransformer2DModel.forward`` call received its noise label (``"keyword"`` when passed as
``timestep=``, DiT's own argument name, ``"positional"`` otherwise) and the timestep sampler's state, if any.
"""

import os
import sys
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

import diffusers_edm.training.train as train_module


def main() -> None:
    rank_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    seen: list[list[int]] = []
    dit_timestep_passing: list[str] = []
    trainers = []
    original_step = train_module.Trainer._train_step
    original_dit_forward = DiTTransformer2DModel.forward

    def recording_step(self, batch):
        if not trainers:
            trainers.append(self)
        seen.append(batch["index"].tolist())
        return original_step(self, batch)

    def recording_dit_forward(self, hidden_states, *args, **kwargs):
        if self.training:
            dit_timestep_passing.append("keyword" if "timestep" in kwargs else "positional")
        return original_dit_forward(self, hidden_states, *args, **kwargs)

    train_module.Trainer._train_step = recording_step
    DiTTransformer2DModel.forward = recording_dit_forward
    result = train_module.main(argv)
    state = result.model.state_dict()
    sampler = getattr(trainers[0].recipe, "timestep_sampler", None) if trainers else None
    # Accelerate's end_training() has closed the process group by now; the launcher's variables remain.
    rank, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rank_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "weights": {k: v.cpu() for k, v in state.items()},
            "indices": seen,
            "num_processes": count,
            "dit_timestep_passing": dit_timestep_passing,
            "sampler_state": sampler.state_dict() if sampler is not None else None,
        },
        rank_dir / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main()
