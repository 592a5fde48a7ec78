"""Preconditioned denoisers D(x; sigma) over diffusers backbones (EDM Table 1) and the noise-conditional classifier."""

from .latent_codec import LatentCodec
from .noise_conditional_classifier import NoiseConditionalClassifier, NoiseConditionalClassifierOutput
from .preconditioned_denoisers import (
    EDMPrecond,
    IDDPMPrecond,
    PreconditionedDenoiser,
    PreconditionedDenoiserOutput,
    VEPrecond,
    VPPrecond,
)
from .preconditioning import Preconditioning
from .pretrained_denoisers import DiscreteVPPrecond, EDMFormulatedPrecond, checkpoint_formulation, pretrained_denoiser

__all__ = [
    "DiscreteVPPrecond",
    "EDMFormulatedPrecond",
    "EDMPrecond",
    "IDDPMPrecond",
    "LatentCodec",
    "NoiseConditionalClassifier",
    "NoiseConditionalClassifierOutput",
    "PreconditionedDenoiser",
    "PreconditionedDenoiserOutput",
    "Preconditioning",
    "VEPrecond",
    "VPPrecond",
    "checkpoint_formulation",
    "pretrained_denoiser",
]
