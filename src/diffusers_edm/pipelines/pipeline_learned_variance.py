"""``LearnedVariancePipeline``: sample Improved-DDPM / DiT models with a learned variance, pixel or latent, with guidance."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput, ModelMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCard

from ..models import LatentCodec
from ..models.backbones import class_table_size
from ..models.preconditioned_denoisers import label_tensor
from ..value_checks import check_integer
from ..schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from .model_card import ModelCardHubMixin, TrainingRecord, build_model_card
from .pipeline_edm import USAGE_EXAMPLE_IMAGES, check_guidance_scale

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_NUM_INFERENCE_STEPS = 100  # Improved DDPM samples its 4000-step models with 100 respaced steps (Section 4)


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

    Classifier-free guidance (Ho & Salimans 2021) acts on eps only: one batched call on ``[x, x]`` with
    ``[labels, null]``, ``eps = eps_null + w (eps_cond - eps_null)`` over all ``C`` channels, and the variance
    output taken from the conditional half.

    Class labels are ids of the backbone's class-embedding table: a DiT's ``0..num_embeds_ada_norm - 1`` (and its
    null row), a ``UNet2DModel``'s ``0..num_class_embeds - 1``; anything else is a ``ValueError`` before sampling.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: LearnedVarianceDDPMScheduler,
        vae: AutoencoderKL | None = None,
        null_class_label: int | None = None,
    ):
        super().__init__()
        if not isinstance(scheduler, LearnedVarianceDDPMScheduler):
            raise ValueError(f"scheduler must be a LearnedVarianceDDPMScheduler, got {type(scheduler).__name__}.")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(null_class_label=null_class_label)
        self.image_processor = VaeImageProcessor(do_resize=False)
        if null_class_label is not None:
            rows = class_table_size(self.unet)
            check_integer(
                "null_class_label", null_class_label, minimum=0, maximum=rows - 1,
                allowed=f"None or a row of the backbone's class table, 0..{rows - 1}",
            )

    def _class_labels(self, class_labels: Any, batch_size: int, guidance_scale: float) -> torch.Tensor | None:
        """``batch_size`` validated label ids on the host (``None`` for an unconditional call); the one look at the
        label values of a call."""
        rows = class_table_size(self.unet)
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
        sample_size = self.unet.config.sample_size
        spatial = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        return (batch_size, self.unet.config.in_channels, *spatial)

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
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size: number of images (a list of ``class_labels`` sets it when ``batch_size`` is 1).
            class_labels: class index (or one per image) for class-conditional models, within the backbone's class
                table (see the class docstring).
            guidance_scale: classifier-free guidance weight w, a finite number (1 = no guidance, one model call per
                step).
            num_inference_steps: an int (even respacing) or spacing string (``"ddim25"``, ``"10,15,20"``).
            generator: for the initial noise and the noise of every step.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or ``"latent"`` (the final sample as is:
                latents with a vae, [-1, 1] pixels without).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        check_integer("batch_size", batch_size, minimum=1)
        check_guidance_scale(guidance_scale)
        labels = self._class_labels(class_labels, batch_size, guidance_scale)
        if labels is not None:
            batch_size = labels.numel()
        # Sampling needs eval mode: diffusers' DiT in train mode drops class labels at random, per block.
        training_modes = {module: module.training for module in (self.unet, self.vae) if module is not None}
        for module in training_modes:
            module.eval()
        try:
            image = self._sample(batch_size, labels, guidance_scale, num_inference_steps, generator, output_type)
        finally:
            for module, was_training in training_modes.items():
                module.train(was_training)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _sample(
        self,
        batch_size: int,
        labels: torch.Tensor | None,
        guidance_scale: float,
        num_inference_steps: int | str,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
    ) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
        """The sampling loop and decoding of :meth:`__call__` (arguments already checked)."""
        use_guidance = guidance_scale != 1.0
        device = self._execution_device

        sample = randn_tensor(self._sample_shape(batch_size), generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        model_kwargs = {}
        if labels is not None:
            labels = labels.to(device)
            model_kwargs["class_labels"] = (
                torch.cat([labels, torch.full_like(labels, self._null_label())]) if use_guidance else labels
            )
        channels = sample.shape[1]

        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample, sample]) if use_guidance else sample
            # A tensor timestep: UNet2DModel would truncate a Python float, and DiT wants one per example.
            t_batch = t.reshape(1).expand(model_input.shape[0]).to(device)
            model_output = self.unet(model_input, t_batch, **model_kwargs).sample
            if use_guidance:
                conditional, unconditional = model_output.chunk(2)
                eps_conditional, variance_conditional = conditional[:, :channels], conditional[:, channels:]
                eps_unconditional = unconditional[:, :channels]
                eps = eps_unconditional + guidance_scale * (eps_conditional - eps_unconditional)
                model_output = torch.cat([eps, variance_conditional], dim=1)
            sample = self.scheduler.step(model_output, t, sample, generator=generator).prev_sample

        if output_type == "latent":
            return sample
        if self.vae is not None:
            sample = LatentCodec(self.vae).decode(sample)
        return self.image_processor.postprocess(sample.float(), output_type=output_type)

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
        """
        rows = class_table_size(self.unet)
        call: dict[str, Any] = {}
        null_label = self._known_null_label()
        num_classes = rows - 1 if null_label is not None and null_label == rows - 1 else rows
        if rows > 0:
            call["class_labels"] = list(range(min(num_classes, USAGE_EXAMPLE_IMAGES)))
            if guidance_scale != 1.0 and null_label is not None:
                call["guidance_scale"] = float(guidance_scale)
            labels = f"{num_classes} classes" + ("" if null_label is None else f" (null label {null_label})")
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
        return build_model_card(self, repo_id=repo_id, summary=summary, tags=tags, call_arguments=call, training=training)
