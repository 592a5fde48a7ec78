"""``EDMPipeline``: sampling a preconditioned denoiser D(x; sigma) with any sigma-space scheduler.

Two kinds of scheduler are supported (REFERENCE.md sections 1, 2 and 5):

- :class:`~diffusers_edm.EDMHeunScheduler` calls the model at ``timestep = sigma`` and takes ``D`` itself
  (``prediction_type="sample"``) or ``eps = (x - D) / sigma``;
- diffusers' ``EDMEulerScheduler`` and ``EDMDPMSolverMultistepScheduler`` expect the raw network output ``F`` and
  rebuild ``D = c_skip x + c_out F`` with their own ``sigma_data`` in ``precondition_outputs``. Since that map is
  affine in ``F``, the pipeline inverts it exactly, ``F = (D - c_skip x) / c_out``, so the denoiser's own
  preconditioning (any family, any sigma_data) is what the scheduler ends up using.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCard, ModelCardData, create_repo

from ..models import PreconditionedDenoiser
from ..schedulers import EDMHeunScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def takes_raw_network_output(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler applies EDM's c_skip / c_out itself (diffusers' ``EDM*`` schedulers do)."""
    return callable(getattr(scheduler, "precondition_outputs", None))


class EDMPipeline(DiffusionPipeline):
    """Unconditional or class-conditional image generation with a preconditioned denoiser (Karras et al. 2022).

    Components:
        denoiser: an :class:`~diffusers_edm.EDMPrecond`, ``VPPrecond``, ``VEPrecond`` or ``IDDPMPrecond``.
        scheduler: :class:`~diffusers_edm.EDMHeunScheduler` (Algorithm 2, all options), or diffusers'
            ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``.
        vae: optional ``AutoencoderKL``; with it the denoiser works on latents, decoded as
            ``vae.decode(latents / scaling_factor + shift_factor)``.
        latent_space: whether samples are latents that need the VAE (default: whether a VAE is given). Saved
            in ``model_index.json``, so a latent pipeline loaded without its VAE can still return latents.

    Classifier-free guidance: ``D = D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null))`` with
    ``w = guidance_scale``, both halves in one batched call; ``w = 1`` is the plain conditional model.
    """

    model_cpu_offload_seq = "denoiser->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        latent_space: bool | None = None,
    ):
        super().__init__()
        if not isinstance(denoiser, PreconditionedDenoiser):
            raise TypeError(
                f"denoiser must be an EDMPrecond, VPPrecond, VEPrecond or IDDPMPrecond, got {type(denoiser).__name__}."
            )
        if not (isinstance(scheduler, EDMHeunScheduler) or takes_raw_network_output(scheduler)):
            raise TypeError(
                f"Unsupported scheduler {type(scheduler).__name__}; expected EDMHeunScheduler, or diffusers' "
                "EDMEulerScheduler or EDMDPMSolverMultistepScheduler."
            )
        latent_space = vae is not None if latent_space is None else bool(latent_space)
        if vae is not None and not latent_space:
            raise ValueError("A vae was given but latent_space=False; a pixel-space pipeline has no vae.")
        if vae is not None and vae.config.latent_channels != denoiser.image_channels:
            raise ValueError(
                f"The vae has {vae.config.latent_channels} latent channels but the denoiser takes {denoiser.image_channels}."
            )
        self.register_modules(denoiser=denoiser, scheduler=scheduler, vae=vae)
        self.register_to_config(latent_space=latent_space)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------------------------------ sampling
    def _call_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The noise level of the current model call."""
        if takes_raw_network_output(self.scheduler):
            # Their timesteps are c_noise values; the sigma is tracked by the step index.
            return self.scheduler.sigmas[self.scheduler.step_index]
        return timestep

    def _scheduler_model_output(self, denoised: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the scheduler's ``step`` expects, given ``D(x; sigma)``."""
        scheduler = self.scheduler
        if takes_raw_network_output(scheduler):
            one, zero = torch.ones((), dtype=torch.float32), torch.zeros((), dtype=torch.float32)
            c_skip = scheduler.precondition_outputs(one, zero, sigma)
            c_out = scheduler.precondition_outputs(zero, one, sigma)
            return (denoised - c_skip.to(sample.device) * sample) / c_out.to(sample.device)
        if scheduler.config.prediction_type == "epsilon":
            return (sample - denoised) / sigma.to(sample.device, sample.dtype)
        return denoised

    def _initial_sigma(self) -> float:
        """Standard deviation of the initial noise: the noise level of the first model call.

        diffusers' EDM schedulers report ``init_noise_sigma = sqrt(sigma_max^2 + 1)`` (a VP convention); EDM starts
        at ``x_0 = sigma_0 n``, which is ``sigmas[0]`` there and ``init_noise_sigma`` for EDMHeunScheduler.
        """
        if takes_raw_network_output(self.scheduler):
            return float(self.scheduler.sigmas[0])
        return float(self.scheduler.init_noise_sigma)

    def _guided_denoise(
        self,
        sample: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: torch.LongTensor | None,
        guidance_scale: float,
        encoder_hidden_states: torch.Tensor | None,
    ) -> torch.Tensor:
        if guidance_scale == 1.0:
            return self.denoiser(sample, sigma, class_labels, encoder_hidden_states).sample
        null_labels = torch.full_like(class_labels, self.denoiser.config.null_class_label)
        context = None if encoder_hidden_states is None else torch.cat([encoder_hidden_states] * 2)
        both = self.denoiser(torch.cat([sample, sample]), sigma, torch.cat([class_labels, null_labels]), context).sample
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def _batch_and_labels(
        self, batch_size: int, class_labels: torch.Tensor | int | list[int] | None, guidance_scale: float, device
    ) -> tuple[int, torch.LongTensor | None]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        config = self.denoiser.config
        if guidance_scale != 1.0 and (config.num_classes == 0 or config.null_class_label is None):
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional denoiser with a null_class_label "
                f"(this one has num_classes={config.num_classes}, null_class_label={config.null_class_label}); use 1.0."
            )
        if class_labels is not None and not isinstance(class_labels, int):
            count = torch.as_tensor(class_labels).numel()
            if batch_size == 1:
                batch_size = count
            elif count not in (1, batch_size):
                raise ValueError(f"Got {count} class_labels for batch_size={batch_size}; give one label or one per sample.")
        labels = self.denoiser.check_class_labels(class_labels, batch_size, device)
        if guidance_scale != 1.0 and bool((labels == config.null_class_label).any()):
            raise ValueError("Classifier-free guidance needs a real class label for every sample, not the null label.")
        return batch_size, labels

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | int | list[int] | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 18,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size: number of images (a list of ``class_labels`` sets it when ``batch_size`` is 1).
            class_labels: label ids for a class-conditional denoiser (one for all, or one per image); ``None`` samples
                the null class where the denoiser has one.
            guidance_scale: classifier-free guidance weight ``w`` (1.0: off; needs a ``null_class_label``).
            num_inference_steps: number of sampler steps N (EDMHeunScheduler with Heun: 2N - 1 model calls).
            generator: torch generator(s) for the initial noise and any sampler noise (churn, SDE solvers).
            latents: initial standard-normal noise ``(B, C, H, W)``; it is scaled to the first noise level.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, C)`` in [0, 1]), ``"pt"`` (``(B, C, H, W)`` in [0, 1]) or
                ``"latent"`` (the final sample, undecoded and unnormalised).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called after every model call as ``callback(pipe, i, t, tensors)``; may return a
                replacement ``latents``.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
            encoder_hidden_states: cross-attention context for a ``UNet2DConditionModel`` denoiser.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        if self.config.latent_space and self.vae is None and output_type != "latent":
            raise ValueError(
                f"This pipeline samples latents (latent_space=True) but has no vae to decode them; load it with its "
                f"vae or use output_type='latent' (got {output_type!r})."
            )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only hold {self._callback_tensor_inputs}, got {sorted(unknown)}.")

        device = self._execution_device
        batch_size, labels = self._batch_and_labels(batch_size, class_labels, guidance_scale, device)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.to(device=device, dtype=self.denoiser.dtype)
            if encoder_hidden_states.shape[0] == 1 and batch_size > 1:
                encoder_hidden_states = encoder_hidden_states.expand(batch_size, *encoder_hidden_states.shape[1:])

        scheduler = self.scheduler
        if isinstance(scheduler, EDMHeunScheduler):
            scheduler.set_timesteps(num_inference_steps, device=device, round_sigma=self.denoiser.round_sigma)
        else:
            scheduler.set_timesteps(num_inference_steps, device=device)

        shape = (batch_size, self.denoiser.image_channels, *self.denoiser.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        # The sampler runs in float32 whatever the denoiser's dtype (the denoiser casts its backbone input).
        latents = latents.to(device=device, dtype=torch.float32) * self._initial_sigma()

        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            # The denoiser applies its own c_in; this call only advances the scheduler's bookkeeping.
            scheduler.scale_model_input(latents, t)
            sigma = self._call_sigma(t)
            denoised = self._guided_denoise(latents, sigma, labels, guidance_scale, encoder_hidden_states)
            model_output = self._scheduler_model_output(denoised, latents, sigma)
            latents = scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, tensors).pop("latents", latents)

        if output_type == "latent":
            image = latents
        else:
            image = latents
            if self.vae is not None:
                shift = self.vae.config.shift_factor or 0.0
                image = latents / self.vae.config.scaling_factor + shift
                image = self.vae.decode(image.to(self.vae.dtype), return_dict=False)[0]
            image = self.image_processor.postprocess(image.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    # ------------------------------------------------------------------------------------------ sharing
    def model_card(self, repo_id: str | None = None) -> ModelCard:
        """A Hub model card (huggingface_hub ``ModelCard``) that states the model, the sampler settings and how to load it."""
        denoiser, scheduler = self.denoiser, self.scheduler
        conditional = denoiser.config.num_classes > 0
        card_data = ModelCardData(
            library_name="diffusers",
            pipeline_tag="unconditional-image-generation",
            tags=["diffusers", "diffusers-edm", "edm", "class-conditional" if conditional else "unconditional"],
        )
        sampler = {key: value for key, value in scheduler.config.items() if not key.startswith("_")}
        sampler_lines = "\n".join(f"- `{key}`: `{value}`" for key, value in sorted(sampler.items()))
        name = repo_id or "path/to/this/repo"
        labels = f"{denoiser.config.num_classes} classes, null label {denoiser.config.null_class_label}" if conditional else "unconditional"
        space = "latent space (AutoencoderKL)" if self.config.latent_space else "pixel space"
        content = f"""---
{card_data.to_yaml()}
---

# {name.split("/")[-1]}

An EDM-style diffusion model (Karras et al. 2022) made with
[diffusers-edm](https://pypi.org/project/diffusers-edm/): a `{type(denoiser).__name__}` over a
`{denoiser.config.backbone_class}` backbone, {labels}, sampling in {space} at
{denoiser.image_channels}x{denoiser.sample_size[0]}x{denoiser.sample_size[1]}.

## Sampler

`{type(scheduler).__name__}` with

{sampler_lines}

and the pipeline default of 18 steps (`num_inference_steps`).

## Usage

```python
import diffusers_edm  # pip install diffusers-edm
from diffusers_edm import EDMPipeline

pipe = EDMPipeline.from_pretrained("{name}")
image = pipe(num_inference_steps=18{", class_labels=0" if conditional else ""}).images[0]
```

`DiffusionPipeline.from_pretrained("{name}")` also works once `diffusers_edm` is imported.
"""
        return ModelCard(content)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """``DiffusionPipeline.save_pretrained``; with ``push_to_hub=True`` the upload carries :meth:`model_card`."""
        hub_keys = ("repo_id", "private", "token", "commit_message", "create_pr")
        hub = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
        super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        if not push_to_hub:
            return None
        repo_id = hub.get("repo_id") or os.path.basename(os.path.normpath(save_directory))
        repo_id = create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")).repo_id
        self.model_card(repo_id).save(os.path.join(save_directory, "README.md"))
        return self._upload_folder(
            save_directory,
            repo_id,
            token=hub.get("token"),
            commit_message=hub.get("commit_message"),
            create_pr=hub.get("create_pr", False),
        )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> str:
        """Upload the pipeline and its :meth:`model_card` to the Hub repository ``repo_id``."""
        with tempfile.TemporaryDirectory() as working_dir:
            return self.save_pretrained(
                working_dir,
                push_to_hub=True,
                repo_id=repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                create_pr=create_pr,
                safe_serialization=safe_serialization,
                variant=variant,
            )
