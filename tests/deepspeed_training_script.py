"""Run the training command under a DeepSpeed ``accelerate config`` on a machine without CUDA (2-process tests).

Usage: ``DS_ACCELERATOR=cpu accelerate launch --config_file DEEPSPEED.yaml deepspeed_training_script.py [arguments...]``

DeepSpeed itself trains on CPU: its CPU accelerator (``DS_ACCELERATOR=cpu``) communicates with gloo when Intel's
oneCCL bindings are absent. Accelerate 1.15 does not hand it a working process group there: asked for the CPU
(``cpu=True``, what the command passes on a CPU-only multi-process launch) it never selects DeepSpeed, and not asked,
``PartialState._prepare_backend`` finds no GPU-like device and returns no backend, so each process believes it is
alone (``num_processes == 1``) after DeepSpeed has joined both to one gloo group. This script makes the two choices
Accelerate makes on a GPU machine: the command does not ask for the CPU, and ``_prepare_backend`` answers gloo for a
process of a launch. Everything after that (``prepare``, ``backward``, ``save_state``, ``load_state``,
``get_state_dict``) is Accelerate's own DeepSpeed code path.

It also marks DeepSpeed's shared-memory all-reduce op as unavailable: DeepSpeed would otherwise compile it (minutes)
at start-up, and it serves only ``inference_all_reduce``, which training does not call (DeepSpeed's documented
fallback is gloo's all-reduce).
"""

import os
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

import diffusers_edm.process_state
import diffusers_edm.training.train
from diffusers_edm.training.train import main


def deepspeed_on_cpu() -> None:
    original_prepare_backend = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, distributed_type = original_prepare_backend(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.NO and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return chosen, distributed_type

    PartialState._prepare_backend = prepare_backend
    diffusers_edm.process_state.multi_process_cpu = lambda: False
    diffusers_edm.training.train.multi_process_cpu = lambda: False

    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available():
        deepspeed_on_cpu()
    main(sys.argv[1:])
