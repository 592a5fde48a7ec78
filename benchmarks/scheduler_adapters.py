"""How each scheduler under test is configured, and how an exact denoiser is dressed up as the model it expects.

Every scheduler is driven by the standard diffusers loop::

    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(state, t)
        state = scheduler.step(model(model_input, t), t, state).prev_sample

and the "model" is built from the exact ``D(x; sigma)`` of :class:`benchmarks.gaussian_mixture.GaussianMixture`
in the form the scheduler expects:

- ``"sigma"`` (``EDMHeunScheduler``, ``prediction_type="sample"``): the model gets ``x`` and ``t = sigma`` and
  returns ``D(x; sigma)``.
- ``"edm_preconditioned"`` (diffusers' ``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): these apply
  EDM's preconditioning themselves; the model gets ``c_in(sigma) x`` and ``t = c_noise = log(sigma) / 4`` and
  must return the raw network output ``F = (D - c_skip x) / c_out`` (their ``"epsilon"`` convention).
- ``"vp_discrete"`` (``EDMHeunDiscreteScheduler`` and diffusers' discrete VP schedulers): a VP model wrapper.
  It gets ``x_vp = x / sqrt(sigma^2 + 1)`` and a training timestep t, looks sigma up in the training table
  (Stable Diffusion's ``scaled_linear`` table, float64), and returns ``eps = (x - D(x; sigma)) / sigma``.
  At fractional t the table is interpolated with the scheduler's own convention (linear in sigma for
  diffusers' ``linspace`` spacing, linear in log-sigma for ``EDMHeunDiscreteScheduler`` and diffusers' Karras
  sigmas), so the benchmark measures the ODE solver; any remaining difference between the sigma the model
  denoises at and the sigma the scheduler assumes (diffusers' DPM-Solver and UniPC round Karras timesteps to
  integers) is reported as ``sigma_mismatch``, since a real network would see exactly the same.

The loop state is in sigma space (``x = y + sigma n``) for every scheduler except DPM-Solver and UniPC, whose
state is the VP sample ``x / sqrt(sigma^2 + 1)``. At sigma = 0 the two coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusers_edm import EDMHeunDiscreteScheduler, EDMHeunScheduler
from diffusers_edm.noise_schedules import betas_for_schedule, sigmas_from_betas

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]

# Stable Diffusion's training table, given to every discrete-VP scheduler so that all of them share one range.
SD_TABLE_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
SD_TABLE_SIGMAS: np.ndarray = sigmas_from_betas(
    betas_for_schedule("scaled_linear", 1000, SD_TABLE_CONFIG["beta_start"], SD_TABLE_CONFIG["beta_end"])
)
EDM_SIGMA_DATA = 0.5  # diffusers' EDM schedulers' default, used in their preconditioning


@dataclass(frozen=True)
class SamplerCase:
    """One scheduler configuration under test.

    Attributes:
        name: label in tables and plots.
        group: the sigma range it is compared on (one plot panel per group).
        make: builds a fresh scheduler.
        drive: how the exact denoiser is presented to it (``"sigma"``, ``"edm_preconditioned"``, ``"vp_discrete"``).
        calls_per_step: 2 for Heun-type schedulers whose N steps cost 2N - 1 model calls, else 1.
        state_space: ``"sigma"`` or ``"vp"`` (see the module docstring).
        table_interpolation: for ``"vp_discrete"``: ``"linear"`` or ``"log"`` interpolation of the table in t.
        step_kwargs: extra keyword arguments of ``step`` (e.g. a generator).
    """

    name: str
    group: str
    make: Callable[[], Any]
    drive: str
    calls_per_step: int = 1
    state_space: str = "sigma"
    table_interpolation: str = "linear"
    step_kwargs: dict[str, Any] = field(default_factory=dict)

    def steps_for_nfe(self, nfe: int) -> int:
        """Number of steps N whose model-call count is the largest achievable one <= ``nfe`` (Heun: 2N - 1)."""
        return max(1, (nfe + 1) // 2) if self.calls_per_step == 2 else max(1, nfe)


EDM_RANGE = "EDM sigma range [0.002, 80]"
SD_RANGE = f"SD training table [{SD_TABLE_SIGMAS[0]:.4f}, {SD_TABLE_SIGMAS[-1]:.2f}]"


def accuracy_cases() -> list[SamplerCase]:
    """The schedulers of the sampler-accuracy benchmark (issue #6 part 1), each at its defaults on its own range."""
    cases = [
        SamplerCase(
            f"EDMHeunScheduler ({disc})",
            EDM_RANGE,
            lambda disc=disc: EDMHeunScheduler(discretization=disc),
            drive="sigma",
            calls_per_step=2,
        )
        for disc in ("edm", "vp", "ve", "iddpm")
    ]
    cases += [
        SamplerCase("EDMEulerScheduler", EDM_RANGE, lambda: EDMEulerScheduler(), drive="edm_preconditioned"),
        SamplerCase(
            "EDMDPMSolverMultistepScheduler", EDM_RANGE, lambda: EDMDPMSolverMultistepScheduler(), drive="edm_preconditioned"
        ),
        SamplerCase(
            "EDMHeunDiscreteScheduler",
            SD_RANGE,
            lambda: EDMHeunDiscreteScheduler(**SD_TABLE_CONFIG),
            drive="vp_discrete",
            calls_per_step=2,
            table_interpolation="log",
        ),
        SamplerCase(
            "HeunDiscreteScheduler",
            SD_RANGE,
            lambda: HeunDiscreteScheduler(**SD_TABLE_CONFIG),
            drive="vp_discrete",
            calls_per_step=2,
        ),
        SamplerCase(
            "HeunDiscreteScheduler (karras)",
            SD_RANGE,
            lambda: HeunDiscreteScheduler(**SD_TABLE_CONFIG, use_karras_sigmas=True),
            drive="vp_discrete",
            calls_per_step=2,
            table_interpolation="log",
        ),
        SamplerCase("EulerDiscreteScheduler", SD_RANGE, lambda: EulerDiscreteScheduler(**SD_TABLE_CONFIG), drive="vp_discrete"),
        SamplerCase(
            "DPMSolverMultistepScheduler",
            SD_RANGE,
            lambda: DPMSolverMultistepScheduler(**SD_TABLE_CONFIG),
            drive="vp_discrete",
            state_space="vp",
        ),
        SamplerCase(
            "DPMSolverMultistepScheduler (karras)",
            SD_RANGE,
            lambda: DPMSolverMultistepScheduler(**SD_TABLE_CONFIG, use_karras_sigmas=True),
            drive="vp_discrete",
            state_space="vp",
            table_interpolation="log",
        ),
        SamplerCase(
            "UniPCMultistepScheduler", SD_RANGE, lambda: UniPCMultistepScheduler(**SD_TABLE_CONFIG), drive="vp_discrete", state_space="vp"
        ),
    ]
    return cases


# ------------------------------------------------------------------------------------------------ models
def table_sigma(timestep: float, interpolation: str, table: np.ndarray = SD_TABLE_SIGMAS) -> float:
    """The training-table sigma at a (possibly fractional) timestep, interpolated linearly in sigma or in log-sigma."""
    positions = np.arange(len(table), dtype=np.float64)
    if interpolation == "log":
        return float(np.exp(np.interp(timestep, positions, np.log(table))))
    return float(np.interp(timestep, positions, table))


def exact_model(case: SamplerCase, denoise: Denoiser) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]:
    """The model the scheduler of ``case`` expects, built from ``denoise``; returns (output, sigma it denoised at)."""
    if case.drive == "sigma":

        def model(model_input: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, float]:
            sigma = float(timestep)
            return denoise(model_input, sigma), sigma

    elif case.drive == "edm_preconditioned":

        def model(model_input: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, float]:
            sigma = math.exp(4.0 * float(timestep))  # t = c_noise = log(sigma) / 4
            total = sigma**2 + EDM_SIGMA_DATA**2
            x = model_input.to(torch.float64) * math.sqrt(total)  # undo c_in = 1 / sqrt(sigma^2 + sd^2)
            c_skip, c_out = EDM_SIGMA_DATA**2 / total, sigma * EDM_SIGMA_DATA / math.sqrt(total)
            raw = (denoise(x, sigma) - c_skip * x) / c_out
            return raw.to(model_input.dtype), sigma

    elif case.drive == "vp_discrete":

        def model(model_input: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, float]:
            sigma = table_sigma(float(timestep), case.table_interpolation)
            x = model_input.to(torch.float64) * math.sqrt(sigma**2 + 1.0)  # the VP input is x / sqrt(sigma^2 + 1)
            eps = (x - denoise(x, sigma)) / sigma
            return eps.to(model_input.dtype), sigma

    else:
        raise ValueError(f"Unknown drive {case.drive!r}.")
    return model


def scheduler_call_sigmas(scheduler: Any) -> list[float]:
    """The sigma the scheduler assumes at each model call, in call order."""
    if isinstance(scheduler, (EDMHeunScheduler, EDMHeunDiscreteScheduler)):
        return scheduler.evaluation_sigmas.tolist()
    # diffusers: call i is evaluated at sigmas[i] (Heun's sigmas are interleaved to match its timesteps).
    return scheduler.sigmas[: len(scheduler.timesteps)].double().tolist()


@dataclass
class SamplerRun:
    """Result of one sampling run: the final samples (float64) and what it cost."""

    final: torch.Tensor
    nfe: int
    sigma_start: float
    sigma_mismatch: float  # max |sigma_model / sigma_scheduler - 1| over the calls


def start_sigma(case: SamplerCase, num_steps: int) -> float:
    """The noise level the scheduler's first step starts from (its largest sigma), as float64."""
    scheduler = case.make()
    scheduler.set_timesteps(num_steps)
    return float(scheduler.sigmas[0])


def run_sampler(
    case: SamplerCase,
    num_steps: int,
    denoise: Denoiser,
    x_start: torch.Tensor,
    sigma_start: float,
    device: str | torch.device = "cpu",
) -> SamplerRun:
    """Sample with the scheduler of ``case`` from ``x_start`` (a sigma-space sample at ``sigma_start``) to sigma = 0.

    ``sigma_start`` must be the scheduler's own first sigma (see :func:`start_sigma`), so that the run and the
    reference ODE solution start from the same point of the same trajectory.
    """
    scheduler = case.make()
    scheduler.set_timesteps(num_steps, device=device)
    own_start = float(scheduler.sigmas[0])
    if not math.isclose(own_start, sigma_start, rel_tol=1e-6):
        raise ValueError(f"{case.name}: starts at sigma {own_start}, the reference at {sigma_start}.")
    model = exact_model(case, denoise)
    state = x_start.to(device=device, dtype=torch.float64)
    if case.state_space == "vp":
        state = state / math.sqrt(sigma_start**2 + 1.0)
    expected_sigmas = scheduler_call_sigmas(scheduler)
    mismatch = 0.0
    for call, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(state, t)
        output, sigma = model(model_input, t)
        mismatch = max(mismatch, abs(sigma / expected_sigmas[call] - 1.0))
        state = scheduler.step(output, t, state, **case.step_kwargs).prev_sample
    return SamplerRun(final=state.to(torch.float64), nfe=len(scheduler.timesteps), sigma_start=sigma_start, sigma_mismatch=mismatch)
