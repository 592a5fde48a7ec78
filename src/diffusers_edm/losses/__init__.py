"""Training losses and likelihood terms."""

from .denoising import DENOISING_LOSSES, DenoisingLoss, DenoisingLossOutput, EDMLoss, IDDPMLoss, VELoss, VPLoss
from .finetuning import TruncatedLogNormalLoss
from .weighting import LOSS_WEIGHTINGS, edm_loss_weight, min_snr_loss_weight, uniform_loss_weight
from .edm2 import EDM2Loss, EDM2LossOutput, FourierUncertainty
from .gaussian_likelihood import discretized_gaussian_log_likelihood, normal_kl
from .hybrid import HybridLossOutput, hybrid_loss
from .vlb import prior_bits, vlb_term_bits

__all__ = [
    "DENOISING_LOSSES",
    "DenoisingLoss",
    "DenoisingLossOutput",
    "EDM2Loss",
    "EDM2LossOutput",
    "EDMLoss",
    "FourierUncertainty",
    "IDDPMLoss",
    "LOSS_WEIGHTINGS",
    "TruncatedLogNormalLoss",
    "edm_loss_weight",
    "min_snr_loss_weight",
    "uniform_loss_weight",
    "VELoss",
    "VPLoss",
    "HybridLossOutput",
    "discretized_gaussian_log_likelihood",
    "hybrid_loss",
    "normal_kl",
    "prior_bits",
    "vlb_term_bits",
]
