"""``EDMMultistepScheduler``: iPNDM, DPM-Solver++ and UniPC for sigma-conditioned (EDM-native) denoisers."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from .model_call import SigmaModelCall
from .multistep import SIGMA_AUTO, MultistepMixin, validate_multistep_config
from .stochastic_heun import noise_level_tensor, validate_discretization_config


class EDMMultistepScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """Multistep solvers of the probability-flow ODE (one model call per step) for models evaluated at a noise level.

    The model is called with ``timestep = sigma`` (the ``timesteps`` hold the sigma of every model call, float64) and
    the input unchanged (``scale_model_input`` is the identity: preconditioning belongs to the model wrapper). It
    returns the denoiser ``D(x; sigma)`` (``prediction_type="sample"``) or ``eps = (x - D) / sigma`` (``"epsilon"``).
    ``num_inference_steps`` is the number of model calls. The solvers and their formulas are stated in
    :mod:`diffusers_edm.schedulers.multistep`.

    Interchangeable (``compatibles``, ``from_config``) with :class:`~diffusers_edm.EDMHeunScheduler` and diffusers'
    ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``, all of which :class:`~diffusers_edm.EDMPipeline` drives.

    Args:
        sigma_min, sigma_max: the range of the time discretization (EDM: 0.002 to 80).
        sigma_data: the data's standard deviation, used by the analytical first step (``c_skip``).
        rho: exponent of the ``"edm"`` discretization.
        solver: ``"auto"`` (default: the benchmarked best for the number of model calls, see below), ``"ipndm"``
            (Zhang & Chen 2023, orders 1-4), ``"ipndm_v"`` (iPNDM with variable-step Adams-Bashforth weights, orders
            1-4), ``"dpmpp"`` (DPM-Solver++ multistep, Lu et al. 2022, orders 1-3) or ``"unipc"`` (UniPC bh2
            predictor-corrector, Zhao et al. 2023, orders 1-3). A config of ``EDMHeunScheduler`` (``"heun"`` /
            ``"euler"``) reads as ``"auto"``.
        solver_order: the order of a named solver (``"auto"`` chooses its own).
        lower_order_final: runs of fewer than 15 steps lower the order of their last steps (``o_i <= S - i``); for a
            named solver (``"auto"`` chooses).
        analytical_first_step: take the first step without a model call, with ``D = c_skip(sigma_0) x`` (saves one call;
            ``num_inference_steps`` calls then cover ``num_inference_steps + 1`` levels); for a named solver
            (``"auto"`` chooses).
        discretization: ``"edm"`` (rho formula), ``"logsnr"`` (uniform in log sigma), ``"time_uniform"`` (uniform VP
            time), or EDM's ``"vp"``, ``"ve"``, ``"iddpm"`` (see :func:`diffusers_edm.noise_schedules.sigma_steps`).
        prediction_type: ``"sample"`` (the model returns D) or ``"epsilon"``.
        vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2: constants of the ``"vp"`` / ``"time_uniform"`` and ``"iddpm"``
            discretizations.

    ``solver="auto"`` (:data:`~diffusers_edm.schedulers.multistep.SIGMA_AUTO`), from the sampler-accuracy benchmark
    over EDM's range: iPNDM order 3 with the analytical first step up to 15 calls, iPNDM order 4 with it up to 25,
    UniPC order 3 with it above; ``lower_order_final`` off.

    Example::

        scheduler = EDMMultistepScheduler()  # solver="auto"
        scheduler.set_timesteps(10)  # 10 model calls
        x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(denoiser(x, t), t, x).prev_sample
    """

    _compatibles = ["EDMHeunScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"]
    auto_rules = SIGMA_AUTO

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        solver: str = "auto",
        solver_order: int = 3,
        lower_order_final: bool = True,
        analytical_first_step: bool = False,
        discretization: str = "edm",
        prediction_type: str = "sample",
        vp_epsilon_s: float = 1e-3,
        iddpm_M: int = 1000,
        iddpm_C_1: float = 0.001,
        iddpm_C_2: float = 0.008,
    ):
        solver = self._read_compatible_solver(solver, "auto")
        validate_multistep_config(solver, solver_order, lower_order_final, analytical_first_step, sigma_data)
        validate_discretization_config(discretization, rho, vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2)
        self.model_call = SigmaModelCall.from_config(self.config)
        self._reset_schedule()

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """``x = y + sigma n``, where ``timesteps`` are noise levels (one per sample, or one for all)."""
        return self._noised(original_samples, noise, noise_level_tensor(timesteps))
