"""The guided model of ancestral sampling with a learned variance (Improved DDPM, DiT), built once per pipeline call.

The same terms as the sigma-space :class:`~.guided_denoiser.GuidedDenoiser`, in DDPM form:

- classifier-free guidance on the eps channels (:class:`~.classifier_free.ClassifierFreeNoiseGuidance`), replacing
  the conditional model's output at guided steps;
- classifier guidance as a shift of the reverse mean, ``mu + s Sigma grad_{x_t} log p(y | x_t, t)`` with the model's
  variance ``Sigma`` at that step (Dhariwal & Nichol 2021, Algorithm 1; :meth:`~.classifier.ClassifierGuidance.mean_shift`);
- the guidance interval (Kynkaenniemi et al. 2024) on ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` of each
  step's timestep: outside it the plain conditional model, one model call and no classifier.

The sampler's step is unchanged: it draws ``x_{t-1} = mu + exp(0.5 log Sigma) z`` from the model output, and the
pipeline adds the mean shift, which gives ``N(mu + s Sigma grad, Sigma)`` with the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gaussian_diffusion import split_model_output
from ..models.backbones import call_backbone
from ..noise_schedules import sigmas_from_betas
from ..schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from .classifier import ClassifierGuidance
from .guided_denoiser import GuidanceTerm
from .interval import GuidanceInterval


@dataclass
class GuidedPrediction:
    """The model output of one ancestral step and the change of its reverse mean (``None``: no change)."""

    model_output: torch.Tensor
    mean_shift: torch.Tensor | None = None


class ConditionalNoisePredictor:
    """``model(x_t, t, c)``: a learned-variance network with the labels and / or text conditioning of one pipeline
    call (or none), called through :func:`~diffusers_edm.models.backbones.call_backbone`."""

    def __init__(
        self,
        model: torch.nn.Module,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
    ):
        self.model = model
        self.class_labels = class_labels
        self.encoder_hidden_states = encoder_hidden_states
        self.pooled_text_embeds = pooled_text_embeds

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        # A tensor timestep per example: UNet2DModel would truncate a Python float, and DiT wants one per example.
        timesteps = timestep.reshape(1).expand(x_t.shape[0])
        return call_backbone(
            self.model, x_t, timesteps, self.class_labels, self.encoder_hidden_states, self.pooled_text_embeds
        )


class GuidedNoisePredictor:
    """The guided model of one ancestral sampling run (see the module docstring).

    Args:
        conditional: the plain conditional network call.
        scheduler: the :class:`~diffusers_edm.LearnedVarianceDDPMScheduler` with its timesteps set for this run.
        guidance: the guiding term (classifier-free guidance on eps), or ``None``.
        classifier: the classifier guidance term, or ``None``.
        interval: where the terms act; ``None``: at every step.
    """

    def __init__(
        self,
        conditional: GuidanceTerm,
        scheduler: LearnedVarianceDDPMScheduler,
        guidance: GuidanceTerm | None = None,
        classifier: ClassifierGuidance | None = None,
        interval: GuidanceInterval | None = None,
    ):
        self.conditional = conditional
        self.guidance = guidance
        self.classifier = classifier
        self.interval = interval
        self.diffusion = scheduler.diffusion
        self.variance_type = scheduler.config.variance_type
        # sigma_t of each step, in the order of scheduler.timesteps (decreasing t), as host floats: read once.
        self.step_sigmas: tuple[float, ...] = tuple(sigmas_from_betas(self.diffusion.betas)[::-1].tolist())

    @property
    def has_guidance(self) -> bool:
        """Whether any term acts (otherwise every step is the plain conditional model)."""
        return self.guidance is not None or self.classifier is not None

    def guided_calls(self) -> tuple[bool, ...]:
        """For each step of the run, in order: whether guidance acts there (decided on the host)."""
        if not self.has_guidance:
            return (False,) * len(self.step_sigmas)
        if self.interval is None:
            return (True,) * len(self.step_sigmas)
        return self.interval.guided_calls(self.step_sigmas)

    def __call__(self, x_t: torch.Tensor, step: int, timestep: torch.Tensor, guided: bool) -> GuidedPrediction:
        """The prediction of step ``step`` (at training timestep ``timestep``), guided where ``guided`` (host bool)."""
        if not guided:
            return GuidedPrediction(self.conditional(x_t, timestep))
        model_output = (self.guidance or self.conditional)(x_t, timestep)
        if self.classifier is None:
            return GuidedPrediction(model_output)
        # The model's variance Sigma of this step (index of the respaced diffusion: steps run from the last index).
        index = self.diffusion.num_timesteps - 1 - step
        x = x_t.to(torch.float32)
        _, variance_output = split_model_output(model_output.to(torch.float32), x, self.variance_type)
        log_variance = self.diffusion.model_log_variance(variance_output, index, self.variance_type, x)
        mean_shift = self.classifier.mean_shift(x, self.step_sigmas[step], torch.exp(log_variance))
        return GuidedPrediction(model_output, mean_shift)
