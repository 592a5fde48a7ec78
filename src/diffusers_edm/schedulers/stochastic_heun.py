"""EDM's Algorithm 2 (stochastic Heun with churn) laid out for the diffusers sampling loop.

A diffusers pipeline calls ``scale_model_input -> model -> step`` once per model evaluation. Algorithm 2 of
Karras et al. 2022 evaluates the model at the churned point ``(x_hat_i, sigma_hat_i)`` and, for Heun, once more
at ``(x_next, sigma_{i+1})``. Because the churn of step i+1 depends only on ``sigma_{i+1}``, every ``sigma_hat``
is known when the schedule is set, and the churn noise of step i+1 is added at the end of step i. The model
calls are therefore, for N steps::

    sigma_hat_0, sigma_1, sigma_hat_1, sigma_2, ..., sigma_{N-1}, sigma_hat_{N-1}     (Heun: 2N - 1 calls)
    sigma_hat_0, sigma_hat_1, ..., sigma_hat_{N-1}                                     (Euler: N calls)

and call k is the Euler ("predictor") call of step ``k // order`` when ``k % order == 0``, else its Heun
correction. Everything numeric about a run is an :class:`Algorithm2Plan` of Python floats computed in float64
when the schedule is set; ``step`` reads only those floats, so it never synchronises with the device. How the
model is called and read (its input, its timestep, ``D`` from its output) is the scheduler's
:class:`~diffusers_edm.schedulers.model_call.ModelCall`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..noise_schedules import DISCRETIZATIONS, sigma_steps
from ..value_checks import check_integer, check_real
from .model_call import ModelCall
from .planned_schedule import (
    PlannedSchedulerMixin,
    check_device,
    check_float_tensor,
    check_generator,
    check_timestep_type,
)

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
    s_churn: object,
    s_tmin: object,
    s_tmax: object,
    s_noise: object,
    solver: object,
    discretization: object,
    rho: object,
    vp_epsilon_s: object = 1e-3,
    iddpm_M: object = 1000,
    iddpm_C_1: object = 0.001,
    iddpm_C_2: object = 0.008,
) -> None:
    """Raise a ``ValueError`` naming the value and what is allowed for settings Algorithm 2 does not define."""
    check_real("s_churn", s_churn, minimum=0.0)
    check_real("s_noise", s_noise, minimum=0.0)
    s_tmin = check_real("s_tmin", s_tmin, minimum=0.0)
    check_real("s_tmax", s_tmax, minimum=s_tmin, allow_infinity=True)
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; expected one of {SOLVERS}.")
    validate_discretization_config(discretization, rho, vp_epsilon_s, iddpm_M, iddpm_C_1, iddpm_C_2)


def validate_discretization_config(
    discretization: object,
    rho: object,
    vp_epsilon_s: object = 1e-3,
    iddpm_M: object = 1000,
    iddpm_C_1: object = 0.001,
    iddpm_C_2: object = 0.008,
) -> None:
    """Raise a ``ValueError`` naming the value and what is allowed for the settings of a time discretization
    (:func:`~diffusers_edm.noise_schedules.sigma_steps`)."""
    if not isinstance(discretization, str) or discretization not in DISCRETIZATIONS:
        raise ValueError(f"Unknown discretization {discretization!r}; expected one of {DISCRETIZATIONS}.")
    check_real("rho", rho, minimum=0.0, exclusive_minimum=True)
    check_real("vp_epsilon_s", vp_epsilon_s, minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
    check_integer("iddpm_M", iddpm_M, minimum=1)
    check_real("iddpm_C_1", iddpm_C_1, minimum=0.0, exclusive_minimum=True)
    check_real("iddpm_C_2", iddpm_C_2, minimum=0.0)


@dataclass(frozen=True)
class Algorithm2Plan:
    """The noise levels of an N-step Algorithm 2 run (Karras et al. 2022), fixed when the schedule is set.

    Attributes:
        sigmas: ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0``.
        sigmas_hat: ``sigma_hat_i = sigma_i (1 + gamma_i)``, ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where
            ``S_tmin <= sigma_i <= S_tmax``, else 0 (capped at the model's largest level, rounded by ``round_sigma``).
        churn_stds: the churn of step i, ``x_hat_i = x_i + churn_stds[i] n``, is
            ``S_noise sqrt(sigma_hat_i^2 - sigma_i^2)``.
        start_stds: the standard deviation of ``x_hat_i - y`` when ``x_i = y + sigma_i n_i``:
            ``sqrt(sigma_i^2 + churn_stds[i]^2)`` (``sigma_hat_i`` only when ``S_noise = 1``). A run that starts at
            step i (``init_noise_sigma``, image-to-image) draws ``x_hat_i`` with this standard deviation.
        call_sigmas: the noise level of every model call, in order.
        order: 2 (Heun) or 1 (Euler).
    """

    sigmas: tuple[float, ...]
    sigmas_hat: tuple[float, ...]
    churn_stds: tuple[float, ...]
    start_stds: tuple[float, ...]
    call_sigmas: tuple[float, ...]
    order: int

    @property
    def num_steps(self) -> int:
        """N, the number of steps."""
        return len(self.sigmas_hat)

    @classmethod
    def build(
        cls,
        grid: np.ndarray,
        *,
        s_churn: float,
        s_tmin: float,
        s_tmax: float,
        s_noise: float,
        order: int,
        max_sigma: float = math.inf,
        round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Algorithm2Plan:
        """The plan for noise levels ``grid`` (``sigma_0 > ... > sigma_{N-1} > 0``, float64)."""
        num_steps = len(grid)
        gamma_max = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
        sigmas = (*np.asarray(grid, dtype=np.float64).tolist(), 0.0)
        sigmas_hat, churn_stds, start_stds = [], [], []
        for sigma in sigmas[:-1]:
            gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
            # capped at the model's largest level, but never below sigma_i (which may exceed that cap by an ulp)
            sigma_hat = max(min(sigma * (1.0 + gamma), max_sigma), sigma)
            if round_sigma is not None and gamma > 0:
                sigma_hat = float(apply_round_sigma(round_sigma, np.array([sigma_hat]))[0])
            # sqrt((sigma_hat - sigma)(sigma_hat + sigma)) = sqrt(sigma_hat^2 - sigma^2) without overflowing the squares
            churn_std = s_noise * math.sqrt((sigma_hat - sigma) * (sigma_hat + sigma)) if sigma_hat > sigma else 0.0
            start_std = math.hypot(sigma, churn_std)  # not finite exactly when churn_std is not
            if not (math.isfinite(sigma_hat) and math.isfinite(start_std)):
                raise ValueError(
                    f"The churn settings give non-finite noise levels for this schedule (sigma={sigma:g}, "
                    f"s_churn={s_churn:g}, s_noise={s_noise:g}); use smaller noise levels or a smaller s_noise."
                )
            sigmas_hat.append(sigma_hat)
            churn_stds.append(churn_std)
            start_stds.append(start_std)
        call_sigmas = []
        for i in range(num_steps):
            call_sigmas.append(sigmas_hat[i])
            if order == 2 and sigmas[i + 1] > 0:
                call_sigmas.append(sigmas[i + 1])
        return cls(sigmas, tuple(sigmas_hat), tuple(churn_stds), tuple(start_stds), tuple(call_sigmas), order)

    def noise_std_of_call(self, call: int) -> float:
        """The standard deviation of the noise in the input of model call ``call`` (for ``add_noise``): the start
        std of its step at an Euler call, the call's own level at a Heun correction."""
        step, is_correction = divmod(call, self.order)
        return self.call_sigmas[call] if is_correction else self.start_stds[step]


def schedule_grid(
    model_call: ModelCall,
    config: Any,
    num_inference_steps: int | None,
    sigmas: Sequence[float] | np.ndarray | torch.Tensor | None,
    round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> np.ndarray:
    """The noise levels ``sigma_0 > ... > sigma_{N-1} > 0`` (float64) of a ``set_timesteps`` call: the given ``sigmas``
    (checked by ``model_call``), or ``N = num_inference_steps`` levels of ``config.discretization`` over the config's
    range or ``[sigma_min, sigma_max]``; then ``round_sigma`` where given. ``config`` holds ``discretization``, ``rho``,
    ``vp_epsilon_s`` and ``iddpm_M`` / ``iddpm_C_1`` / ``iddpm_C_2``."""
    if (num_inference_steps is None) == (sigmas is None):
        raise ValueError("Pass exactly one of `num_inference_steps` or `sigmas` to set_timesteps.")
    if sigmas is not None:
        grid = model_call.check_sigmas(sigmas)
    else:
        num_steps = check_integer("num_inference_steps", num_inference_steps, minimum=1)
        low, high = model_call.sigma_range(sigma_min, sigma_max)
        grid = sigma_steps(
            config.discretization,
            num_steps,
            low,
            high,
            rho=config.rho,
            epsilon_s=config.vp_epsilon_s,
            iddpm_M=config.iddpm_M,
            iddpm_C_1=config.iddpm_C_1,
            iddpm_C_2=config.iddpm_C_2,
        )
    if round_sigma is not None:
        grid = apply_round_sigma(round_sigma, grid)
    return grid


def check_model_output(model_output: torch.Tensor, sample: torch.Tensor) -> None:
    """A ``ValueError`` unless ``model_output`` has the sample's shape; a learned-variance output (2C channels: mean
    and variance, Nichol & Dhariwal 2021) is named as such."""
    check_float_tensor("model_output", model_output)
    check_float_tensor("sample", sample)
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


def noise_level_tensor(timesteps: float | torch.Tensor) -> torch.Tensor:
    """``add_noise``'s ``timesteps`` of a sigma-native scheduler (noise levels) as float64, or a ``ValueError`` naming
    them unless every one is finite and >= 0 (a look at the values: once per image-to-image run)."""
    check_timestep_type("timesteps", timesteps)
    sigma = torch.as_tensor(timesteps, dtype=torch.float64)
    if torch.any(sigma < 0) or not torch.all(torch.isfinite(sigma)):
        raise ValueError(f"timesteps (noise levels) must be finite and >= 0, got {sigma.tolist()}.")
    return sigma


def add_sigma_noise(original_samples: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x = y + sigma n`` with one sigma per sample (or one for all); ``ValueError`` naming the argument for tensors
    of other types, dtypes or shapes."""
    check_float_tensor("original_samples", original_samples)
    check_float_tensor("noise", noise)
    if noise.shape != original_samples.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} differs from original_samples shape {tuple(original_samples.shape)}."
        )
    if sigma.numel() not in (1, original_samples.shape[0]):
        raise ValueError(
            f"timesteps must hold one noise level or one per sample ({original_samples.shape[0]}), "
            f"got {sigma.numel()}."
        )
    sigma = sigma.to(device=original_samples.device, dtype=original_samples.dtype).flatten()
    sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
    return original_samples + noise * sigma


class StochasticHeunMixin(PlannedSchedulerMixin):
    """Algorithm 2 shared by :class:`EDMHeunScheduler` and :class:`EDMHeunDiscreteScheduler`.

    A subclass is a ``SchedulerMixin, ConfigMixin`` whose config holds ``s_churn``, ``s_tmin``, ``s_tmax``,
    ``s_noise``, ``solver``, ``discretization``, ``rho`` and the discretization constants, and whose ``__init__`` sets
    ``self.model_call`` (a :class:`~diffusers_edm.schedulers.model_call.ModelCall`) and calls ``_reset_schedule()``.
    """

    model_call: ModelCall
    num_inference_steps: int | None = None
    solver_choices = SOLVERS

    def _reset_schedule(self) -> None:
        self.num_inference_steps = None
        self.timesteps: torch.Tensor | None = None
        self._plan: Algorithm2Plan | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        # x_hat + h d / 2 of the step whose Heun correction comes next: the scheduler's own tensor, never the model's
        # output (a model may return one buffer it overwrites at every call: CUDA graphs, torch.compile).
        self._heun_base: torch.Tensor | None = None

    # ------------------------------------------------------------------ properties (diffusers conventions)
    @property
    def order(self) -> int:
        """2 for Heun (two model calls per step, diffusers' convention for second-order schedulers), 1 for Euler."""
        return 2 if self.config.solver == "heun" else 1

    @property
    def sigmas(self) -> torch.Tensor | None:
        """``sigma_0, ..., sigma_{N-1}, 0`` (float64, CPU)."""
        return None if self._plan is None else torch.tensor(self._plan.sigmas, dtype=torch.float64)

    @property
    def sigmas_hat(self) -> torch.Tensor | None:
        """``sigma_hat_0, ..., sigma_hat_{N-1}``, the churned levels (float64, CPU)."""
        return None if self._plan is None else torch.tensor(self._plan.sigmas_hat, dtype=torch.float64)

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: that of ``x_hat_0``, the input of the first model call.

        Algorithm 2 starts at ``x_0 = sigma_0 n_0`` and, when step 0 is churned, evaluates the model at
        ``x_hat_0 = x_0 + S_noise sqrt(sigma_hat_0^2 - sigma_0^2) n``, whose distribution is
        ``N(0, sigma_0^2 + S_noise^2 (sigma_hat_0^2 - sigma_0^2))``: the initial noise is drawn there directly (it
        is ``sigma_hat_0`` for ``S_noise = 1``). Without a schedule this is the largest level of the configured range.
        """
        if self._plan is not None:
            return self._plan.start_stds[0]
        return self.model_call.sigma_range()[1]

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at model call ``begin_index`` of ``timesteps`` (call after ``set_timesteps``).

        For Heun the index must be even: a step can only start at its Euler call, which is how diffusers'
        image-to-image pipelines compute it (``t_start * scheduler.order``).
        """
        begin_index = self._checked_begin_index(begin_index)
        if begin_index % self.order != 0:
            raise ValueError(
                f"begin_index must be a multiple of order={self.order} (the first call of a step), got {begin_index}."
            )
        self._begin_index = begin_index

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
            device: where ``timesteps`` live (the plan stays on the host in float64).
            sigmas: noise levels ``sigma_0 > ... > sigma_{N-1} > 0`` to use instead; the final ``sigma_N = 0`` is
                appended (a given final 0 is taken as that one).
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
        device = check_device(device)
        grid = schedule_grid(self.model_call, self.config, num_inference_steps, sigmas, round_sigma, sigma_min, sigma_max)
        self._use_plan(self._plan_for(grid, round_sigma), device)

    def _plan_for(
        self, grid: np.ndarray, round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> Algorithm2Plan:
        config = self.config
        return Algorithm2Plan.build(
            grid,
            s_churn=float(config.s_churn),
            s_tmin=float(config.s_tmin),
            s_tmax=float(config.s_tmax),
            s_noise=float(config.s_noise),
            order=self.order,
            max_sigma=self.model_call.max_sigma,
            round_sigma=round_sigma,
        )

    def _use_plan(self, plan: Algorithm2Plan, device: str | torch.device | None = None) -> None:
        self._reset_schedule()
        self._plan = plan
        self.num_inference_steps = plan.num_steps
        self.timesteps = self.model_call.timesteps_for(plan.call_sigmas, device)

    # ------------------------------------------------------------------ stepping
    def index_for_timestep(self, timestep: float | torch.Tensor, first_call_of_step: bool = True) -> int:
        """The index in ``timesteps`` of the first model call (of a step, by default) whose timestep is ``timestep``.

        Without churn, ``sigma_hat_i = sigma_i`` and the value appears twice (the Heun correction of step
        i - 1 and the Euler call of step i); the Euler call is the one a run can start from.
        """
        matches, value = self._calls_at(timestep)
        starts = [m for m in matches if m % self.order == 0] or ([] if first_call_of_step else matches)
        if not starts:
            kind = "the first model call of any step" if first_call_of_step else "a model call"
            raise ValueError(
                f"timestep {float(value):.6g} is not {kind} of this schedule "
                f"(timesteps: {[round(float(t), 6) for t in self.timesteps[:: self.order]]})."
            )
        return starts[0]

    def _check_step_input(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if self._plan is None:
            raise ValueError(f"{type(self).__name__} has no schedule yet: call `set_timesteps` before `step`.")
        check_model_output(model_output, sample)

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
        check_generator(generator, sample.shape[0])
        call = self._current_call(timestep)
        plan = self._plan
        i, is_correction = divmod(call, plan.order)

        # Half precision keeps its dtype for the model, the sampler arithmetic runs in at least float32.
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        x = sample if sample.dtype == compute_dtype else sample.to(compute_dtype)
        if model_output.dtype != compute_dtype:
            model_output = model_output.to(compute_dtype)
        d, denoised = self.model_call.derivative(model_output, x, plan.call_sigmas[call])
        sigma_next = plan.sigmas[i + 1]
        h = sigma_next - plan.sigmas_hat[i]

        if not is_correction:
            x_next = torch.add(x, d, alpha=h)  # x_hat + (sigma_{i+1} - sigma_hat) d
            if plan.order == 2 and sigma_next > 0:  # Heun: the model is evaluated at (x_next, sigma_{i+1}) next
                self._heun_base = torch.add(x, d, alpha=0.5 * h)  # x_hat + h d / 2, a new tensor
                return self._output(x_next, denoised, sample.dtype, return_dict)
        else:
            if self._heun_base is None:
                raise ValueError(
                    f"Model call {call} is the Heun correction of step {i}, but its Euler call was not stepped; "
                    "a run must start at an even index (see set_begin_index)."
                )
            x_next = torch.add(self._heun_base, d, alpha=0.5 * h)  # x_hat + h (d + d') / 2
            self._heun_base = None

        if i + 1 < plan.num_steps and plan.churn_stds[i + 1] > 0:  # x_hat_{i+1} = x_{i+1} + churn
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            x_next.add_(noise.to(compute_dtype), alpha=plan.churn_stds[i + 1])
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
    def _noise_stds_for(self, timesteps: torch.Tensor) -> list[float]:
        """Noise standard deviations for ``add_noise``, with diffusers' rule for which call: the begin call before
        sampling starts, the current call during sampling, else the call whose timestep matches each entry. At the
        Euler call of a churned step this is the step's start std (see :class:`Algorithm2Plan`)."""
        if self._plan is None:
            raise ValueError("add_noise needs a schedule: call `set_timesteps` first.")
        count = timesteps.reshape(-1).shape[0]
        if self._step_index is not None:
            return [self._plan.noise_std_of_call(self._step_index)] * count
        if self._begin_index is not None:
            return [self._plan.noise_std_of_call(self._begin_index)] * count
        calls = [self.index_for_timestep(t, first_call_of_step=False) for t in timesteps.reshape(-1)]
        return [self._plan.noise_std_of_call(call) for call in calls]

    _noised = staticmethod(add_sigma_noise)


def apply_round_sigma(round_sigma: Callable[[torch.Tensor], torch.Tensor], sigmas: np.ndarray) -> np.ndarray:
    """``round_sigma`` applied to float64 noise levels; a ``ValueError`` unless it keeps them positive and finite."""
    rounded = round_sigma(torch.as_tensor(sigmas, dtype=torch.float64))
    rounded = torch.as_tensor(rounded).detach().double().cpu().numpy().reshape(-1)
    if rounded.shape != sigmas.shape or np.any(~np.isfinite(rounded)) or np.any(rounded <= 0):
        raise ValueError(
            f"round_sigma must map positive noise levels to positive noise levels, got {rounded.tolist()}."
        )
    return rounded
