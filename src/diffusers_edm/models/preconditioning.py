"""EDM Table 1 (Karras et al. 2022): the preconditioning coefficients of the four denoiser families.

``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))`` with F the raw network.

=========  ======================  ============================  =======================  ================================
family     c_skip                  c_out                         c_in                     c_noise
=========  ======================  ============================  =======================  ================================
VP         1                       -sigma                        1/sqrt(sigma^2+1)        (M-1) t(sigma)
VE         1                       sigma                         1                        log(sigma/2)
iDDPM      1                       -sigma                        1/sqrt(sigma^2+1)        M-1-argmin_j abs(u_j - sigma)
EDM        sd^2/(sigma^2+sd^2)     sigma sd/sqrt(sigma^2+sd^2)   1/sqrt(sigma^2+sd^2)     log(sigma)/4
=========  ======================  ============================  =======================  ================================

Every function takes a floating tensor of noise levels and returns the four coefficients with the same shape,
in float32 (EDM's reference code computes them in float32 whatever the network's precision), so the caller
can reshape them for broadcasting.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..noise_schedules import vp_sigma_inv


class Preconditioning(NamedTuple):
    """The coefficients of ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``, one value per noise level."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_preconditioning(sigma: torch.Tensor, sigma_data: float) -> Preconditioning:
    """EDM: ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd/sqrt(sigma^2+sd^2)``, ``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4``."""
    sigma = sigma.to(torch.float32)
    variance = sigma.square() + sigma_data**2
    return Preconditioning(
        c_skip=sigma_data**2 / variance,
        c_out=sigma * sigma_data / variance.sqrt(),
        c_in=variance.rsqrt(),
        c_noise=sigma.log() / 4,
    )


def vp_preconditioning(sigma: torch.Tensor, beta_d: float, beta_min: float, M: int) -> Preconditioning:
    """VP: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2+1)``, ``c_noise = (M-1) t(sigma)``."""
    sigma = sigma.to(torch.float32)
    return Preconditioning(
        c_skip=torch.ones_like(sigma),
        c_out=-sigma,
        c_in=(sigma.square() + 1).rsqrt(),
        c_noise=(M - 1) * vp_sigma_inv(sigma, beta_d, beta_min),
    )


def ve_preconditioning(sigma: torch.Tensor) -> Preconditioning:
    """VE: ``c_skip = 1``, ``c_out = sigma``, ``c_in = 1``, ``c_noise = log(sigma/2)``."""
    sigma = sigma.to(torch.float32)
    return Preconditioning(
        c_skip=torch.ones_like(sigma),
        c_out=sigma,
        c_in=torch.ones_like(sigma),
        c_noise=(sigma / 2).log(),
    )


def nearest_table_index(sigma: torch.Tensor, sigma_table: torch.Tensor) -> torch.Tensor:
    """``argmin_j abs(u_j - sigma)`` for each noise level, compared in the wider of the two dtypes."""
    dtype = torch.promote_types(sigma.dtype, sigma_table.dtype)
    table = sigma_table.to(device=sigma.device, dtype=dtype)
    return (sigma.to(dtype).unsqueeze(-1) - table).abs().argmin(dim=-1)


def iddpm_preconditioning(sigma: torch.Tensor, sigma_table: torch.Tensor) -> Preconditioning:
    """iDDPM: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2+1)``, ``c_noise = M-1-argmin_j abs(u_j - sigma)``.

    ``sigma_table`` holds ``u_0 > u_1 > ... > u_M = 0`` (M + 1 entries), see
    :func:`diffusers_edm.noise_schedules.iddpm_sigma_table`; the noise label is therefore the DDPM timestep
    index of the nearest table level.
    """
    M = sigma_table.shape[0] - 1
    index = nearest_table_index(sigma, sigma_table)
    sigma = sigma.to(torch.float32)
    return Preconditioning(
        c_skip=torch.ones_like(sigma),
        c_out=-sigma,
        c_in=(sigma.square() + 1).rsqrt(),
        c_noise=(M - 1 - index).to(torch.float32),
    )
