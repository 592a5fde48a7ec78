"""``LearnedVariancePipeline``: sample Improved-DDPM / DiT models with a learned variance, pixel or latent, with guidance."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput, ModelMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class LearnedVariancePipeline(DiffusionPipeline):
    """Ancestral sampling of a model whose output is ``2C`` channels (eps and the variance output ``v``).

    Components:
        unet: a ``UNet2DModel`` (pixels, optionally ``num_class_embeds``) or ``DiTTransformer2DModel`` (latents), with
            ``2C`` output channels; called as ``unet(x_t, t, class_labels=...)``.
        scheduler: a :class:`~diffusers_edm.schedulers.scheduling_learned_variance_ddpm.LearnedVarianceDDPMScheduler`.
        vae: optional ``AutoencoderKL``; when present the samples are latents, decoded after ``/ scaling_factor``.
        null_class_label: the label of the "no class" embedding used by classifier-free guidance. Default: the
            DiT's extra embedding row (``num_embeds_ada_norm``); a class-conditional ``UNet2DModel`` needs it set.

    Classifier-free guidance (REFERENCE.md section 5) acts on eps only: one batched call on ``[x, x]`` with
    ``[labels, null]``, ``eps = eps_null + w (eps_cond - eps_null)`` over all ``C`` channels, and the variance
    output taken from the conditional half.
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

    def _null_label(self) -> int:
        if self.config.null_class_label is not None:
            return int(self.config.null_class_label)
        if isinstance(self.unet, DiTTransformer2DModel):
            # DiT's label embedding has one extra row, index num_classes, for the dropped label.
            return int(self.unet.config.num_embeds_ada_norm)
        raise ValueError(
            "guidance_scale != 1 needs a null class label: pass null_class_label=... to the pipeline "
            f"(the label your {type(self.unet).__name__} was trained with for 'no class')."
        )

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
        num_inference_steps: int | str = 100,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size: number of images (ignored when ``class_labels`` holds several labels: one image per label).
            class_labels: class index (or one per image) for class-conditional models.
            guidance_scale: classifier-free guidance weight w (1 = no guidance, one model call per step).
            num_inference_steps: an int (even respacing) or spacing string (``"ddim25"``, ``"10,15,20"``).
            generator: for the initial noise and the noise of every step.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or ``"latent"`` (the final sample as is:
                latents with a vae, [-1, 1] pixels without).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.int64).reshape(-1)
            if labels.numel() == 1:
                labels = labels.expand(batch_size)
            batch_size = labels.numel()
        else:
            labels = None
            if guidance_scale != 1.0:
                raise ValueError(f"guidance_scale={guidance_scale} needs class_labels (classifier-free guidance is class-conditional).")
            if isinstance(self.unet, DiTTransformer2DModel):
                raise ValueError("A DiTTransformer2DModel is class-conditional: pass class_labels.")
        # Sampling needs eval mode: a DiT in train mode drops class labels at random (REFERENCE.md section 7).
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
            sample = self.vae.decode(sample.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return self.image_processor.postprocess(sample.float(), output_type=output_type)
