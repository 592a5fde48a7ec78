"""The fine-tuning loss of a pretrained checkpoint in EDM's frame (Karras et al. 2022, eq. 8):
``lambda(sigma) |D(y + sigma n; sigma) - y|^2`` with ``ln sigma`` drawn from EDM's log-normal ``N(P_mean, P_std^2)``
*truncated* to the checkpoint's noise range ``[sigma_min, sigma_max]`` (a discrete table has no model outside it).

Truncation, not clamping or resampling: ``ln sigma = P_mean + P_std * Phi^-1(u)``,
``u ~ U(Phi(a), Phi(b))``, ``a = (ln sigma_min - P_mean) / P_std``, ``b = (ln sigma_max - P_mean) / P_std``
(inverse-CDF sampling of the truncated normal: one draw per sample, no rejection loop, so no host synchronisation).
The weight is one of :data:`~diffusers_edm.losses.weighting.LOSS_WEIGHTINGS`.

EDM's ``P_mean = -1.2`` was tuned for pixels with ``sigma_data = 0.5``. EDM's preconditioning and loss are defined in
units of ``sigma_data`` (Karras et al. 2022, section 5 and Table 1: data scaled by ``k`` with every sigma scaled by
``k`` is the same problem), so the same training distribution for data of standard deviation ``sigma_data`` is
``ln sigma ~ N(P_mean_EDM + ln(sigma_data / 0.5), P_std^2)`` (:func:`scale_consistent_P_mean`).
"""

from __future__ import annotations

import math

import torch

from .denoising import DenoisingLoss
from .weighting import LOSS_WEIGHTINGS


def standard_normal_cdf(value: float) -> float:
    """``Phi(value)``, the standard normal CDF, on the host (``+/-inf`` give 1 / 0)."""
    return 0.5 * math.erfc(-value / math.sqrt(2.0))


#: EDM's mean of ``ln sigma`` and the ``sigma_data`` it was tuned for (Karras et al. 2022, Table 1: pixels in [-1, 1]).
EDM_P_MEAN, EDM_SIGMA_DATA = -1.2, 0.5


def scale_consistent_P_mean(sigma_data: float, P_mean: float = EDM_P_MEAN, tuned_sigma_data: float = EDM_SIGMA_DATA) -> float:
    """``P_mean + ln(sigma_data / tuned_sigma_data)``: the mean of ``ln sigma`` that puts the same noise-to-data ratios
    ``sigma / sigma_data`` under training for data of standard deviation ``sigma_data`` as ``P_mean`` does for data of
    ``tuned_sigma_data`` (EDM's problem is invariant to scaling the data and every sigma by one factor; Karras et al.
    2022, section 5 and Table 1). EDM's ``-1.2`` at ``sigma_data = 1`` gives ``-1.2 + ln 2 ~= -0.507``."""
    if not (0 < sigma_data < math.inf and 0 < tuned_sigma_data < math.inf and math.isfinite(P_mean)):
        raise ValueError(
            f"scale_consistent_P_mean needs finite sigma_data > 0 and tuned_sigma_data > 0 and a finite P_mean, got "
            f"sigma_data={sigma_data}, tuned_sigma_data={tuned_sigma_data}, P_mean={P_mean}."
        )
    return P_mean + (math.log(sigma_data) - math.log(tuned_sigma_data))  # logs apart: no overflow of the ratio


class TruncatedLogNormalLoss(DenoisingLoss):
    """``lambda(sigma) |D - y|^2`` with ``ln sigma ~ N(P_mean, P_std^2)`` truncated to ``[sigma_min, sigma_max]``.

    Args:
        sigma_min, sigma_max: the checkpoint's noise range (``0 < sigma_min < sigma_max``; ``sigma_max`` may be inf).
        P_mean, P_std: the log-normal's parameters before truncation (EDM: -1.2, 1.2).
        weighting: ``"edm"``, ``"uniform"`` or ``"min-snr"`` (:data:`LOSS_WEIGHTINGS`).
        sigma_data: the data's standard deviation (EDM's weight reads it).
    """

    def __init__(
        self, sigma_min: float, sigma_max: float, P_mean: float = -1.2, P_std: float = 1.2, weighting: str = "edm",
        sigma_data: float = 0.5,
    ):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"The noise range needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        if not (P_std > 0 and math.isfinite(P_mean) and sigma_data > 0):
            raise ValueError(f"Needs a finite P_mean, P_std > 0 and sigma_data > 0, got {P_mean}, {P_std}, {sigma_data}.")
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"Unknown loss weighting {weighting!r}; expected one of {tuple(LOSS_WEIGHTINGS)}.")
        self.sigma_min, self.sigma_max, self.P_mean, self.P_std = float(sigma_min), float(sigma_max), P_mean, P_std
        self.weighting, self.sigma_data = weighting, float(sigma_data)
        self.log_range = (math.log(self.sigma_min), math.log(self.sigma_max))
        self.cdf_range = tuple(standard_normal_cdf((end - P_mean) / P_std) for end in self.log_range)
        if not self.cdf_range[1] > self.cdf_range[0]:
            raise ValueError(
                f"ln sigma ~ N({P_mean}, {P_std}^2) has no probability mass in [{sigma_min}, {sigma_max}] at float "
                "precision; move --P_mean into the model's noise range."
            )

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        low, high = self.cdf_range
        u = low + (high - low) * torch.rand(batch_size, device=device)
        log_sigma = self.P_mean + self.P_std * torch.special.ndtri(u)
        # Rounding at the CDF's ends may step a hair outside the range.
        return log_sigma.clamp(*self.log_range).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return LOSS_WEIGHTINGS[self.weighting](sigma, self.sigma_data)
