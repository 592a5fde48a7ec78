"""``EDMHeunScheduler``: EDM's Algorithm 2 for sigma-conditioned (EDM-native) denoisers."""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from .stochastic_heun import StochasticHeunMixin, validate_algorithm2_config

PREDICTION_TYPES = ("sample", "epsilon")


class EDMHeunScheduler(StochasticHeunMixin, SchedulerMixin, ConfigMixin):
    """Stochastic Heun sampler with churn (Karras et al. 2022, Algorithm 2) for models evaluated at a noise level sigma.

    The model is called with ``timestep = sigma`` (the ``timesteps`` hold the sigma of every model call) and the
    input unchanged (``scale_model_input`` is the identity: preconditioning belongs to the model wrapper). It
    returns the denoiser ``D(x; sigma)`` (``prediction_type="sample"``) or ``eps = (x - D) / sigma``
    (``"epsilon"``). The sampler evaluates the model at the churned point ``(x_hat_i, sigma_hat_i)`` exactly as
    Algorithm 2 does; with ``s_churn=0`` it is Algorithm 1 (deterministic Heun).

    Args:
        sigma_min: smallest noise level of the time discretization (EDM: 0.002).
        sigma_max: largest noise level (EDM: 80).
        sigma_data: standard deviation of the data; recorded for the model wrapper and pipelines (the sampler
            itself does not depend on it).
        rho: exponent of the ``"edm"`` discretization.
        s_churn: total churn S_churn; ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` inside ``[s_tmin, s_tmax]``.
        s_tmin, s_tmax: the sigma range in which churn is applied.
        s_noise: scale of the churn noise (EDM's ImageNet-64 setting: 1.003).
        prediction_type: ``"sample"`` (the model returns D) or ``"epsilon"``.
        solver: ``"heun"`` (2nd order, ``order = 2``, 2N-1 calls) or ``"euler"`` (N calls).
        discretization: ``"edm"`` (rho formula), ``"vp"``, ``"ve"`` or ``"iddpm"`` (EDM's generalized sampler,
            see :func:`diffusers_edm.noise_schedules.sigma_steps`).
        vp_epsilon_s: the last VP time for ``discretization="vp"``.
        iddpm_M, iddpm_C_1, iddpm_C_2: the iDDPM table for ``discretization="iddpm"``.

    Example::

        scheduler = EDMHeunScheduler(s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.003)
        scheduler.set_timesteps(18)
        x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(denoiser(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    """

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        prediction_type: str = "sample",
        solver: str = "heun",
        discretization: str = "edm",
        vp_epsilon_s: float = 1e-3,
        iddpm_M: int = 1000,
        iddpm_C_1: float = 0.001,
        iddpm_C_2: float = 0.008,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}.")
        validate_algorithm2_config(s_churn, s_tmin, s_tmax, s_noise, solver, discretization, rho)
        self._reset_schedule()

    def _sigma_range(self) -> tuple[float, float]:
        return float(self.config.sigma_min), float(self.config.sigma_max)

    def _max_model_sigma(self) -> float:
        return math.inf

    def _check_custom_sigmas(self, sigmas) -> None:
        """Any positive, strictly decreasing levels are allowed for a sigma-conditioned model."""

    def _timesteps_for(self, call_sigmas: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
        # The model is conditioned on sigma itself; keep float64 where the device has it.
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        return call_sigmas.to(device=device, dtype=dtype)

    def _derivative(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.prediction_type == "epsilon":
            return model_output, torch.add(sample, model_output, alpha=-sigma)  # d = eps, D = x - sigma eps
        return torch.sub(sample, model_output).div_(sigma), model_output  # d = (x - D) / sigma

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: EDM-native models take ``x`` itself (their wrapper applies ``c_in``)."""
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """``x = y + sigma n``, where ``timesteps`` are noise levels (one per sample, or one for all)."""
        sigma = torch.as_tensor(timesteps, dtype=torch.float64)
        if torch.any(sigma < 0) or not torch.all(torch.isfinite(sigma)):
            raise ValueError(f"add_noise needs finite noise levels >= 0, got {sigma.tolist()}.")
        return self._noised(original_samples, noise, sigma)
