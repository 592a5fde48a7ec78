"""EDM's denoising losses (Karras et al. 2022, eq. 8 and Table 1): ``loss = lambda(sigma) |D(y + sigma n; sigma) - y|^2``.

The four families differ only in how sigma is drawn and in the weight lambda(sigma):

=======  ==============================================================  ================================
loss     sigma                                                           lambda(sigma)
=======  ==============================================================  ================================
EDM      ``ln sigma ~ N(P_mean, P_std^2)`` (-1.2, 1.2)                   ``(sigma^2 + sd^2) / (sigma sd)^2``
VP       ``sigma = sigma_vp(t)``, ``t ~ U(epsilon_t, 1)`` (1e-5)         ``1 / sigma^2``
VE       ``sigma = sigma_min (sigma_max / sigma_min)^u``, ``u ~ U(0,1)``  ``1 / sigma^2``
iDDPM    ``sigma = u_j`` of the cosine table, ``j ~ U{0..M-1}``          ``1 / sigma^2`` (the eps MSE)
=======  ==============================================================  ================================

Each loss is a callable ``loss(denoiser, images, **conditioning)`` returning a :class:`DenoisingLossOutput`:
the per-element loss (the shape of ``images``; the training script reduces it as ``--loss_reduction`` says, EDM's
``sum / batch`` by default) and the sigmas drawn. Randomness comes from the global torch RNG on the images'
device, so Accelerate's checkpoints (which save the RNG states) resume a run exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..noise_schedules import iddpm_sigma_table, vp_sigma
from .weighting import edm_loss_weight


@dataclass
class DenoisingLossOutput:
    """``loss``: per-element ``lambda(sigma) |D - y|^2`` (float32, shape of the images); ``sigma``: one level per sample."""

    loss: torch.Tensor
    sigma: torch.Tensor


class DenoisingLoss(ABC):
    """``lambda(sigma) |D(y + sigma n; sigma) - y|^2`` with a family-specific sigma distribution and weight."""

    @abstractmethod
    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Draw one noise level per sample, shape ``(batch_size,)``, float32."""

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma)."""
        return sigma.square().reciprocal()

    def __call__(self, denoiser: torch.nn.Module, images: torch.Tensor, **conditioning: Any) -> DenoisingLossOutput:
        """Loss for a batch of clean ``images``; ``conditioning`` goes to the denoiser (class_labels, ...)."""
        sigma = self.sample_sigma(images.shape[0], images.device)
        # Drawn in NCHW order: randn_like would follow the memory layout (channels-last latents from a VAE, or
        # --channels_last), so the same RNG state would give different noise per layout.
        noise = torch.randn_like(images, memory_format=torch.contiguous_format)
        denoised = denoiser(images + noise * _per_sample(sigma, images), sigma, **conditioning).sample
        error = (denoised.to(torch.float32) - images.to(torch.float32)).square()
        return DenoisingLossOutput(loss=_per_sample(self.weight(sigma), images) * error, sigma=sigma)


class EDMLoss(DenoisingLoss):
    """EDM: ``ln sigma ~ N(P_mean, P_std^2)``, ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``.

    Equivalently, a unit-weighted MSE between the raw network F and its effective target ``(y - c_skip x) / c_out``.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if not P_std > 0 or not sigma_data > 0:
            raise ValueError(f"EDMLoss needs P_std > 0 and sigma_data > 0, got P_std={P_std}, sigma_data={sigma_data}.")
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return (torch.randn(batch_size, device=device) * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return edm_loss_weight(sigma, self.sigma_data)


class VPLoss(DenoisingLoss):
    """VP: ``sigma = sigma_vp(t)``, ``t ~ U(epsilon_t, 1)``, ``lambda = 1 / sigma^2``."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        if not 0 < epsilon_t < 1:
            raise ValueError(f"epsilon_t must lie in (0, 1), got {epsilon_t}.")
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        t = 1 + torch.rand(batch_size, device=device) * (self.epsilon_t - 1)
        return vp_sigma(t, self.beta_d, self.beta_min)


class VELoss(DenoisingLoss):
    """VE: ``sigma = sigma_min (sigma_max / sigma_min)^u``, ``u ~ U(0, 1)``, ``lambda = 1 / sigma^2``."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VELoss needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** torch.rand(batch_size, device=device)


class IDDPMLoss(DenoisingLoss):
    """iDDPM: ``sigma = u_j``, ``j ~ U{0, ..., M-1}`` over the cosine table, ``lambda = 1 / sigma^2``.

    With iDDPM preconditioning (``c_out = -sigma``) this weight makes the loss the plain eps MSE of DDPM training.
    """

    def __init__(self, M: int = 1000, C_1: float = 0.001, C_2: float = 0.008):
        self.table = torch.from_numpy(iddpm_sigma_table(M, C_1, C_2)[:M]).to(torch.float32)
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def sample_sigma(self, batch_size: int, device: torch.device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._per_device:  # one copy per device, not one per step
            self._per_device[device] = self.table.to(device)
        index = torch.randint(0, len(self.table), (batch_size,), device=device)
        return self._per_device[device][index]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float32).reshape((-1,) + (1,) * (like.ndim - 1))


DENOISING_LOSSES = {"edm": EDMLoss, "vp": VPLoss, "ve": VELoss, "iddpm": IDDPMLoss}

