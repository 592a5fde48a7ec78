"""Multistep solvers of the probability-flow ODE in sigma space, laid out for the diffusers sampling loop.

The ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma`` (Karras et al. 2022, "EDM", eq. 1 and 3) on the sigma-space
sample ``x = y + sigma n``. A multistep solver calls the model once per step and combines the current denoiser output
with the last few ones. With ``D_i = D(x_i; sigma_i)``, ``d_i = (x_i - D_i) / sigma_i``, ``lambda = -ln sigma`` and,
for step i from ``s = sigma_i`` to ``t = sigma_{i+1}``, ``h = ln(s / t)``, every step of the three solvers is a
*linear* map of the sample and the stored history ``H`` (``d`` for iPNDM, ``D`` for DPM-Solver++ and UniPC):

    x_{i+1} = a_i x_i + sum_k w_{i,k} H_{i-k}

whose weights depend only on the noise levels. They are computed in float64 when the schedule is set (a
:class:`MultistepPlan`, one :class:`LinearUpdate` per step, built by :func:`ipndm_update`, :func:`dpmpp_update`,
:func:`unipc_predictor` and :func:`unipc_corrector`, each stating its formula), and ``step`` only combines tensors
with these Python floats: it never synchronises with the device.

- iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", the improved PNDM):
  Adams-Bashforth weights on ``d``, warm-started with lower orders. Its weights are those of equal steps, so on a
  non-uniform grid it is a second-order method whatever its order; ``"ipndm_v"`` takes the Adams-Bashforth weights
  of the actual steps (the integral of the polynomial through the last ``d`` over the step), order p for order p.
- DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order multistep form), data
  prediction, which in sigma space (alpha = 1) is an exponential integrator in ``D``.
- UniPC (Zhao et al. 2023, "UniPC", Algorithms 2-3, ``B(h) = e^h - 1``, "bh2"), data prediction: the predictor
  UniP-p, and the corrector UniC-p that re-uses the model call of the next step (one model call per step).

Analytical first step (AFS): at ``sigma_0 >> sigma_data`` the denoiser of zero-mean data with standard deviation
``sigma_data`` is ``D_0 = c_skip(sigma_0) x_0 = sigma_data^2 / (sigma_0^2 + sigma_data^2) x_0`` (EDM Table 1), so the
first step needs no model call; it is the solver's own first-order step, ``x_1 = a x_0`` for a number ``a``, so a run
starts at ``x_1`` directly (``init_noise_sigma = a sigma_0``) and enters ``D_0`` computed from ``x_0 = x_1 / a`` into
its history at the first call.

How the model is called and read is the scheduler's :class:`~diffusers_edm.schedulers.model_call.ModelCall`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..value_checks import check_integer, check_real
from .model_call import ModelCall
from .planned_schedule import PlannedSchedulerMixin, check_device
from .stochastic_heun import add_sigma_noise, check_model_output, schedule_grid

#: The solvers and the highest order each implements.
MAX_ORDERS: dict[str, int] = {"ipndm": 4, "ipndm_v": 4, "dpmpp": 3, "unipc": 3}
SOLVERS: tuple[str, ...] = tuple(MAX_ORDERS)
SOLVER_CHOICES: tuple[str, ...] = ("auto", *SOLVERS)


@dataclass(frozen=True)
class SolverChoice:
    """What a run solves with: the solver, its order, the analytical first step and ``lower_order_final``."""

    solver: str
    order: int
    analytical_first_step: bool
    lower_order_final: bool


#: ``solver="auto"`` for a sigma-native model over EDM's range: the first row whose ``max_calls`` is at least the
#: number of model calls (None: any budget). From benchmarks/sampler_accuracy.py (64-D Gaussian mixture, exact
#: denoiser, sigma 80 -> 0.002 on the "edm" grid): within 0.32-0.91 of diffusers' best RMS error at every budget
#: from 5 to 80 calls (benchmarks/README.md).
SIGMA_AUTO: tuple[tuple[int | None, SolverChoice], ...] = (
    (15, SolverChoice("ipndm", 3, True, False)),
    (25, SolverChoice("ipndm", 4, True, False)),
    (None, SolverChoice("unipc", 3, True, False)),
)
#: ``solver="auto"`` for a discrete VP model (Stable Diffusion's table, 14.6 -> 0.029, eps outputs, "edm" grid): the
#: same benchmark, within 0.83-1.00 of diffusers' best at every budget (at 35-80 calls "ipndm_v" is the linear
#: multistep method of diffusers' LMSDiscreteScheduler with Karras sigmas, the best there, to the digit).
DISCRETE_AUTO: tuple[tuple[int | None, SolverChoice], ...] = (
    (10, SolverChoice("ipndm", 3, False, False)),
    (25, SolverChoice("ipndm", 4, False, False)),
    (None, SolverChoice("ipndm_v", 4, False, False)),
)

#: ``lower_order_final``: runs of fewer steps than this lower the order of their last steps (diffusers' rule).
LOWER_ORDER_FINAL_BELOW = 15

#: iPNDM's Adams-Bashforth weights on ``d_i, d_{i-1}, ...`` by order.
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@dataclass
class EDMMultistepSchedulerOutput(BaseOutput):
    """Output of a multistep ``step``.

    Args:
        prev_sample: the sample to give the model at the next call (the final sample after the last call).
        pred_original_sample: the denoised estimate ``D(x; sigma)`` of this call.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------ settings
def resolve_solver(
    config, auto_rules: Sequence[tuple[int | None, SolverChoice]], num_calls: int
) -> SolverChoice:
    """The solver of a run of ``num_calls`` model calls: for ``solver="auto"`` the first of ``auto_rules`` whose
    ``max_calls`` is at least ``num_calls`` (it sets the order, the analytical first step and ``lower_order_final``
    too), else the config's solver with its ``solver_order``, ``analytical_first_step`` and ``lower_order_final``."""
    if config.solver == "auto":
        for max_calls, choice in auto_rules:
            if max_calls is None or num_calls <= max_calls:
                return choice
        raise AssertionError("an auto table must end with a row for any budget (max_calls None)")
    return SolverChoice(
        config.solver, int(config.solver_order), bool(config.analytical_first_step), bool(config.lower_order_final)
    )


def validate_multistep_config(
    solver: object,
    solver_order: object,
    lower_order_final: object,
    analytical_first_step: object,
    sigma_data: object,
) -> None:
    """Raise a ``ValueError`` naming the value and what is allowed for a setting the solvers do not define."""
    if not isinstance(solver, str) or solver not in SOLVER_CHOICES:
        raise ValueError(f"Unknown solver {solver!r}; expected one of {SOLVER_CHOICES}.")
    top = max(MAX_ORDERS.values()) if solver == "auto" else MAX_ORDERS[solver]
    check_integer(
        "solver_order", solver_order, minimum=1, maximum=top,
        allowed=f"an integer from 1 to {top} for solver={solver!r}",
    )
    for name, value in (("lower_order_final", lower_order_final), ("analytical_first_step", analytical_first_step)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    check_real("sigma_data", sigma_data, minimum=0.0, exclusive_minimum=True)


# ------------------------------------------------------------------------------------------------ the formulas
@dataclass(frozen=True)
class LinearUpdate:
    """``x_new = sample_weight * x + sum_k history_weights[k] * H[k]``, ``H[0]`` the newest entry."""

    sample_weight: float
    history_weights: tuple[float, ...]

    def apply(self, x: torch.Tensor, history: Sequence[torch.Tensor]) -> torch.Tensor:
        """The new tensor (``x`` and ``history`` are left as they are); only Python floats: no host sync."""
        out = torch.mul(history[0], self.history_weights[0])
        if self.sample_weight != 0.0:
            out.add_(x, alpha=self.sample_weight)
        for weight, entry in zip(self.history_weights[1:], history[1:]):
            out.add_(entry, alpha=weight)
        return out


def ipndm_update(sigmas: Sequence[float], i: int, order: int) -> LinearUpdate:
    """iPNDM step i (Zhang & Chen 2023), Adams-Bashforth on ``d`` with ``h = sigma_{i+1} - sigma_i``:

    ``x_{i+1} = x_i + h {1: d_i, 2: (3 d_i - d_{i-1}) / 2, 3: (23 d_i - 16 d_{i-1} + 5 d_{i-2}) / 12,
    4: (55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24}[order]``.
    """
    h = sigmas[i + 1] - sigmas[i]
    return LinearUpdate(1.0, tuple(h * c for c in ADAMS_BASHFORTH[order]))


def ipndm_v_update(sigmas: Sequence[float], i: int, order: int) -> LinearUpdate:
    """iPNDM with variable steps, step i: Adams-Bashforth for non-uniform steps in sigma,

    ``x_{i+1} = x_i + sum_k W_k d_{i-k}``, ``W_k = integral from sigma_i to sigma_{i+1} of l_k(sigma) dsigma``,

    with ``l_k`` the Lagrange basis polynomials through ``sigma_i, sigma_{i-1}, ..., sigma_{i-order+1}`` (the
    polynomial through the last ``order`` values of d, integrated over the step; Hairer, Norsett & Wanner, "Solving
    Ordinary Differential Equations I", III.5; the weights of diffusers' ``LMSDiscreteScheduler``). On equal steps
    these are iPNDM's constant weights. Computed in the step's own unit, ``tau = (sigma - sigma_i) / h``,
    ``h = sigma_{i+1} - sigma_i``: ``W_k = h w_k`` with ``sum_k w_k tau_k^m = 1 / (m + 1)`` for m < order.
    """
    h = sigmas[i + 1] - sigmas[i]
    nodes = np.array([(sigmas[i - k] - sigmas[i]) / h for k in range(order)])
    moments = 1.0 / np.arange(1, order + 1)
    weights = np.linalg.solve(np.vander(nodes, order, increasing=True).T, moments)
    return LinearUpdate(1.0, tuple((h * weights).tolist()))


def dpmpp_update(sigmas: Sequence[float], i: int, order: int) -> LinearUpdate:
    """DPM-Solver++ multistep step i in sigma space (Lu et al. 2022, Algorithm 2 and the third-order form),
    ``s = sigma_i``, ``t = sigma_{i+1}``, ``h = ln(s / t)``:

    - order 1 (DDIM): ``x_t = (t / s) x_s - expm1(-h) D_s``; the step to ``t = 0`` is ``x = D_s`` (h = inf);
    - order 2: ``r = ln(sigma_{i-1} / s) / h``, ``x_t = (t / s) x_s - expm1(-h) (D_s + (D_s - D_{i-1}) / (2 r))``;
    - order 3: ``r0 = ln(sigma_{i-1} / s) / h``, ``r1 = ln(sigma_{i-2} / sigma_{i-1}) / h``,
      ``D1_0 = (D_s - D_{i-1}) / r0``, ``D1_1 = (D_{i-1} - D_{i-2}) / r1``,
      ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)``,
      ``D2 = (D1_0 - D1_1) / (r0 + r1)``,
      ``x_t = (t / s) x_s - expm1(-h) D_s + (expm1(-h) / h + 1) D1 - ((expm1(-h) + h) / h^2 - 1/2) D2``.
    """
    s, t = sigmas[i], sigmas[i + 1]
    if t == 0.0:  # the plan takes this step with order 1
        return LinearUpdate(0.0, (1.0,))
    h = math.log(s / t)
    phi = math.expm1(-h)
    if order == 1:
        return LinearUpdate(t / s, (-phi,))
    r0 = math.log(sigmas[i - 1] / s) / h
    if order == 2:
        return LinearUpdate(t / s, (-phi * (1 + 1 / (2 * r0)), phi / (2 * r0)))
    r1 = math.log(sigmas[i - 2] / sigmas[i - 1]) / h
    # the differences as weights on (D_s, D_{i-1}, D_{i-2})
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    weights = -phi * np.array([1.0, 0.0, 0.0]) + (phi / h + 1) * d1 - ((phi + h) / h**2 - 0.5) * d2
    return LinearUpdate(t / s, tuple(weights.tolist()))


def _unipc_bh2(sigmas: Sequence[float], i: int, order: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """UniPC's numbers for step i with ``order`` (Zhao et al. 2023, data prediction, ``B(h) = e^h - 1`` read with
    ``hh = -h``): ``h_phi_1 = expm1(hh)``, ``B_h = expm1(hh)``, ``r_k = (lambda_{i-k} - lambda_i) / h`` for
    k = 1..order-1, ``b_j = h_phi_k j! / B_h`` (j = 1..order) by the recursion ``h_phi_k <- h_phi_k / hh - 1 / (j+1)!``
    from ``h_phi_1 / hh - 1``. Returns ``(h_phi_1, B_h, r, b)``.
    """
    s, t = sigmas[i], sigmas[i + 1]
    h = math.log(s / t)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    # lambda_{i-k} - lambda_i = ln(s / sigma_{i-k})
    r = np.array([math.log(s / sigmas[i - k]) / h for k in range(1, order)])
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for j in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, r, np.array(b)


def _unipc_rows(r: np.ndarray, order: int) -> np.ndarray:
    """``R_j = (r_1, ..., r_{order-1}, 1)^(j-1)``, j = 1..order."""
    nodes = np.append(r, 1.0)
    return np.stack([nodes ** (j - 1) for j in range(1, order + 1)])


def unipc_predictor(sigmas: Sequence[float], i: int, order: int) -> LinearUpdate:
    """UniP-p, step i (Zhao et al. 2023, Algorithm 2, bh2, data prediction), ``s = sigma_i``, ``t = sigma_{i+1}``:

    ``x_t = (t / s) x_i - h_phi_1 D_i - B_h sum_{k=1}^{p-1} rho_p[k] (D_{i-k} - D_i) / r_k`` with ``rho_p = (1/2)``
    for p = 2 and ``rho_p = solve(R[:-1, :-1], b[:-1])`` for p >= 3 (see :func:`_unipc_bh2`); the step to ``t = 0``
    is ``x = D_i`` (order 1, h = inf).
    """
    s, t = sigmas[i], sigmas[i + 1]
    if t == 0.0:  # the plan takes this step with order 1
        return LinearUpdate(0.0, (1.0,))
    h_phi_1, b_h, r, b = _unipc_bh2(sigmas, i, order)
    if order == 1:
        rho = np.zeros(0)
    elif order == 2:
        rho = np.array([0.5])
    else:
        rho = np.linalg.solve(_unipc_rows(r, order)[:-1, :-1], b[:-1])
    newest = -h_phi_1 + b_h * float(np.sum(rho / r))
    return LinearUpdate(t / s, (newest, *(-b_h * rho / r).tolist()))


def unipc_corrector(sigmas: Sequence[float], i: int, order: int) -> LinearUpdate:
    """UniC-p of step i (Zhao et al. 2023, Algorithm 3, bh2, data prediction), applied when ``D_{i+1}`` (the model at
    the predicted ``x_{i+1}``) arrives; ``order`` is p, that of step i's predictor, ``s = sigma_i``,
    ``t = sigma_{i+1}``:

    ``x_{i+1}^c = (t / s) x_i - h_phi_1 D_i - B_h (sum_{k=1}^{p-1} rho_c[k] (D_{i-k} - D_i) / r_k
    + rho_c[p] (D_{i+1} - D_i))`` with ``rho_c = (1/2)`` for p = 1, else ``solve(R, b)``.

    The weights are on ``(D_{i+1}, D_i, D_{i-1}, ...)``; the sample weight is that of ``x_i``.
    """
    s, t = sigmas[i], sigmas[i + 1]
    h_phi_1, b_h, r, b = _unipc_bh2(sigmas, i, order)
    rho = np.array([0.5]) if order == 1 else np.linalg.solve(_unipc_rows(r, order), b)
    rho_history, rho_new = rho[:-1], float(rho[-1])
    newest = -h_phi_1 + b_h * (float(np.sum(rho_history / r)) + rho_new)
    return LinearUpdate(t / s, (-b_h * rho_new, newest, *(-b_h * rho_history / r).tolist()))


#: The step of each solver, and what its history holds.
PREDICTORS: dict[str, Callable[[Sequence[float], int, int], LinearUpdate]] = {
    "ipndm": ipndm_update,
    "ipndm_v": ipndm_v_update,
    "dpmpp": dpmpp_update,
    "unipc": unipc_predictor,
}
HISTORY_OF: dict[str, str] = {"ipndm": "d", "ipndm_v": "d", "dpmpp": "D", "unipc": "D"}


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class AnalyticalFirstStep:
    """Step 0 without a model call: ``D_0 = c_skip(sigma_0) x_0`` and ``x_1 = scale x_0``; at the first call (sample
    ``x_1``) the history gets ``H_0 = history_weight x_1`` (``D_0`` or ``d_0`` in terms of ``x_1``) and UniPC's start
    sample ``x_0 = x_1 / scale``."""

    scale: float
    history_weight: float


@dataclass(frozen=True)
class MultistepPlan:
    """Every number of one run, fixed in float64 when the schedule is set (the weights for a run starting at
    ``begin_call``).

    Attributes:
        solver, order: the solver and its (highest) order.
        sigmas: ``sigma_0 > ... > sigma_{S-1} > sigma_S = 0``, the start of every step, then 0 (S steps).
        first_call_step: the step of model call 0 (1 with the analytical first step, which takes no call, else 0).
        begin_call: the model call the run starts at, with no history (image-to-image starts part way).
        orders: the order of each step (0 before the run's first step).
        predictors: each step's update of its start sample and the history (None before the run's first step).
        correctors: UniPC's correction of each step's start sample ``x_i`` (the corrector of step i - 1, with
            ``D_i`` first in its history), None where there is none.
        first_step: the analytical first step, when the run starts with it.
    """

    solver: str
    order: int
    sigmas: tuple[float, ...]
    first_call_step: int
    begin_call: int
    orders: tuple[int, ...]
    predictors: tuple[LinearUpdate | None, ...]
    correctors: tuple[LinearUpdate | None, ...]
    first_step: AnalyticalFirstStep | None

    @property
    def history(self) -> str:
        """What the history holds: ``"d"`` (iPNDM) or ``"D"`` (DPM-Solver++, UniPC)."""
        return HISTORY_OF[self.solver]

    @property
    def num_steps(self) -> int:
        """S, the number of steps (model calls, plus one with the analytical first step)."""
        return len(self.sigmas) - 1

    @property
    def call_sigmas(self) -> tuple[float, ...]:
        """The noise level of every model call, in order."""
        return self.sigmas[self.first_call_step : -1]

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the first call's input: ``sigma_0``, or ``scale sigma_0`` after the analytical
        first step (``x_1 = scale x_0``, ``x_0 = sigma_0 n``)."""
        scale = 1.0 if self.first_step is None else self.first_step.scale
        return scale * self.sigmas[0]

    def noise_std_of_call(self, call: int) -> float:
        """The noise standard deviation of the input of model call ``call`` (for ``add_noise``)."""
        return self.init_noise_sigma if call == 0 else self.call_sigmas[call]

    @classmethod
    def build(
        cls,
        levels: np.ndarray,
        *,
        solver: str,
        order: int,
        lower_order_final: bool,
        analytical_first_step: bool,
        sigma_data: float,
        begin_call: int = 0,
    ) -> MultistepPlan:
        """The plan for noise levels ``levels`` (``sigma_0 > ... > 0``, float64; with the analytical first step
        ``sigma_0`` takes no model call).

        Step i (i counts every step, the analytical one included; S steps) has order ``o_i = min(order, i - i_0 + 1)``
        counted from the run's first step ``i_0``; with ``lower_order_final`` and S < 15 also ``o_i <= S - i``
        (diffusers' rule); DPM-Solver++ and UniPC take the step to sigma = 0 with order 1 (it is ``x = D``).
        """
        levels = [float(v) for v in np.asarray(levels, dtype=np.float64).reshape(-1)]
        if not (all(math.isfinite(v) and v > 0 for v in levels) and all(a > b for a, b in zip(levels, levels[1:]))):
            raise ValueError(
                f"A multistep run needs finite, positive, strictly decreasing noise levels, got {levels} (round_sigma "
                "may have merged neighbouring levels: use fewer steps)."
            )
        if analytical_first_step and len(levels) < 2:
            raise ValueError(
                f"analytical_first_step needs at least 2 noise levels (sigma_0 without a model call, then the calls), "
                f"got {len(levels)}: {levels}."
            )
        sigmas = (*levels, 0.0)
        num_steps = len(levels)
        first_call_step = 1 if analytical_first_step else 0
        first_step_of_run = begin_call + first_call_step if begin_call > 0 else 0
        orders = []
        for i in range(num_steps):
            if i < first_step_of_run:
                orders.append(0)
                continue
            o = min(order, i - first_step_of_run + 1)
            if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
                o = min(o, num_steps - i)
            if HISTORY_OF[solver] == "D" and sigmas[i + 1] == 0.0:  # the exponential integrators: h = inf there
                o = 1
            orders.append(o)
        predictor = PREDICTORS[solver]
        predictors = tuple(predictor(sigmas, i, o) if o > 0 else None for i, o in enumerate(orders))
        correctors = tuple(
            unipc_corrector(sigmas, i - 1, orders[i - 1]) if solver == "unipc" and i > first_step_of_run else None
            for i in range(num_steps)
        )
        first_step = None
        if analytical_first_step and begin_call == 0:
            c_skip = sigma_data**2 / (sigmas[0] ** 2 + sigma_data**2)
            # H_0 = weight x_0: D_0 = c_skip x_0, or d_0 = (x_0 - D_0) / sigma_0
            weight = c_skip if HISTORY_OF[solver] == "D" else (1.0 - c_skip) / sigmas[0]
            step0 = predictors[0]  # order 1: x_1 = (a + w H_0) in x_0
            scale = step0.sample_weight + step0.history_weights[0] * weight
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(
                    f"The analytical first step from sigma_0={sigmas[0]:g} to sigma_1={sigmas[1]:g} with "
                    f"sigma_data={sigma_data:g} gives x_1 = {scale:g} x_0; it needs sigma_0 >> sigma_data."
                )
            first_step = AnalyticalFirstStep(scale, weight / scale)
        return cls(
            solver, order, sigmas, first_call_step, begin_call, tuple(orders), predictors, correctors, first_step
        )


# ------------------------------------------------------------------------------------------------ the scheduler
class MultistepMixin(PlannedSchedulerMixin):
    """The multistep loop shared by :class:`EDMMultistepScheduler` and :class:`EDMMultistepDiscreteScheduler`.

    A subclass is a ``SchedulerMixin, ConfigMixin`` whose config holds ``solver``, ``solver_order``,
    ``lower_order_final``, ``analytical_first_step``, ``sigma_data`` and the discretization settings
    (``discretization``, ``rho``, ``vp_epsilon_s``, ``iddpm_*``), and whose ``__init__`` sets ``self.model_call``
    and calls ``_reset_schedule()``.
    """

    model_call: ModelCall
    #: the table of ``solver="auto"`` for this kind of model (:data:`SIGMA_AUTO`, :data:`DISCRETE_AUTO`)
    auto_rules: tuple[tuple[int | None, SolverChoice], ...]
    num_inference_steps: int | None = None
    order = 1  # one model call per step
    solver_choices = SOLVER_CHOICES

    def _reset_schedule(self) -> None:
        self.num_inference_steps = None
        self.timesteps: torch.Tensor | None = None
        self._plan: MultistepPlan | None = None
        self._levels: np.ndarray | None = None
        self._choice: SolverChoice | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._reset_history()

    def _reset_history(self) -> None:
        self._history: list[torch.Tensor] = []
        self._start_sample: torch.Tensor | None = None

    # ------------------------------------------------------------------ properties (diffusers conventions)
    @property
    def sigmas(self) -> torch.Tensor | None:
        """``sigma_0, ..., sigma_{S-1}, 0``: every step's start level, then 0 (float64, CPU). With the analytical
        first step ``sigma_0`` takes no model call."""
        return None if self._plan is None else torch.tensor(self._plan.sigmas, dtype=torch.float64)

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: ``sigma_0``, or ``a sigma_0`` after the analytical first step
        ``x_1 = a x_0``. Without a schedule, the largest level of the configured range."""
        if self._plan is not None:
            return self._plan.init_noise_sigma
        return self.model_call.sigma_range()[1]

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at model call ``begin_index`` of ``timesteps`` (call after ``set_timesteps``). The run has no
        history there: it warms up with orders 1, 2, ... from that call (without the analytical first step)."""
        self._begin_index = self._checked_begin_index(begin_index)
        self._plan_from(self._begin_index)

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
        """Set the noise levels and the float64 weights of a run of ``num_inference_steps`` model calls.

        Args:
            num_inference_steps: M, the number of model calls (``len(timesteps) == M``); the levels come from
                ``config.discretization``: M of them, or M + 1 with ``analytical_first_step`` (whose first level
                takes no call).
            device: where ``timesteps`` live (the plan stays on the host in float64).
            sigmas: noise levels ``sigma_0 > ... > sigma_{S-1} > 0`` to use instead (one model call each, except
                ``sigma_0`` with the analytical first step); a final 0 is allowed, ``sigma_S = 0`` is appended.
            round_sigma: optional map from noise levels to the ones a model supports (EDM's ``net.round_sigma``),
                applied to the levels.
            sigma_min, sigma_max: the range of the discretization instead of the config's (a pipeline passes the
                config's range clamped to its model's); not used with ``sigmas``.
        """
        config = self.config
        device = check_device(device)
        if num_inference_steps is not None:
            num_inference_steps = check_integer("num_inference_steps", num_inference_steps, minimum=1)
            choice = resolve_solver(config, self.auto_rules, num_inference_steps)
            num_levels = num_inference_steps + choice.analytical_first_step
            levels = schedule_grid(self.model_call, config, num_levels, None, round_sigma, sigma_min, sigma_max)
        else:  # "auto" chooses by the number of levels given
            levels = schedule_grid(self.model_call, config, None, sigmas, round_sigma, sigma_min, sigma_max)
            choice = resolve_solver(config, self.auto_rules, len(levels))
            if config.solver == "auto" and len(levels) < 2:  # one level leaves no call after an analytical step
                choice = dataclasses.replace(choice, analytical_first_step=False)
        afs = choice.analytical_first_step
        num_calls = len(levels) - afs
        if num_calls < 1:
            raise ValueError(
                f"analytical_first_step needs at least 2 noise levels (sigma_0 without a model call, then the calls), "
                f"got {len(levels)}: {levels.tolist()}."
            )
        self._reset_schedule()
        self._levels, self._choice = levels, choice
        self._plan_from(0)
        self.num_inference_steps = num_calls
        self.timesteps = self.model_call.timesteps_for(self._plan.call_sigmas, device)

    def _plan_from(self, begin_call: int) -> None:
        """Build the plan of the current levels for a run that starts at ``begin_call``."""
        if self._plan is not None and self._plan.begin_call == begin_call:
            return
        choice = self._choice
        self._plan = MultistepPlan.build(
            self._levels,
            solver=choice.solver,
            order=choice.order,
            lower_order_final=choice.lower_order_final,
            analytical_first_step=choice.analytical_first_step,
            sigma_data=float(self.config.sigma_data),
            begin_call=begin_call,
        )

    # ------------------------------------------------------------------ stepping
    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """The index in ``timesteps`` of the model call whose timestep is ``timestep`` (reads the value: a host sync;
        pipelines call :meth:`set_begin_index` instead)."""
        matches, value = self._calls_at(timestep)
        if not matches:
            raise ValueError(
                f"timestep {float(value):.6g} is not a model call of this schedule "
                f"(timesteps: {[round(float(t), 6) for t in self.timesteps]})."
            )
        return matches[0]

    def _started_at(self, call: int) -> None:
        self._plan_from(call)  # the run warms up from the call it starts at

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EDMMultistepSchedulerOutput | tuple:
        """Take step i of the plan with the model's output at ``x_i = sample`` (sigma_i).

        ``H_i`` (``d_i = (x_i - D_i) / sigma_i`` for iPNDM, ``D_i`` otherwise) joins the history; UniPC first corrects
        ``x_i`` with ``D_i`` (its corrector of step i - 1, from the stored ``x_{i-1}``); then
        ``x_{i+1} = a_i x_i + sum_k w_{i,k} H_{i-k}`` with the plan's float64 weights. At the run's first call after
        the analytical first step, ``H_0`` from ``x_0 = x_1 / a`` is entered first. The arithmetic runs in
        ``promote_types(sample.dtype, float32)``; ``prev_sample`` comes back in the sample's dtype. ``generator`` is
        not used (the solvers are deterministic).

        Returns ``prev_sample`` (the next call's input, or the final sample) and ``pred_original_sample`` (D).
        """
        if self._plan is None:
            raise ValueError(f"{type(self).__name__} has no schedule yet: call `set_timesteps` before `step`.")
        check_model_output(model_output, sample)
        call = self._current_call(timestep)
        plan = self._plan
        i = call + plan.first_call_step

        # Half precision keeps its dtype for the model, the solver arithmetic runs in at least float32.
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        x = sample if sample.dtype == compute_dtype else sample.to(compute_dtype)
        output = model_output
        if model_output.dtype != compute_dtype:
            model_output = model_output.to(compute_dtype)
        if plan.history == "d":
            entry, denoised = self.model_call.derivative(model_output, x, plan.sigmas[i])
        else:
            entry = denoised = self.model_call.denoised(model_output, x, plan.sigmas[i])
        if entry is output:
            # The history outlives this call; a model may overwrite the buffer it returned (CUDA graphs,
            # torch.compile): keep a copy of an eps (iPNDM) or D (DPM-Solver++, UniPC) output read as it is.
            entry = entry.clone()

        if call == plan.begin_call:
            self._reset_history()
            if plan.first_step is not None:  # H_0 and x_0 of the analytical first step, from x_1
                self._history = [torch.mul(x, plan.first_step.history_weight)]
                self._start_sample = torch.mul(x, 1.0 / plan.first_step.scale)
        corrector = plan.correctors[i]
        if corrector is not None:  # UniC: x_i corrected with D_i, from x_{i-1}
            x = corrector.apply(self._start_sample, [entry, *self._history])
        self._history = [entry, *self._history][: plan.order]
        prev_sample = plan.predictors[i].apply(x, self._history)
        if plan.solver == "unipc":
            self._start_sample = x
        self._step_index += 1
        if prev_sample.dtype != sample.dtype:
            prev_sample, denoised = prev_sample.to(sample.dtype), denoised.to(sample.dtype)
        if not return_dict:
            return (prev_sample, denoised)
        return EDMMultistepSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    # ------------------------------------------------------------------ image-to-image
    def _noise_stds_for(self, timesteps: torch.Tensor) -> list[float]:
        """Noise standard deviations for ``add_noise``, with diffusers' rule for which call: the current call during
        sampling, the begin call before it starts, else the call whose timestep matches each entry."""
        if self._plan is None:
            raise ValueError("add_noise needs a schedule: call `set_timesteps` first.")
        count = timesteps.reshape(-1).shape[0]
        if self._step_index is not None:
            return [self._plan.noise_std_of_call(self._step_index)] * count
        if self._begin_index is not None:
            return [self._plan.noise_std_of_call(self._begin_index)] * count
        return [self._plan.noise_std_of_call(self.index_for_timestep(t)) for t in timesteps.reshape(-1)]

    _noised = staticmethod(add_sigma_noise)
