"""Classifier-free guidance (Ho & Salimans 2021, "Classifier-Free Diffusion Guidance", eq. 6).

A model trained with its label replaced by a null label some of the time is both conditional and unconditional;
sampling extrapolates from the unconditional prediction through the conditional one::

    D_guided(x; sigma, y) = D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null))

(``w = 1``: the conditional model, no guidance). Both halves are evaluated in one batched model call on
``[x, x]`` with labels ``[y, null]``. For text (GLIDE, Nichol et al. 2022, section 3.2; Latent Diffusion) the condition
is a text-embedding sequence ``c`` and the reference is the empty prompt ``c_empty``, encoded by the same convention
as in training's caption dropout: the context of the batched call is ``[c, c_empty]`` (a class-conditional text model
gets both, ``[y, null]`` and ``[c, c_empty]``). A context without a negative counterpart is the same in both halves,
so only the label is nulled. For a learned-variance network (Nichol & Dhariwal 2021) the extrapolation acts on the eps
channels only and the variance output is taken from the conditional half (GLIDE's guided sampling, section 3.2).

:func:`extrapolate` is the one statement of ``reference + w (conditional - reference)``; autoguidance
(:mod:`.autoguidance`) uses it with a weak model's prediction as the reference.
"""

from __future__ import annotations

import torch

from ..models import PreconditionedDenoiser
from ..models.backbones import call_backbone
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


def paired(conditional: torch.Tensor | None, unconditional: torch.Tensor | None) -> torch.Tensor | None:
    """``[conditional, unconditional]`` along the batch: one input of the batched call on ``[x, x]`` (built once per
    sampling run). Without an ``unconditional`` counterpart the input is the same in both halves."""
    if conditional is None:
        return None
    return torch.cat([conditional, conditional if unconditional is None else unconditional])


class GuidancePair:
    """The conditioning of one batched classifier-free call: ``[y, null]`` labels and ``[c, c_uncond]`` contexts.

    Args:
        class_labels: the ``B`` label ids ``y``, or ``None`` (a model without classes).
        null_class_label: the "no class" id (needed when there are labels).
        encoder_hidden_states, negative_encoder_hidden_states: the text context ``c`` and the unconditional one
            (the empty prompt, or a negative prompt), ``(B, L, C)`` each; ``None``: no context / the same context.
        pooled_text_embeds, negative_pooled_text_embeds: the pooled text vectors likewise.

    ``ValueError`` when nothing differs between the halves (no labels to null and no unconditional context).
    """

    def __init__(
        self,
        class_labels: torch.Tensor | None,
        null_class_label: int | None,
        encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
        negative_pooled_text_embeds: torch.Tensor | None = None,
        model: str = "model",
    ):
        if class_labels is not None and null_class_label is None:
            raise ValueError(
                f"Classifier-free guidance with class labels needs a null_class_label; this {model} has none."
            )
        if class_labels is None and negative_encoder_hidden_states is None:
            raise ValueError(
                f"Classifier-free guidance needs an unconditional input: a null class label (this {model} takes no "
                "class labels) or an unconditional text context (the empty prompt's embeddings)."
            )
        if negative_encoder_hidden_states is not None and encoder_hidden_states is None:
            raise ValueError("An unconditional text context was given without a conditional one.")
        self.class_labels = None if class_labels is None else with_null_labels(class_labels, null_class_label)
        self.encoder_hidden_states = paired(encoder_hidden_states, negative_encoder_hidden_states)
        self.pooled_text_embeds = paired(pooled_text_embeds, negative_pooled_text_embeds)


class ClassifierFreeGuidance:
    """``D(x; sigma, uncond) + w (D(x; sigma, cond) - D(x; sigma, uncond))`` of a preconditioned denoiser, one
    batched call; ``cond`` = the labels ``y`` and / or the text context ``c``, ``uncond`` = the null label and / or the
    unconditional context (see the module docstring).

    Args:
        denoiser: a :class:`~diffusers_edm.models.PreconditionedDenoiser`: class-conditional with a null label, or
            text-conditional.
        class_labels: the ``B`` label ids ``y`` (validated by the caller, on the model's device), or ``None`` for a
            model without classes.
        scale: the guidance weight ``w``.
        encoder_hidden_states: a cross-attention context (``B`` rows).
        negative_encoder_hidden_states: the unconditional context (``B`` rows: the empty prompt's, or a negative
            prompt's); ``None``: the conditional context in both halves (only the label is nulled).
        pooled_text_embeds, negative_pooled_text_embeds: the pooled text vectors for a backbone that takes one.
    """

    def __init__(
        self,
        denoiser: PreconditionedDenoiser,
        class_labels: torch.Tensor | None,
        scale: float,
        encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
        negative_pooled_text_embeds: torch.Tensor | None = None,
    ):
        self.denoiser = denoiser
        self.scale = float(scale)
        self.inputs = GuidancePair(
            class_labels, denoiser.config.null_class_label, encoder_hidden_states, negative_encoder_hidden_states,
            pooled_text_embeds, negative_pooled_text_embeds, model=type(denoiser).__name__,
        )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        inputs = self.inputs
        denoised = self.denoiser(
            torch.cat([x, x]), sigma, inputs.class_labels, inputs.encoder_hidden_states,
            pooled_text_embeds=inputs.pooled_text_embeds,
        ).sample
        conditional, unconditional = denoised.chunk(2)
        return extrapolate(unconditional, conditional, self.scale)


class ClassifierFreeNoiseGuidance:
    """Classifier-free guidance of a learned-variance network ``(eps, v)`` (``2C`` output channels), one batched call:
    ``eps = eps(x_t, uncond) + w (eps(x_t, cond) - eps(x_t, uncond))`` over the first ``C`` channels, ``v`` from the
    conditional half (GLIDE: the variance is not guided).

    Args:
        model: a ``UNet2DModel`` / ``DiTTransformer2DModel`` (labels) or ``UNet2DConditionModel`` /
            ``PixArtTransformer2DModel`` (text), called through :func:`~diffusers_edm.models.backbones.call_backbone`.
        class_labels: the ``B`` label ids ``y`` (validated, on the model's device), or ``None``.
        null_class_label: the id of the "no class" embedding (``None`` for a model without classes).
        scale: the guidance weight ``w``.
        encoder_hidden_states, negative_encoder_hidden_states, pooled_text_embeds, negative_pooled_text_embeds:
            the text conditioning and its unconditional counterpart, as for :class:`ClassifierFreeGuidance`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_labels: torch.Tensor | None,
        null_class_label: int | None,
        scale: float,
        encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_embeds: torch.Tensor | None = None,
        negative_pooled_text_embeds: torch.Tensor | None = None,
    ):
        self.model = model
        self.scale = float(scale)
        self.inputs = GuidancePair(
            class_labels, null_class_label, encoder_hidden_states, negative_encoder_hidden_states,
            pooled_text_embeds, negative_pooled_text_embeds, model=type(model).__name__,
        )

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([x_t, x_t])
        # A tensor timestep per example: UNet2DModel would truncate a Python float, and DiT wants one per example.
        timesteps = timestep.reshape(1).expand(model_input.shape[0])
        inputs = self.inputs
        output = call_backbone(
            self.model, model_input, timesteps, inputs.class_labels, inputs.encoder_hidden_states,
            inputs.pooled_text_embeds,
        )
        conditional, unconditional = output.chunk(2)
        channels = x_t.shape[1]
        eps = extrapolate(unconditional[:, :channels], conditional[:, :channels], self.scale)
        return torch.cat([eps, conditional[:, channels:]], dim=1)
