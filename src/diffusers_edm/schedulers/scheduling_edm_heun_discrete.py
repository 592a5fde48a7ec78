"""``EDMHeunDiscreteScheduler``: EDM's Algorithm 2 driving a discrete-time VP model (Stable Diffusion, SDXL, DDPM UNets)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

from .model_call import DiscreteVPModelCall
from .planned_schedule import check_timestep_type
from .stochastic_heun import StochasticHeunMixin, validate_algorithm2_config


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

    Until ``set_timesteps`` is called the schedule visits every training timestep within ``[sigma_min, sigma_max]``
    once, from the noisiest down (T steps for the default range, timesteps ``T-1 .. 0``), as diffusers' discrete
    schedulers do after ``__init__``; so ``scale_model_input`` and ``add_noise`` work before ``set_timesteps``.

    Swap it into a pipeline with ``EDMHeunDiscreteScheduler.from_config(pipe.scheduler.config, s_churn=...)``:
    the betas and prediction type come from the pipeline's scheduler config, keys that do not apply to this
    sampler (``timestep_spacing``, ``steps_offset``, ...) are ignored.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training noise table, as in
            diffusers (``beta_schedule`` is ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        rho: exponent of the ``"edm"`` time discretization.
        sigma_min, sigma_max: the range of the time discretization; default (None) is the range of the training
            table, ``sigma(t=0)`` to ``sigma(t=T-1)``. Must lie within that range (values within a relative
            ``TABLE_END_TOLERANCE`` = 1e-4 of its ends are clamped to them; so are such levels given as ``sigmas=``).
        s_churn, s_tmin, s_tmax, s_noise: churn parameters of Algorithm 2 (config keys: pipelines never pass them).
            A churned level ``sigma_hat`` above the table's largest sigma is capped there (the model knows no higher one).
        solver: ``"heun"`` (``order = 2``, 2N-1 model calls) or ``"euler"`` (N calls).
        discretization: ``"edm"``, ``"vp"``, ``"ve"``, ``"iddpm"``, ``"logsnr"`` or ``"time_uniform"``
            (see :func:`~diffusers_edm.noise_schedules.sigma_steps`).
        vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2: constants of the ``"vp"`` and ``"iddpm"`` discretizations.
    """

    _compatibles = ["EDMMultistepDiscreteScheduler"] + [e.name for e in KarrasDiffusionSchedulers]

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
        solver = self._read_compatible_solver(solver, "heun")
        validate_algorithm2_config(
            s_churn, s_tmin, s_tmax, s_noise, solver, discretization, rho, vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2
        )
        self.model_call = DiscreteVPModelCall.from_config(self.config)
        self.betas = torch.from_numpy(self.model_call.betas)
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - self.model_call.betas))
        self._reset_schedule()
        self._use_plan(self._plan_for(self._default_grid()))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _default_grid(self) -> np.ndarray:
        """Every table level within the configured range, largest first (both ends if none lies strictly inside)."""
        low, high = self.model_call.sigma_range()
        table = self.model_call.train_sigmas
        levels = table[(table >= low) & (table <= high)][::-1]
        return levels.copy() if len(levels) > 0 else np.array([high, low])

    def sigma_to_timestep(self, sigmas: np.ndarray | torch.Tensor) -> np.ndarray:
        """Fractional training timestep of each noise level: linear interpolation in log-sigma over the table."""
        return self.model_call.sigma_to_timestep(np.asarray(sigmas, dtype=np.float64))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x = y + sigma n`` in the sampler's (sigma-space) coordinates, for image-to-image starts.

        The call is the schedule's begin call (before sampling), the current call (during sampling), or the call
        whose timestep matches each entry of ``timesteps``, as in diffusers; ``sigma`` is that call's level, or at
        the first call of a churned step the standard deviation of ``x_hat`` (see ``init_noise_sigma``).
        """
        check_timestep_type("timesteps", timesteps)
        sigma = torch.tensor(self._noise_stds_for(torch.as_tensor(timesteps)), dtype=torch.float64)
        return self._noised(original_samples, noise, sigma)
