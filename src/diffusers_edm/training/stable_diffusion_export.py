"""A fine-tuned Stable Diffusion / SDXL UNet written as a folder that stock diffusers loads, with no import of this package.

The folder is the base pipeline's own (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``, its VAE, text
encoder(s) and tokenizer(s)) with the fine-tuned UNet and a diffusers scheduler chosen for it:

- discrete VP checkpoints (SD 1.x / 2.x, SDXL): ``UniPCMultistepScheduler`` (Zhao et al. 2023; bh2, order 3,
  exponential sigmas, final sigma 0) over the checkpoint's own table and prediction type, the best of diffusers'
  own samplers at 20-25 model calls on the SD table in the package's sampler-accuracy benchmark
  (benchmarks/README.md);
- EDM-formulated checkpoints (Playground v2.5, CosXL): ``EDMDPMSolverMultistepScheduler`` (DPM-Solver++, Lu et al.
  2022; order 3, midpoint, Karras sigmas with rho 7) with the checkpoint's ``sigma_min``, ``sigma_max``,
  ``sigma_data`` and prediction type, the best of diffusers' own at 25-80 calls on EDM's range there.

Which of the two a checkpoint is comes from :func:`~diffusers_edm.models.checkpoint_formulation`. The folder is
written whole or not at all (staged, then renamed into place, by
:func:`~diffusers_edm.training.checkpoints.write_export`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from accelerate import PartialState
from diffusers import (
    DiffusionPipeline,
    EDMDPMSolverMultistepScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from huggingface_hub import ModelCard

from ..models import PreconditionedDenoiser, checkpoint_formulation
from .checkpoints import write_export

#: The pipeline classes an export writes (diffusers' own, so the folder loads without this package).
EXPORTABLE_PIPELINES = (StableDiffusionPipeline, StableDiffusionXLPipeline)

#: The scheduler settings of an exported discrete VP checkpoint (on top of its own table and prediction type).
DISCRETE_VP_EXPORT_SCHEDULER = dict(
    solver_order=3, solver_type="bh2", use_exponential_sigmas=True, final_sigmas_type="zero", lower_order_final=True
)
#: The scheduler settings of an exported EDM-formulated checkpoint (on top of its sigma range, sigma_data and
#: prediction type).
EDM_EXPORT_SCHEDULER = dict(
    solver_order=3, solver_type="midpoint", algorithm_type="dpmsolver++", sigma_schedule="karras", rho=7.0,
    lower_order_final=True, final_sigmas_type="zero",
)


def diffusers_scheduler_for(scheduler_or_config: SchedulerMixin | Mapping[str, Any]) -> SchedulerMixin:
    """The diffusers scheduler an exported checkpoint samples with (see the module docstring), built from the
    checkpoint's scheduler or scheduler config; ``ValueError`` for one that is neither a discrete VP table nor an EDM
    formulation."""
    formulation = checkpoint_formulation(scheduler_or_config)
    config = dict(scheduler_or_config.config if isinstance(scheduler_or_config, SchedulerMixin) else scheduler_or_config)
    if formulation == "edm":
        keep = {key: config[key] for key in ("sigma_min", "sigma_max", "sigma_data", "prediction_type") if key in config}
        return EDMDPMSolverMultistepScheduler(**{**keep, **EDM_EXPORT_SCHEDULER})
    # from_config keeps the table (betas, timesteps, spacing) and prediction type and ignores keys UniPC lacks.
    return UniPCMultistepScheduler.from_config(config, **DISCRETE_VP_EXPORT_SCHEDULER)


def check_exportable(pipe: object) -> DiffusionPipeline:
    """``pipe`` if it is a diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``; ``ValueError``
    naming its class otherwise."""
    if not isinstance(pipe, EXPORTABLE_PIPELINES):
        raise ValueError(
            f"Can export a fine-tuned UNet only over a diffusers StableDiffusionPipeline or StableDiffusionXLPipeline "
            f"(the base model's), got {type(pipe).__name__}."
        )
    return pipe


def _plain_unet(unet: torch.nn.Module) -> UNet2DConditionModel:
    """The diffusers UNet itself: a package denoiser's backbone, or the UNet given."""
    if isinstance(unet, PreconditionedDenoiser):
        unet = unet.backbone
    if type(unet) is not UNet2DConditionModel:
        raise ValueError(
            f"The fine-tuned model must be a diffusers UNet2DConditionModel (or a package denoiser over one), got "
            f"{type(unet).__name__}."
        )
    if getattr(unet, "peft_config", None):
        # Its state dict would hold base and LoRA weights under peft's names, which the stock UNet cannot load.
        raise ValueError(
            f"The UNet carries LoRA adapters {sorted(unet.peft_config)}: merge them first (peft's merge_and_unload / "
            "diffusers' fuse_lora, then unload) or save them on their own with save_lora_weights for load_lora_weights."
        )
    return unet


def save_stable_diffusion(
    folder: str | os.PathLike, pipe: DiffusionPipeline, unet: torch.nn.Module | None = None
) -> DiffusionPipeline:
    """Write ``pipe`` with the fine-tuned ``unet`` (default: its own; a package denoiser gives its backbone) and
    :func:`diffusers_scheduler_for` its scheduler into ``folder`` (safetensors). Returns the pipeline written, which
    shares ``pipe``'s modules. Writes in place: :func:`export_stable_diffusion` stages and renames."""
    pipe = check_exportable(pipe)
    exported = type(pipe).from_pipe(
        pipe, unet=_plain_unet(pipe.unet if unet is None else unet), scheduler=diffusers_scheduler_for(pipe.scheduler)
    )
    exported.save_pretrained(folder, safe_serialization=True)
    return exported


def stable_diffusion_card(pipe: DiffusionPipeline, base_model: str | None = None) -> ModelCard:
    """A short model card for an exported folder: what loads it and how it samples (recipes add their commands)."""
    name = type(pipe).__name__
    scheduler = type(pipe.scheduler).__name__
    base = f"base_model: {base_model}\n" if base_model else ""
    return ModelCard(
        f"---\nlibrary_name: diffusers\n{base}tags:\n- text-to-image\n- edm\n---\n\n"
        f"A {name} fine-tuned with EDM's training recipe (Karras et al. 2022) by diffusers-edm; it loads with "
        f"diffusers alone and samples with {scheduler}.\n\n"
        "```python\nfrom diffusers import DiffusionPipeline\n\n"
        "pipe = DiffusionPipeline.from_pretrained(\"PATH_OR_REPO\")\n"
        "image = pipe(\"a photograph of an astronaut riding a horse\", num_inference_steps=25).images[0]\n```\n"
    )


def export_stable_diffusion(
    output_dir: str | os.PathLike,
    pipe: DiffusionPipeline,
    unet: torch.nn.Module | None = None,
    accelerator: Any = None,
    write_card: Callable[[DiffusionPipeline], Any] | None = None,
) -> Path:
    """:func:`save_stable_diffusion` into ``output_dir``, whole or not at all: written to a staging folder and renamed
    into place by :func:`~diffusers_edm.training.checkpoints.write_export` (every process of a distributed run calls
    this with its ``accelerator``; default: this process alone). ``write_card(pipeline)`` writes ``README.md`` in
    ``output_dir`` (default: :func:`stable_diffusion_card`). Returns ``output_dir``."""
    # Everything is checked before anything is written.
    check_exportable(pipe)
    unet = _plain_unet(pipe.unet if unet is None else unet)
    diffusers_scheduler_for(pipe.scheduler)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if write_card is None:
        def write_card(exported: DiffusionPipeline) -> None:
            stable_diffusion_card(exported).save(output_dir / "README.md")

    write_export(accelerator or PartialState(), output_dir, lambda folder: save_stable_diffusion(folder, pipe, unet),
                 write_card)
    return output_dir
