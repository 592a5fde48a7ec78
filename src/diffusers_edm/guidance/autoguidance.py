"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", eq. 2 and section 3).

A weaker model of the same data, trained the same way but smaller and/or for less time, guides the main one::

    D_guided(x; sigma, c) = D_weak(x; sigma, c) + w (D_main(x; sigma, c) - D_weak(x; sigma, c))

with the same conditioning ``c`` for both (labels, or none for unconditional models, which can be autoguided too).
It is classifier-free guidance's extrapolation (:func:`~.classifier_free.extrapolate`) with the weak model in place of
the null label: the weak model's errors are the same kind as the main model's, only larger, so extrapolating away
from them improves quality without the loss of variation that a null-label reference brings (ImageNet-512:
EDM2-XXL guided by EDM2-M, FID 1.25 against 1.81 with classifier-free guidance).

The two models are evaluated in two calls (they are different networks) at the same ``x`` and ``sigma``.
"""

from __future__ import annotations

import torch

from ..models import PreconditionedDenoiser
from .classifier_free import extrapolate
from .guided_denoiser import ConditionalDenoiser


class Autoguidance:
    """``D_weak + w (D_main - D_weak)``, both conditioned alike.

    Args:
        conditional: the main model with the call's conditioning.
        weak: the weak model with the same conditioning.
        scale: the guidance weight ``w`` (1: the main model).
    """

    def __init__(self, conditional: ConditionalDenoiser, weak: ConditionalDenoiser, scale: float):
        self.conditional = conditional
        self.weak = weak
        self.scale = float(scale)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return extrapolate(self.weak(x, sigma), self.conditional(x, sigma), self.scale)


def check_guidance_denoiser(denoiser: PreconditionedDenoiser, guidance_denoiser: PreconditionedDenoiser) -> None:
    """``ValueError`` naming both sides unless ``guidance_denoiser`` can guide ``denoiser``: a preconditioned denoiser
    of the same data space (channels, sample size, ``sigma_data`` where both define one), conditioned alike (the same
    classes, and a cross-attention context for both or neither). The labels of a call are checked against each model
    (its classes, its own null label) when the call starts."""
    if not isinstance(guidance_denoiser, PreconditionedDenoiser):
        raise TypeError(
            "guidance_denoiser must be an EDMPrecond, VPPrecond, VEPrecond or IDDPMPrecond (a weak version of the "
            f"denoiser), got {type(guidance_denoiser).__name__}."
        )
    main, weak = denoiser.config, guidance_denoiser.config
    pairs = {
        "image_channels": (denoiser.image_channels, guidance_denoiser.image_channels),
        "sample_size": (tuple(denoiser.sample_size), tuple(guidance_denoiser.sample_size)),
        "num_classes": (main.num_classes, weak.num_classes),
        "uses_cross_attention": (denoiser.uses_cross_attention, guidance_denoiser.uses_cross_attention),
    }
    sigma_data = (getattr(main, "sigma_data", None), getattr(weak, "sigma_data", None))
    if None not in sigma_data:
        pairs["sigma_data"] = sigma_data
    for name, (ours, theirs) in pairs.items():
        if ours != theirs:
            raise ValueError(
                f"The guidance_denoiser must model the same data as the denoiser, conditioned alike: the denoiser "
                f"({type(denoiser).__name__}) has {name}={ours!r} but the guidance_denoiser "
                f"({type(guidance_denoiser).__name__}) has {name}={theirs!r}."
            )
