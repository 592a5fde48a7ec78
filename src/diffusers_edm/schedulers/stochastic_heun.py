"""EDM's Algorithm 2 (stochastic Heun with churn) laid out for the diffusers sampling loop.

A diffusers pipeline calls ``scale_model_input -> model -> step`` once per model evaluation. Algorithm 2
(REFERENCE.md section 1) evaluates the model at the churned point ``(x_hat_i, sigma_hat_i)`` and, for Heun,
once more at ``(x_next, sigma_{i+1})``. Because the churn of step i+1 depends only on ``sigma_{i+1}``, every
``sigma_hat`` is known when the schedule is set, and the churn noise of step i+1 is added at the end of
step i. The model calls are therefore, for N steps::

    sigma_hat_0, sigma_1, sigma_hat_1, sigma_2, ..., sigma_{N-1}, sigma_hat_{N-1}     (Heun: 2N - 1 calls)
    sigma_hat_0, sigma_hat_1, ..., sigma_hat_{N-1}                                     (Euler: N calls)

and call k is the Euler ("predictor") call of step ``k // order`` when ``k % order == 0``, else its Heun
correction. The sampler arithmetic uses Python floats computed in float64 when the schedule is set, so
``step`` never synchronises with the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..noise_schedules import DISCRETIZATIONS, check_sigma_steps, sigma_steps

SOLVERS = ("heun", "euler")


@dataclass
class EDMHeunSchedulerOutput(BaseOutput):
    """Output of a stochastic Heun ``step``.

    Args:
        prev_sample: the sample to give the model at the next call (or the final sample after the last call).
        pred_original_sample: the denoised estimate ``D(x; sigma)`` of this call.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def validate_algorithm2_config(
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, solver: str, discretization: str, rho: float
) -> None:
    """Raise ``ValueError`` for churn / solver / discretization settings that Algorithm 2 does not define."""
    if not s_churn >= 0:
        raise ValueError(f"s_churn must be >= 0, got {s_churn}.")
    if not s_noise >= 0:
        raise ValueError(f"s_noise must be >= 0, got {s_noise}.")
    if not s_tmin >= 0:
        raise ValueError(f"s_tmin must be >= 0, got {s_tmin}.")
    if not s_tmax >= s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin}, s_tmax={s_tmax}.")
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; expected one of {SOLVERS}.")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"Unknown discretization {discretization!r}; expected one of {DISCRETIZATIONS}.")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}.")


class StochasticHeunMixin:
    """Algorithm 2 state machine shared by :class:`EDMHeunScheduler` and :class:`EDMHeunDiscreteScheduler`.

    A subclass is a ``SchedulerMixin, ConfigMixin`` whose config holds ``s_churn``, ``s_tmin``, ``s_tmax``,
    ``s_noise``, ``solver``, ``discretization``, ``rho`` and the discretization constants, and which defines:

    - ``_sigma_range()``: the default (sigma_min, sigma_max) of the time discretization;
    - ``_max_model_sigma()``: the largest noise level the model can be evaluated at (caps churned levels);
    - ``_check_custom_sigmas(values)``: extra checks on user-given noise levels;
    - ``_timesteps_for(call_sigmas)``: what the model receives as ``timestep`` for each call;
    - ``_derivative(model_output, sample, sigma)``: ``(d, D)`` with ``d = (x - D(x; sigma)) / sigma`` from the model
      output (computed directly where the output is eps, which is the ODE's derivative itself).
    """

    num_inference_steps: int | None = None

    def _reset_schedule(self) -> None:
        self.num_inference_steps = None
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.sigmas_hat: torch.Tensor | None = None
        self.evaluation_sigmas: torch.Tensor | None = None
        self._sigma_list: list[float] = []
        self._sigma_hat_list: list[float] = []
        self._churn_std_list: list[float] = []
        self._call_sigma_list: list[float] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._x_hat: torch.Tensor | None = None
        self._d_hat: torch.Tensor | None = None

    # ------------------------------------------------------------------ properties (diffusers conventions)
    @property
    def order(self) -> int:
        """2 for Heun (two model calls per step, diffusers' convention for second-order schedulers), 1 for Euler."""
        return 2 if self.config.solver == "heun" else 1

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: the sigma of the first model call (``sigma_hat_0``).

        When step 0 is churned, ``x_hat_0 = sigma_0 n_0 + sqrt(sigma_hat_0^2 - sigma_0^2) n`` has the same
        distribution as ``sigma_hat_0 n``, so the initial noise is drawn at that level directly. Before
        ``set_timesteps`` this is the largest noise level of the time discretization.
        """
        if self._call_sigma_list:
            return self._call_sigma_list[0]
        return self._sigma_range()[1]

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in ``timesteps`` (None until the first ``step`` / ``scale_model_input``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first model call, set by :meth:`set_begin_index` (image-to-image starts part way)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at model call ``begin_index`` of ``timesteps`` (call after ``set_timesteps``).

        For Heun the index must be even: a step can only start at its Euler call, which is how diffusers'
        image-to-image pipelines compute it (``t_start * scheduler.order``).
        """
        if self.timesteps is None:
            raise ValueError("set_begin_index needs a schedule: call `set_timesteps` first.")
        if not isinstance(begin_index, (int, np.integer)) or not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"begin_index must be an integer in [0, {len(self.timesteps) - 1}], got {begin_index!r}.")
        if begin_index % self.order != 0:
            raise ValueError(
                f"begin_index must be a multiple of order={self.order} (the first call of a step), got {begin_index}."
            )
        self._begin_index = int(begin_index)

    # ------------------------------------------------------------------ schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> None:
        """Set the noise levels of an N-step Algorithm 2 run.

        Args:
            num_inference_steps: N, the number of steps; the levels come from ``config.discretization``.
            device: where ``timesteps`` live (the sigma bookkeeping stays on the CPU in float64).
            sigmas: noise levels ``sigma_0 > ... > sigma_{N-1} > 0`` to use instead (a final 0 is appended).
            round_sigma: optional map from noise levels to the ones a model supports (EDM's ``net.round_sigma``,
                e.g. iDDPM's discrete table); applied to the grid and to every ``sigma_hat``, as in EDM's sampler.
            sigma_min, sigma_max: the range of this schedule's discretization instead of the config's (a pipeline
                passes the config's range clamped to its model's, ``max(sigma_min, net.sigma_min)`` and
                ``min(sigma_max, net.sigma_max)``, as EDM's sampler does); not used with ``sigmas``.

        With ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` if ``s_tmin <= sigma_i <= s_tmax`` else 0:
        ``sigma_hat_i = sigma_i (1 + gamma_i)`` and the churn noise of step i has standard deviation
        ``sqrt(sigma_hat_i^2 - sigma_i^2) * s_noise``. A model trained on a finite table of noise levels
        (``EDMHeunDiscreteScheduler``) cannot be evaluated above its largest one, so there ``sigma_hat_i`` is
        capped at that level (a smaller effective gamma), as EDM's ``round_sigma`` does for iDDPM models.
        """
        config = self.config
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("Pass exactly one of `num_inference_steps` or `sigmas` to set_timesteps.")
        if sigmas is not None:
            grid = check_sigma_steps(sigmas)
            self._check_custom_sigmas(grid)
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
                raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
            default_min, default_max = self._sigma_range()
            sigma_min = default_min if sigma_min is None else float(sigma_min)
            sigma_max = default_max if sigma_max is None else float(sigma_max)
            grid = sigma_steps(
                config.discretization,
                int(num_inference_steps),
                sigma_min,
                sigma_max,
                rho=config.rho,
                epsilon_s=config.vp_epsilon_s,
                iddpm_M=config.iddpm_M,
                iddpm_C_1=config.iddpm_C_1,
                iddpm_C_2=config.iddpm_C_2,
            )
        if round_sigma is not None:
            grid = _apply_round_sigma(round_sigma, grid)
        num_steps = len(grid)

        gamma_max = min(config.s_churn / num_steps, math.sqrt(2.0) - 1.0)
        sigma_list = [float(s) for s in grid] + [0.0]
        sigma_hat_list, churn_std_list = [], []
        for sigma in sigma_list[:-1]:
            gamma = gamma_max if config.s_tmin <= sigma <= config.s_tmax else 0.0
            sigma_hat = min(sigma * (1.0 + gamma), self._max_model_sigma())
            if round_sigma is not None and gamma > 0:
                sigma_hat = float(_apply_round_sigma(round_sigma, np.array([sigma_hat]))[0])
            sigma_hat_list.append(sigma_hat)
            churn_std_list.append(math.sqrt(sigma_hat**2 - sigma**2) * config.s_noise if sigma_hat > sigma else 0.0)

        call_sigma_list = []
        for i in range(num_steps):
            call_sigma_list.append(sigma_hat_list[i])
            if self.order == 2 and sigma_list[i + 1] > 0:
                call_sigma_list.append(sigma_list[i + 1])

        self._reset_schedule()
        self._heun = self.order == 2
        self.num_inference_steps = num_steps
        self._sigma_list, self._sigma_hat_list = sigma_list, sigma_hat_list
        self._churn_std_list, self._call_sigma_list = churn_std_list, call_sigma_list
        self.sigmas = torch.tensor(sigma_list, dtype=torch.float64)
        self.sigmas_hat = torch.tensor(sigma_hat_list, dtype=torch.float64)
        self.evaluation_sigmas = torch.tensor(call_sigma_list, dtype=torch.float64)
        self.timesteps = self._timesteps_for(self.evaluation_sigmas, device)

    # ------------------------------------------------------------------ stepping
    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """The index in ``timesteps`` of the first model call of a step whose timestep equals ``timestep``.

        Without churn, ``sigma_hat_i = sigma_i`` and the value appears twice (the Heun correction of step
        i - 1 and the Euler call of step i); the Euler call is the one a run can start from.
        """
        schedule = self.timesteps
        value = torch.as_tensor(timestep, device=schedule.device).to(schedule.dtype).reshape(-1)[:1]
        matches = torch.isclose(schedule, value, rtol=1e-6, atol=0.0).nonzero().flatten().tolist()
        starts = [m for m in matches if m % self.order == 0]
        if not starts:
            raise ValueError(
                f"timestep {float(value):.6g} is not the first model call of any step of this schedule "
                f"(timesteps: {[round(float(t), 6) for t in schedule[:: self.order]]})."
            )
        return starts[0]

    def _check_step_input(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if self.timesteps is None:
            raise ValueError(f"{type(self).__name__} has no schedule yet: call `set_timesteps` before `step`.")
        if model_output.shape == sample.shape:
            return
        if (
            model_output.ndim == sample.ndim >= 2
            and model_output.shape[1] == 2 * sample.shape[1]
            and model_output.shape[2:] == sample.shape[2:]
        ):
            raise ValueError(
                f"model_output has {model_output.shape[1]} channels for a {sample.shape[1]}-channel sample: this is a "
                "learned-variance output (mean and variance channels). This scheduler uses only the denoiser; pass "
                "model_output[:, :C] or use LearnedVarianceDDPMScheduler to use the learned variance."
            )
        raise ValueError(f"model_output shape {tuple(model_output.shape)} differs from sample shape {tuple(sample.shape)}.")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EDMHeunSchedulerOutput | tuple:
        """Advance Algorithm 2 by one model call.

        At the Euler call of step i (``sample`` is ``x_hat_i``, the model was evaluated at ``sigma_hat_i``):
        ``d = (x_hat - D) / sigma_hat`` and ``x_next = x_hat + (sigma_{i+1} - sigma_hat) d``. For Heun with
        ``sigma_{i+1} > 0`` the method returns ``x_next`` for the correction call; otherwise ``x_next`` is
        ``x_{i+1}``. At the correction call (``sample`` is ``x_next``, evaluated at ``sigma_{i+1}``):
        ``d' = (x_next - D) / sigma_{i+1}`` and ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2``.
        Once ``x_{i+1}`` is known, the churn of step i+1 is added:
        ``x_hat_{i+1} = x_{i+1} + sqrt(sigma_hat_{i+1}^2 - sigma_{i+1}^2) s_noise n`` (only if gamma_{i+1} > 0),
        with ``n = randn_tensor(sample.shape, generator, device, dtype)``, one draw per churned step.

        Returns ``prev_sample`` (the next call's input, or the final sample) and ``pred_original_sample`` (D).
        """
        self._check_step_input(model_output, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        call = self._step_index
        if call >= len(self._call_sigma_list):
            raise ValueError(
                f"All {len(self._call_sigma_list)} model calls of this schedule have been stepped; "
                "call `set_timesteps` to sample again."
            )
        step, is_correction = divmod(call, self.order)

        # Half precision keeps its dtype for the model, the sampler arithmetic runs in at least float32.
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        x = sample if sample.dtype == compute_dtype else sample.to(compute_dtype)
        if model_output.dtype != compute_dtype:
            model_output = model_output.to(compute_dtype)
        sigma = self._call_sigma_list[call]
        d, denoised = self._derivative(model_output, x, sigma)
        sigma_hat, sigma_next = self._sigma_hat_list[step], self._sigma_list[step + 1]
        h = sigma_next - sigma_hat

        if is_correction:
            if self._x_hat is None:
                raise ValueError(
                    f"Model call {call} is the Heun correction of step {step}, but its Euler call was not stepped; "
                    "a run must start at an even index (see set_begin_index)."
                )
            # x_{i+1} = x_hat + h (d + d') / 2
            x_next = torch.add(self._d_hat, d).mul_(0.5 * h).add_(self._x_hat)
            self._x_hat = self._d_hat = None
        else:
            x_next = torch.add(x, d, alpha=h)  # x_hat + h d
            if self._heun and sigma_next > 0:
                self._x_hat, self._d_hat = x, d
                return self._output(x_next, denoised, sample.dtype, return_dict)

        if step + 1 < self.num_inference_steps and self._churn_std_list[step + 1] > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            x_next.add_(noise.to(compute_dtype), alpha=self._churn_std_list[step + 1])
        return self._output(x_next, denoised, sample.dtype, return_dict)

    def _output(
        self, prev_sample: torch.Tensor, denoised: torch.Tensor, dtype: torch.dtype, return_dict: bool
    ) -> EDMHeunSchedulerOutput | tuple:
        self._step_index += 1
        if prev_sample.dtype != dtype:
            prev_sample, denoised = prev_sample.to(dtype), denoised.to(dtype)
        if not return_dict:
            return (prev_sample, denoised)
        return EDMHeunSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    # ------------------------------------------------------------------ image-to-image
    def _call_sigmas_for(self, timesteps: torch.Tensor) -> list[float]:
        """Noise levels for ``add_noise``, with diffusers' rule: the begin call before sampling starts, the
        current call during sampling, else the call whose timestep matches each entry."""
        if self.timesteps is None:
            raise ValueError("add_noise needs a schedule: call `set_timesteps` first.")
        count = timesteps.reshape(-1).shape[0]
        if self._step_index is not None:
            return [self._call_sigma_list[self._step_index]] * count
        if self._begin_index is not None:
            return [self._call_sigma_list[self._begin_index]] * count
        return [self._call_sigma_list[self.index_for_timestep(t)] for t in timesteps.reshape(-1)]

    @staticmethod
    def _noised(original_samples: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x = y + sigma n`` with one sigma per sample (or one for all)."""
        sigma = sigma.to(device=original_samples.device, dtype=original_samples.dtype).flatten()
        sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
        return original_samples + noise * sigma


def _apply_round_sigma(round_sigma: Callable[[torch.Tensor], torch.Tensor], sigmas: np.ndarray) -> np.ndarray:
    rounded = round_sigma(torch.as_tensor(sigmas, dtype=torch.float64))
    rounded = torch.as_tensor(rounded).detach().double().cpu().numpy().reshape(-1)
    if rounded.shape != sigmas.shape or np.any(~np.isfinite(rounded)) or np.any(rounded <= 0):
        raise ValueError(f"round_sigma must map positive noise levels to positive noise levels, got {rounded.tolist()}.")
    return rounded
