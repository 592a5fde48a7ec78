"""``EDMPipeline``: sampling a preconditioned denoiser D(x; sigma) with any sigma-space scheduler.

Two kinds of scheduler are supported (Karras et al. 2022, Algorithms 1-2 and Table 1):

- the package's sigma-native schedulers (:class:`~diffusers_edm.EDMHeunScheduler`,
  :class:`~diffusers_edm.EDMMultistepScheduler`) call the model at ``timestep = sigma`` and take ``D`` itself
  (``prediction_type="sample"``) or ``eps = (x - D) / sigma``;
- diffusers' ``EDMEulerScheduler`` and ``EDMDPMSolverMultistepScheduler`` expect the raw network output ``F`` and
  rebuild ``D = c_skip x + c_out F`` with their own ``sigma_data`` in ``precondition_outputs``. Since that map is
  affine in ``F``, the pipeline inverts it exactly, ``F = (D - c_skip x) / c_out``, so the denoiser's own
  preconditioning (any family, any sigma_data) is what the scheduler ends up using.

Noise range: as EDM's sampler does (``sigma_min = max(sigma_min, net.sigma_min)``, ``sigma_max = min(sigma_max,
net.sigma_max)``, then ``net.round_sigma``), every call samples within the denoiser's range, so no model is ever
evaluated at a noise level it was not trained for (VE below 0.02, iDDPM between or beyond its table levels).

Guidance: every model call goes through one guided denoiser built per pipeline call from the terms of
:mod:`diffusers_edm.guidance` (classifier-free guidance, autoguidance, classifier guidance, the guidance interval), so
the sampling loop is the same for every guidance method and every scheduler. That loop lives in
:class:`EDMSamplingPipeline`, shared with :class:`~diffusers_edm.EDMTextToImagePipeline`, which only builds a
different guided denoiser (text conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCard

from ..guidance import (
    Autoguidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    ConditionalDenoiser,
    GuidanceInterval,
    GuidedDenoiser,
    check_classifier,
    check_classifier_labels,
    check_classifier_scale,
    check_guidance_denoiser,
    check_guidance_interval,
    check_guidance_scale,
)
from ..models import LatentCodec, NoiseConditionalClassifier, PreconditionedDenoiser
from ..models.preconditioned_denoisers import label_tensor
from ..value_checks import check_integer
from ..schedulers import SigmaModelCall
from ..schedulers.planned_schedule import check_generator
from .model_card import ModelCardHubMixin, TrainingRecord, build_model_card

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_NUM_INFERENCE_STEPS = 18  # EDM's CIFAR-10 sampler (Karras et al. 2022): N = 18, 35 model calls
USAGE_EXAMPLE_IMAGES = 8


def takes_sigma_timesteps(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler is one of the package's sigma-native ones (``EDMHeunScheduler``,
    ``EDMMultistepScheduler``): it calls the model at ``timestep = sigma`` and reads ``D`` or ``eps`` from it."""
    return isinstance(getattr(scheduler, "model_call", None), SigmaModelCall)


def takes_raw_network_output(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler applies EDM's c_skip / c_out itself (diffusers' ``EDM*`` schedulers do)."""
    return callable(getattr(scheduler, "precondition_outputs", None))


def check_latents(latents: object, shape: tuple[int, ...]) -> None:
    """A ``ValueError`` naming ``latents`` unless it is a finite floating-point tensor of ``shape`` (one host read of
    its values per pipeline call)."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        got = f"a {latents.dtype} tensor" if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be a floating-point tensor of shape {shape}, got {got}.")
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents hold NaN or infinite values; the initial noise must be finite.")


def batch_context(
    name: str, context: object, batch_size: int, denoiser: PreconditionedDenoiser
) -> torch.Tensor:
    """A cross-attention context ``(1 or batch_size, L, width)`` as ``batch_size`` rows in the denoiser's dtype;
    ``ValueError`` naming ``name`` and both sides unless it fits the denoiser (shapes only, no look at values)."""
    width = denoiser.context_width
    if width is None:
        raise ValueError(f"{name} was given but the denoiser's {denoiser.config.backbone_class} has no cross-attention.")
    if not isinstance(context, torch.Tensor) or not context.is_floating_point() or context.ndim != 3:
        got = f"shape {tuple(context.shape)}, {context.dtype}" if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"{name} must be a floating-point tensor (batch, sequence, {width}), got {got}.")
    if context.shape[-1] != width:
        raise ValueError(
            f"{name} has width {context.shape[-1]} but the denoiser's {denoiser.config.backbone_class} reads text "
            f"embeddings of width {width}."
        )
    if context.shape[0] not in (1, batch_size):
        raise ValueError(f"{name} has {context.shape[0]} rows but the call makes {batch_size} images; give 1 or {batch_size}.")
    return context.to(dtype=denoiser.dtype).expand(batch_size, *context.shape[1:])


def check_guidance_components(
    denoiser: PreconditionedDenoiser,
    guidance_denoiser: PreconditionedDenoiser | None,
    classifier: NoiseConditionalClassifier | None,
) -> None:
    """``ValueError`` naming both sides unless the optional guidance components fit the denoiser: a weak denoiser of
    the same data, conditioned alike, and a classifier of the denoiser's samples and classes."""
    if guidance_denoiser is not None:
        check_guidance_denoiser(denoiser, guidance_denoiser)
    if classifier is not None:
        check_classifier(
            classifier,
            num_classes=denoiser.config.num_classes,
            sample_size=denoiser.sample_size,
            channels=denoiser.image_channels,
            model=f"denoiser ({type(denoiser).__name__})",
        )


@dataclass
class CallLabels:
    """The validated label ids of one call for each model (``None``: the model takes none)."""

    denoiser: torch.LongTensor | None
    guidance_denoiser: torch.LongTensor | None = None
    classifier: torch.LongTensor | None = None


class EDMSamplingPipeline(ModelCardHubMixin, DiffusionPipeline):
    """The sampling machinery shared by :class:`EDMPipeline` and
    :class:`~diffusers_edm.EDMTextToImagePipeline`: the noise range, the schedule, one sampling loop over a guided
    denoiser (Karras et al. 2022, Algorithms 1-2, with any supported scheduler) and decoding.

    Subclasses register ``denoiser``, ``scheduler``, optional ``vae`` and ``guidance_denoiser`` and the
    ``latent_space`` config, and build the call's :class:`~diffusers_edm.guidance.GuidedDenoiser`; the loop does
    not know which conditioning or guidance it runs.
    """

    _callback_tensor_inputs = ["latents"]

    def _register_sampling_components(
        self, denoiser: PreconditionedDenoiser, scheduler: SchedulerMixin, vae: AutoencoderKL | None,
        latent_space: bool | None,
    ) -> bool:
        """Check the denoiser, scheduler and vae; returns ``latent_space`` (default: whether a vae is given). Sets up
        the image processor."""
        if not isinstance(denoiser, PreconditionedDenoiser):
            raise TypeError(
                f"denoiser must be an EDMPrecond, VPPrecond, VEPrecond or IDDPMPrecond, got {type(denoiser).__name__}."
            )
        if not (takes_sigma_timesteps(scheduler) or takes_raw_network_output(scheduler)):
            raise TypeError(
                f"Unsupported scheduler {type(scheduler).__name__}; expected EDMHeunScheduler or EDMMultistepScheduler, "
                "or diffusers' EDMEulerScheduler or EDMDPMSolverMultistepScheduler."
            )
        latent_space = vae is not None if latent_space is None else bool(latent_space)
        if vae is not None and not latent_space:
            raise ValueError("A vae was given but latent_space=False; a pixel-space pipeline has no vae.")
        if vae is not None and vae.config.latent_channels != denoiser.image_channels:
            raise ValueError(
                f"The vae has {vae.config.latent_channels} latent channels but the denoiser takes {denoiser.image_channels}."
            )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        return latent_space

    def _denoisers(self) -> dict[str, PreconditionedDenoiser]:
        """The denoisers a call evaluates, by component name."""
        denoisers = {"denoiser": self.denoiser}
        if getattr(self, "guidance_denoiser", None) is not None:
            denoisers["guidance_denoiser"] = self.guidance_denoiser
        return denoisers

    def sampling_range(self, scheduler: SchedulerMixin | None = None) -> tuple[float, float]:
        """``(max(sigma_min, denoiser.sigma_min), min(sigma_max, denoiser.sigma_max))`` of the scheduler's config,
        within the ``guidance_denoiser``'s range too when the pipeline has one."""
        config = (scheduler or self.scheduler).config
        denoisers = self._denoisers()
        sigma_min = max(float(config.sigma_min), *(denoiser.sigma_min for denoiser in denoisers.values()))
        sigma_max = min(float(config.sigma_max), *(denoiser.sigma_max for denoiser in denoisers.values()))
        if not sigma_min < sigma_max:
            ranges = " and ".join(
                f"the {type(denoiser).__name__}'s [{denoiser.sigma_min}, {denoiser.sigma_max}]"
                + ("" if name == "denoiser" else f" ({name})")
                for name, denoiser in denoisers.items()
            )
            raise ValueError(
                f"The scheduler's noise range [{config.sigma_min}, {config.sigma_max}] and {ranges} do not overlap; "
                "set the scheduler's sigma_min / sigma_max within the denoisers'."
            )
        return sigma_min, sigma_max

    def _set_timesteps(self, num_inference_steps: int, device: torch.device) -> SchedulerMixin:
        """Set the schedule of one call within :meth:`sampling_range`; returns the scheduler that samples it."""
        check_integer("num_inference_steps", num_inference_steps, minimum=1)
        scheduler = self.scheduler
        sigma_min, sigma_max = self.sampling_range(scheduler)
        if takes_sigma_timesteps(scheduler):
            denoiser = self.denoiser
            denoisers = self._denoisers().values()
            lowest, highest = max(d.sigma_min for d in denoisers), min(d.sigma_max for d in denoisers)

            def round_sigma(sigma: torch.Tensor) -> torch.Tensor:
                # Churn raises sigma_hat = sigma (1 + gamma) above the grid: cap it at the denoisers' range too.
                return denoiser.round_sigma(sigma.clamp(lowest, highest))

            scheduler.set_timesteps(
                num_inference_steps, device=device, round_sigma=round_sigma, sigma_min=sigma_min, sigma_max=sigma_max
            )
            return scheduler
        if (sigma_min, sigma_max) != (scheduler.config.sigma_min, scheduler.config.sigma_max):
            # diffusers' EDM schedulers take their range from the config alone (EDMDPMSolverMultistepScheduler has no
            # override at all, and EDMEulerScheduler's `sigmas=` are ramp positions in 0.42): sample with a copy.
            scheduler = type(scheduler).from_config(scheduler.config, sigma_min=sigma_min, sigma_max=sigma_max)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler

    def _check_call_settings(
        self,
        output_type: str,
        num_inference_steps: int,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> list[str]:
        """The checks every call makes before any work; returns the callback's tensor inputs."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        # Checked for every scheduler before any work (diffusers' EDM schedulers sample a grey image for 0 steps).
        check_integer("num_inference_steps", num_inference_steps, minimum=1)
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
        return list(callback_on_step_end_tensor_inputs)

    def _sample(
        self,
        guided_denoiser: GuidedDenoiser,
        shape: tuple[int, ...],
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        device: torch.device,
    ) -> torch.Tensor:
        """The sampling loop: ``latents`` (standard-normal noise of ``shape``, drawn here when ``None``) scaled to the
        first noise level, then one ``guided_denoiser`` call per model call of the scheduler. Every argument was
        checked by the caller; the loop never waits for the device."""
        scheduler = self._set_timesteps(num_inference_steps, device)
        scheduler.set_begin_index(0)  # as diffusers' pipelines do: no timestep look-up (a host sync) in the loop
        raw_output = takes_raw_network_output(scheduler)
        if raw_output:
            # Noise levels and the scheduler's c_skip / c_out of every step, on the device once per call.
            call_sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
            one, zero = torch.ones((), device=device), torch.zeros((), device=device)
            c_skips = scheduler.precondition_outputs(one, zero, call_sigmas)
            c_outs = scheduler.precondition_outputs(zero, one, call_sigmas)
            # EDM starts at x_0 = sigma_0 n; their init_noise_sigma is sqrt(sigma_max^2 + 1), a VP convention.
            initial_sigma = float(scheduler.sigmas[0])
            # diffusers keeps these sigmas on the host; the model sees them in float32.
            host_call_sigmas = scheduler.sigmas[: len(scheduler.timesteps)].to(torch.float32).tolist()
        else:
            initial_sigma = float(scheduler.init_noise_sigma)
            host_call_sigmas = scheduler.plan.call_sigmas  # the timesteps' noise levels, churned ones included
        # Where guidance acts, decided here on the host: the loop reads one Python bool per model call.
        guided_calls = guided_denoiser.guided_calls(host_call_sigmas)

        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        # The sampler runs in float32 whatever the denoiser's dtype (the denoiser casts its backbone input).
        latents = latents.to(device=device, dtype=torch.float32) * initial_sigma

        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            # The denoiser applies its own c_in; this call only advances the scheduler's bookkeeping.
            scheduler.scale_model_input(latents, t)
            # The package's sigma-native timesteps are the noise levels; diffusers' are c_noise values, tracked by step index.
            sigma = call_sigmas[scheduler.step_index] if raw_output else t
            denoised = guided_denoiser(latents, sigma, guided_calls[i])
            if raw_output:
                index = scheduler.step_index
                model_output = (denoised - c_skips[index] * latents) / c_outs[index]
            elif scheduler.config.prediction_type == "epsilon":
                model_output = (latents - denoised) / sigma.to(latents.dtype)
            else:
                model_output = denoised
            latents = scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, tensors).pop("latents", latents)
        return latents

    def _output(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """The call's result: the latents as they are, or decoded (through the vae where there is one)."""
        if output_type == "latent":
            image = latents
        else:
            image = LatentCodec(self.vae).decode(latents) if self.vae is not None else latents
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


class EDMPipeline(EDMSamplingPipeline):
    """Unconditional or class-conditional image generation with a preconditioned denoiser (Karras et al. 2022).

    Components:
        denoiser: an :class:`~diffusers_edm.EDMPrecond`, ``VPPrecond``, ``VEPrecond`` or ``IDDPMPrecond``.
        scheduler: :class:`~diffusers_edm.EDMHeunScheduler` (Algorithm 2, all options),
            :class:`~diffusers_edm.EDMMultistepScheduler` (iPNDM, DPM-Solver++, UniPC), or diffusers'
            ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``.
        vae: optional ``AutoencoderKL``; with it the denoiser works on latents, decoded by
            :class:`~diffusers_edm.models.LatentCodec` (``vae.decode(z / scaling_factor + shift_factor)``, or with
            the config's ``latents_mean`` / ``latents_std``).
        latent_space: whether samples are latents that need the VAE (default: whether a VAE is given). Saved
            in ``model_index.json``, so a latent pipeline loaded without its VAE can still return latents.
        guidance_denoiser: optional weak denoiser for autoguidance: a preconditioned denoiser of the same data (image
            channels, sample size, ``sigma_data``, classes and cross-attention), e.g. a smaller or less-trained model.
            Saved with the pipeline; ``EDMPipeline.from_pretrained(path, guidance_denoiser=weak)`` adds or replaces it,
            ``guidance_denoiser=None`` drops it.
        classifier: optional :class:`~diffusers_edm.NoiseConditionalClassifier` of the denoiser's data (its
            ``in_channels``, ``sample_size`` and, for a class-conditional denoiser, ``num_classes``) for classifier
            guidance. Saved and loaded like ``guidance_denoiser``.

    Guidance (:mod:`diffusers_edm.guidance`; one guided denoiser is built per call and every model call goes through
    it, so it works with every scheduler):

    - ``guidance_scale = w`` with a ``guidance_denoiser``: autoguidance (Karras et al. 2024, "Guiding a diffusion
      model with a bad version of itself", eq. 2), ``D = D_weak + w (D_main - D_weak)``, both with the call's labels
      (or none: unconditional models can be autoguided); two model calls per guided call.
    - ``guidance_scale = w`` without one: classifier-free guidance (Ho & Salimans 2021),
      ``D = D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null))``, both halves in one batched call. A raw
      ``encoder_hidden_states`` context is the same in both halves (only the label is nulled) unless
      ``negative_encoder_hidden_states`` gives the unconditional half its own (the empty prompt's embeddings).
    - ``classifier_scale = s`` with a ``classifier``: classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 in
      sigma space), ``D + s sigma^2 grad_x log p(y | x; sigma)`` on top of either, or alone (an unconditional
      denoiser with a classifier and ``class_labels`` samples those classes, ADM's conditional sampling).
    - ``guidance_interval = (sigma_lo, sigma_hi)``: all of it only at calls with ``sigma_lo < sigma <= sigma_hi``
      (Kynkaenniemi et al. 2024), the plain conditional model, one model call, elsewhere.

    ``w = 1`` and ``s = 0`` give exactly the samples of the pipeline without guidance.

    Noise range: each call samples ``[max(sigma_min, denoiser.sigma_min), min(sigma_max, denoiser.sigma_max)]`` of
    the scheduler's config, also within the ``guidance_denoiser``'s range when there is one. The package's
    sigma-native schedulers get that range through ``set_timesteps`` (and round every level, churned ones included,
    with ``denoiser.round_sigma``, capped at the range's top). diffusers' EDM schedulers read their range from their
    config only, so when it must be narrowed the call samples with a copy (``from_config`` with the clamped range);
    ``pipe.scheduler`` and its config are left as they are. Their levels are not rounded: an ``IDDPMPrecond`` then
    takes the nearest table level as its noise label.
    """

    model_cpu_offload_seq = "denoiser->guidance_denoiser->classifier->vae"
    _optional_components = ["vae", "guidance_denoiser", "classifier"]

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        latent_space: bool | None = None,
        guidance_denoiser: PreconditionedDenoiser | None = None,
        classifier: NoiseConditionalClassifier | None = None,
    ):
        super().__init__()
        latent_space = self._register_sampling_components(denoiser, scheduler, vae, latent_space)
        check_guidance_components(denoiser, guidance_denoiser, classifier)
        self.register_modules(
            denoiser=denoiser, scheduler=scheduler, vae=vae, guidance_denoiser=guidance_denoiser, classifier=classifier
        )
        self.register_to_config(latent_space=latent_space)

    # ------------------------------------------------------------------------------------------ sampling
    def _conditioning(
        self,
        batch_size: int,
        class_labels: torch.Tensor | int | list[int] | None,
        guidance_scale: float,
        classifier_scale: float,
        device: torch.device,
        text_reference: bool = False,
    ) -> tuple[int, CallLabels]:
        """The batch size and validated label ids of one call for each model (the only look at label values: once
        per call). ``text_reference``: classifier-free guidance has an unconditional text context (then a denoiser
        without classes can be guided)."""
        check_integer("batch_size", batch_size, minimum=1)
        config = self.denoiser.config
        autoguided = guidance_scale != 1.0 and self.guidance_denoiser is not None
        classifier_free = guidance_scale != 1.0 and self.guidance_denoiser is None
        has_null_label = config.num_classes > 0 and config.null_class_label is not None
        if classifier_free and not has_null_label and not (text_reference and config.num_classes == 0):
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional denoiser with a null_class_label for "
                f"classifier-free guidance (this one has num_classes={config.num_classes}, null_class_label="
                f"{config.null_class_label}), or negative_encoder_hidden_states for a text-conditional one, or a "
                "guidance_denoiser for autoguidance; use 1.0."
            )
        if class_labels is not None and not isinstance(class_labels, int):
            count = label_tensor(class_labels).numel()
            if batch_size == 1:
                batch_size = count
            elif count not in (1, batch_size):
                raise ValueError(f"Got {count} class_labels for batch_size={batch_size}; give one label or one per sample.")
        steered = classifier_scale > 0
        # With classifier guidance the labels are the classifier's targets; an unconditional denoiser takes none.
        denoiser_class_labels = None if steered and config.num_classes == 0 else class_labels
        labels = self.denoiser.check_class_labels(denoiser_class_labels, batch_size, device)
        if classifier_free and labels is not None and bool((labels == config.null_class_label).any()):
            raise ValueError("Classifier-free guidance needs a real class label for every sample, not the null label.")
        return batch_size, CallLabels(
            denoiser=labels,
            guidance_denoiser=(
                self.guidance_denoiser.check_class_labels(denoiser_class_labels, batch_size, device) if autoguided else None
            ),
            classifier=check_classifier_labels(self.classifier, class_labels, batch_size, device) if steered else None,
        )

    def _guided_denoiser(
        self,
        labels: CallLabels,
        encoder_hidden_states: torch.Tensor | None,
        guidance_scale: float,
        classifier_scale: float,
        guidance_interval: GuidanceInterval | None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
    ) -> GuidedDenoiser:
        """The guided denoiser of one call: its terms chosen once, from the components and the scales."""
        conditional = ConditionalDenoiser(self.denoiser, labels.denoiser, encoder_hidden_states)
        guidance = None
        if guidance_scale != 1.0 and self.guidance_denoiser is not None:
            weak_context = None if encoder_hidden_states is None else encoder_hidden_states.to(self.guidance_denoiser.dtype)
            weak = ConditionalDenoiser(self.guidance_denoiser, labels.guidance_denoiser, weak_context)
            guidance = Autoguidance(conditional, weak, guidance_scale)
        elif guidance_scale != 1.0:
            guidance = ClassifierFreeGuidance(
                self.denoiser, labels.denoiser, guidance_scale, encoder_hidden_states, negative_encoder_hidden_states
            )
        corrections = []
        if classifier_scale > 0:
            corrections.append(ClassifierGuidance(self.classifier, labels.classifier, classifier_scale))
        return GuidedDenoiser(conditional, guidance, corrections, guidance_interval)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | int | list[int] | None = None,
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
        encoder_hidden_states: torch.Tensor | None = None,
        classifier_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size: number of images (a list of ``class_labels`` sets it when ``batch_size`` is 1).
            class_labels: label ids for a class-conditional denoiser (one for all, or one per image); ``None`` samples
                the null class where the denoiser has one. With classifier guidance, the classes to steer to (also
                for an unconditional denoiser).
            guidance_scale: guidance weight ``w``, a finite number (1.0: off). Autoguidance with a
                ``guidance_denoiser``, else classifier-free guidance (needs a ``null_class_label``).
            num_inference_steps: number of sampler steps N (EDMHeunScheduler with Heun: 2N - 1 model calls;
                EDMMultistepScheduler: N model calls).
            generator: a torch generator, or a list of one per image, for the initial noise and any sampler noise
                (churn, SDE solvers).
            latents: initial standard-normal noise ``(B, C, H, W)``, finite; it is scaled to the first noise level.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, C)`` in [0, 1]), ``"pt"`` (``(B, C, H, W)`` in [0, 1]) or
                ``"latent"`` (the final sample, undecoded and unnormalised).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called after every model call as ``callback(pipe, i, t, tensors)``; may return a
                replacement ``latents``.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
            encoder_hidden_states: cross-attention context ``(1 or B, L, C)`` for a denoiser with cross-attention
                (``UNet2DConditionModel``, ``PixArtTransformer2DModel``). Classifier-free guidance gives the
                unconditional half the same context unless ``negative_encoder_hidden_states`` is given: it then
                nulls the class label only. For prompts, use :class:`~diffusers_edm.EDMTextToImagePipeline`.
            classifier_scale: classifier guidance scale ``s``, a number in ``[0, 1000]``; ``None``: 1.0 (ADM's default)
                when the pipeline has a classifier, else 0. Needs ``class_labels``.
            guidance_interval: ``(sigma_lo, sigma_hi)``, ``0 <= sigma_lo < sigma_hi < inf``: guide only the model
                calls with ``sigma_lo < sigma <= sigma_hi`` (the churned ``sigma_hat`` for Heun's first call of a
                step); ``None``: every call.
            negative_encoder_hidden_states: the unconditional half's context for classifier-free guidance (e.g. the
                empty prompt's embeddings, encoded as in training), ``(1 or B, L, C)``; with it a denoiser without
                classes can be guided (``guidance_scale != 1``), and a class-conditional one gets
                ``[null label, this context]`` as its reference.

        Every argument is checked here, once per call; the sampling loop itself never waits for the device.
        """
        callback_on_step_end_tensor_inputs = self._check_call_settings(
            output_type, num_inference_steps, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        guidance_scale = check_guidance_scale(guidance_scale)
        classifier_scale = check_classifier_scale(classifier_scale, self.classifier is not None)
        guidance_interval = check_guidance_interval(guidance_interval)
        # Components may have been swapped since __init__ (pipe.register_modules, from_pretrained overrides).
        check_guidance_components(self.denoiser, self.guidance_denoiser, self.classifier)

        device = self._execution_device
        if negative_encoder_hidden_states is not None and encoder_hidden_states is None:
            raise ValueError("negative_encoder_hidden_states needs encoder_hidden_states (the conditional context).")
        batch_size, labels = self._conditioning(
            batch_size, class_labels, guidance_scale, classifier_scale, device,
            text_reference=negative_encoder_hidden_states is not None,
        )
        check_generator(generator, batch_size)
        shape = (batch_size, self.denoiser.image_channels, *self.denoiser.sample_size)
        if latents is not None:
            check_latents(latents, shape)
        encoder_hidden_states, negative_encoder_hidden_states = (
            None if context is None else batch_context(name, context, batch_size, self.denoiser).to(device)
            for name, context in (
                ("encoder_hidden_states", encoder_hidden_states),
                ("negative_encoder_hidden_states", negative_encoder_hidden_states),
            )
        )
        guided_denoiser = self._guided_denoiser(
            labels, encoder_hidden_states, guidance_scale, classifier_scale, guidance_interval,
            negative_encoder_hidden_states,
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
    ) -> ModelCard:
        """The Hub model card (huggingface_hub ``ModelCard``) of this pipeline: the model, the sampler settings and a
        usage example generated from the denoiser's config (labels within its classes), which runs as written.

        Args:
            repo_id: the Hub repository (or folder) the example loads from.
            num_inference_steps: the example's steps (default: the pipeline's, 18).
            guidance_scale: the example's guidance weight (used for a class-conditional model with a null label, or
                with a ``guidance_denoiser``).
            training: what a training run adds (steps, data set, arguments, sample grid).

        The card names the optional ``guidance_denoiser`` and ``classifier`` where the pipeline has them.
        """
        denoiser = self.denoiser
        config = denoiser.config
        family = type(denoiser).__name__.removesuffix("Precond").lower()
        weak, classifier = self.guidance_denoiser, self.classifier
        call: dict[str, Any] = {}
        if config.num_classes > 0:
            call["class_labels"] = list(range(min(config.num_classes, USAGE_EXAMPLE_IMAGES)))
            labels = f"{config.num_classes} classes" + (
                "" if config.null_class_label is None else f" (null label {config.null_class_label})"
            )
        elif classifier is not None:  # an unconditional denoiser steered by the classifier to the given classes
            call["class_labels"] = list(range(min(classifier.config.num_classes, USAGE_EXAMPLE_IMAGES)))
            labels = "unconditional"
        else:
            call["batch_size"] = 4
            labels = "unconditional"
        if guidance_scale != 1.0 and (weak is not None or (config.num_classes > 0 and config.null_class_label is not None)):
            call["guidance_scale"] = float(guidance_scale)
        call["num_inference_steps"] = int(num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS)
        space = "latent space (AutoencoderKL)" if self.config.latent_space else "pixel space"
        height, width = denoiser.sample_size
        summary = (
            "An EDM-style diffusion model (Karras et al. 2022) made with "
            f"[diffusers-edm](https://pypi.org/project/diffusers-edm/): denoiser `{type(denoiser).__name__}` over a "
            f"`{config.backbone_class}` backbone, {labels}, sampling in {space} at "
            f"{denoiser.image_channels}x{height}x{width}. Sampling covers the noise levels %g to %g (the scheduler's range "
            "within the denoiser's)." % self.sampling_range()
        )
        tags = ["edm", f"{family}-preconditioning", "class-conditional" if config.num_classes > 0 else "unconditional"]
        if weak is not None:
            summary += (
                f"\n\nAutoguidance (Karras et al. 2024, \"Guiding a diffusion model with a bad version of itself\"): the "
                f"pipeline carries a weak denoiser `{type(weak).__name__}` over a `{weak.config.backbone_class}` backbone "
                "(`guidance_denoiser`), and `guidance_scale=w` samples `D = D_weak + w (D - D_weak)`; "
                "`guidance_interval=(sigma_lo, sigma_hi)` limits it to those noise levels."
            )
            tags.append("autoguidance")
        if classifier is not None:
            summary += (
                f"\n\nClassifier guidance (Dhariwal & Nichol 2021): the pipeline carries a `{type(classifier).__name__}` "
                f"over {classifier.config.num_classes} classes (`classifier`); `classifier_scale=s` (default 1.0 with "
                "`class_labels`) adds `s sigma^2 grad_x log p(y | x; sigma)` to the denoiser."
            )
            tags.append("classifier-guidance")
        return build_model_card(self, repo_id=repo_id, summary=summary, tags=tags, call_arguments=call, training=training)
