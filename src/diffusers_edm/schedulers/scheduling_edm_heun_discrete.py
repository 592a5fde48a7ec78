"""``EDMHeunDiscreteScheduler``: EDM's Algorithm 2 driving a discrete-time VP model (Stable Diffusion, SDXL, DDPM UNets)."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

from ..noise_schedules import betas_for_schedule, sigmas_from_betas
from .stochastic_heun import StochasticHeunMixin, validate_algorithm2_config

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class EDMHeunDiscreteScheduler(StochasticHeunMixin, SchedulerMixin, ConfigMixin):
    """Stochastic Heun sampler with churn (Karras et al. 2022, Algorithm 2) for networks trained on discrete timesteps.

    A VP model sees ``x_t = sqrt(alpha_bar) y + sqrt(1 - alpha_bar) n``; with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``
    this is ``x / sqrt(sigma^2 + 1)`` for the EDM sample ``x = y + sigma n``. The sampler runs Algorithm 2 on ``x``
    in sigma space; for each model call ``scale_model_input`` divides by ``sqrt(sigma^2 + 1)`` and the model gets
    the (fractional) training timestep whose table sigma equals that call's sigma (linear interpolation in
    log-sigma over the training table). The model output becomes the denoiser by

    - ``"epsilon"``: ``D = x - sigma eps``;
    - ``"v_prediction"``: ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v``;
    - ``"sample"``: ``D = output``.

    Swap it into a pipeline with ``EDMHeunDiscreteScheduler.from_config(pipe.scheduler.config, s_churn=...)``:
    the betas and prediction type come from the pipeline's scheduler config, keys that do not apply to this
    sampler (``timestep_spacing``, ``steps_offset``, ...) are ignored.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training noise table, as in
            diffusers (``beta_schedule`` is ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        rho: exponent of the ``"edm"`` time discretization.
        sigma_min, sigma_max: the range of the time discretization; default (None) is the range of the training
            table, ``sigma(t=0)`` to ``sigma(t=T-1)``. Must lie within that range.
        s_churn, s_tmin, s_tmax, s_noise: churn parameters of Algorithm 2 (config keys: pipelines never pass them).
            A churned level ``sigma_hat`` above the table's largest sigma is capped there (the model knows no higher one).
        solver: ``"heun"`` (``order = 2``, 2N-1 model calls) or ``"euler"`` (N calls).
        discretization: ``"edm"``, ``"vp"``, ``"ve"`` or ``"iddpm"`` (see :func:`~diffusers_edm.noise_schedules.sigma_steps`).
        vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2: constants of the ``"vp"`` and ``"iddpm"`` discretizations.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        solver: str = "heun",
        discretization: str = "edm",
        vp_epsilon_s: float = 1e-3,
        iddpm_M: int = 1000,
        iddpm_C_1: float = 0.001,
        iddpm_C_2: float = 0.008,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}.")
        validate_algorithm2_config(s_churn, s_tmin, s_tmax, s_noise, solver, discretization, rho)
        betas = betas_for_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        self.betas = torch.from_numpy(betas)
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
        self._train_sigmas = sigmas_from_betas(betas)
        self._train_log_sigmas = np.log(self._train_sigmas)
        low, high = float(self._train_sigmas[0]), float(self._train_sigmas[-1])
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            # A small relative slack lets configs that store the table's own ends (rounded) pass.
            if value is not None and not low * (1 - 1e-6) <= value <= high * (1 + 1e-6):
                raise ValueError(f"{name}={value} lies outside the training table's sigma range [{low:.6g}, {high:.6g}].")
        if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
            raise ValueError(f"Need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        self._reset_schedule()

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _sigma_range(self) -> tuple[float, float]:
        sigma_min = self.config.sigma_min if self.config.sigma_min is not None else self._train_sigmas[0]
        sigma_max = self.config.sigma_max if self.config.sigma_max is not None else self._train_sigmas[-1]
        return float(sigma_min), float(sigma_max)

    def _max_model_sigma(self) -> float:
        return float(self._train_sigmas[-1])

    def _check_custom_sigmas(self, sigmas: np.ndarray) -> None:
        low, high = self._train_sigmas[0], self._train_sigmas[-1]
        if sigmas[0] > high * (1 + 1e-6) or sigmas[-1] < low * (1 - 1e-6):
            raise ValueError(
                f"sigmas must lie within the training table's range [{low:.6g}, {high:.6g}] "
                f"(the model knows no other noise levels), got {sigmas[0]:.6g} .. {sigmas[-1]:.6g}."
            )

    def sigma_to_timestep(self, sigmas: np.ndarray | torch.Tensor) -> np.ndarray:
        """Fractional training timestep of each noise level: linear interpolation in log-sigma over the table."""
        log_sigmas = np.log(np.asarray(sigmas, dtype=np.float64))
        return np.interp(log_sigmas, self._train_log_sigmas, np.arange(len(self._train_log_sigmas), dtype=np.float64))

    def _timesteps_for(self, call_sigmas: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
        return torch.from_numpy(self.sigma_to_timestep(call_sigmas.numpy())).to(device=device, dtype=torch.float32)

    def _derivative(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return model_output, torch.add(sample, model_output, alpha=-sigma)  # d = eps, D = x - sigma eps
        if prediction_type == "v_prediction":
            # D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v
            denoised = torch.add(sample / (sigma**2 + 1), model_output, alpha=-sigma / math.sqrt(sigma**2 + 1))
        else:
            denoised = model_output
        return torch.sub(sample, denoised).div_(sigma), denoised

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """``x / sqrt(sigma^2 + 1)``: the VP input of the current model call."""
        if self.timesteps is None:
            raise ValueError(f"{type(self).__name__} has no schedule yet: call `set_timesteps` first.")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self._call_sigma_list):
            raise ValueError("All model calls of this schedule have been stepped; call `set_timesteps` to sample again.")
        sigma = self._call_sigma_list[self._step_index]
        return sample / math.sqrt(sigma**2 + 1)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x = y + sigma n`` in the sampler's (sigma-space) coordinates, for image-to-image starts.

        The sigma is the one of the schedule's begin call (before sampling), of the current call (during
        sampling), or of the call whose timestep matches each entry of ``timesteps``, as in diffusers.
        """
        sigma = torch.tensor(self._call_sigmas_for(torch.as_tensor(timesteps)), dtype=torch.float64)
        return self._noised(original_samples, noise, sigma)
