"""How each scheduler under test is configured, and how an exact denoiser is dressed up as the model it expects.

Every scheduler is driven by the standard diffusers loop::

    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(state, t)
        state = scheduler.step(model(model_input, t), t, state).prev_sample

and the "model" is built from the exact ``D(x; sigma)`` of :class:`benchmarks.gaussian_mixture.GaussianMixture`
in the form the scheduler expects:

- ``"sigma"`` (the package's ``EDMHeunScheduler`` / ``EDMMultistepScheduler``, ``prediction_type="sample"``, a
  sigma-native model): the model gets ``x`` and ``t = sigma`` and returns ``D(x; sigma)``.
- ``"edm_preconditioned"`` (diffusers' ``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): these apply
  EDM's preconditioning themselves; the model gets ``c_in(sigma) x`` and ``t = c_noise = log(sigma) / 4`` and
  must return the raw network output ``F = (D - c_skip x) / c_out`` (their ``"epsilon"`` convention).
- ``"vp_discrete"`` (``EDMHeunDiscreteScheduler``, ``EDMMultistepDiscreteScheduler`` and diffusers' discrete VP
  schedulers): a VP model wrapper. It gets ``x_vp = x / sqrt(sigma^2 + 1)`` and a training timestep t, looks
  sigma up in the training table (Stable Diffusion's ``scaled_linear`` table, float64), and returns
  ``eps = (x - D(x; sigma)) / sigma``. At an integer t that is the table entry. At a fractional t the table is
  interpolated with the scheduler's own convention (``table_interpolation``): linearly in sigma for diffusers'
  ``linspace`` timesteps, linearly in log-sigma for the package's discrete schedulers and for diffusers' sigma
  options (Karras, exponential, beta: their ``sigma_to_t``), and ``"scheduler"`` (the sigma the scheduler itself
  assumes for that call) for ``KDPM2DiscreteScheduler``, which mixes both conventions within one run. So the
  benchmark measures the ODE solver; any remaining difference between the sigma the model denoises at and the
  sigma the scheduler assumes (diffusers' DPM-Solver, UniPC, DEIS round their timesteps to integers) is reported
  as ``sigma_mismatch``, since a real network would see exactly the same.

The loop state is in sigma space (``x = y + sigma n``) for the Euler-type schedulers and the package's, and the VP
sample ``x / sqrt(sigma^2 + 1)`` for diffusers' DPM-Solver, UniPC, DEIS, SA-Solver, DDIM and PNDM. At sigma = 0 the
two coincide. The package's multistep schedulers with ``analytical_first_step`` start one (model-free) step later:
their first state is ``x_1 = (init_noise_sigma / sigma_0) x_0``.

Two families of configurations are compared, each on the sigma range its models have:

- :data:`EDM_RANGE`: sigma-native models on EDM's [0.002, 80] (diffusers' ``EDMEulerScheduler`` and
  ``EDMDPMSolverMultistepScheduler``; the package's ``EDMHeunScheduler`` and ``EDMMultistepScheduler``);
- :data:`SD_RANGE`: eps-prediction models on Stable Diffusion's training table (every diffusers scheduler that
  takes such a model and can start at the table's top; the package's ``*DiscreteScheduler``).

Not included (they cannot run on either family): diffusers' ``IPNDMScheduler`` (a fixed cosine schedule of its own
that starts at alpha = 0), ``CosineDPMSolverMultistepScheduler`` (an SDE solver that needs ``torchsde``), the
ancestral / SDE / distilled-model schedulers (stochastic or for other models), the flow-matching schedulers (another
model kind), DDIM / PNDM with ``leading`` spacing (they start below the table's top, an easier problem) and DDIM with
``linspace`` spacing (its step targets ``t - 1000 // N``, not the next timestep).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)

import diffusers_edm
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

EDM_RANGE = "EDM sigma range [0.002, 80], D outputs"
SD_RANGE = f"SD training table [{SD_TABLE_SIGMAS[0]:.4f}, {SD_TABLE_SIGMAS[-1]:.2f}], eps outputs"
FAMILIES = (EDM_RANGE, SD_RANGE)
# Where each family's trajectories start: the "best configuration" of a family is chosen among the runs that start
# there (a grid that starts lower, e.g. the iDDPM table's top level 71.3 within EDM's range, solves an easier problem).
FAMILY_START = {EDM_RANGE: 80.0, SD_RANGE: float(SD_TABLE_SIGMAS[-1])}
FAMILY_LABEL = {EDM_RANGE: "EDM range", SD_RANGE: "SD table"}

# The package's multistep solvers and the orders benchmarked for each.
PACKAGE_SOLVERS: tuple[tuple[str, int], ...] = (
    ("ipndm", 3), ("ipndm", 4), ("ipndm_v", 3), ("ipndm_v", 4), ("dpmpp", 2), ("dpmpp", 3), ("unipc", 2), ("unipc", 3)
)
PACKAGE_GRIDS: tuple[str, ...] = ("edm", "logsnr", "time_uniform")

# diffusers' sigma options of its discrete schedulers (timestep_spacing or use_*_sigmas); how a fractional timestep
# maps to sigma under each (sigma options go through sigma_to_t, interpolating log-sigma).
SIGMA_OPTIONS: dict[str, dict[str, Any]] = {
    "linspace": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "lu": {"use_lu_lambdas": True},
}
SIGMA_INTERPOLATION = {"linspace": "linear", "trailing": "linear", "karras": "log", "exponential": "log", "beta": "log", "lu": "log"}


@dataclass(frozen=True)
class SamplerCase:
    """One scheduler configuration under test.

    Attributes:
        name: label in tables and plots (class and options).
        group: the family it is compared in (:data:`EDM_RANGE` or :data:`SD_RANGE`).
        make: builds a fresh scheduler.
        drive: how the exact denoiser is presented to it (``"sigma"``, ``"edm_preconditioned"``, ``"vp_discrete"``).
        calls_per_step: 2 for Heun-type schedulers whose N steps cost 2N - 1 model calls, else 1.
        extra_calls: model calls beyond ``calls_per_step`` per step (PNDM's PLMS warm-up repeats one timestep).
        state_space: ``"sigma"`` or ``"vp"`` (see the module docstring).
        table_interpolation: for ``"vp_discrete"``: ``"linear"``, ``"log"`` or ``"scheduler"``.
        step_kwargs: extra keyword arguments of ``step`` (e.g. a generator, LMS's order).
        provider: ``"package"`` or ``"diffusers"``.
        scheduler: the scheduler class's name, plus the solver for the package's multistep schedulers: one
            "family of configurations" (one line of the plot, the best of its configurations at each budget).
        options: the configuration's settings that differ between cases (recorded, and the winning one reported).
        starts_after_first_step: the package's multistep scheduler with ``analytical_first_step``: the run starts at
            ``x_1 = (init_noise_sigma / sigma_0) x_0`` instead of ``x_0`` (see the module docstring).
        candidate: whether it competes for "best configuration" (the package's ``solver="auto"`` row is shown, but
            is one of the explicit configurations).
    """

    name: str
    group: str
    make: Callable[[], Any]
    drive: str
    calls_per_step: int = 1
    extra_calls: int = 0
    state_space: str = "sigma"
    table_interpolation: str = "linear"
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    provider: str = "diffusers"
    scheduler: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    starts_after_first_step: bool = False
    candidate: bool = True

    def nfe_for_steps(self, num_steps: int) -> int:
        """Model calls of a run with ``num_steps`` steps (as ``len(scheduler.timesteps)``)."""
        return (2 * num_steps - 1 if self.calls_per_step == 2 else num_steps) + self.extra_calls

    def steps_for_nfe(self, nfe: int) -> int:
        """Number of steps N whose model-call count is the largest achievable one <= ``nfe`` (Heun: 2N - 1)."""
        budget = nfe - self.extra_calls
        return max(1, (budget + 1) // 2) if self.calls_per_step == 2 else max(1, budget)


def _label(cls_name: str, options: dict[str, Any]) -> str:
    return f"{cls_name}(" + ", ".join(f"{key}={value}" for key, value in options.items()) + ")"


def _case(cls: type, group: str, options: dict[str, Any], kwargs: dict[str, Any], **case_fields: Any) -> SamplerCase:
    """A case whose scheduler is ``cls(**kwargs)``, labelled by ``options``."""
    family = case_fields.pop("scheduler", cls.__name__)
    return SamplerCase(
        _label(cls.__name__, options), group, lambda: cls(**kwargs), scheduler=family, options=dict(options), **case_fields
    )


# ------------------------------------------------------------------------------------------------ diffusers
def diffusers_edm_cases() -> list[SamplerCase]:
    """diffusers' schedulers for sigma-native models (EDM preconditioning), on EDM's range, with their options."""
    cases = [
        _case(EDMEulerScheduler, EDM_RANGE, {"sigmas": s}, {"sigma_schedule": s}, drive="edm_preconditioned")
        for s in ("karras", "exponential")
    ]
    for order, solver_type, schedule, lof, final in itertools.product(
        (2, 3), ("midpoint", "heun"), ("karras", "exponential"), (True, False), ("zero", "sigma_min")
    ):
        if order == 3 and solver_type == "heun":
            continue  # solver_type only changes the second-order update
        options = {"order": order, "solver_type": solver_type, "sigmas": schedule, "lower_order_final": lof, "final_sigma": final}
        kwargs = {
            "solver_order": order, "solver_type": solver_type, "sigma_schedule": schedule,
            "lower_order_final": lof, "final_sigmas_type": final,
        }
        cases.append(_case(EDMDPMSolverMultistepScheduler, EDM_RANGE, options, kwargs, drive="edm_preconditioned"))
    return cases


def _sd_case(cls: type, sigmas: str, options: dict[str, Any], kwargs: dict[str, Any], **case_fields: Any) -> SamplerCase:
    case_fields.setdefault("table_interpolation", SIGMA_INTERPOLATION[sigmas])
    kwargs = {**SD_TABLE_CONFIG, **SIGMA_OPTIONS[sigmas], **kwargs}
    return _case(cls, SD_RANGE, {"sigmas": sigmas, **options}, kwargs, drive="vp_discrete", **case_fields)


def diffusers_sd_cases() -> list[SamplerCase]:
    """Every diffusers scheduler for eps-prediction VP models that runs deterministically from the table's top,
    with its sigma options, orders and final-step options."""
    vp = {"state_space": "vp"}
    cases: list[SamplerCase] = []
    for order, sigmas, lof, final in itertools.product(
        (2, 3), ("linspace", "trailing", "karras", "exponential", "beta", "lu"), (True, False), ("zero", "sigma_min")
    ):
        options = {"order": order, "lower_order_final": lof, "final_sigma": final}
        kwargs = {"solver_order": order, "lower_order_final": lof, "final_sigmas_type": final}
        cases.append(_sd_case(DPMSolverMultistepScheduler, sigmas, options, kwargs, **vp))
    for sigmas in ("linspace", "trailing", "karras", "exponential", "beta", "lu"):  # DPM-Solver++ 2M with Heun's correction
        options = {"order": 2, "solver_type": "heun"}
        cases.append(_sd_case(DPMSolverMultistepScheduler, sigmas, options, {"solver_order": 2, "solver_type": "heun"}, **vp))
    for variant, order, sigmas, final in itertools.product(
        ("bh1", "bh2"), (2, 3), ("linspace", "trailing", "karras", "exponential", "beta"), ("zero", "sigma_min")
    ):
        # Left out as broken in diffusers 0.42 (NaN, inf or a singular solve on every grid): bh1 with a final sigma of
        # 0 (its B(h) = h is infinite on the step to sigma = 0) and lower_order_final=False (an order > 1 step to 0).
        if variant == "bh1" and final == "zero":
            continue
        options = {"variant": variant, "order": order, "final_sigma": final}
        kwargs = {"solver_type": variant, "solver_order": order, "final_sigmas_type": final}
        cases.append(_sd_case(UniPCMultistepScheduler, sigmas, options, kwargs, **vp))
    for order, sigmas, lof in itertools.product((2, 3), ("linspace", "trailing", "karras", "exponential", "beta"), (True, False)):
        options = {"order": order, "lower_order_final": lof}
        cases.append(_sd_case(DEISMultistepScheduler, sigmas, options, {"solver_order": order, "lower_order_final": lof}, **vp))
    for order, sigmas, lof in itertools.product((2, 3), ("linspace", "karras", "exponential", "beta"), (False, True)):
        options = {"order": order, "lower_order_final": lof}
        kwargs = {"solver_order": order, "lower_order_final": lof}
        sigma_kwargs = {} if sigmas == "linspace" else SIGMA_OPTIONS[sigmas]  # no timestep_spacing option
        cases.append(
            _case(DPMSolverSinglestepScheduler, SD_RANGE, {"sigmas": sigmas, **options}, {**SD_TABLE_CONFIG, **sigma_kwargs, **kwargs},
                  drive="vp_discrete", table_interpolation=SIGMA_INTERPOLATION[sigmas], **vp)
        )
    for orders, sigmas in itertools.product(((2, 2), (3, 3)), ("linspace", "trailing", "karras", "exponential")):
        # SA-Solver with tau = 0 everywhere is its deterministic (ODE) variant.
        options = {"predictor_order": orders[0], "corrector_order": orders[1], "tau": 0}
        kwargs = {"predictor_order": orders[0], "corrector_order": orders[1], "tau_func": _zero_tau}
        cases.append(_sd_case(SASolverScheduler, sigmas, options, kwargs, **vp))
    # LMS integrates its coefficients numerically at every step (slow): its default order 4 on its main grids, and 3.
    for order, sigmas in ((4, "linspace"), (4, "karras"), (4, "exponential"), (3, "karras")):
        cases.append(_sd_case(LMSDiscreteScheduler, sigmas, {"order": order}, {}, step_kwargs={"order": order}))
    for sigmas in ("linspace", "trailing", "karras", "exponential", "beta"):
        cases.append(_sd_case(HeunDiscreteScheduler, sigmas, {}, {}, calls_per_step=2))
        cases.append(_sd_case(EulerDiscreteScheduler, sigmas, {}, {}))
        cases.append(_sd_case(KDPM2DiscreteScheduler, sigmas, {}, {}, calls_per_step=2, table_interpolation="scheduler"))
    cases.append(_sd_case(DDIMScheduler, "trailing", {}, {"set_alpha_to_one": True, "clip_sample": False}, **vp))
    plms = {"skip_prk_steps": True, "set_alpha_to_one": True}
    cases.append(_sd_case(PNDMScheduler, "trailing", {"variant": "PLMS"}, plms, extra_calls=1, **vp))
    return cases


def _zero_tau(t: Any) -> float:
    return 0.0


# ------------------------------------------------------------------------------------------------ the package
def package_cases() -> list[SamplerCase]:
    """The package's schedulers on both families: Heun on each grid, and the multistep solvers with every option.

    The multistep schedulers (issue 10) are included when the installed package has them.
    """
    # On EDM's range "time_uniform" is EDM's "vp" grid and "logsnr" its "ve" grid (geometric): each is listed once.
    grids = ("edm", "time_uniform", "logsnr", "iddpm") if _has_grid("logsnr") else ("edm", "vp", "ve", "iddpm")
    cases = [
        _case(EDMHeunScheduler, EDM_RANGE, {"grid": grid}, {"discretization": grid}, drive="sigma", calls_per_step=2, provider="package")
        for grid in grids
    ]
    cases += [
        _case(EDMHeunDiscreteScheduler, SD_RANGE, {"grid": grid}, {**SD_TABLE_CONFIG, "discretization": grid},
              drive="vp_discrete", calls_per_step=2, table_interpolation="log", provider="package")
        for grid in grids[:-1]
    ]
    multistep = getattr(diffusers_edm, "EDMMultistepScheduler", None)
    discrete = getattr(diffusers_edm, "EDMMultistepDiscreteScheduler", None)
    if multistep is None or discrete is None:
        return cases
    for cls, group, base, fields in (
        (multistep, EDM_RANGE, {}, {"drive": "sigma"}),
        (discrete, SD_RANGE, dict(SD_TABLE_CONFIG), {"drive": "vp_discrete", "table_interpolation": "log"}),
    ):
        for (solver, order), afs, grid, lof in itertools.product(PACKAGE_SOLVERS, (False, True), PACKAGE_GRIDS, (True, False)):
            options = {"solver": solver, "order": order, "afs": afs, "grid": grid, "lower_order_final": lof}
            kwargs = {
                **base, "solver": solver, "solver_order": order, "analytical_first_step": afs,
                "discretization": grid, "lower_order_final": lof,
            }
            cases.append(_case(cls, group, options, kwargs, provider="package", scheduler=f"{cls.__name__} {solver}",
                               starts_after_first_step=afs, **fields))
        cases.append(_case(cls, group, {"solver": "auto"}, base, provider="package", scheduler=f"{cls.__name__} auto",
                           starts_after_first_step=True, candidate=False, **fields))
    return cases


def _has_grid(grid: str) -> bool:
    from diffusers_edm.noise_schedules import DISCRETIZATIONS

    return grid in DISCRETIZATIONS


def accuracy_cases() -> list[SamplerCase]:
    """Every configuration of the sampler-accuracy benchmark: diffusers' and the package's, on both families."""
    return diffusers_edm_cases() + diffusers_sd_cases() + package_cases()


# ------------------------------------------------------------------------------------------------ models
def table_sigma(timestep: float, interpolation: str, table: np.ndarray = SD_TABLE_SIGMAS) -> float:
    """The training-table sigma at a (possibly fractional) timestep, interpolated linearly in sigma or in log-sigma."""
    positions = np.arange(len(table), dtype=np.float64)
    if interpolation == "log":
        return float(np.exp(np.interp(timestep, positions, np.log(table))))
    return float(np.interp(timestep, positions, table))


Model = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, float]]


def exact_model(case: SamplerCase, denoise: Denoiser) -> Model:
    """The model the scheduler of ``case`` expects, built from ``denoise``.

    It is called as ``model(model_input, timestep, assumed_sigma)`` (``assumed_sigma``: the sigma the scheduler
    assumes for this call, used only by ``table_interpolation="scheduler"`` at fractional timesteps) and returns
    (output, the sigma it denoised at).
    """
    if case.drive == "sigma":

        def model(model_input: torch.Tensor, timestep: torch.Tensor, assumed_sigma: float) -> tuple[torch.Tensor, float]:
            sigma = float(timestep)
            return denoise(model_input, sigma), sigma

    elif case.drive == "edm_preconditioned":

        def model(model_input: torch.Tensor, timestep: torch.Tensor, assumed_sigma: float) -> tuple[torch.Tensor, float]:
            sigma = math.exp(4.0 * float(timestep))  # t = c_noise = log(sigma) / 4
            total = sigma**2 + EDM_SIGMA_DATA**2
            x = model_input.to(torch.float64) * math.sqrt(total)  # undo c_in = 1 / sqrt(sigma^2 + sd^2)
            c_skip, c_out = EDM_SIGMA_DATA**2 / total, sigma * EDM_SIGMA_DATA / math.sqrt(total)
            raw = (denoise(x, sigma) - c_skip * x) / c_out
            return raw.to(model_input.dtype), sigma

    elif case.drive == "vp_discrete":

        def model(model_input: torch.Tensor, timestep: torch.Tensor, assumed_sigma: float) -> tuple[torch.Tensor, float]:
            t = float(timestep)
            if case.table_interpolation == "scheduler" and t != round(t):
                sigma = assumed_sigma
            else:
                sigma = table_sigma(t, "log" if case.table_interpolation == "scheduler" else case.table_interpolation)
            x = model_input.to(torch.float64) * math.sqrt(sigma**2 + 1.0)  # the VP input is x / sqrt(sigma^2 + 1)
            eps = (x - denoise(x, sigma)) / sigma
            return eps.to(model_input.dtype), sigma

    else:
        raise ValueError(f"Unknown drive {case.drive!r}.")
    return model


def scheduler_call_sigmas(scheduler: Any) -> list[float]:
    """The sigma the scheduler assumes at each model call, in call order."""
    calls = len(scheduler.timesteps)
    if hasattr(scheduler, "evaluation_sigmas"):  # the package's schedulers
        return scheduler.evaluation_sigmas.tolist()[:calls]
    if isinstance(scheduler, KDPM2DiscreteScheduler):
        # Odd calls are at the step's log-midpoint sigma, even calls at its start (both lists interleaved).
        return [float(scheduler.sigmas_interpol[i] if i % 2 else scheduler.sigmas[i]) for i in range(calls)]
    if not hasattr(scheduler, "sigmas"):  # DDIM, PNDM: the training table at the (integer) timestep
        return [float(SD_TABLE_SIGMAS[int(t)]) for t in scheduler.timesteps]
    # diffusers: call i is evaluated at sigmas[i] (Heun's sigmas are interleaved to match its timesteps).
    return scheduler.sigmas[:calls].double().tolist()


def first_sigma(scheduler: Any) -> float:
    """The scheduler's largest noise level (where its trajectory starts), float64."""
    if hasattr(scheduler, "sigmas"):
        return float(scheduler.sigmas[0])
    return float(SD_TABLE_SIGMAS[int(scheduler.timesteps[0])])


@dataclass
class SamplerRun:
    """Result of one sampling run: the final samples (float64) and what it cost."""

    final: torch.Tensor
    nfe: int
    sigma_start: float
    sigma_mismatch: float  # max |sigma_model / sigma_scheduler - 1| over the calls


def prepared_scheduler(case: SamplerCase, num_steps: int, prototype: Any = None, device: str | torch.device = "cpu") -> Any:
    """A fresh scheduler of ``case`` (a copy of ``prototype`` when given: some constructors are slow) with its
    timesteps set for ``num_steps`` steps."""
    scheduler = copy.deepcopy(prototype) if prototype is not None else case.make()
    scheduler.set_timesteps(num_steps, device=device)
    return scheduler


def start_sigma(case: SamplerCase, num_steps: int) -> float:
    """The noise level the trajectory starts from (the scheduler's largest sigma), as float64."""
    return first_sigma(prepared_scheduler(case, num_steps))


def run_sampler(
    case: SamplerCase,
    scheduler: Any,
    denoise: Denoiser,
    clean: torch.Tensor,
    noise: torch.Tensor,
    device: str | torch.device = "cpu",
) -> SamplerRun:
    """Sample with ``scheduler`` (of ``case``, timesteps set) from ``x_0 = clean + sigma_0 noise`` to sigma = 0.

    ``sigma_0`` is the scheduler's own first level (:func:`first_sigma`); the reference ODE solution must start from
    the same ``x_0`` at the same ``sigma_0`` (``SamplerRun.sigma_start``).
    """
    sigma_start = first_sigma(scheduler)
    model = exact_model(case, denoise)
    state = (clean + sigma_start * noise).to(device=device, dtype=torch.float64)
    if case.starts_after_first_step:
        state = state * (float(scheduler.init_noise_sigma) / sigma_start)  # x_1 = a x_0 (1 without the AFS)
    if case.state_space == "vp":
        state = state / math.sqrt(sigma_start**2 + 1.0)
    expected_sigmas = scheduler_call_sigmas(scheduler)
    mismatch = 0.0
    for call, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(state, t)
        output, sigma = model(model_input, t, expected_sigmas[call])
        mismatch = max(mismatch, abs(sigma / expected_sigmas[call] - 1.0))
        state = scheduler.step(output, t, state, **case.step_kwargs).prev_sample
    return SamplerRun(final=state.to(torch.float64), nfe=len(scheduler.timesteps), sigma_start=sigma_start, sigma_mismatch=mismatch)


def cases_in(cases: Iterable[SamplerCase], group: str, provider: str | None = None) -> list[SamplerCase]:
    """The cases of one family (and provider)."""
    return [c for c in cases if c.group == group and (provider is None or c.provider == provider)]
