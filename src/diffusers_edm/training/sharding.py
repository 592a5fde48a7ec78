"""Training with the model sharded across processes: Accelerate's FSDP2 (``fsdp_version: 2`` in an ``accelerate
config`` file) or DeepSpeed ZeRO stage 1-3 (``distributed_type: DEEPSPEED``), selected by ``accelerate launch
--config_file configs/accelerate/{fsdp2,deepspeed}_*.yaml``.

Where the parameters themselves are split (:func:`parameters_sharded`: FSDP2, whose parameters are ``DTensor`` objects, of
which each process holds a dim-0 shard, and ZeRO-3, whose parameters are empty placeholders beside each process's
flat partition ``param.ds_tensor``), what the loop keeps beside the model follows the same split, so no process
ever holds a full copy while training:

- the EMA averages the *local shards* (:func:`local_shards`: views that share the parameters' storage, so the
  optimizer's in-place updates are what the EMA reads, and ``copy_to`` writes into the sharded parameters); its
  update is the same elementwise lerp as unsharded (EDM, Karras et al. 2022, Appendix F), so the average of a shard
  is the shard of the average;
- checkpoints hold Accelerate's sharded model and optimizer (``accelerator.save_state``: torch.distributed.checkpoint
  folders under FSDP, DeepSpeed's ``pytorch_model/`` folder of per-process ``zero_pp_rank_<k>_*`` files under
  DeepSpeed) and, per process, the EMA's shards (``training_state_rank<k>.*``, :func:`rank_state_stem`);
- the export gathers the full weights once (:func:`gathered_model`: ``accelerator.get_state_dict`` on every process,
  the full model rebuilt on the main process only), so the pipeline folder is one full safetensors folder.

ZeRO stages 1 and 2 split only the optimizer state (and gradients): every process holds the full weights, so the
EMA, its checkpoint and the export are those of DDP, and only the model and optimizer are saved in DeepSpeed's
format. Under DeepSpeed, Accelerate runs the optimizer step inside ``accelerator.backward`` and the gradients live
in DeepSpeed's buffers, so EDM's replacement of NaN/inf gradients does not apply (a non-finite loss or weight still
stops the run at the next check) and clipping is DeepSpeed's ``gradient_clipping`` (:func:`check_sharded_run`
ties it to ``--max_grad_norm``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from accelerate.utils.constants import MODEL_NAME


def sharding_engine(accelerator: Accelerator) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when the launch shards the model, None for DDP or a single process."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return None


def parameters_sharded(accelerator: Accelerator) -> bool:
    """Whether each process holds only a part of every parameter: FSDP, or DeepSpeed ZeRO stage 3 (stages 1 and 2
    split the optimizer state, not the weights)."""
    engine = sharding_engine(accelerator)
    return engine == "fsdp" or (engine == "deepspeed" and accelerator.state.deepspeed_plugin.zero_stage == 3)


def check_sharded_run(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """Refuse, with a ``ValueError`` naming the option, what a sharded launch cannot honour; fill a DeepSpeed
    config's ``gradient_clipping: auto`` from ``--max_grad_norm``. Call before ``accelerator.prepare``.

    - FSDP version 1 (``fsdp_version: 1``): its flat parameters are not per-parameter shards; use ``fsdp_version: 2``.
    - ``--compile`` under FSDP2: Accelerate 1.15 applies ``torch.compile(model)`` *before* ``fully_shard``, and the
      compiled wrapper bypasses the hooks that gather and free each shard (its own note in
      ``accelerate.utils.other.compile_regions_fsdp2``), so the combination does not train a sharded model.
    - DeepSpeed with ``mixed_precision`` fp16 / bf16: DeepSpeed casts the model's own weights to 16 bits (the fp32
      masters live inside its optimizer), and an EMA of 16-bit weights loses its per-step increments (``1 - beta``
      is far below bf16's resolution of 2**-8).
    - DeepSpeed ``gradient_accumulation_steps`` other than ``--gradient_accumulation_steps`` (Accelerate would use
      the config's value, and the run's batch size and learning-rate ramp would be wrong), and a numeric
      ``gradient_clipping`` other than ``--max_grad_norm`` (0 or absent: no clipping).
    - DeepSpeed ZeRO stage 3 without ``zero3_save_16bit_model: true`` (``stage3_gather_16bit_weights_on_model_save``):
      the export and validation gather the full weights with ``accelerator.get_state_dict``, which needs it.
    - ``--ema_type power``: its post-hoc snapshots (Karras et al. 2024, section 3.2) save full copies of every
      average on the main process; they are not sharded.
    - ``--task classifier``: its validation runs on every process with the model, which the export gathers only on
      the main one.
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
        _check_deepspeed_config(args, accelerator)
    if args.ema_type == "power":
        raise ValueError(
            "--ema_type power cannot be sharded (its post-hoc snapshots are full copies of every average); use "
            "--ema_type edm with a sharded launch."
        )
    if args.task == "classifier":
        raise ValueError("--task classifier is not supported with a sharded launch (FSDP / DeepSpeed); use DDP.")


def _check_deepspeed_config(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """The DeepSpeed part of :func:`check_sharded_run`."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    if accelerator.mixed_precision != "no":
        raise ValueError(
            f"DeepSpeed with mixed_precision {accelerator.mixed_precision!r} is not supported: DeepSpeed keeps the "
            "model's weights in 16 bits, and the EMA of 16-bit weights loses its small per-step updates. Set "
            "mixed_precision: 'no' in the accelerate config, or use the FSDP2 configs (fp32 weights, 16-bit compute)."
        )
    accumulation = config.get("gradient_accumulation_steps", "auto")
    if accumulation != "auto" and int(accumulation) != args.gradient_accumulation_steps:
        raise ValueError(
            f"The DeepSpeed config's gradient_accumulation_steps is {accumulation}, --gradient_accumulation_steps is "
            f"{args.gradient_accumulation_steps}: set them equal (Accelerate would train with the config's value)."
        )
    clipping = config.get("gradient_clipping", 0.0)
    wanted = args.max_grad_norm if args.max_grad_norm is not None else 0.0
    if clipping == "auto":  # Accelerate's convention: filled from the training script (it would otherwise use 1.0)
        config["gradient_clipping"] = wanted
    elif float(clipping) != wanted:
        raise ValueError(
            f"The DeepSpeed config's gradient_clipping is {clipping}, --max_grad_norm is {args.max_grad_norm}: DeepSpeed "
            "clips the gradients itself, so set them equal (gradient_clipping: auto takes --max_grad_norm; 0 or absent "
            "with no --max_grad_norm: no clipping)."
        )
    if plugin.zero_stage == 3 and not config.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save"):
        raise ValueError(
            "DeepSpeed zero_stage 3 needs zero3_save_16bit_model: true in the accelerate config "
            "(stage3_gather_16bit_weights_on_model_save in a DeepSpeed config file): the export gathers the full "
            "weights with accelerator.get_state_dict, which DeepSpeed allows only then."
        )


def local_shards(parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """This process's part of each parameter, as a view of the part's storage (so in-place updates of the parameter
    show through and writes into the view update the parameter): ``DTensor.to_local()`` under FSDP2, the flat
    partition ``param.ds_tensor`` under DeepSpeed ZeRO-3 (``ceil(numel / world_size)`` elements, the last process's
    padded); other tensors as they are. Each keeps its parameter's ``requires_grad``: diffusers'
    ``EMAModel`` averages the trainable ones and copies the others."""
    from torch.distributed.tensor import DTensor

    def local(parameter: torch.Tensor) -> torch.Tensor:
        if isinstance(parameter, DTensor):
            return parameter.to_local()
        return getattr(parameter, "ds_tensor", parameter)

    if any(hasattr(p, "ds_tensor") for p in parameters):
        _bind_deepspeed_for_diffusers_ema()
    return [local(p).detach().requires_grad_(p.requires_grad) for p in parameters]


def _bind_deepspeed_for_diffusers_ema() -> None:
    """Let diffusers' ``EMAModel.step`` run under ZeRO-3.

    When ZeRO-3 is enabled (Accelerate registers its config with transformers), diffusers 0.42's ``EMAModel.step``
    wraps its update in ``deepspeed.zero.GatheredParameters``, but ``diffusers.training_utils`` imports ``deepspeed``
    only if ZeRO-3 was already enabled when it was imported itself, which is before the ``Accelerator`` exists: the
    step fails with ``NameError: name 'deepspeed' is not defined``. Binding the name makes the step work; for the
    local partitions the EMA is given here (plain tensors, not ZeRO parameters) the context is a no-op, so nothing is
    gathered and the update stays per partition.
    """
    import deepspeed
    import diffusers.training_utils

    if not hasattr(diffusers.training_utils, "deepspeed"):
        diffusers.training_utils.deepspeed = deepspeed


def rank_state_stem(process_index: int) -> str:
    """The file stem of a process's own checkpointed states (the EMA shards): ``training_state_rank<k>``."""
    return f"training_state_rank{process_index}"


def _unsharded_class(model: torch.nn.Module) -> type:
    """The model's own class: ``fully_shard`` swaps in a subclass ``FSDP<Name>(FSDPModule, <Name>)`` (DeepSpeed keeps
    the class)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def gathered_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """The full model, on the main process (None on the others): every process must call this (it gathers).

    ``accelerator.get_state_dict`` gathers the full state dict onto the main process (CPU; under ZeRO-3 DeepSpeed's
    ``_zero3_consolidated_16bit_state_dict``, which keeps the parameters' dtype); there a model of the same
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


# Under DeepSpeed, accelerator.save_state writes the model and optimizer as DeepSpeed's checkpoint in this folder.
DEEPSPEED_MODEL_DIR = MODEL_NAME  # Accelerate's DeepSpeed checkpoint folder


def deepspeed_checkpoint_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]] | None:
    """The full shape of each model tensor in a checkpoint saved under DeepSpeed, None where ``checkpoint`` is not one.

    Read from the model-states file of the first process (``mp_rank_00_model_states.pt`` for ZeRO stages 0-2,
    ``zero_pp_rank_0_mp_rank_00_model_states.pt`` for stage 3; weights-only): its ``module`` holds the buffers (and,
    below stage 3, the full weights; at stage 3 empty placeholders), its ``param_shapes`` / ``frozen_param_shapes``
    the full shape of every parameter.
    """
    files = sorted((checkpoint / DEEPSPEED_MODEL_DIR).glob("*mp_rank_00_model_states.pt"))
    if not files:
        return None
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    shapes = {name: tuple(tensor.shape) for name, tensor in state["module"].items()}
    for group in state["param_shapes"]:
        shapes.update((name, tuple(shape)) for name, shape in group.items())
    shapes.update((name, tuple(shape)) for name, shape in (state.get("frozen_param_shapes") or {}).items())
    return shapes
