"""Run by tests/test_learned_variance_resampler.py under `accelerate launch --num_processes 2 --cpu`.

Each rank records batches of its own (different sizes and values) through
``LossSecondMomentTimestepSampler.update_with_local_losses``; afterwards it saves its sampler state and
its local batches to ``<out_dir>/rank<k>.pt`` so the test can check that all ranks agree.
"""

import sys

import torch
from accelerate import Accelerator

from diffusers_edm.training.timestep_samplers import LossSecondMomentTimestepSampler

NUM_TIMESTEPS = 8
NUM_UPDATES = 30


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    sampler = LossSecondMomentTimestepSampler(NUM_TIMESTEPS)
    generator = torch.Generator().manual_seed(1234 + rank)
    local_batches = []
    for _ in range(NUM_UPDATES):
        batch_size = 3 + rank  # uneven batch sizes exercise the padding of the gather
        timesteps = torch.randint(0, NUM_TIMESTEPS, (batch_size,), generator=generator)
        losses = torch.rand(batch_size, generator=generator, dtype=torch.float64) * (1 + timesteps)
        local_batches.append((timesteps.clone(), losses.clone()))
        sampler.update_with_local_losses(timesteps, losses, accelerator)
    torch.save(
        {"state": sampler.state_dict(), "probabilities": sampler.probabilities(), "local_batches": local_batches},
        f"{out_dir}/rank{rank}.pt",
    )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
