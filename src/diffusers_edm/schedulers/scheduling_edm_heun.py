"""``EDMHeunScheduler``: EDM's Algorithm 2 for sigma-conditioned (EDM-native) denoisers."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from .model_call import SigmaModelCall
from .stochastic_heun import StochasticHeunMixin, noise_level_tensor, validate_algorithm2_config


class EDMHeunScheduler(StochasticHeunMixin, SchedulerMixin, ConfigMixin):
    """Stochastic Heun sampler with churn (Karras et al. 2022, Algorithm 2) for models evaluated at a noise level sigma.

    The model is called with ``timestep = sigma`` (the ``timesteps`` hold the sigma of every model call) and the
    input unchanged (``scale_model_input`` is the identity: preconditioning belongs to the model wrapper). It
    returns the denoiser ``D(x; sigma)`` (``prediction_type="sample"``) or ``eps = (x - D) / sigma``
    (``"epsilon"``). The sampler evaluates the model at the churned point ``(x_hat_i, sigma_hat_i)`` exactly as
    Algorithm 2 does; with ``s_churn=0`` it is Algorithm 1 (deterministic Heun).

    Interchangeable (``compatibles``, ``from_config``) with :class:`~diffusers_edm.EDMMultistepScheduler` and diffusers'
    ``EDMEulerScheduler`` and ``EDMDPMSolverMultistepScheduler``, which :class:`~diffusers_edm.EDMPipeline` drives as
    well (a multistep config's ``solver`` reads as ``"heun"``).

    Args:
        sigma_min: smallest noise level of the time discretization (EDM: 0.002).
        sigma_max: largest noise level (EDM: 80); finite.
        rho: exponent of the ``"edm"`` discretization.
        s_churn: total churn S_churn; ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` inside ``[s_tmin, s_tmax]``.
        s_tmin, s_tmax: the sigma range in which churn is applied.
        s_noise: scale of the churn noise (EDM's ImageNet-64 setting: 1.003).
        prediction_type: ``"sample"`` (the model returns D) or ``"epsilon"``.
        solver: ``"heun"`` (2nd order, ``order = 2``, 2N-1 calls) or ``"euler"`` (N calls).
        discretization: ``"edm"`` (rho formula), ``"vp"``, ``"ve"``, ``"iddpm"`` (EDM's generalized sampler),
            ``"logsnr"`` or ``"time_uniform"`` (see :func:`diffusers_edm.noise_schedules.sigma_steps`).
        vp_epsilon_s: the last VP time for ``discretization="vp"``.
        iddpm_M, iddpm_C_1, iddpm_C_2: the iDDPM table for ``discretization="iddpm"``.

    Example::

        scheduler = EDMHeunScheduler(s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.003)
        scheduler.set_timesteps(18)
        x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(denoiser(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    """

    _compatibles = ["EDMMultistepScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"]

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
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
        solver = self._read_compatible_solver(solver, "heun")
        validate_algorithm2_config(
            s_churn, s_tmin, s_tmax, s_noise, solver, discretization, rho, vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2
        )
        self.model_call = SigmaModelCall.from_config(self.config)
        self._reset_schedule()

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """``x = y + sigma n``, where ``timesteps`` are noise levels (one per sample, or one for all).

        To start Algorithm 2 at a churned step i with ``s_noise != 1``, noise to ``plan.start_stds[i]`` (the
        standard deviation of ``x_hat_i``), which is ``sigma_hat_i`` only for ``s_noise = 1``.
        """
        return self._noised(original_samples, noise, noise_level_tensor(timesteps))
