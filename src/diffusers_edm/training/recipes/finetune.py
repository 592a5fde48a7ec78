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
  and for an EDM-formulated one the ``sigma_data`` of its own preconditioning. ``P_mean`` is ``--P_mean``, else
  EDM's ``-1.2`` moved to the run's ``sigma_data``: ``-1.2 + ln(sigma_data / 0.5)``
  (:func:`~diffusers_edm.losses.finetuning.scale_consistent_P_mean`). EDM tuned ``-1.2`` for pixels with
  ``sigma_data = 0.5``, and its preconditioning and loss are defined in units of ``sigma_data`` (Karras et al. 2022,
  section 5, Table 1), so this is the same distribution of ``sigma / sigma_data``; latents typically have
  ``sigma_data ~= 1`` (``P_mean ~= -0.51``). ``P_std`` is EDM's ``1.2`` unless ``--P_std``.
- Text: the checkpoint's tokenizer(s) and text encoder(s) through the one
  :class:`~diffusers_edm.pipelines.prompt_encoding.PromptEncoder`, captions and caption dropout as the text recipe
  (:class:`~diffusers_edm.training.captions.CaptionConditioner`). The encoder(s) are frozen unless
  ``--train_text_encoder``: then they are trained with the UNet (in full, or through LoRA adapters on their attention
  projections), as one model with it (:class:`DenoiserWithTextEncoders`: prepared, checkpointed and averaged by the
  EMA together). SDXL's pooled text embedding and micro-conditioning
  ``add_time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` (Podell et al. 2023, section 2.2),
  per example: its size before resizing, the top-left corner of its crop in the resized image (of the flipped image
  for a flipped example) and ``(resolution, resolution)``, as the data pipeline records them.
- Latents: the checkpoint's VAE through :class:`~diffusers_edm.models.LatentCodec` (``scaling_factor``,
  ``shift_factor``, ``latents_mean`` / ``latents_std``); ``--cache_latents`` keeps each image's posterior.
- Export: the folder stock diffusers loads (:func:`~diffusers_edm.training.stable_diffusion_export.save_stable_diffusion`)
  plus the same model as an ``EDMTextToImagePipeline`` in ``edm/`` (both with the trained text encoder(s) after
  ``--train_text_encoder``); with ``--lora_rank`` the LoRA weights (``pytorch_lora_weights.safetensors``, the text
  encoders' adapters included) that ``pipe.load_lora_weights`` reads on the base model.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ...losses import TruncatedLogNormalLoss
from ...losses.finetuning import EDM_P_MEAN, scale_consistent_P_mean
from ...models import EDMFormulatedPrecond, checkpoint_formulation, pretrained_denoiser
from ...models.backbones import pooled_text_width, takes_sdxl_time_ids
from ...pipelines import EDMTextToImagePipeline
from ...pipelines.prompt_encoding import PromptEncoder
from ..stable_diffusion_export import EXPORTABLE_PIPELINES, save_stable_diffusion
from ...schedulers import EDMHeunScheduler, EDMMultistepScheduler
from ..captions import CaptionConditioner
from ..data import flipped_crop_top_left
from ..sharding import sharding_engine
from .base import Export
from .text import MAX_DEFAULT_VALIDATION_PROMPTS, TextDenoisingRecipe, training_dtype

logger = logging.getLogger(__name__)

#: The pipeline classes a fine-tuning run loads (and exports).
FINETUNABLE_PIPELINES = {cls.__name__: cls for cls in EXPORTABLE_PIPELINES}
#: LoRA target modules, as diffusers' text-to-image LoRA scripts (the attention projections).
LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
#: LoRA target modules of a trained text encoder, as diffusers' DreamBooth LoRA scripts (CLIP's attention projections).
TEXT_ENCODER_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
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


def check_lora_rank(
    model: torch.nn.Module, rank: int, target_modules: tuple[str, ...] = LORA_TARGET_MODULES, what: str = "UNet"
) -> None:
    """``ValueError`` naming the rank, the narrowest adapted layer and its width unless ``rank`` is at most the
    smaller dimension of every adapted ``Linear`` of ``model`` (the ``what``; a larger rank adds parameters but no
    expressiveness)."""
    widths = {
        name: min(module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)
    }
    if not widths:
        raise ValueError(f"The {what} has none of the LoRA target layers {target_modules}.")
    name, width = min(widths.items(), key=lambda item: item[1])
    if rank > width:
        raise ValueError(
            f"--lora_rank {rank} is above the width of the adapted layer {name!r} ({width}) of the {what}; "
            f"choose 1..{width}."
        )


class DenoiserWithTextEncoders(torch.nn.Module):
    """What a ``--train_text_encoder`` run trains, as the one model the training loop prepares (Accelerate: device,
    DDP, mixed precision), checkpoints (``save_state``) and averages (EMA): the denoiser and the text encoder(s) whose
    embeddings condition it (SDXL: both).

    ``forward`` is the denoiser's: the prompt embeddings are computed before it, with autograd, by these very encoder
    modules (:class:`~diffusers_edm.training.captions.CaptionConditioner` with ``trainable=True``), so the loss's
    gradient reaches them.
    """

    def __init__(
        self, denoiser: torch.nn.Module, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module | None = None
    ):
        super().__init__()
        self.denoiser = denoiser
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    @property
    def text_encoders(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        return self.text_encoder, self.text_encoder_2

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.denoiser(*args, **kwargs)


def model_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[torch.nn.Module | None, ...]]:
    """``(denoiser, trained text encoders)`` of a fine-tuning run's model (no trained encoder: ``()``)."""
    if isinstance(model, DenoiserWithTextEncoders):
        return model.denoiser, model.text_encoders
    return model, ()


class FineTuneRecipe(TextDenoisingRecipe):
    """A pretrained SD / SDXL / EDM-formulated checkpoint, fine-tuned with EDM's loss (module docstring)."""

    selected_by = "--pretrained_model_name_or_path"
    #: No P_mean here: without --P_mean, :meth:`prepare` sets EDM's moved to the run's sigma_data, known only then.
    ln_sigma_distribution = (None, 1.2)
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
        if args.train_text_encoder and args.cache_text_embeddings:
            raise ValueError(
                "--train_text_encoder with --cache_text_embeddings: the caption embeddings change at every step while "
                "the text encoder trains, so they cannot be cached; drop --cache_text_embeddings."
            )
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
        cls.resolve_caption_defaults(args)
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
        train_text_encoder = bool(args.train_text_encoder)
        if train_text_encoder and sharding_engine(self.accelerator) is not None:
            raise ValueError("--train_text_encoder is not supported with a sharded launch (FSDP / DeepSpeed); use DDP.")
        if args.lora_rank is not None:
            from peft import LoraConfig

            check_lora_rank(unet, args.lora_rank)
            denoiser.requires_grad_(False)
            unet.add_adapter(LoraConfig(
                r=args.lora_rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                target_modules=list(LORA_TARGET_MODULES),
            ))
        self.denoiser = denoiser.train()

        dtype = training_dtype(self.accelerator.mixed_precision)
        encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
        if train_text_encoder:  # the pipeline's own modules, trained in place, so that its export holds them
            encoders = [None if encoder is None else self._trained_text_encoder(encoder) for encoder in encoders]
        else:  # the frozen text encoder(s) in the training dtype; the pipeline keeps its own (exported) in float32
            encoders = [
                None if encoder is None else (copy.deepcopy(encoder) if dtype != encoder.dtype else encoder)
                .to(device, dtype).eval().requires_grad_(False) for encoder in encoders
            ]
        sdxl = isinstance(pipe, StableDiffusionXLPipeline)
        if args.empty_prompt is None:  # the checkpoint's own convention, as its pipeline samples
            args.empty_prompt = "zeros" if sdxl and pipe.config.get("force_zeros_for_empty_prompt", False) else "encode"
        self.prompt_encoder = PromptEncoder(
            pipe.tokenizer, encoders[0], args.empty_prompt, getattr(pipe, "tokenizer_2", None), encoders[1]
        )
        self.pooled_width = pooled_text_width(unet)
        if train_text_encoder:
            self._freeze_unread_text_encoder_parameters()
        self.takes_time_ids = takes_sdxl_time_ids(unet)
        if args.validation_prompts is None:
            args.validation_prompts = list(self.data.first_captions or [""])[:MAX_DEFAULT_VALIDATION_PROMPTS]
        self.conditioner = CaptionConditioner(
            self.prompt_encoder, args.proportion_empty_prompts, dtype, cache=args.cache_text_embeddings,
            trainable=train_text_encoder, autocast=self.accelerator.autocast,
        )
        self.latent_cache: torch.Tensor | None = None
        if train_text_encoder:
            return DenoiserWithTextEncoders(denoiser, *encoders)
        return denoiser

    def _trained_text_encoder(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """``encoder`` made trainable in place, on the training device with float32 master weights (mixed precision
        autocasts its computation, as the prepared UNet's): every weight, or with ``--lora_rank`` LoRA adapters on
        :data:`TEXT_ENCODER_LORA_TARGET_MODULES` alone (the base weights frozen)."""
        args = self.args
        encoder.to(self.accelerator.device, torch.float32).train()
        if args.lora_rank is None:
            encoder.requires_grad_(True)
        else:
            from peft import LoraConfig, inject_adapter_in_model

            check_lora_rank(encoder, args.lora_rank, TEXT_ENCODER_LORA_TARGET_MODULES, type(encoder).__name__)
            encoder.requires_grad_(False)
            # peft's own injection (what diffusers' add_adapter calls), not transformers' add_adapter: that one
            # refuses the peft releases before its own minimum version, which the UNet's adapters work with.
            inject_adapter_in_model(LoraConfig(
                r=args.lora_rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                target_modules=list(TEXT_ENCODER_LORA_TARGET_MODULES),
            ), encoder)
        if args.gradient_checkpointing:
            # Non-reentrant: the adapters' gradients flow although the frozen embeddings' outputs need none.
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return encoder

    def _freeze_unread_text_encoder_parameters(self) -> None:
        """Freeze the trainable text-encoder parameters that the UNet's inputs do not depend on: SDXL reads its first
        encoder's penultimate hidden states (Podell et al. 2023, section 2.1), so that encoder's last layer and final
        norm never get a gradient. Frozen, they stay out of the optimizer and the EMA (they would not change anyway),
        and DDP, which expects a gradient for every trainable parameter, accepts the model. Found once, at start-up,
        by differentiating a probe encoding (eval mode: no dropout draw from the run's RNG)."""
        encoder = self.prompt_encoder
        modules = [module for module in encoder.text_encoders]
        trainable = [p for module in modules for p in module.parameters() if p.requires_grad]
        for module in modules:
            module.eval()
        embeddings = encoder.encode_differentiable(["", "a photograph"], self.accelerator.device)
        read = embeddings.embeds.sum()
        if self.pooled_width is not None:
            read = read + embeddings.pooled.sum()
        gradients = torch.autograd.grad(read, trainable, allow_unused=True)
        for module in modules:
            module.train()
        unread = [p for p, gradient in zip(trainable, gradients) if gradient is None]
        for parameter in unread:
            parameter.requires_grad_(False)
        if unread:
            logger.info("%d text-encoder parameter tensors do not reach the UNet's inputs: frozen.", len(unread))

    def trainable_parameters(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        """The parameters that require a gradient: with ``--lora_rank`` the LoRA adapters, else every parameter of the
        UNet; with ``--train_text_encoder`` also the text encoders' (adapters). The optimizer updates them and the EMA
        averages them (and only them: the frozen weights are the base model's)."""
        return [param for param in model.parameters() if param.requires_grad]

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        if self.args.use_8bit_adam:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit
        return torch.optim.AdamW

    def prepare(self, model: torch.nn.Module) -> None:
        """The latent cache (``--cache_latents``), ``sigma_data`` (measured when not given), ``P_mean`` (EDM's at
        this ``sigma_data`` when not given: ``-1.2 + ln(sigma_data / 0.5)``) and the loss."""
        args = self.args
        if args.cache_latents:
            self.latent_cache = self._posteriors(range(len(self.train_dataset)))
        if args.sigma_data is None:
            if isinstance(self.denoiser, EDMFormulatedPrecond):
                args.sigma_data = float(self.denoiser.config.sigma_data)
            else:
                args.sigma_data = self._measured_sigma_data()
            logger.info("sigma_data = %.4f (%s)", args.sigma_data, "the checkpoint's" if isinstance(
                self.denoiser, EDMFormulatedPrecond) else "measured on the training latents")
        if args.P_mean is None:
            args.P_mean = scale_consistent_P_mean(args.sigma_data)
            logger.info("P_mean = %.4f (EDM's %g + ln(sigma_data / 0.5), sigma_data %.4f)", args.P_mean, EDM_P_MEAN,
                        args.sigma_data)
        else:
            logger.info("P_mean = %.4f (--P_mean)", args.P_mean)
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
        if self.takes_time_ids:
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
        """The package's text pipeline over ``model`` with the checkpoint's tokenizer(s), text encoder(s) (the trained
        ones after ``--train_text_encoder``: the same modules) and VAE."""
        pipe = self.base_pipe
        model, _ = model_parts(model)
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
        denoiser, text_encoders = model_parts(model)
        if self.args.lora_rank is not None:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            # Each adapter's LoRA config travels as metadata: without it load_lora_weights assumes alpha = rank.
            adapters = {"unet": denoiser.backbone}
            adapters.update((name, encoder) for name, encoder in zip(("text_encoder", "text_encoder_2"), text_encoders)
                            if encoder is not None)
            saved = {}
            for name, module in adapters.items():
                saved[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
                saved[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
            type(self.base_pipe).save_lora_weights(
                output_dir, **saved, weight_name=LORA_WEIGHTS_NAME, safe_serialization=True
            )
            artefacts["lora_weights"] = output_dir / LORA_WEIGHTS_NAME
            summary = [f"LoRA weights (load_lora_weights on {self.args.pretrained_model_name_or_path}): "
                       f"{artefacts['lora_weights']}"]
        else:
            # The base pipeline's text encoders are the trained ones after --train_text_encoder (the same modules).
            save_stable_diffusion(output_dir, self.base_pipe, denoiser)
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


__all__ = ["DenoiserWithTextEncoders", "FineTuneRecipe", "check_lora_rank", "load_base_pipeline", "model_parts"]
