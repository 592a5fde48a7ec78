"""The guided denoiser of a sampling run: the plain conditional model plus guidance terms, built once per pipeline call.

A sampler needs one function ``D(x; sigma)``. Guidance changes that function, and this module composes it from
terms, each stated in its own file:

- one *guiding* term that replaces the conditional model's prediction at guided calls: classifier-free guidance
  (:class:`~.classifier_free.ClassifierFreeGuidance`, the null label and / or the empty prompt as reference) or autoguidance
  (:class:`~.autoguidance.Autoguidance`, a weak model as reference);
- additive *corrections* of ``D``: classifier guidance (:class:`~.classifier.ClassifierGuidance`,
  ``s sigma^2 grad_x log p(y | x; sigma)``), on top of either guiding term or alone;
- *when* the terms act (:class:`~.interval.GuidanceInterval`): at a call outside the interval the plain
  conditional model ``D(x; sigma, y)`` is used, with exactly one model call.

So at a guided call ``D_guided = G(x; sigma) + sum_k C_k(x; sigma)`` (``G`` the guiding term, or the conditional model
without one), and ``D_guided = D(x; sigma, y)`` elsewhere. Which calls are guided is decided on the host from the
scheduler's plan before the loop (:meth:`GuidedDenoiser.guided_calls`); the loop passes a Python ``bool`` per call, so
it never branches on tensors nor asks which guidance method it runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..models import PreconditionedDenoiser
from .interval import GuidanceInterval

#: A term of the guided denoiser: ``term(x, sigma)`` is a guided ``D`` (guiding terms) or a change of ``D``
#: (corrections); ``sigma`` is the call's noise level, a 0-d or ``(B,)`` device tensor or a Python float.
GuidanceTerm = Callable[[torch.Tensor, "torch.Tensor | float"], torch.Tensor]


class ConditionalDenoiser:
    """``D(x; sigma, c)``: a preconditioned denoiser with the conditioning ``c`` of one pipeline call.

    Args:
        denoiser: the :class:`~diffusers_edm.models.PreconditionedDenoiser`.
        class_labels: validated label ids (``B``, on the model's device), or ``None`` for an unconditional model.
        encoder_hidden_states: a cross-attention context (``B`` rows), or ``None``.
        pooled_text_embeds: the pooled text vector (``B`` rows) for a backbone that takes one, or ``None``.
    """

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
    ):
        self.denoiser = denoiser
        self.class_labels = class_labels
        self.encoder_hidden_states = encoder_hidden_states
        self.pooled_text_embeds = pooled_text_embeds

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.denoiser(
            x, sigma, self.class_labels, self.encoder_hidden_states, pooled_text_embeds=self.pooled_text_embeds
        ).sample


class GuidedDenoiser:
    """``D_guided(x; sigma)`` of one sampling run (see the module docstring).

    Args:
        conditional: the plain conditional model ``D(x; sigma, y)``.
        guidance: the guiding term (classifier-free guidance or autoguidance), or ``None``.
        corrections: additive terms (classifier guidance).
        interval: where the terms act; ``None``: at every call.
    """

    def __init__(
        self,
        conditional: GuidanceTerm,
        guidance: GuidanceTerm | None = None,
        corrections: Sequence[GuidanceTerm] = (),
        interval: GuidanceInterval | None = None,
    ):
        self.conditional = conditional
        self.guidance = guidance
        self.corrections = tuple(corrections)
        self.interval = interval

    @property
    def has_guidance(self) -> bool:
        """Whether any term acts (otherwise every call is the plain conditional model)."""
        return self.guidance is not None or len(self.corrections) > 0

    def guided_calls(self, call_sigmas: Sequence[float]) -> tuple[bool, ...]:
        """For each model call of the run (its noise level, a host float, in call order): whether guidance acts."""
        if not self.has_guidance:
            return (False,) * len(call_sigmas)
        if self.interval is None:
            return (True,) * len(call_sigmas)
        return self.interval.guided_calls(call_sigmas)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, guided: bool) -> torch.Tensor:
        """``D_guided(x; sigma)`` at a call where guidance acts (``guided``, a host bool), else ``D(x; sigma, y)``."""
        if not guided:
            return self.conditional(x, sigma)
        denoised = (self.guidance or self.conditional)(x, sigma)
        for correction in self.corrections:
            denoised = denoised + correction(x, sigma)
        return denoised
