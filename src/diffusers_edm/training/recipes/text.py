"""The text-to-image recipe (``--caption_column``): an EDM / VP / VE / iDDPM-preconditioned denoiser (Karras et al.
2022, Table 1) whose backbone's cross-attention reads a frozen text encoder's hidden states, as GLIDE (Nichol et al.
2022), Latent Diffusion (Rombach et al. 2022, section 3.3) and PixArt-alpha (Chen et al. 2023) condition on text.

This recipe is the one place where a run is conditioned on text instead of class labels: its :meth:`conditioning`
turns a batch's captions into ``encoder_hidden_states`` (:class:`~diffusers_edm.training.captions.CaptionConditioner`:
one caption drawn per example, caption dropout to the empty prompt drawn every step), its backbone is a
``UNet2DConditionModel`` (``--backbone unet``) or a ``PixArtTransformer2DModel`` (``--backbone dit``), and its
export is an ``EDMTextToImagePipeline`` holding the tokenizer and text encoder, whose config records the empty-prompt
convention the model was trained with, so that classifier-free guidance samples with the same unconditional input.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...models.backbones import context_width, pooled_text_width
from ...pipelines import EDMTextToImagePipeline
from ...pipelines.prompt_encoding import PromptEncoder
from ...schedulers import EDMHeunScheduler
from ..captions import CaptionConditioner, build_local_text_encoder, build_local_tokenizer, load_text_encoder
from ..image_grid import image_grid
from ..model_card import write_text_model_card
from ..model_presets import make_text_backbone
from .base import Export, backbone_overrides
from .denoising import PRECOND_CLASSES, DenoisingRecipe

logger = logging.getLogger(__name__)

#: Caption dropout when --proportion_empty_prompts is not given (GLIDE and Stable Diffusion train with 10-20%).
DEFAULT_PROPORTION_EMPTY_PROMPTS = 0.1
#: At most this many default validation prompts (the first caption of each row, distinct).
MAX_DEFAULT_VALIDATION_PROMPTS = 10
TEXT_PRECONDITIONINGS = tuple(PRECOND_CLASSES)


def training_dtype(mixed_precision: str | None) -> torch.dtype:
    """The dtype of the frozen text encoder: that of ``--mixed_precision`` (float32 without)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "no", torch.float32)


class TextDenoisingRecipe(DenoisingRecipe):
    """A text-conditional preconditioned denoiser (``--precond`` edm, vp, ve or iddpm).

    Loss: the family's ``lambda(sigma) |D(y + sigma n; sigma, text) - y|^2``, reduced as ``--loss_reduction`` says.
    Validation: a grid of prompts (rows) x seeds (columns) of the ``EDMTextToImagePipeline``. Export: that pipeline.
    """

    selected_by = "--caption_column (with --task denoiser, --loss precond, --precond edm, vp, ve or iddpm)"
    own_arguments = (
        "caption_column", "text_encoder", "tokenizer", "proportion_empty_prompts", "empty_prompt",
        "cache_text_embeddings", "validation_prompts",
    )

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        super().resolve_args(args)
        if args.precond not in TEXT_PRECONDITIONINGS:
            raise ValueError(
                f"--caption_column trains with --precond {' / '.join(TEXT_PRECONDITIONINGS)}, got --precond {args.precond!r}."
            )
        if args.tokenizer is not None and args.text_encoder is None:
            raise ValueError(
                f"--tokenizer {args.tokenizer!r} needs --text_encoder (without it both are built locally from the captions)."
            )
        cls.resolve_caption_defaults(args)
        args.empty_prompt = args.empty_prompt or "encode"

    @staticmethod
    def resolve_caption_defaults(args: argparse.Namespace) -> None:
        """Caption dropout (default :data:`DEFAULT_PROPORTION_EMPTY_PROMPTS`) and the embedding cache (default off),
        shared by every recipe that trains on captions."""
        if args.proportion_empty_prompts is None:
            args.proportion_empty_prompts = DEFAULT_PROPORTION_EMPTY_PROMPTS
        args.cache_text_embeddings = bool(args.cache_text_embeddings)

    # ------------------------------------------------------------------------------------------ text encoder, model
    def build_prompt_encoder(self) -> PromptEncoder:
        """The tokenizer and frozen text encoder (``--text_encoder``, or built locally), on the training device in the
        training dtype, with the run's empty-prompt convention."""
        args, data = self.args, self.data
        dtype = training_dtype(self.accelerator.mixed_precision)
        if args.text_encoder is not None:
            tokenizer, text_encoder = load_text_encoder(args.text_encoder, args.tokenizer, dtype)
        else:
            # The vocabulary is the training captions' only (other text, e.g. a new validation prompt, tokenizes by
            # bytes): the encoder's weights, drawn for that vocabulary, depend on nothing a resume may change.
            tokenizer = build_local_tokenizer(data.captions or [])
            text_encoder = build_local_text_encoder(tokenizer, args.seed).to(dtype)
            logger.info(
                "Text encoder: a local CLIPTextModel (hidden size %d, vocabulary %d, %d tokens) built from the captions; "
                "a real run would pass e.g. --text_encoder openai/clip-vit-large-patch14.",
                text_encoder.config.hidden_size, len(tokenizer), tokenizer.model_max_length,
            )
        return PromptEncoder(tokenizer, text_encoder.to(self.accelerator.device), args.empty_prompt)

    def build_denoiser(self, precond: str) -> torch.nn.Module:
        args, data = self.args, self.data
        self.prompt_encoder = self.build_prompt_encoder()
        backbone = make_text_backbone(
            args.backbone, args.model_size, data.sample_size, data.channels, self.prompt_encoder.hidden_size,
            backbone_overrides(args),
        )
        width_key = "caption_channels" if args.backbone == "dit" else "cross_attention_dim"
        self.prompt_encoder.check_fits(context_width(backbone), f"the {type(backbone).__name__} backbone ({width_key})")
        # A backbone configured to add the pooled text vector to its time embedding gets it (GLIDE's final token).
        self.pooled_width = pooled_text_width(backbone)
        precond_config = {"sigma_data": args.sigma_data} if precond == "edm" else {}
        return PRECOND_CLASSES[precond].from_backbone(backbone, num_classes=0, **precond_config)

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        args = self.args
        if args.validation_prompts is None:
            args.validation_prompts = list(self.data.first_captions or [""])[:MAX_DEFAULT_VALIDATION_PROMPTS]
        self.conditioner = CaptionConditioner(
            self.prompt_encoder, args.proportion_empty_prompts, training_dtype(self.accelerator.mixed_precision),
            cache=args.cache_text_embeddings,
        )
        return model

    # ------------------------------------------------------------------------------------------ conditioning, loss
    def conditioning(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"encoder_hidden_states": ...}`` of the batch's captions: one drawn per example, dropped to the empty
        prompt with probability ``--proportion_empty_prompts`` (both drawn now, from the run's seeded RNGs)."""
        embeddings = self.conditioner(batch["captions"], self.accelerator.device)
        if self.pooled_width is None:
            return {"encoder_hidden_states": embeddings.embeds}
        return {"encoder_hidden_states": embeddings.embeds, "pooled_text_embeds": embeddings.pooled}

    def loss(self, model: torch.nn.Module, images: torch.Tensor, conditioning: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return self.denoising_loss(model, images, conditioning)

    # ------------------------------------------------------------------------------------------ pipeline, grids
    def pipeline(self, model: torch.nn.Module) -> EDMTextToImagePipeline:
        sigma_min = max(EDMHeunScheduler().config.sigma_min, model.sigma_min)
        sigma_max = min(EDMHeunScheduler().config.sigma_max, model.sigma_max)
        return EDMTextToImagePipeline(
            denoiser=model, scheduler=EDMHeunScheduler(sigma_min=sigma_min, sigma_max=sigma_max),
            tokenizer=self.prompt_encoder.tokenizer, text_encoder=self.prompt_encoder.text_encoder, vae=self.data.vae,
            empty_prompt=self.args.empty_prompt,
        )

    def seeds_per_prompt(self, count: int) -> int:
        """Columns of the grid: ``count`` images shared among the prompts, at least one per prompt."""
        return max(1, count // len(self.args.validation_prompts))

    def sample_grid(self, model: torch.nn.Module, count: int) -> Image.Image:
        """Rows: the validation prompts; columns: seeds ``--seed + j``, one pipeline call per seed (so a column
        reproduces with ``generator=torch.Generator().manual_seed(seed + j)``). Never the training RNG."""
        pipeline = self.pipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        prompts, columns = list(self.args.validation_prompts), self.seeds_per_prompt(count)
        by_seed = [
            pipeline(
                prompt=prompts, num_inference_steps=self.sample_steps(), guidance_scale=self.args.guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(self.args.seed + column), output_type="np",
            ).images
            for column in range(columns)
        ]
        images = np.stack(by_seed, axis=1).reshape(len(prompts) * columns, *by_seed[0].shape[1:])
        return image_grid(images, rows=len(prompts))

    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        exported = super().export(model, output_dir, step)
        if exported.artefacts:
            columns = self.seeds_per_prompt(max(self.args.num_validation_images, 1))
            exported.summary.append(
                f"Grid: {len(self.args.validation_prompts)} prompts (rows) x {columns} seeds (columns), "
                f"guidance scale {self.args.guidance_scale:g}."
            )
        return exported

    def write_model_card(self, output_dir: Path, exported: Export, steps: int) -> Path:
        return write_text_model_card(self.args, output_dir, exported.artefacts.get("sample_grid"), steps)

