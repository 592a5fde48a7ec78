"""Improved DDPM's hybrid loss ``L_simple + lambda * L_vlb`` (Nichol & Dhariwal 2021, section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gaussian_diffusion import LEARNED_VARIANCE_TYPES, DiscreteGaussianDiffusion, check_prediction_type, split_model_output
from .vlb import mean_over_non_batch_dims, vlb_term_bits


@dataclass
class HybridLossOutput:
    """Per-example losses (shape ``(B,)``): ``loss = mse + lambda_vlb * T * vlb``."""

    loss: torch.Tensor
    mse: torch.Tensor
    vlb: torch.Tensor


def hybrid_loss(
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    noisy_samples: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    diffusion: DiscreteGaussianDiffusion,
    variance_type: str = "learned_range",
    prediction_type: str = "epsilon",
    lambda_vlb: float = 0.001,
) -> HybridLossOutput:
    """``L_hybrid = L_simple + lambda * L_vlb`` per example, for a model with a learned variance.

    - ``L_simple``: the mean squared error of the prediction (eps, or x_0 for ``prediction_type="sample"``).
    - ``L_vlb``: estimated as ``T * L_t`` from the one sampled t (:func:`~diffusers_edm.losses.vlb.vlb_term_bits`, bits),
      so ``lambda = 0.001`` gives Improved DDPM's "rescaled" ``T / 1000 * L_t``. The prediction channels are detached
      inside ``L_t``: the vlb only trains the variance, the mean is trained by ``L_simple`` alone.

    Weight the result by the importance-sampling weights (``(out.loss * weights).mean()``) and feed
    ``out.vlb.detach()`` to a :class:`~diffusers_edm.training.LossSecondMomentTimestepSampler`.

    Args:
        model_output: the network's ``2C``-channel output at ``(noisy_samples, timesteps)``.
        x_start: the clean data; noisy_samples: ``x_t`` made from it with ``noise`` at ``timesteps``.
        noise: the noise used (the eps target).
        timesteps: one training timestep per example.
        diffusion: the training tables (e.g. ``scheduler.train_diffusion``).
        variance_type: ``"learned_range"`` or ``"learned"``.
        prediction_type: ``"epsilon"`` or ``"sample"``.
        lambda_vlb: the weight of ``L_vlb``.
    """
    if variance_type not in LEARNED_VARIANCE_TYPES:
        raise ValueError(
            f"The hybrid loss trains a learned variance; variance_type must be one of {LEARNED_VARIANCE_TYPES}, got {variance_type!r}."
        )
    check_prediction_type(prediction_type)
    prediction, variance_output = split_model_output(model_output, noisy_samples, variance_type)
    target = noise if prediction_type == "epsilon" else x_start
    mse = mean_over_non_batch_dims((target - prediction) ** 2)
    # Stop-gradient on the prediction: the vlb term may move the variance only.
    frozen_output = torch.cat([prediction.detach(), variance_output], dim=1)
    vlb = vlb_term_bits(
        diffusion, frozen_output, x_start, noisy_samples, timesteps, variance_type, prediction_type, clip_denoised=False
    )
    return HybridLossOutput(loss=mse + lambda_vlb * diffusion.num_timesteps * vlb, mse=mse, vlb=vlb)
