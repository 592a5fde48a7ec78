"""Run the training command under an FSDP ``accelerate config`` on a machine without CUDA (2-process tests).

Usage: ``accelerate launch --config_file FSDP.yaml fsdp_training_script.py [training arguments...]``

Accelerate 1.15 turns an FSDP config into ``DistributedType.FSDP`` only for GPU-like backends: on CPU it picks the
gloo ``MULTI_CPU`` backend in ``PartialState._prepare_backend`` and the FSDP switch in ``AcceleratorState.__init__``
is never reached, so the config's FSDP settings would be ignored (plain DDP). torch's FSDP2 (``fully_shard``) itself
runs on CPU with gloo, so this script sets the state Accelerate would have set on a GPU (``distributed_type = FSDP``
and the plugin built from the launcher's ``FSDP_*`` variables, i.e. the config file) right after the
``Accelerator`` is built; everything after that (``prepare``, ``save_state``, ``load_state``, ``get_state_dict``) is
Accelerate's own FSDP2 code path.
"""

import os

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from diffusers_edm.training.train import main


def fsdp_on_cpu() -> None:
    original_init = Accelerator.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_STATE_DICT_TYPE, ... set by the launcher
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["fsdp_plugin"] = plugin

    Accelerator.__init__ = init


if __name__ == "__main__":
    import sys

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        fsdp_on_cpu()
    main(sys.argv[1:])
