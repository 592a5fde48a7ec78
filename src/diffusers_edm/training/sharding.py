"""Training with the model sharded across processes: Accelerate's FSDP2 (``fsdp_version: 2`` in an ``accelerate
config`` file), selected by ``accelerate launch --config_file configs/accelerate/fsdp2_*.yaml``.

Under FSDP2 every parameter is a ``DTensor`` of which each process holds one shard (dim 0, ``Shard(0)``). What the
loop keeps beside the model follows the same split, so no process ever holds a full copy while training:

- the EMA averages the *local shards* (:func:`local_shards`: views that share the parameters' storage, so the
  optimizer's in-place updates are what the EMA reads, and ``copy_to`` writes into the sharded parameters); its
  update is the same elementwise lerp as unsharded (EDM, Karras et al. 2022, Appendix F), so the average of a shard
  is the shard of the average;
- checkpoints hold Accelerate's sharded model and optimizer (``accelerator.save_state``: torch.distributed.checkpoint
  folders) and, per process, the EMA's shards (``training_state_rank<k>.*``, :func:`rank_state_stem`);
- the export gathers the full weights once (:func:`gathered_model`: ``accelerator.get_state_dict`` on every process,
  the full model rebuilt on the main process only), so the pipeline folder is one full safetensors folder.

DeepSpeed configs are accepted by Accelerate, but their EMA and checkpoint path is not verified here (DeepSpeed needs
CUDA); ZeRO stage 3 is refused (:func:`check_sharded_run`): its parameters are empty placeholders outside a
``GatheredParameters`` context, so an EMA of them would have to gather the full model on every step.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType


def sharding_engine(accelerator: Accelerator) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when the launch shards the model, None for DDP or a single process."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return None


def check_sharded_run(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """Refuse, with a ``ValueError`` naming the option, what a sharded launch cannot honour.

    - FSDP version 1 (``fsdp_version: 1``): its flat parameters are not per-parameter shards; use ``fsdp_version: 2``.
    - ``--compile`` under FSDP2: Accelerate 1.15 applies ``torch.compile(model)`` *before* ``fully_shard``, and the
      compiled wrapper bypasses the hooks that gather and free each shard (its own note in
      ``accelerate.utils.other.compile_regions_fsdp2``), so the combination does not train a sharded model.
    - ``--ema_type power``: its post-hoc snapshots (Karras et al. 2024, section 3.2) save full copies of every
      average on the main process; they are not sharded.
    - ``--task classifier``: its validation runs on every process with the model, which the export gathers only on
      the main one.
    - DeepSpeed ZeRO stage 3 (see the module docstring).
    """
    engine = sharding_engine(accelerator)
    if engine is None:
        return
    if engine == "fsdp":
        version = accelerator.state.fsdp_plugin.fsdp_version
        if version != 2:
            raise ValueError(
                f"The accelerate config selects FSDP version {version}; sharded training supports fsdp_version: 2 only "
                "(per-parameter shards, which the EMA and checkpoints follow)."
            )
        if args.compile:
            raise ValueError(
                "--compile is not supported with FSDP2 under accelerate 1.15: it compiles the whole model before "
                "fully_shard, which bypasses FSDP's gather/free hooks. Drop --compile (or train without sharding)."
            )
    if engine == "deepspeed":
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ValueError(
                "DeepSpeed zero_stage 3 is not supported: the EMA would gather the full parameters on every step. "
                "Use zero_stage 2 or the FSDP2 configs (configs/accelerate/fsdp2_*.yaml)."
            )
    if args.ema_type == "power":
        raise ValueError(
            "--ema_type power cannot be sharded (its post-hoc snapshots are full copies of every average); use "
            "--ema_type edm with a sharded launch."
        )
    if args.task == "classifier":
        raise ValueError("--task classifier is not supported with a sharded launch (FSDP / DeepSpeed); use DDP.")


def local_shards(parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """This process's part of each parameter: ``DTensor.to_local()`` (a view of the shard's storage, so in-place
    updates of the parameter show through and writes into the view update the parameter); other tensors as they
    are. Each keeps its parameter's ``requires_grad``: diffusers' ``EMAModel`` averages the trainable ones and copies
    the others."""
    from torch.distributed.tensor import DTensor

    return [
        (p.to_local() if isinstance(p, DTensor) else p).detach().requires_grad_(p.requires_grad) for p in parameters
    ]


def rank_state_stem(process_index: int) -> str:
    """The file stem of a process's own checkpointed states (the EMA shards): ``training_state_rank<k>``."""
    return f"training_state_rank{process_index}"


def _unsharded_class(model: torch.nn.Module) -> type:
    """The model's own class: ``fully_shard`` swaps in a subclass ``FSDP<Name>(FSDPModule, <Name>)``."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def gathered_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """The full model, on the main process (None on the others): every process must call this (it gathers).

    ``accelerator.get_state_dict`` gathers the full state dict onto the main process (CPU); there a model of the same
    class is built from the sharded one's config and loaded with it. Building draws initial weights, so it runs under
    ``torch.random.fork_rng``: the gather leaves every random stream as it was, and a run that exports mid-way (or
    resumes after) continues as one that did not.
    """
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    with torch.random.fork_rng(devices=[]):
        full = _unsharded_class(unwrapped).from_config(unwrapped.config)
    full.load_state_dict(state)
    return full.to(accelerator.device).train(unwrapped.training)
