"""EDM2's loss with a learned uncertainty (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", section 2.4 / eq. 21 and Appendix B.2).

Per element (pixel or latent) of an image ``y`` noised at ``sigma``, with ``n ~ N(0, I)``:

    ``loss = lambda(sigma) / exp(u(sigma)) * (D(y + sigma n; sigma) - y)^2 + u(sigma)``

with EDM's ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` and ``ln sigma ~ N(P_mean, P_std^2)`` (EDM2: -0.4,
1.0). ``u(sigma)`` is a learned log-variance: at its optimum ``exp(u) = lambda E[(D - y)^2 | sigma]``, so every noise
level contributes a loss of about the same size and none dominates the gradient. It is a function of
``c_noise(sigma)`` only: a linear layer on fixed random Fourier features (:class:`FourierUncertainty`), trained with
the denoiser and discarded afterwards (sampling never uses it).

Reduction: the training script averages this per-element loss over each image's elements and the batch
(``--loss_reduction mean``: ``mean_batch(lambda / exp(u) * mean_pixels((D - y)^2) + u)``), or multiplies that by
the number of elements C*H*W (``sum``, the default, as EDM2's ``loss.sum() / batch``). Either way ``u`` enters once
per element alongside its weighted error, so its optimum does not depend on the reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .denoising import EDMLoss, _per_sample


class FourierUncertainty(torch.nn.Module):
    """``u = w . (sqrt(2) cos(2 pi (f c_noise + p)))``: EDM2's uncertainty head, a linear layer (no bias) on
    ``num_channels`` Fourier features of ``c_noise`` with fixed frequencies ``f ~ N(0, 1)`` and phases ``p ~ U(0, 1)``.

    The frequencies and phases are buffers drawn from their own generator (``seed``), so building the head leaves the
    global RNG untouched; the linear layer starts at zero (``u = 0``: the loss starts as EDM's).
    """

    def __init__(self, num_channels: int = 128, seed: int = 0):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}.")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", 2 * math.pi * torch.randn(num_channels, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels, generator=generator))
        self.linear = torch.nn.Linear(num_channels, 1, bias=False)
        torch.nn.init.zeros_(self.linear.weight)

    def features(self, c_noise: torch.Tensor) -> torch.Tensor:
        """``sqrt(2) cos(f c_noise + p)`` (``f``, ``p`` stored with their 2 pi), shape ``(B, num_channels)``."""
        c_noise = c_noise.to(torch.float32).reshape(-1, 1)
        return (c_noise * self.frequencies + self.phases).cos() * math.sqrt(2)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """``u`` for each ``c_noise``, float32, shape ``(B,)``."""
        return self.linear(self.features(c_noise).to(self.linear.weight.dtype)).to(torch.float32).reshape(-1)


@dataclass
class EDM2LossOutput:
    """``loss``: per element ``lambda / exp(u) (D - y)^2 + u`` (float32, shape of the images); ``sigma``: one level per
    sample; ``uncertainty``: ``u(sigma)`` per sample."""

    loss: torch.Tensor
    sigma: torch.Tensor
    uncertainty: torch.Tensor


class EDM2Loss(EDMLoss):
    """EDM2's uncertainty-weighted loss (see the module docstring); sigma and ``n`` are drawn as :class:`EDMLoss` draws
    them (sigma first, then ``n``, from the global torch RNG), with EDM2's ``P_mean = -0.4``, ``P_std = 1.0``.

    The model is called as ``model(x, sigma, **conditioning)`` and returns ``.sample`` (``D``) and ``.uncertainty``
    (``u(sigma)``, one value per sample): one call, so that data-parallel wrappers see every parameter used.
    """

    def __init__(self, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5):
        super().__init__(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, **conditioning: Any) -> EDM2LossOutput:
        sigma = self.sample_sigma(images.shape[0], images.device)
        noise = torch.randn_like(images, memory_format=torch.contiguous_format)  # the same draws for NHWC batches
        output = model(images + noise * _per_sample(sigma, images), sigma, **conditioning)
        error = (output.sample.to(torch.float32) - images.to(torch.float32)).square()
        u = output.uncertainty.to(torch.float32)
        loss = _per_sample(self.weight(sigma) / u.exp(), images) * error + _per_sample(u, images)
        return EDM2LossOutput(loss=loss, sigma=sigma, uncertainty=u)
