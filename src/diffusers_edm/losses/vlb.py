"""Terms of the variational bound of a discrete Gaussian diffusion, in bits per dimension (Ho et al. 2020, eq. 5;
Nichol & Dhariwal 2021, section 2).

``-log p(x_0) <= L_prior + sum_t L_t``, with ``L_prior = KL(q(x_T | x_0) || N(0, I))``,
``L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for t > 0 and ``L_0 = -log p(x_0 | x_1)`` (discretized
Gaussian decoder). Each term here is averaged over the non-batch dimensions and divided by ``ln 2``.
"""

from __future__ import annotations

import math

import torch

from ..gaussian_diffusion import DiscreteGaussianDiffusion
from .gaussian_likelihood import discretized_gaussian_log_likelihood, normal_kl


def mean_over_non_batch_dims(values: torch.Tensor) -> torch.Tensor:
    """Per-example mean over every dimension but the first."""
    return values.reshape(values.shape[0], -1).mean(dim=1)


def prior_bits(diffusion: DiscreteGaussianDiffusion, x_start: torch.Tensor) -> torch.Tensor:
    """``KL(q(x_T | x_0) || N(0, I))`` in bits per dimension, one value per example (T = the diffusion's last index)."""
    mean, log_variance = diffusion.q_mean_log_variance(x_start, diffusion.num_timesteps - 1)
    zeros = torch.zeros_like(x_start)
    return mean_over_non_batch_dims(normal_kl(mean, log_variance, zeros, zeros)) / math.log(2.0)


def vlb_term_bits(
    diffusion: DiscreteGaussianDiffusion,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    variance_type: str = "learned_range",
    prediction_type: str = "epsilon",
    clip_denoised: bool = False,
) -> torch.Tensor:
    """The vlb term ``L_t`` in bits per dimension for each example (shape ``(B,)``).

    ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` where the diffusion index of t is > 0, and the decoder NLL
    ``-log p(x_0 | x_t)`` (bins 2/255, :func:`discretized_gaussian_log_likelihood`) where it is 0.

    Args:
        diffusion: the tables (respaced or not); ``timesteps`` are its training timesteps.
        model_output: the network's output at ``(x_t, t)``, ``2C`` channels for learned variances.
        x_start, x_t: the data ``x_0`` and its noised version.
        timesteps: one training timestep per example, each one of ``diffusion.timesteps`` (they are looked up on the
            device without a check, so that a training step never waits for the device; check input from elsewhere
            with ``diffusion.index_of``).
        variance_type, prediction_type: how to read the model output (see :mod:`diffusers_edm.gaussian_diffusion`).
        clip_denoised: clamp the x_0 prediction to [-1, 1] (training leaves it off; evaluation usually on).
    """
    index = diffusion.device_index(torch.as_tensor(timesteps, device=x_start.device)).reshape(-1)
    if index.shape[0] != x_start.shape[0]:
        raise ValueError(f"Need one timestep per example: got {index.shape[0]} timesteps for a batch of {x_start.shape[0]}.")
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, index)
    reverse = diffusion.p_mean_variance(model_output, x_t, index, variance_type, prediction_type, 1.0 if clip_denoised else None)
    kl = mean_over_non_batch_dims(normal_kl(true_mean, true_log_variance, reverse.mean, reverse.log_variance))
    decoder_nll = -mean_over_non_batch_dims(
        discretized_gaussian_log_likelihood(x_start, means=reverse.mean, log_scales=0.5 * reverse.log_variance)
    )
    return torch.where(index == 0, decoder_nll, kl) / math.log(2.0)
