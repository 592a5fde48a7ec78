"""The fine-tuning recipe (``--pretrained_model_name_or_path``): a pretrained Stable Diffusion 1.x / 2.x, SDXL or
EDM-formulated (Playground v2.5, CosXL) checkpoint trained further with EDM's loss (Karras et al. 2022, eq. 8),
in full or through LoRA adapters (Hu et al. 2021).

- Model: the checkpoint's UNet read as a denoiser ``D(x; sigma)`` by
  :func:`~diffusers_edm.models.pretrained_denoiser` (its scheduler config decides: a discrete VP table, eps or v, or
  an EDM formulation; anything else is refused at start-up).
- Loss: ``lambda(sigma) |D(y + sigma n; sigma) - y|^2`` with ``ln sigma ~ N(P_mean, P_std^2)`` truncated to the
  model's noise range (:class:`~diffusers_edm.losses.TruncatedLogNormalLoss`) and ``lambda`` of ``--loss_weighting``.
  ``sigma_data`` (EDM's weight) is ``--sigma_data``, else for a discrete VP checkpoint the standard deviation of
  the training latents (posterior means of the first :data:`SIGMA_DATA_IMAGES` images, measured once at start-up),
  and for an EDM-formulated one the ``sigma_data`` of its own preconditioning.
- Text: the checkpoint's tokenizer(s) and frozen text encoder(s) through the one
  :class:`~diffusers_edm.pipelines.prompt_encoding.PromptEncoder`, captions and caption dropout as the text recipe
  (:class:`~diffusers_edm.training.captions.CaptionConditioner`); SDXL's pooled text embedding and micro-conditioning
  ``add_time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` (Podell et al. 2023, section 2.2),
  per example: its size before resizing, the top-left corner of its crop in the resized image (of the flipped image
  for a flipped example) and ``(resolution, resolution)``, as the data pipeline records them.
- Latents: the checkpoint's VAE through :class:`~diffusers_edm.models.LatentCodec` (``scaling_factor``,
  ``shift_factor``, ``latents_mean`` / ``latents_std``); ``--cache_latents`` keeps each image's posterior.
- Export: the folder stock diffusers loads (:func:`~diffusers_edm.training.stable_diffusion_export.save_stable_diffusion`)
  plus the same model as an ``EDMTextToImagePipeline`` in ``edm/``; with ``--lora_rank`` the LoRA weights
  (``pytorch_lora_weights.safetensors``) that ``pipe.load_lora_weights`` reads on the base model.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ...losses import TruncatedLogNormalLoss
from ...models import EDMFormulatedPrecond, checkpoint_formulation, pretrained_denoiser
from ...models.backbones import pooled_text_width, takes_sdxl_time_ids
from ...pipelines import EDMTextToImagePipeline
from ...pipelines.prompt_encoding import PromptEncoder, sdxl_time_ids
from ..stable_diffusion_export import save_stable_diffusion
from ...schedulers import EDMHeunScheduler, EDMMultistepScheduler
from ..captions import CaptionConditioner
from ..data import flipped_crop_top_left
from .base import Export
from .text import DEFAULT_PROPORTION_EMPTY_PROMPTS, MAX_DEFAULT_VALIDATION_PROMPTS, TextDenoisingRecipe, training_dtype

logger = logging.getLogger(__name__)

#: The pipeline classes a fine-tuning run loads (and exports).
FINETUNABLE_PIPELINES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline)}
#: LoRA target modules, as diffusers' text-to-image LoRA scripts (the attention projections).
LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
#: The EDMTextToImagePipeline of a full fine-tuning run is saved in this subfolder of the export.
EDM_PIPELINE_FOLDER = "edm"
#: The LoRA weights file of a LoRA run (diffusers' default name, which load_lora_weights looks for).
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: sigma_data of a discrete VP checkpoint is measured on the posterior means of this many training images.
SIGMA_DATA_IMAGES = 256
#: Options whose value a fine-tuning run takes from the checkpoint.
FROM_CHECKPOINT = {
    "backbone": "backbone", "model_size": "backbone", "backbone_config": "backbone", "precond": "preconditioning",
    "text_encoder": "text encoder", "tokenizer": "tokenizer", "label_column": "conditioning (text)",
    "num_classes": "conditioning (text)",
}
DEFAULT_LOSS_REDUCTION = "mean"  # as diffusers' fine-tuning scripts, whose learning rates users know


def missing_extra(package: str, option: str, extra: str) -> ValueError:
    return ValueError(f"{option} needs the package {package!r}, which is not installed: pip install 'diffusers-edm[{extra}]'.")


def load_base_pipeline(name_or_path: str, revision: str | None = None) -> DiffusionPipeline:
    """The ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` of ``name_or_path`` (float32, no safety
    checker); ``ValueError`` naming the class for any other pipeline."""
    config = DiffusionPipeline.load_config(name_or_path, revision=revision)
    class_name = config.get("_class_name")
    if class_name not in FINETUNABLE_PIPELINES:
        raise ValueError(
            f"--pretrained_model_name_or_path {name_or_path!r} holds a {class_name}; fine-tuning loads a "
            f"{' or '.join(FINETUNABLE_PIPELINES)}."
        )
    extra = {"safety_checker": None, "requires_safety_checker": False} if class_name == "StableDiffusionPipeline" else {}
    return FINETUNABLE_PIPELINES[class_name].from_pretrained(name_or_path, revision=revision, **extra)


def check_lora_rank(unet: torch.nn.Module, rank: int) -> None:
    """``ValueError`` naming the rank, the narrowest adapted layer and its width unless ``rank`` is at most the
    smaller dimension of every adapted ``Linear`` (a larger rank adds parameters but no expressiveness)."""
    widths = {
        name: min(module.in_features, module.out_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in LORA_TARGET_MODULES)
    }
    if not widths:
        raise ValueError(f"The UNet has none of the LoRA target layers {LORA_TARGET_MODULES}.")
    name, width = min(widths.items(), key=lambda item: item[1])
    if rank > width:
        raise ValueError(
            f"--lora_rank {rank} is above the width of the adapted layer {name!r} ({width}); choose 1..{width}."
        )


class FineTuneRecipe(TextDenoisingRecipe):
    """A pretrained SD / SDXL / EDM-formulated checkpoint, fine-tuned with EDM's loss (module docstring)."""

    selected_by = "--pretrained_model_name_or_path"
    own_arguments = TextDenoisingRecipe.own_arguments + (
        "pretrained_model_name_or_path", "revision", "loss_weighting", "lora_rank", "lora_alpha", "train_text_encoder",
        "gradient_checkpointing", "use_8bit_adam", "cache_latents",
    )

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        path = args.pretrained_model_name_or_path
        for name, what in FROM_CHECKPOINT.items():
            if getattr(args, name, None) is not None:
                raise ValueError(
                    f"--pretrained_model_name_or_path {path!r} and --{name} {getattr(args, name)!r}: a fine-tuning run "
                    f"takes its {what} from the checkpoint; drop --{name}."
                )
        if args.label_dropout:
            raise ValueError("--label_dropout does not apply to fine-tuning a text-to-image checkpoint; use "
                             "--proportion_empty_prompts (caption dropout).")
        if args.train_text_encoder:
            raise ValueError("--train_text_encoder is not supported yet: the text encoder(s) stay frozen; drop it.")
        if args.lora_alpha is not None and args.lora_rank is None:
            raise ValueError(f"--lora_alpha {args.lora_alpha} needs --lora_rank (it scales the LoRA update).")
        if args.lora_rank is not None:
            try:
                import peft  # noqa: F401
            except ImportError:
                raise missing_extra("peft", f"--lora_rank {args.lora_rank}", "lora") from None
            args.lora_alpha = float(args.lora_rank) if args.lora_alpha is None else args.lora_alpha
        if args.use_8bit_adam:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise missing_extra("bitsandbytes", "--use_8bit_adam", "bnb") from None
        if args.cache_latents and (args.random_flip or not args.center_crop):
            raise ValueError(
                "--cache_latents encodes each image once, so every step must see the same pixels: it cannot be combined "
                f"with {'--random_flip' if args.random_flip else '--no-center_crop'}."
            )
        scheduler_file = Path(path, "scheduler", "scheduler_config.json")
        if scheduler_file.is_file():  # a local checkpoint is checked now; a Hub id when it is loaded
            scheduler_config = json.loads(scheduler_file.read_text())
            try:
                checkpoint_formulation(scheduler_config)
            except ValueError as error:
                raise ValueError(f"--pretrained_model_name_or_path {path!r}: {error}") from None
        if args.vae is None:
            args.vae, args.vae_subfolder = path, "vae"
        args.caption_column = args.caption_column or "text"
        args.num_channels = args.num_channels or 3  # the VAE reads RGB
        if args.proportion_empty_prompts is None:
            args.proportion_empty_prompts = DEFAULT_PROPORTION_EMPTY_PROMPTS
        args.cache_text_embeddings = bool(args.cache_text_embeddings)
        args.loss_weighting = args.loss_weighting or "edm"
        args.loss_reduction = args.loss_reduction or DEFAULT_LOSS_REDUCTION

    # ------------------------------------------------------------------------------------------ model
    def build_model(self) -> torch.nn.Module:
        args, device = self.args, self.accelerator.device
        pipe = load_base_pipeline(args.pretrained_model_name_or_path, args.revision)
        if self.data.vae is not None:  # the VAE the run trains with (--vae may replace the checkpoint's) is exported
            pipe.register_modules(vae=self.data.vae)
        self.base_pipe = pipe
        unet = pipe.unet
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        denoiser = pretrained_denoiser(unet, pipe.scheduler)  # an unsupported scheduler config is refused here
        if args.lora_rank is not None:
            from peft import LoraConfig

            check_lora_rank(unet, args.lora_rank)
            denoiser.requires_grad_(False)
            unet.add_adapter(LoraConfig(
                r=args.lora_rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                target_modules=list(LORA_TARGET_MODULES),
            ))
        self.denoiser = denoiser.train()

        # The frozen text encoder(s) in the training dtype; the pipeline keeps its own (exported) in float32.
        dtype = training_dtype(self.accelerator.mixed_precision)
        encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
        encoders = [
            None if encoder is None else (copy.deepcopy(encoder) if dtype != encoder.dtype else encoder).to(device, dtype)
            .eval().requires_grad_(False) for encoder in encoders
        ]
        sdxl = isinstance(pipe, StableDiffusionXLPipeline)
        if args.empty_prompt is None:  # the checkpoint's own convention, as its pipeline samples
            args.empty_prompt = "zeros" if sdxl and pipe.config.get("force_zeros_for_empty_prompt", False) else "encode"
        self.prompt_encoder = PromptEncoder(
            pipe.tokenizer, encoders[0], args.empty_prompt, getattr(pipe, "tokenizer_2", None), encoders[1]
        )
        self.pooled_width = pooled_text_width(unet)
        self.time_ids = None
        if takes_sdxl_time_ids(unet):
            size = (args.resolution, args.resolution)
            self.time_ids = sdxl_time_ids(size, (0, 0), size, device=device)
        if args.validation_prompts is None:
            args.validation_prompts = list(self.data.first_captions or [""])[:MAX_DEFAULT_VALIDATION_PROMPTS]
        self.conditioner = CaptionConditioner(
            self.prompt_encoder, args.proportion_empty_prompts, dtype, cache=args.cache_text_embeddings
        )
        self.latent_cache: torch.Tensor | None = None
        return denoiser

    def trainable_parameters(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        """The LoRA parameters with ``--lora_rank``, else every parameter of the UNet."""
        return [param for param in model.parameters() if param.requires_grad]

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        if self.args.use_8bit_adam:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit
        return torch.optim.AdamW

    def prepare(self, model: torch.nn.Module) -> None:
        """The latent cache (``--cache_latents``), ``sigma_data`` (measured when not given) and the loss."""
        args = self.args
        if self.data.vae is not None:
            self.data.vae.to(self.accelerator.device)
        if args.cache_latents:
            self.latent_cache = self._posteriors(range(len(self.train_dataset)))
        if args.sigma_data is None:
            if isinstance(self.denoiser, EDMFormulatedPrecond):
                args.sigma_data = float(self.denoiser.config.sigma_data)
            else:
                args.sigma_data = self._measured_sigma_data()
            logger.info("sigma_data = %.4f (%s)", args.sigma_data, "the checkpoint's" if isinstance(
                self.denoiser, EDMFormulatedPrecond) else "measured on the training latents")
        self.loss_fn = TruncatedLogNormalLoss(
            self.denoiser.sigma_min, self.denoiser.sigma_max, args.P_mean, args.P_std, args.loss_weighting,
            args.sigma_data,
        )

    # ------------------------------------------------------------------------------------------ latents
    @torch.no_grad()
    def _posteriors(self, indices: Iterable[int]) -> torch.Tensor:
        """The VAE posterior parameters (mean and log-variance channels) of the training images ``indices``, on the
        training device, encoded in batches of ``--train_batch_size``."""
        indices, device, vae = list(indices), self.accelerator.device, self.data.vae
        parts = []
        for start in range(0, len(indices), self.args.train_batch_size):
            images = torch.stack([self.train_dataset[i]["images"] for i in indices[start:start + self.args.train_batch_size]])
            parts.append(vae.encode(images.to(device, vae.dtype)).latent_dist.parameters)
        return torch.cat(parts)

    def _measured_sigma_data(self) -> float:
        """The standard deviation of the model latents of the first :data:`SIGMA_DATA_IMAGES` training images (their
        posterior means: no random draw, so a resumed run measures the same). One host read, at start-up."""
        count = min(len(self.train_dataset), SIGMA_DATA_IMAGES)
        posteriors = self.latent_cache[:count] if self.latent_cache is not None else self._posteriors(range(count))
        latents = self.data.codec.normalize(DiagonalGaussianDistribution(posteriors).mode())
        return float(latents.to(torch.float64).std())

    def latents(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        """A sample of each image's VAE posterior as model latents: from the cache with ``--cache_latents`` (the same
        draw from the same device RNG as encoding anew), else encoded now."""
        if self.latent_cache is None:
            return super().latents(images, batch)
        posterior = DiagonalGaussianDistribution(self.latent_cache[batch["index"].to(self.latent_cache.device)])
        return self.data.codec.normalize(posterior.sample())

    # ------------------------------------------------------------------------------------------ conditioning
    def conditioning(self, batch: dict) -> dict[str, torch.Tensor]:
        """The text recipe's caption embeddings (one caption drawn per example, caption dropout), with SDXL's pooled
        text embedding followed by ``add_time_ids`` where the UNet reads them."""
        embeddings = self.conditioner(batch["captions"], self.accelerator.device)
        if self.time_ids is not None:
            embeddings = embeddings.with_time_ids(self.example_time_ids(batch))
        if self.pooled_width is None:
            return {"encoder_hidden_states": embeddings.embeds}
        return {"encoder_hidden_states": embeddings.embeds, "pooled_text_embeds": embeddings.pooled}

    def example_time_ids(self, batch: dict) -> torch.Tensor:
        """SDXL's ``add_time_ids`` of each example, ``(B, 6)`` on the device: ``(orig_h, orig_w, crop_top, crop_left,
        resolution, resolution)`` from the batch's ``original_size`` and ``crop_top_left``; where the step flipped an
        example (``batch["flipped"]``) its crop's corner in the flipped image (:func:`flipped_crop_top_left`).
        Device tensors only: nothing waits for the device."""
        device = self.accelerator.device
        original_size = batch["original_size"].to(device, non_blocking=True)
        crop_top_left = batch["crop_top_left"].to(device, non_blocking=True)
        if "flipped" in batch:
            resized_size = batch["resized_size"].to(device, non_blocking=True)
            mirrored = flipped_crop_top_left(crop_top_left, resized_size, self.args.resolution)
            crop_top_left = torch.where(batch["flipped"][:, None], mirrored, crop_top_left)
        target_size = original_size.new_full(original_size.shape, self.args.resolution)
        return torch.cat([original_size, crop_top_left, target_size], dim=1)

    # ------------------------------------------------------------------------------------------ pipeline, export
    def pipeline(self, model: torch.nn.Module, scheduler: Any = None) -> EDMTextToImagePipeline:
        """The package's text pipeline over ``model`` with the checkpoint's tokenizer(s), text encoder(s) and VAE."""
        pipe = self.base_pipe
        if scheduler is None:
            sigma_min = max(EDMHeunScheduler().config.sigma_min, model.sigma_min)
            sigma_max = min(EDMHeunScheduler().config.sigma_max, model.sigma_max)
            scheduler = EDMHeunScheduler(sigma_min=sigma_min, sigma_max=sigma_max)
        return EDMTextToImagePipeline(
            denoiser=model, scheduler=scheduler, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
            vae=self.data.vae, empty_prompt=self.args.empty_prompt, tokenizer_2=getattr(pipe, "tokenizer_2", None),
            text_encoder_2=getattr(pipe, "text_encoder_2", None),
        )

    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        """Full: the stock diffusers folder and ``edm/`` (the EDMTextToImagePipeline); LoRA: the LoRA weights.
        Both with ``samples.png``. On the main process."""
        if not self.accelerator.is_main_process:
            return Export()
        artefacts: dict[str, Path] = {}
        if self.args.lora_rank is not None:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model.backbone))
            type(self.base_pipe).save_lora_weights(
                output_dir, unet_lora_layers=layers, weight_name=LORA_WEIGHTS_NAME, safe_serialization=True
            )
            artefacts["lora_weights"] = output_dir / LORA_WEIGHTS_NAME
            summary = [f"LoRA weights (load_lora_weights on {self.args.pretrained_model_name_or_path}): "
                       f"{artefacts['lora_weights']}"]
        else:
            save_stable_diffusion(output_dir, self.base_pipe, model)
            self.pipeline(model, EDMMultistepScheduler()).save_pretrained(output_dir / EDM_PIPELINE_FOLDER)
            artefacts["edm_pipeline"] = output_dir / EDM_PIPELINE_FOLDER
            summary = [f"{type(self.base_pipe).__name__} (stock diffusers): {output_dir}",
                       f"EDMTextToImagePipeline: {artefacts['edm_pipeline']}"]
        grid_path = output_dir / "samples.png"
        self.sample_grid(model, max(self.args.num_validation_images, 1)).save(grid_path)
        artefacts["sample_grid"] = grid_path
        return Export(artefacts=artefacts, summary=[*summary, f"Sample grid: {grid_path}"])

    def write_model_card(self, output_dir: Path, exported: Export, steps: int) -> Path:
        from ..model_card import write_finetune_model_card

        return write_finetune_model_card(self.args, output_dir, type(self.base_pipe).__name__, steps)


__all__ = ["FineTuneRecipe", "check_lora_rank", "load_base_pipeline"]
