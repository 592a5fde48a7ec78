"""Classifier-free guidance (Ho & Salimans 2021, "Classifier-Free Diffusion Guidance", eq. 6).

A model trained with its label replaced by a null label some of the time is both conditional and unconditional;
sampling extrapolates from the unconditional prediction through the conditional one::

    D_guided(x; sigma, y) = D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null))

(``w = 1``: the conditional model, no guidance). Both halves are evaluated in one batched model call on
``[x, x]`` with labels ``[y, null]``. For a learned-variance network (Nichol & Dhariwal 2021) the extrapolation acts
on the eps channels only and the variance output is taken from the conditional half.

:func:`extrapolate` is the one statement of ``reference + w (conditional - reference)``; autoguidance
(:mod:`.autoguidance`) uses it with a weak model's prediction as the reference.
"""

from __future__ import annotations

import torch

from ..models import PreconditionedDenoiser
from ..value_checks import check_real


def check_guidance_scale(guidance_scale: object) -> float:
    """``guidance_scale`` as a float; ``ValueError`` unless it is a finite real number."""
    return check_real("guidance_scale", guidance_scale, allowed="a finite number (1.0: no guidance)")


def extrapolate(reference: torch.Tensor, conditional: torch.Tensor, scale: float) -> torch.Tensor:
    """``reference + scale (conditional - reference)``: classifier-free guidance (Ho & Salimans 2021, eq. 6, with
    ``scale = 1 + w`` in their notation) when ``reference`` is the null-label prediction, autoguidance (Karras et al.
    2024, eq. 2) when it is a weak model's."""
    return reference + scale * (conditional - reference)


def with_null_labels(class_labels: torch.Tensor, null_class_label: int) -> torch.Tensor:
    """``[class_labels, null, ..., null]``: the labels of one batched call on ``[x, x]`` (built once per sampling run)."""
    return torch.cat([class_labels, torch.full_like(class_labels, null_class_label)])


class ClassifierFreeGuidance:
    """``D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null))`` of a preconditioned denoiser, one batched call.

    Args:
        denoiser: a class-conditional :class:`~diffusers_edm.models.PreconditionedDenoiser` with a null label.
        class_labels: the ``B`` label ids ``y`` (validated by the caller, on the model's device).
        scale: the guidance weight ``w``.
        encoder_hidden_states: a cross-attention context (``B`` rows), the same for both halves.
    """

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        class_labels: torch.Tensor,
        scale: float,
        encoder_hidden_states: torch.Tensor | None = None,
    ):
        null_class_label = denoiser.config.null_class_label
        if null_class_label is None:
            raise ValueError(
                f"Classifier-free guidance needs a denoiser with a null_class_label; this {type(denoiser).__name__} "
                "has none."
            )
        self.denoiser = denoiser
        self.scale = float(scale)
        self.class_labels = with_null_labels(class_labels, null_class_label)
        self.encoder_hidden_states = (
            None if encoder_hidden_states is None else torch.cat([encoder_hidden_states, encoder_hidden_states])
        )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        denoised = self.denoiser(torch.cat([x, x]), sigma, self.class_labels, self.encoder_hidden_states).sample
        conditional, unconditional = denoised.chunk(2)
        return extrapolate(unconditional, conditional, self.scale)


class ClassifierFreeNoiseGuidance:
    """Classifier-free guidance of a learned-variance network ``(eps, v)`` (``2C`` output channels), one batched call:
    ``eps = eps(x_t, null) + w (eps(x_t, y) - eps(x_t, null))`` over the first ``C`` channels, ``v`` from the
    conditional half.

    Args:
        model: a ``UNet2DModel`` / ``DiTTransformer2DModel`` called as ``model(x_t, t, class_labels=...)``.
        class_labels: the ``B`` label ids ``y`` (validated, on the model's device).
        null_class_label: the id of the "no class" embedding.
        scale: the guidance weight ``w``.
    """

    def __init__(self, model: torch.nn.Module, class_labels: torch.Tensor, null_class_label: int, scale: float):
        self.model = model
        self.scale = float(scale)
        self.class_labels = with_null_labels(class_labels, null_class_label)

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([x_t, x_t])
        # A tensor timestep per example: UNet2DModel would truncate a Python float, and DiT wants one per example.
        timesteps = timestep.reshape(1).expand(model_input.shape[0])
        output = self.model(model_input, timesteps, class_labels=self.class_labels).sample
        conditional, unconditional = output.chunk(2)
        channels = x_t.shape[1]
        eps = extrapolate(unconditional[:, :channels], conditional[:, :channels], self.scale)
        return torch.cat([eps, conditional[:, channels:]], dim=1)
