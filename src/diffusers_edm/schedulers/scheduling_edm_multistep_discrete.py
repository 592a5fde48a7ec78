"""``EDMMultistepDiscreteScheduler``: iPNDM, DPM-Solver++ and UniPC driving a discrete-time VP model (Stable
Diffusion 1.x / 2.x, SDXL, DDPM UNets)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

from .model_call import DiscreteVPModelCall
from .planned_schedule import check_timestep_type
from .multistep import DISCRETE_AUTO, MultistepMixin, validate_multistep_config
from .stochastic_heun import validate_discretization_config


class EDMMultistepDiscreteScheduler(MultistepMixin, SchedulerMixin, ConfigMixin):
    """Multistep solvers of the probability-flow ODE (one model call per step) for networks trained on discrete
    timesteps.

    The solver runs in sigma space on ``x = y + sigma n``; the model is called as
    :class:`~diffusers_edm.schedulers.model_call.DiscreteVPModelCall` states (the same adaptation as
    :class:`~diffusers_edm.EDMHeunDiscreteScheduler`): ``scale_model_input`` divides by ``sqrt(sigma^2 + 1)``, the
    timestep is the fractional training timestep whose table sigma is the call's (log-sigma interpolation), and the
    output (eps, v or x_0) is read back as ``D``. ``num_inference_steps`` is the number of model calls. The solvers
    and their formulas are stated in :mod:`diffusers_edm.schedulers.multistep`.

    Swap it into a pipeline with ``EDMMultistepDiscreteScheduler.from_config(pipe.scheduler.config, solver=...)``:
    the betas and prediction type come from the pipeline's scheduler config, keys that do not apply are ignored.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training noise table, as in
            diffusers (``beta_schedule`` is ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        sigma_min, sigma_max: the range of the time discretization; None is the training table's end (values must lie
            within the table, as for ``EDMHeunDiscreteScheduler``).
        sigma_data: the data's standard deviation, used by the analytical first step (``c_skip``).
        rho: exponent of the ``"edm"`` discretization.
        solver, solver_order, lower_order_final, analytical_first_step, discretization: as for
            :class:`~diffusers_edm.EDMMultistepScheduler`; ``solver="auto"``
            (:data:`~diffusers_edm.schedulers.multistep.DISCRETE_AUTO`), from the sampler-accuracy benchmark on Stable
            Diffusion's table: iPNDM order 3 up to 10 calls, order 4 up to 25, ``"ipndm_v"`` order 4 above, without
            the analytical first step, ``lower_order_final`` off.
        vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2: constants of the ``"vp"`` / ``"time_uniform"`` and ``"iddpm"``
            discretizations.
    """

    _compatibles = ["EDMHeunDiscreteScheduler"] + [e.name for e in KarrasDiffusionSchedulers]
    auto_rules = DISCRETE_AUTO

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sigma_data: float = 1.0,
        rho: float = 7.0,
        solver: str = "auto",
        solver_order: int = 3,
        lower_order_final: bool = True,
        analytical_first_step: bool = False,
        discretization: str = "edm",
        vp_epsilon_s: float = 1e-3,
        iddpm_M: int = 1000,
        iddpm_C_1: float = 0.001,
        iddpm_C_2: float = 0.008,
    ):
        solver = self._read_compatible_solver(solver, "auto")
        validate_multistep_config(solver, solver_order, lower_order_final, analytical_first_step, sigma_data)
        validate_discretization_config(discretization, rho, vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2)
        self.model_call = DiscreteVPModelCall.from_config(self.config)
        self.betas = torch.from_numpy(self.model_call.betas)
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - self.model_call.betas))
        self._reset_schedule()

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def sigma_to_timestep(self, sigmas: np.ndarray | torch.Tensor) -> np.ndarray:
        """Fractional training timestep of each noise level: linear interpolation in log-sigma over the table."""
        return self.model_call.sigma_to_timestep(np.asarray(sigmas, dtype=np.float64))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x = y + sigma n`` in the sampler's (sigma-space) coordinates, for image-to-image starts.

        The call is the schedule's begin call (before sampling), the current call (during sampling), or the call
        whose timestep matches each entry of ``timesteps``, as in diffusers; ``sigma`` is that call's level
        (``init_noise_sigma`` at call 0 after the analytical first step).
        """
        check_timestep_type("timesteps", timesteps)
        sigma = torch.tensor(self._noise_stds_for(torch.as_tensor(timesteps)), dtype=torch.float64)
        return self._noised(original_samples, noise, sigma)
