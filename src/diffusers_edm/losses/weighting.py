"""Loss weights ``lambda(sigma)`` on the denoiser error ``|D(y + sigma n; sigma) - y|^2`` (Karras et al. 2022, eq. 8).

For an eps model ``|D - y|^2 = sigma^2 |eps_hat - eps|^2``, so a weight ``w`` on the eps MSE is ``lambda = w / sigma^2``
on the denoiser error, and DDPM's plain eps MSE is ``lambda = 1 / sigma^2``.

=========  =======================================  ===========================================================
name       lambda(sigma)                            source
=========  =======================================  ===========================================================
edm        ``(sigma^2 + sd^2) / (sigma sd)^2``      Karras et al. 2022, Table 1 (unit weight on the F target)
uniform    ``1``                                    unweighted D-space MSE (diffusers' ``--do_edm_style_training``
                                                    on EDM-formulated checkpoints)
min-snr    ``min(1/sigma^2, gamma)``                Hang et al. 2023, eq. 8: eps-MSE weight ``min(SNR, gamma) / SNR``
                                                    with ``SNR = 1/sigma^2``, i.e. ``min(SNR, gamma)`` on ``|D - y|^2``
=========  =======================================  ===========================================================
"""

from __future__ import annotations

from typing import Callable

import torch

#: Min-SNR-gamma's gamma (Hang et al. 2023, section 4: 5 works best).
MIN_SNR_GAMMA = 5.0


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``."""
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


def uniform_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = 1``: the unweighted D-space MSE."""
    return torch.ones_like(sigma)


def min_snr_loss_weight(sigma: torch.Tensor, sigma_data: float, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Min-SNR-gamma on the denoiser error: ``lambda(sigma) = min(SNR, gamma)`` with ``SNR = 1/sigma^2`` (the eps-MSE
    weight ``min(SNR, gamma) / SNR`` times ``1/sigma^2``)."""
    return sigma.square().reciprocal().clamp(max=gamma)


#: ``--loss_weighting`` names to ``weight(sigma, sigma_data)``.
LOSS_WEIGHTINGS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "edm": edm_loss_weight, "uniform": uniform_loss_weight, "min-snr": min_snr_loss_weight,
}
