"""``LearnedVariancePipeline``: sample Improved-DDPM / DiT models with a learned variance, pixel or latent, with
classifier-free guidance, classifier guidance (ADM) and a guidance interval; ``LearnedVarianceTextToImagePipeline``:
the same sampler for text-conditional models (GLIDE's family), sharing its loop (:func:`ancestral_sampling`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput, ModelMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCard

from ..guidance import (
    ClassifierFreeNoiseGuidance,
    ClassifierGuidance,
    ConditionalNoisePredictor,
    GuidanceInterval,
    GuidedNoisePredictor,
    check_classifier,
    check_classifier_labels,
    check_classifier_scale,
    check_guidance_interval,
    check_guidance_scale,
)
from ..models import LatentCodec, NoiseConditionalClassifier
from ..models.backbones import class_table_size, context_width, output_channels, pooled_text_width, uses_cross_attention
from ..models.preconditioned_denoisers import label_tensor
from ..value_checks import check_integer
from ..schedulers.planned_schedule import check_generator
from ..schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from .model_card import ModelCardHubMixin, TrainingRecord, build_model_card
from .pipeline_edm import USAGE_EXAMPLE_IMAGES
from .prompt_encoding import TextPromptsMixin, check_context_width, check_empty_prompt, text_hidden_size

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_NUM_INFERENCE_STEPS = 100  # Improved DDPM samples its 4000-step models with 100 respaced steps (Section 4)


def sample_shape(unet: ModelMixin, batch_size: int) -> tuple[int, ...]:
    """``(batch_size, C, H, W)`` of the samples the backbone was configured for."""
    sample_size = unet.config.sample_size
    spatial = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    return (batch_size, unet.config.in_channels, *spatial)


def ancestral_sampling(
    pipeline: DiffusionPipeline,
    guided_model: GuidedNoisePredictor,
    batch_size: int,
    generator: torch.Generator | list[torch.Generator] | None,
    output_type: str,
) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
    """The sampling loop of the learned-variance pipelines (Improved DDPM ancestral sampling, the scheduler's
    timesteps set): ``x_T ~ N(0, I)``, one guided prediction and one scheduler step per timestep, then decoding
    (through ``pipeline.vae`` where there is one)."""
    device = pipeline._execution_device
    unet, scheduler = pipeline.unet, pipeline.scheduler
    sample = randn_tensor(sample_shape(unet, batch_size), generator=generator, device=device, dtype=unet.dtype)
    # Where guidance acts, decided here on the host: the loop reads one Python bool per step.
    guided_steps = guided_model.guided_calls()

    for i, t in enumerate(pipeline.progress_bar(scheduler.timesteps)):
        prediction = guided_model(sample, i, t, guided_steps[i])
        sample = scheduler.step(prediction.model_output, t, sample, generator=generator).prev_sample
        if prediction.mean_shift is not None:  # classifier guidance: N(mu + s Sigma grad, Sigma)
            sample = (sample + prediction.mean_shift).to(sample.dtype)

    if output_type == "latent":
        return sample
    if pipeline.vae is not None:
        sample = LatentCodec(pipeline.vae).decode(sample)
    return pipeline.image_processor.postprocess(sample.float(), output_type=output_type)


class LearnedVariancePipeline(ModelCardHubMixin, DiffusionPipeline):
    """Ancestral sampling of a model whose output is ``2C`` channels (eps and the variance output ``v``).

    Components:
        unet: a ``UNet2DModel`` (pixels, optionally ``num_class_embeds``) or ``DiTTransformer2DModel`` (latents), with
            ``2C`` output channels; called as ``unet(x_t, t, class_labels=...)``.
        scheduler: a :class:`~diffusers_edm.schedulers.scheduling_learned_variance_ddpm.LearnedVarianceDDPMScheduler`.
        vae: optional ``AutoencoderKL``; when present the samples are latents, decoded by
            :class:`~diffusers_edm.models.LatentCodec` (``vae.decode(z / scaling_factor + shift_factor)``, or with the
            config's ``latents_mean`` / ``latents_std``).
        null_class_label: the label of the "no class" embedding used by classifier-free guidance. Default: the
            DiT's extra embedding row (``num_embeds_ada_norm``); a class-conditional ``UNet2DModel`` needs it set.
        classifier: optional :class:`~diffusers_edm.NoiseConditionalClassifier` of the model's data (its
            ``in_channels``, ``sample_size`` and, for a class-conditional model, its classes) for classifier guidance.
            Saved with the pipeline; ``from_pretrained(path, classifier=...)`` adds or replaces it.

    Guidance (:mod:`diffusers_edm.guidance`, one guided model built per call):

    - classifier-free guidance (Ho & Salimans 2021) acts on eps only: one batched call on ``[x, x]`` with
      ``[labels, null]``, ``eps = eps_null + w (eps_cond - eps_null)`` over all ``C`` channels, and the variance
      output taken from the conditional half;
    - classifier guidance (Dhariwal & Nichol 2021, Algorithm 1) moves the reverse mean:
      ``x_{t-1} ~ N(mu + s Sigma grad_{x_t} log p(y | x_t, t), Sigma)`` with the model's variance ``Sigma``; the
      classifier, trained in sigma space, reads ``x_t / sqrt(alpha_bar_t)`` at
      ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``. With an unconditional model it samples the given classes;
    - ``guidance_interval = (sigma_lo, sigma_hi)`` (Kynkaenniemi et al. 2024): both only at steps with
      ``sigma_lo < sigma_t <= sigma_hi``; elsewhere the plain conditional model, one call and no classifier.

    Class labels are ids of the backbone's class-embedding table: a DiT's ``0..num_embeds_ada_norm - 1`` (and its
    null row), a ``UNet2DModel``'s ``0..num_class_embeds - 1``; anything else is a ``ValueError`` before sampling.
    """

    model_cpu_offload_seq = "unet->classifier->vae"
    _optional_components = ["vae", "classifier"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: LearnedVarianceDDPMScheduler,
        vae: AutoencoderKL | None = None,
        null_class_label: int | None = None,
        classifier: NoiseConditionalClassifier | None = None,
    ):
        super().__init__()
        if not isinstance(scheduler, LearnedVarianceDDPMScheduler):
            raise ValueError(f"scheduler must be a LearnedVarianceDDPMScheduler, got {type(scheduler).__name__}.")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, classifier=classifier)
        self.register_to_config(null_class_label=null_class_label)
        self.image_processor = VaeImageProcessor(do_resize=False)
        if null_class_label is not None:
            rows = class_table_size(self.unet)
            check_integer(
                "null_class_label", null_class_label, minimum=0, maximum=rows - 1,
                allowed=f"None or a row of the backbone's class table, 0..{rows - 1}",
            )
        self._check_classifier()

    def _check_classifier(self) -> None:
        """``ValueError`` naming both sides unless the classifier (if any) reads this model's samples and classes."""
        if self.classifier is not None:
            check_classifier(
                self.classifier,
                num_classes=self._num_classes(),
                sample_size=self._sample_shape(1)[2:],
                channels=self.unet.config.in_channels,
                model=f"unet ({type(self.unet).__name__})",
            )

    def _num_classes(self) -> int:
        """The number of real classes of the backbone's class table (its rows less a last null row), 0 if none."""
        rows = class_table_size(self.unet)
        null_label = self._known_null_label()
        return rows - 1 if null_label is not None and null_label == rows - 1 else rows

    def _class_labels(
        self, class_labels: Any, batch_size: int, guidance_scale: float, classifier_scale: float = 0.0
    ) -> torch.Tensor | None:
        """``batch_size`` validated label ids of the backbone on the host (``None`` for an unconditional call); the
        one look at the label values of a call. With classifier guidance an unconditional backbone takes none (the
        labels are the classifier's targets)."""
        rows = class_table_size(self.unet)
        if rows == 0 and classifier_scale > 0:
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} is classifier-free guidance, which needs a class-conditional model; "
                    f"this {type(self.unet).__name__} is unconditional (use 1.0; classifier_scale guides it)."
                )
            return None
        if class_labels is None:
            if guidance_scale != 1.0:
                raise ValueError(f"guidance_scale={guidance_scale} needs class_labels (classifier-free guidance is class-conditional).")
            if isinstance(self.unet, DiTTransformer2DModel):
                raise ValueError("A DiTTransformer2DModel is class-conditional: pass class_labels.")
            return None
        if rows == 0:
            raise ValueError(f"This {type(self.unet).__name__} is unconditional (no class embedding) but got class_labels.")
        labels = label_tensor(class_labels).reshape(-1).to(torch.int64)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        elif batch_size not in (1, labels.numel()):
            raise ValueError(f"Got {labels.numel()} class_labels for batch_size={batch_size}; give one label or one per sample.")
        guided = guidance_scale != 1.0
        null_label = self._null_label() if guided else self._known_null_label()
        valid = (labels >= 0) & (labels < rows)
        if guided:
            valid &= labels != null_label
        if not bool(valid.all()):
            allowed = f"0..{rows - 1}"
            if guided:
                allowed += f" other than the null label {null_label} (guidance needs real classes)"
            elif null_label is not None:
                allowed += f" ({null_label}: the null label)"
            raise ValueError(f"class_labels must be ids of the {type(self.unet).__name__}'s class table, {allowed}; got {labels[~valid].tolist()}.")
        return labels

    def _known_null_label(self) -> int | None:
        """The "no class" label: the config's, else a DiT's extra embedding row, else None."""
        if self.config.null_class_label is not None:
            return int(self.config.null_class_label)
        if isinstance(self.unet, DiTTransformer2DModel):
            # DiT's label embedding has one extra row, index num_classes, for the dropped label.
            return int(self.unet.config.num_embeds_ada_norm)
        return None

    def _null_label(self) -> int:
        """The "no class" label of classifier-free guidance; ``ValueError`` when the pipeline has none."""
        null_label = self._known_null_label()
        if null_label is None:
            raise ValueError(
                "guidance_scale != 1 needs a null class label: pass null_class_label=... to the pipeline "
                f"(the label your {type(self.unet).__name__} was trained with for 'no class')."
            )
        return null_label

    def _sample_shape(self, batch_size: int) -> tuple[int, ...]:
        return sample_shape(self.unet, batch_size)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int | str = DEFAULT_NUM_INFERENCE_STEPS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        classifier_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size: number of images (a list of ``class_labels`` sets it when ``batch_size`` is 1).
            class_labels: class index (or one per image) for class-conditional models, within the backbone's class
                table (see the class docstring); with classifier guidance, the classes to steer to (also for an
                unconditional model).
            guidance_scale: classifier-free guidance weight w, a finite number (1 = no guidance, one model call per
                step).
            num_inference_steps: an int (even respacing) or spacing string (``"ddim25"``, ``"10,15,20"``).
            generator: a torch generator, or a list of one per image, for the initial noise and the noise of every
                step.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or ``"latent"`` (the final sample as is:
                latents with a vae, [-1, 1] pixels without).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            classifier_scale: classifier guidance scale ``s``, a number in ``[0, 1000]``; ``None``: 1.0 (ADM's default)
                when the pipeline has a classifier, else 0. Needs ``class_labels``.
            guidance_interval: ``(sigma_lo, sigma_hi)``, ``0 <= sigma_lo < sigma_hi < inf``: guide only the steps with
                ``sigma_lo < sigma_t <= sigma_hi``, ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; ``None``:
                every step.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        check_integer("batch_size", batch_size, minimum=1)
        guidance_scale = check_guidance_scale(guidance_scale)
        classifier_scale = check_classifier_scale(classifier_scale, self.classifier is not None)
        guidance_interval = check_guidance_interval(guidance_interval)
        self._check_classifier()  # the classifier may have been swapped since __init__
        labels = self._class_labels(class_labels, batch_size, guidance_scale, classifier_scale)
        if labels is not None:
            batch_size = labels.numel()
        elif class_labels is not None and batch_size == 1:
            batch_size = label_tensor(class_labels).numel()
        classifier_labels = None
        if classifier_scale > 0:
            classifier_labels = check_classifier_labels(self.classifier, class_labels, batch_size, "cpu")
        check_generator(generator, batch_size)
        # Before any work: the scheduler checks the steps (an int in 1..T or a spacing string) as it sets them.
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        # Sampling needs eval mode: diffusers' DiT in train mode drops class labels at random, per block.
        modules = (self.unet, self.vae, self.classifier)
        training_modes = {module: module.training for module in modules if module is not None}
        for module in training_modes:
            module.eval()
        try:
            image = self._sample(
                batch_size, labels, classifier_labels, guidance_scale, classifier_scale, guidance_interval,
                generator, output_type,
            )
        finally:
            for module, was_training in training_modes.items():
                module.train(was_training)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _guided_model(
        self,
        labels: torch.Tensor | None,
        classifier_labels: torch.Tensor | None,
        guidance_scale: float,
        classifier_scale: float,
        guidance_interval: GuidanceInterval | None,
    ) -> GuidedNoisePredictor:
        """The guided model of one call (the scheduler's timesteps set): its terms chosen once."""
        guidance = None
        if guidance_scale != 1.0:
            guidance = ClassifierFreeNoiseGuidance(self.unet, labels, self._null_label(), guidance_scale)
        classifier = None
        if classifier_scale > 0:
            classifier = ClassifierGuidance(self.classifier, classifier_labels, classifier_scale)
        return GuidedNoisePredictor(
            ConditionalNoisePredictor(self.unet, labels), self.scheduler, guidance, classifier, guidance_interval
        )

    def _sample(
        self,
        batch_size: int,
        labels: torch.Tensor | None,
        classifier_labels: torch.Tensor | None,
        guidance_scale: float,
        classifier_scale: float,
        guidance_interval: GuidanceInterval | None,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
    ) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
        """The guided model of :meth:`__call__` (arguments checked, the scheduler's timesteps set), sampled."""
        device = self._execution_device
        labels = None if labels is None else labels.to(device)
        classifier_labels = None if classifier_labels is None else classifier_labels.to(device)
        guided_model = self._guided_model(labels, classifier_labels, guidance_scale, classifier_scale, guidance_interval)
        return ancestral_sampling(self, guided_model, batch_size, generator, output_type)

    # ------------------------------------------------------------------------------------------ sharing
    def model_card(
        self,
        repo_id: str | None = None,
        num_inference_steps: int | str | None = None,
        guidance_scale: float = 1.0,
        training: TrainingRecord | None = None,
    ) -> ModelCard:
        """The Hub model card (huggingface_hub ``ModelCard``) of this pipeline, with a usage example generated from
        the backbone's config (labels within its classes) that runs as written.

        Args:
            repo_id: the Hub repository (or folder) the example loads from.
            num_inference_steps: the example's steps (default: 100 respaced steps, at most the model's T).
            guidance_scale: the example's guidance weight (used for a class-conditional model with a null label).
            training: what a training run adds (steps, data set, arguments, sample grid).

        The card names the optional ``classifier`` where the pipeline has one.
        """
        rows = class_table_size(self.unet)
        call: dict[str, Any] = {}
        null_label = self._known_null_label()
        num_classes = self._num_classes()
        if rows > 0:
            call["class_labels"] = list(range(min(num_classes, USAGE_EXAMPLE_IMAGES)))
            if guidance_scale != 1.0 and null_label is not None:
                call["guidance_scale"] = float(guidance_scale)
            labels = f"{num_classes} classes" + ("" if null_label is None else f" (null label {null_label})")
        elif self.classifier is not None:  # an unconditional model steered by the classifier to the given classes
            call["class_labels"] = list(range(min(self.classifier.config.num_classes, USAGE_EXAMPLE_IMAGES)))
            labels = "unconditional"
        else:
            call["batch_size"] = 4
            labels = "unconditional"
        T = int(self.scheduler.config.num_train_timesteps)
        call["num_inference_steps"] = num_inference_steps or min(DEFAULT_NUM_INFERENCE_STEPS, T)
        space = "latent space (AutoencoderKL)" if self.vae is not None else "pixel space"
        summary = (
            "A diffusion model with learned variances (Improved DDPM, Nichol & Dhariwal 2021) made with "
            f"[diffusers-edm](https://pypi.org/project/diffusers-edm/): a `{type(self.unet).__name__}` predicting "
            f"eps and the variance interpolation over T={T} steps, {labels}, sampling in {space}."
        )
        tags = ["learned-variance-ddpm", "class-conditional" if rows > 0 else "unconditional"]
        if self.classifier is not None:
            summary += (
                f"\n\nClassifier guidance (Dhariwal & Nichol 2021, Algorithm 1): the pipeline carries a "
                f"`{type(self.classifier).__name__}` over {self.classifier.config.num_classes} classes (`classifier`); "
                "`classifier_scale=s` (default 1.0 with `class_labels`) moves each step's mean by "
                "`s Sigma grad log p(y | x_t)`."
            )
            tags.append("classifier-guidance")
        return build_model_card(self, repo_id=repo_id, summary=summary, tags=tags, call_arguments=call, training=training)


class LearnedVarianceTextToImagePipeline(TextPromptsMixin, ModelCardHubMixin, DiffusionPipeline):
    """Text-to-image ancestral sampling of a learned-variance model: GLIDE's family (Nichol et al. 2022).

    Components:
        unet: a ``UNet2DConditionModel`` or ``PixArtTransformer2DModel`` with ``2C`` output channels (eps and the
            variance interpolation ``v``) reading the text encoder's hidden states (a UNet with a projection class
            embedding also takes the pooled text vector, GLIDE's final-token projection).
        scheduler: a :class:`~diffusers_edm.schedulers.scheduling_learned_variance_ddpm.LearnedVarianceDDPMScheduler`.
        tokenizer, text_encoder: as for :class:`~diffusers_edm.EDMTextToImagePipeline`.
        vae: optional ``AutoencoderKL`` (latent samples, decoded by :class:`~diffusers_edm.models.LatentCodec`).
        empty_prompt: the unconditional input's convention, ``"encode"`` or ``"zeros"`` (saved in the config).

    Classifier-free guidance (GLIDE, section 3.2) runs both halves in one batched call and guides the eps channels
    only, ``eps = eps(x_t, c_uncond) + w (eps(x_t, c) - eps(x_t, c_uncond))``; the variance channels are the
    conditional half's, unguided. ``guidance_interval`` limits it to the steps with ``sigma_lo < sigma_t <= sigma_hi``.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: LearnedVarianceDDPMScheduler,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        vae: AutoencoderKL | None = None,
        empty_prompt: str = "encode",
    ):
        super().__init__()
        if not isinstance(scheduler, LearnedVarianceDDPMScheduler):
            raise ValueError(f"scheduler must be a LearnedVarianceDDPMScheduler, got {type(scheduler).__name__}.")
        empty_prompt = check_empty_prompt(empty_prompt)
        check_text_unet(unet, text_encoder)
        self.register_modules(unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)
        self.register_to_config(empty_prompt=empty_prompt)
        self.image_processor = VaeImageProcessor(do_resize=False)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        num_inference_steps: int | str = DEFAULT_NUM_INFERENCE_STEPS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_interval: tuple[float, float] | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images from prompts.

        Args:
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            pooled_prompt_embeds, negative_pooled_prompt_embeds: as for
                :meth:`~diffusers_edm.EDMTextToImagePipeline.__call__`.
            guidance_scale: ``w`` of classifier-free guidance on eps, a finite number (1: one model call per step).
            num_inference_steps: an int (even respacing) or a spacing string (``"ddim25"``, ``"10,15,20"``).
            generator: a torch generator, or one per image.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            guidance_interval: ``(sigma_lo, sigma_hi)``: guide only the steps with ``sigma_lo < sigma_t <= sigma_hi``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        num_images_per_prompt = check_integer("num_images_per_prompt", num_images_per_prompt, minimum=1)
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_interval = check_guidance_interval(guidance_interval)
        check_text_unet(self.unet, self.text_encoder)
        device = self._execution_device
        classifier_free = guidance_scale != 1.0
        conditional, unconditional = self.encode_prompt(
            prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt, negative_prompt_embeds,
            negative_pooled_prompt_embeds, classifier_free, device, self.unet.dtype, context_width(self.unet),
            model=f"the {type(self.unet).__name__}",
        )
        batch_size = len(conditional) * num_images_per_prompt
        check_generator(generator, batch_size)
        conditional, unconditional = self.embeddings_for_model(
            conditional, unconditional, num_images_per_prompt, pooled_text_width(self.unet),
            f"The {type(self.unet).__name__}",
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        guidance = None
        if classifier_free:
            guidance = ClassifierFreeNoiseGuidance(
                self.unet, None, None, guidance_scale, conditional.embeds, unconditional.embeds, conditional.pooled,
                unconditional.pooled,
            )
        guided_model = GuidedNoisePredictor(
            ConditionalNoisePredictor(self.unet, None, conditional.embeds, conditional.pooled), self.scheduler,
            guidance, None, guidance_interval,
        )
        image = ancestral_sampling(self, guided_model, batch_size, generator, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def model_card(
        self,
        repo_id: str | None = None,
        num_inference_steps: int | str | None = None,
        guidance_scale: float = 1.0,
        training: TrainingRecord | None = None,
        prompts: Sequence[str] | None = None,
    ) -> ModelCard:
        """The Hub model card of this pipeline, with a usage example that runs as written."""
        call: dict[str, Any] = {"prompt": list(prompts or ["a photograph of an astronaut riding a horse"])}
        if guidance_scale != 1.0:
            call["guidance_scale"] = float(guidance_scale)
        T = int(self.scheduler.config.num_train_timesteps)
        call["num_inference_steps"] = num_inference_steps or min(DEFAULT_NUM_INFERENCE_STEPS, T)
        summary = (
            "A text-to-image diffusion model with learned variances (GLIDE's family, Nichol et al. 2022) made with "
            f"[diffusers-edm](https://pypi.org/project/diffusers-edm/): a `{type(self.unet).__name__}` reading "
            f"`{type(self.text_encoder).__name__}` text embeddings, predicting eps and the variance interpolation over "
            f"T={T} steps. Classifier-free guidance acts on eps only, against the empty prompt "
            f"(`{self.config.empty_prompt}` convention)."
        )
        return build_model_card(
            self, repo_id=repo_id, summary=summary, tags=["learned-variance-ddpm", "text-to-image"], call_arguments=call,
            training=training,
        )


def check_text_unet(unet: ModelMixin, text_encoder: torch.nn.Module) -> None:
    """``ValueError`` naming both sides unless ``unet`` is a text-conditional learned-variance backbone (cross-attention,
    ``2C`` outputs, no class table) that reads the text encoder's hidden states."""
    if not uses_cross_attention(unet):
        raise ValueError(
            "LearnedVarianceTextToImagePipeline needs a backbone with cross-attention (UNet2DConditionModel or "
            f"PixArtTransformer2DModel), got {type(unet).__name__}."
        )
    channels = int(unet.config.in_channels)
    if output_channels(unet) != 2 * channels:
        raise ValueError(
            f"The {type(unet).__name__} maps {channels} to {output_channels(unet)} channels; a learned-variance model "
            f"outputs {2 * channels} (eps and the variance interpolation)."
        )
    if class_table_size(unet) != 0:
        raise ValueError(f"The {type(unet).__name__} has a class table; this pipeline conditions on text only.")
    check_context_width(
        text_hidden_size(text_encoder), context_width(unet),
        source=f"The text encoder {type(text_encoder).__name__} (hidden size)", target=f"the {type(unet).__name__}",
    )
