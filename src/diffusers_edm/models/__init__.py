"""Preconditioned denoisers D(x; sigma) over diffusers backbones (EDM Table 1)."""

from .latent_codec import LatentCodec
from .preconditioned_denoisers import (
    EDMPrecond,
    IDDPMPrecond,
    PreconditionedDenoiser,
    PreconditionedDenoiserOutput,
    VEPrecond,
    VPPrecond,
)
from .preconditioning import Preconditioning

__all__ = [
    "EDMPrecond",
    "IDDPMPrecond",
    "LatentCodec",
    "PreconditionedDenoiser",
    "PreconditionedDenoiserOutput",
    "Preconditioning",
    "VEPrecond",
    "VPPrecond",
]
