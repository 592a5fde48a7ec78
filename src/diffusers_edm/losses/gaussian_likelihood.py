"""Gaussian KL divergence and the discretized Gaussian log-likelihood of 8-bit images (Ho et al. 2020, section 3.3 and eq. 13)."""

from __future__ import annotations

import torch

# 8-bit data scaled to [-1, 1]: 256 bins of width 2/255, the outermost ones open to -inf / +inf.
HALF_BIN_WIDTH = 1.0 / 255.0
LOWEST_BIN_EDGE = -0.999
HIGHEST_BIN_EDGE = 0.999
# Floor for bin probabilities before the log, as in Improved DDPM (a far-off mean costs at most -log(1e-12) nats).
MIN_BIN_PROBABILITY = 1e-12


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats.

    ``0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))``.
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data ``x`` in [-1, 1] under ``N(means, exp(log_scales)^2)``.

    Each value owns the bin ``[x - 1/255, x + 1/255]``; the lowest bin (``x < -0.999``) extends to -inf and the highest
    (``x > 0.999``) to +inf. Probabilities use the exact normal CDF (Improved DDPM uses a tanh approximation); bins
    right of the mean are evaluated on the mirrored side, where the CDF difference does not cancel.
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}.")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + HALF_BIN_WIDTH)
    lower = inv_std * (centered - HALF_BIN_WIDTH)
    log_cdf_upper = torch.special.log_ndtr(upper)  # lowest bin: P(X <= x + 1/255)
    log_survival_lower = torch.special.log_ndtr(-lower)  # highest bin: P(X >= x - 1/255)
    bin_probability = torch.where(
        centered > 0, torch.special.ndtr(-lower) - torch.special.ndtr(-upper), torch.special.ndtr(upper) - torch.special.ndtr(lower)
    )
    log_bin = torch.log(bin_probability.clamp(min=MIN_BIN_PROBABILITY))
    return torch.where(x < LOWEST_BIN_EDGE, log_cdf_upper, torch.where(x > HIGHEST_BIN_EDGE, log_survival_lower, log_bin))
