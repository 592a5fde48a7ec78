"""``EDMTextToImagePipeline``: prompts to images with a text-conditional preconditioned denoiser (EDM's samplers).

The text goes through :mod:`.prompt_encoding` (tokenizer + frozen text encoder), its embeddings reach the backbone's
cross-attention (Latent Diffusion, Rombach et al. 2022, section 3.3; PixArt-alpha), and the sampling loop is
:class:`~diffusers_edm.pipelines.pipeline_edm.EDMSamplingPipeline`'s, the same as :class:`~diffusers_edm.EDMPipeline`'s,
so every scheduler and guidance method of the package works here too.

Classifier-free guidance for text (Ho & Salimans 2021; GLIDE, Nichol et al. 2022, section 3.2)::

    D_guided(x; sigma, c) = D(x; sigma, c_uncond) + w (D(x; sigma, c) - D(x; sigma, c_uncond))

with ``c_uncond`` the negative prompt where one is given, else the empty prompt encoded by the pipeline's
``empty_prompt`` convention, the one its training used for caption dropout (``"encode"``: ``""`` through the text
encoder, Stable Diffusion 1.x/2.x; ``"zeros"``: all-zero embeddings, SDXL's ``force_zeros_for_empty_prompt``). Both
halves run in one batched model call; ``w = 1`` is one unguided call per model call.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from huggingface_hub import ModelCard

from ..guidance import (
    Autoguidance,
    ClassifierFreeGuidance,
    ClipGuidance,
    ConditionalDenoiser,
    GuidanceInterval,
    GuidedDenoiser,
    check_guidance_denoiser,
    check_guidance_interval,
    check_guidance_scale,
)
from ..guidance.guided_denoiser import GuidanceTerm
from ..models import PreconditionedDenoiser, pretrained_denoiser
from ..models.backbones import takes_sdxl_time_ids
from ..schedulers import EDMMultistepScheduler
from ..schedulers.planned_schedule import check_generator
from ..value_checks import check_integer
from .model_card import TrainingRecord, build_model_card
from .pipeline_edm import DEFAULT_NUM_INFERENCE_STEPS, EDMSamplingPipeline, check_latents
from .prompt_encoding import (
    PromptEmbeddings,
    TextPromptsMixin,
    check_context_width,
    check_latents_count,
    check_empty_prompt,
    sdxl_time_ids,
    text_hidden_size,
)

USAGE_EXAMPLE_PROMPTS = ["a photograph of an astronaut riding a horse"]


def check_text_components(
    denoiser: PreconditionedDenoiser, text_encoder: torch.nn.Module, guidance_denoiser: PreconditionedDenoiser | None,
    text_encoder_2: torch.nn.Module | None = None,
) -> None:
    """``ValueError`` naming both sides unless the text encoder's hidden states (SDXL: both encoders', concatenated)
    fit the denoiser's cross-attention (and the weak ``guidance_denoiser``'s, which must model the same data)."""
    backbone = denoiser.config.backbone_class
    if not denoiser.uses_cross_attention:
        raise ValueError(
            f"EDMTextToImagePipeline needs a denoiser with cross-attention (UNet2DConditionModel or "
            f"PixArtTransformer2DModel); this one's backbone is {backbone}."
        )
    if denoiser.config.num_classes != 0:
        raise ValueError(
            f"EDMTextToImagePipeline conditions on text only; the denoiser has num_classes={denoiser.config.num_classes} "
            "(use EDMPipeline with encoder_hidden_states for a class- and text-conditional model)."
        )
    encoders = [text_encoder] if text_encoder_2 is None else [text_encoder, text_encoder_2]
    check_context_width(
        sum(text_hidden_size(encoder) for encoder in encoders), denoiser.context_width,
        source=f"The text encoder {' + '.join(type(encoder).__name__ for encoder in encoders)} (hidden size)",
        target=f"the denoiser's {backbone}",
    )
    if takes_sdxl_time_ids(denoiser.backbone) and text_encoder_2 is None:
        raise ValueError(
            f"The denoiser's {backbone} is an SDXL UNet (addition_embed_type='text_time'): it needs SDXL's second "
            "tokenizer and text encoder (tokenizer_2, text_encoder_2) for its pooled text vector."
        )
    if guidance_denoiser is not None:
        check_guidance_denoiser(denoiser, guidance_denoiser)
        check_context_width(
            guidance_denoiser.context_width, denoiser.context_width,
            source=f"The guidance_denoiser's {guidance_denoiser.config.backbone_class}", target=f"the denoiser's {backbone}",
        )


class EDMTextToImagePipeline(TextPromptsMixin, EDMSamplingPipeline):
    """Text-to-image generation with a preconditioned denoiser over a text-conditional backbone.

    Components:
        denoiser: an :class:`~diffusers_edm.EDMPrecond`, ``VPPrecond``, ``VEPrecond`` or ``IDDPMPrecond`` over a
            ``UNet2DConditionModel`` or ``PixArtTransformer2DModel`` (cross-attention on the text embeddings; a
            UNet with a projection class embedding also takes the pooled text vector).
        scheduler: :class:`~diffusers_edm.EDMHeunScheduler`, :class:`~diffusers_edm.EDMMultistepScheduler`, or
            diffusers' ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``.
        tokenizer: a transformers tokenizer; prompts are padded to its ``model_max_length``.
        text_encoder: a frozen transformers text model (``CLIPTextModel``, ``T5EncoderModel``, ...) whose hidden
            size is the denoiser's text width.
        vae: optional ``AutoencoderKL`` for latent models (decoded by :class:`~diffusers_edm.models.LatentCodec`).
        guidance_denoiser: optional weak text model for autoguidance (Karras et al. 2024): the same data, the same
            text width; ``D = D_weak(c) + w (D(c) - D_weak(c))``, both with the prompt.
        empty_prompt: the unconditional input's convention, ``"encode"`` or ``"zeros"`` (saved in the config; use
            the one the model was trained with).
        latent_space: whether samples are latents (default: whether a vae is given).
        tokenizer_2, text_encoder_2: SDXL's second tokenizer and text encoder (``CLIPTextModelWithProjection``); the
            denoiser then reads both encoders' penultimate hidden states, concatenated, and a pooled vector made of
            the second encoder's ``text_embeds`` and SDXL's micro-conditioning numbers.

    :meth:`from_stable_diffusion` builds one over a loaded ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``.

    ``guidance_scale = w != 1`` without a ``guidance_denoiser`` is classifier-free guidance against the negative
    prompt or the empty prompt (module docstring); with one it is autoguidance. ``guidance_interval`` limits either
    to ``sigma_lo < sigma <= sigma_hi`` (Kynkaenniemi et al. 2024).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->denoiser->guidance_denoiser->vae"
    _optional_components = ["vae", "guidance_denoiser", "tokenizer_2", "text_encoder_2"]

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        scheduler: SchedulerMixin,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        vae: AutoencoderKL | None = None,
        guidance_denoiser: PreconditionedDenoiser | None = None,
        empty_prompt: str = "encode",
        latent_space: bool | None = None,
        tokenizer_2: Any = None,
        text_encoder_2: torch.nn.Module | None = None,
    ):
        super().__init__()
        latent_space = self._register_sampling_components(denoiser, scheduler, vae, latent_space)
        empty_prompt = check_empty_prompt(empty_prompt)
        check_text_components(denoiser, text_encoder, guidance_denoiser, text_encoder_2)
        self.register_modules(
            denoiser=denoiser, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
            guidance_denoiser=guidance_denoiser, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2,
        )
        self.register_to_config(empty_prompt=empty_prompt, latent_space=latent_space)

    @classmethod
    def from_stable_diffusion(
        cls, pipe: DiffusionPipeline, scheduler: SchedulerMixin | None = None
    ) -> "EDMTextToImagePipeline":
        """The package's text pipeline over a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
        (its modules are shared, not copied), so the package's samplers and guidance run on the checkpoint.

        The denoiser is :func:`~diffusers_edm.models.pretrained_denoiser` of ``pipe.unet`` and ``pipe.scheduler``
        (a discrete VP table, or an EDM formulation); the empty prompt is ``"zeros"`` for an SDXL pipeline whose
        config has ``force_zeros_for_empty_prompt``, else ``"encode"`` (``""`` through the text encoder(s)), as the
        checkpoint's own pipeline does. ``scheduler`` defaults to :class:`~diffusers_edm.EDMMultistepScheduler`
        (each call samples within the denoiser's noise range).
        """
        for name in ("unet", "scheduler", "tokenizer", "text_encoder"):
            if getattr(pipe, name, None) is None:
                raise ValueError(
                    f"from_stable_diffusion needs a Stable Diffusion (XL) pipeline with a {name}; "
                    f"{type(pipe).__name__} has none."
                )
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        force_zeros = text_encoder_2 is not None and bool(pipe.config.get("force_zeros_for_empty_prompt", False))
        if scheduler is None:
            scheduler = EDMMultistepScheduler()
        return cls(
            denoiser=pretrained_denoiser(pipe.unet, pipe.scheduler), scheduler=scheduler, tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder, vae=getattr(pipe, "vae", None), empty_prompt="zeros" if force_zeros else "encode",
            tokenizer_2=getattr(pipe, "tokenizer_2", None), text_encoder_2=text_encoder_2,
        )

    def _micro_conditioning(
        self,
        original_size: tuple[int, int] | None,
        crops_coords_top_left: tuple[int, int],
        target_size: tuple[int, int] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """SDXL's ``add_time_ids`` for this call (``None`` for other backbones): sizes in pixels, default the size
        generated (the denoiser's sample size times the vae's scale factor), crop ``(0, 0)``, as diffusers' SDXL
        pipeline."""
        if not takes_sdxl_time_ids(self.denoiser.backbone):
            return None
        height, width = (size * self.vae_scale_factor for size in self.denoiser.sample_size)
        return sdxl_time_ids(
            original_size or (height, width), crops_coords_top_left, target_size or (height, width), device, dtype
        )

    # ------------------------------------------------------------------------------------------ guidance
    def _guided_denoiser(
        self,
        model: ConditionalDenoiser,
        conditional: PromptEmbeddings,
        unconditional: PromptEmbeddings | None,
        guidance_scale: float,
        guidance_interval: GuidanceInterval | None,
        corrections: Sequence[GuidanceTerm] = (),
    ) -> GuidedDenoiser:
        """The guided denoiser of one call: ``model`` (the denoiser with the prompts), classifier-free guidance
        against ``unconditional`` or autoguidance with the ``guidance_denoiser``, plus additive ``corrections`` (terms
        built on ``model``, as classifier guidance is); chosen once per call."""
        guidance = None
        if guidance_scale != 1.0 and self.guidance_denoiser is not None:
            weak = self.guidance_denoiser
            pooled = conditional.pooled if weak.pooled_text_width is not None else None
            guidance = Autoguidance(model, ConditionalDenoiser(weak, None, conditional.embeds, pooled), guidance_scale)
        elif guidance_scale != 1.0:
            guidance = ClassifierFreeGuidance(
                self.denoiser, None, guidance_scale, conditional.embeds, unconditional.embeds, conditional.pooled,
                unconditional.pooled,
            )
        return GuidedDenoiser(model, guidance, corrections, guidance_interval)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        clip_model: torch.nn.Module | None = None,
        clip_tokenizer: Any = None,
        clip_guidance_scale: float | None = None,
        clip_image_processor: Any = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images from prompts (the call conventions of diffusers' ``StableDiffusionPipeline``).

        Args:
            prompt: a prompt or a list of prompts (or give ``prompt_embeds``).
            negative_prompt: the unconditional half's prompt for classifier-free guidance: one, or one per prompt;
                ``None``: the empty prompt by the pipeline's ``empty_prompt`` convention.
            prompt_embeds: precomputed text embeddings ``(prompts, L, C)`` instead of ``prompt``.
            negative_prompt_embeds: precomputed unconditional embeddings ``(1 or prompts, L, C)``.
            num_images_per_prompt: images per prompt; the batch is ``prompts x num_images_per_prompt``, in prompt
                order.
            guidance_scale: ``w``, a finite number (1.0: no guidance, one model call per sampler call).
            num_inference_steps: sampler steps N.
            generator: a torch generator, or one per image, for the initial noise and any sampler noise.
            latents: initial standard-normal noise ``(prompts x num_images_per_prompt, C, H, W)``, finite.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called after every model call as ``callback(pipe, i, t, tensors)``; may return a
                replacement ``latents``.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
            guidance_interval: ``(sigma_lo, sigma_hi)``: guide only the model calls with ``sigma_lo < sigma <=
                sigma_hi``; ``None``: every call.
            pooled_prompt_embeds, negative_pooled_prompt_embeds: pooled vectors with ``prompt_embeds`` /
                ``negative_prompt_embeds`` for a denoiser that takes one.
            clip_model, clip_tokenizer, clip_guidance_scale, clip_image_processor: CLIP guidance (GLIDE,
                :class:`~diffusers_edm.guidance.ClipGuidance`): a transformers ``CLIPModel`` (or a
                ``NoiseAwareCLIPModel``), its tokenizer, ``s`` in ``[0, 1000]`` (0: off, exactly the unguided images)
                and optionally its ``CLIPImageProcessor`` (mean and std); adds ``s sigma^2 grad_x cos(E_img(D(x;
                sigma)), E_txt(prompt))`` at guided calls, with ``D`` decoded by the vae for latents.
            original_size, crops_coords_top_left, target_size: SDXL's micro-conditioning (pixels; default: the size
                generated, crop ``(0, 0)``), appended to the pooled vector of both guidance halves; ignored by other
                backbones. ``pooled_prompt_embeds`` are the second text encoder's part only, as in diffusers.

        Every argument is checked here, once per call; the sampling loop never waits for the device.
        """
        callback_on_step_end_tensor_inputs = self._check_call_settings(
            output_type, num_inference_steps, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        num_images_per_prompt = check_integer("num_images_per_prompt", num_images_per_prompt, minimum=1)
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_interval = check_guidance_interval(guidance_interval)
        # Components may have been swapped since __init__ (pipe.register_modules, from_pretrained overrides).
        check_text_components(self.denoiser, self.text_encoder, self.guidance_denoiser, self.text_encoder_2)
        device = self._execution_device
        time_ids = self._micro_conditioning(
            original_size, crops_coords_top_left, target_size, device, self.denoiser.dtype
        )
        classifier_free = guidance_scale != 1.0 and self.guidance_denoiser is None
        conditional, unconditional = self.encode_prompt(
            prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt, negative_prompt_embeds,
            negative_pooled_prompt_embeds, classifier_free, device, self.denoiser.dtype, self.denoiser.context_width,
        )
        count = len(conditional)
        batch_size = count * num_images_per_prompt
        shape = (batch_size, self.denoiser.image_channels, *self.denoiser.sample_size)
        check_latents_count(latents, count, num_images_per_prompt)
        if latents is not None:
            check_latents(latents, shape)
        check_generator(generator, batch_size)
        if time_ids is not None:
            conditional = conditional.with_time_ids(time_ids)
            unconditional = None if unconditional is None else unconditional.with_time_ids(time_ids)
        conditional, unconditional = self.embeddings_for_model(
            conditional, unconditional, num_images_per_prompt, self.denoiser.pooled_text_width,
            f"The denoiser's {self.denoiser.config.backbone_class}",
        )
        model = ConditionalDenoiser(self.denoiser, None, conditional.embeds, conditional.pooled)
        clip = ClipGuidance.for_pipeline(
            self, model, prompt, batch_size, device, clip_model, clip_tokenizer, clip_guidance_scale,
            clip_image_processor,
        )
        corrections: list[GuidanceTerm] = [clip] if clip is not None else []  # additive terms of D built on `model`
        guided_denoiser = self._guided_denoiser(
            model, conditional, unconditional, guidance_scale, guidance_interval, corrections
        )
        latents = self._sample(
            guided_denoiser, shape, num_inference_steps, generator, latents, callback_on_step_end,
            callback_on_step_end_tensor_inputs, device,
        )
        return self._output(latents, output_type, return_dict)

    # ------------------------------------------------------------------------------------------ sharing
    def model_card(
        self,
        repo_id: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        training: TrainingRecord | None = None,
        prompts: Sequence[str] | None = None,
    ) -> ModelCard:
        """The Hub model card of this pipeline, with a usage example that runs as written.

        Args:
            repo_id: the Hub repository (or folder) the example loads from.
            num_inference_steps: the example's steps (default: 18).
            guidance_scale: the example's guidance weight.
            training: what a training run adds (steps, data set, arguments, sample grid).
            prompts: the example's prompts (default: one generic prompt).
        """
        denoiser = self.denoiser
        call: dict[str, Any] = {"prompt": list(prompts or USAGE_EXAMPLE_PROMPTS)}
        if guidance_scale != 1.0:
            call["guidance_scale"] = float(guidance_scale)
        call["num_inference_steps"] = int(num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS)
        family = type(denoiser).__name__.removesuffix("Precond").lower()
        space = "latent space (AutoencoderKL)" if self.config.latent_space else "pixel space"
        height, width = denoiser.sample_size
        summary = (
            "A text-to-image EDM-style diffusion model (Karras et al. 2022) made with "
            f"[diffusers-edm](https://pypi.org/project/diffusers-edm/): denoiser `{type(denoiser).__name__}` over a "
            f"`{denoiser.config.backbone_class}` backbone reading `{type(self.text_encoder).__name__}` text embeddings "
            f"(width {denoiser.context_width}), sampling in {space} at {denoiser.image_channels}x{height}x{width}. "
            f"Classifier-free guidance (`guidance_scale`) uses the empty prompt by the `{self.config.empty_prompt}` "
            "convention as its unconditional input, as in training."
        )
        tags = ["edm", f"{family}-preconditioning", "text-to-image"]
        if self.guidance_denoiser is not None:
            summary += (
                "\n\nAutoguidance (Karras et al. 2024): the pipeline carries a weak text model (`guidance_denoiser`); "
                "`guidance_scale=w` samples `D = D_weak + w (D - D_weak)`."
            )
            tags.append("autoguidance")
        return build_model_card(self, repo_id=repo_id, summary=summary, tags=tags, call_arguments=call, training=training)
