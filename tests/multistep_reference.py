"""Independent float64 statements of the multistep probability-flow ODE solvers, for the tests.

Nothing here imports diffusers_edm: the multistep schedulers are checked against these plain loops.

Everything is in EDM's sigma space (Karras et al. 2022, eq. 1 and 3): ``x = y + sigma n``, the ODE
``dx/dsigma = (x - D(x; sigma)) / sigma``, ``D_i = D(x_i; sigma_i)``, ``d_i = (x_i - D_i) / sigma_i``,
``lambda = -ln sigma`` (the half log-SNR when alpha = 1). A run visits the levels
``sigma_0 > ... > sigma_{S-1} > 0 = sigma_S``; step i goes from ``s = sigma_i`` to ``t = sigma_{i+1}`` with
``h = lambda_{i+1} - lambda_i = ln(s / t)``.

Rules shared by the three solvers (the package's multistep spec, after diffusers' multistep schedulers):

- order of step i: ``o_i = min(order, i - start + 1)`` (warm-up counted from the first step taken); with
  ``lower_order_final`` and S < 15 also ``o_i <= S - i``; DPM-Solver++ and UniPC take the step to sigma = 0 with
  order 1 (it is ``x = D``: their formulas have h = inf there), iPNDM takes it with its Adams-Bashforth formula.
- analytical first step (AFS): step 0 takes no model call; its denoiser is ``D_0 = c_skip(sigma_0) x_0 =
  sigma_data^2 / (sigma_0^2 + sigma_data^2) x_0`` (EDM Table 1's c_skip: the denoiser of zero-mean data of std
  sigma_data, nearly exact at sigma_0 >> sigma_data), used as if the model had returned it (its d_0 for iPNDM).
- a run started at level ``start > 0`` (image-to-image) has no history there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]

# Adams-Bashforth weights of d_i, d_{i-1}, ... (constant-step weights, as iPNDM uses them on any grid)
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
ORDER_RANGE = {"ipndm": (1, 4), "ipndm_v": (1, 4), "dpmpp": (1, 3), "unipc": (1, 3)}
# diffusers' multistep schedulers lower the order of the last steps only when there are fewer steps than this
LOWER_ORDER_FINAL_BELOW = 15


@dataclass
class Run:
    """What a reference loop did.

    ``sample`` is the final sample (sigma = 0). ``trajectory[j]`` is the sample after the j-th step taken (for UniPC
    the predictor's output, before the corrector that the next model call applies); ``starts[j]`` the sample that
    step started from (for UniPC the corrected one) and ``denoised[j]`` its D (the analytic one for the AFS step).
    ``call_sigmas`` are the levels of the model calls, ``orders`` the order of each step taken, ``levels`` the levels
    incl. the final 0.
    """

    sample: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    starts: list[torch.Tensor] = field(default_factory=list)
    denoised: list[torch.Tensor] = field(default_factory=list)
    call_sigmas: list[float] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------------
def logsnr_sigmas(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    """Uniform in lambda = -ln sigma (DPM-Solver's "logSNR" grid):
    ``ln sigma_i = ln sigma_max + i/(n-1) (ln sigma_min - ln sigma_max)``."""
    return [math.exp(math.log(sigma_max) + i / (n - 1) * (math.log(sigma_min) - math.log(sigma_max))) for i in range(n)]


def custom_sigmas(n: int, sigma_min: float, sigma_max: float, seed: int) -> list[float]:
    """``n`` irregular levels: sigma_max, sigma_min and n - 2 log-uniform random levels between them, decreasing."""
    rng = np.random.default_rng(seed)
    inner = np.exp(rng.uniform(math.log(sigma_min), math.log(sigma_max), size=n - 2))
    return sorted([sigma_max, sigma_min, *inner.tolist()], reverse=True)


# ------------------------------------------------------------------------------------------------
# Shared rules
# ------------------------------------------------------------------------------------------------
def c_skip(sigma: float, sigma_data: float) -> float:
    """EDM Table 1: ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def afs_scale(sigma_0: float, sigma_1: float, sigma_data: float) -> float:
    """The scalar a of ``x_1 = a x_0`` after the analytical first step (the same for all three solvers).

    Euler in d (iPNDM): ``x_1 = x_0 + (sigma_1 - sigma_0) (1 - c) x_0 / sigma_0``; the exponential step
    (DPM-Solver++, UniPC): ``x_1 = (sigma_1 / sigma_0) x_0 - expm1(-h) c x_0`` with ``expm1(-h) = sigma_1/sigma_0 - 1``.
    Both are ``a = sigma_1/sigma_0 + c (1 - sigma_1/sigma_0)``, c = c_skip(sigma_0).
    """
    ratio = sigma_1 / sigma_0
    return ratio + c_skip(sigma_0, sigma_data) * (1.0 - ratio)


def step_order(order: int, i: int, num_steps: int, lower_order_final: bool, start: int = 0) -> int:
    """``min(order, i - start + 1)``, and ``<= num_steps - i`` with lower_order_final when num_steps < 15."""
    o = min(order, i - start + 1)
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
        o = min(o, num_steps - i)
    return o


def _levels(sigmas: Sequence[float]) -> list[float]:
    levels = [float(s) for s in sigmas]
    if levels[-1] == 0.0:
        levels = levels[:-1]
    if any(b >= a for a, b in zip(levels, levels[1:])) or levels[-1] <= 0:
        raise ValueError(f"levels must be positive and strictly decreasing, got {levels}")
    return levels + [0.0]


def _check(solver: str, order: int, afs: bool, start: int, num_steps: int) -> None:
    low, high = ORDER_RANGE[solver]
    if not low <= order <= high:
        raise ValueError(f"{solver} order {order} outside [{low}, {high}]")
    if afs and (start != 0 or num_steps < 2):
        raise ValueError("AFS needs a full run over at least 2 levels")


def _denoised(denoise: Denoiser, x: torch.Tensor, i: int, levels: list[float], afs: bool, sigma_data: float, run: Run):
    """D_i: the analytic c_skip x_0 for the AFS step, else one model call."""
    if afs and i == 0:
        return c_skip(levels[0], sigma_data) * x
    run.call_sigmas.append(levels[i])
    return denoise(x, levels[i])


# ------------------------------------------------------------------------------------------------
# iPNDM
# ------------------------------------------------------------------------------------------------
def ipndm(
    denoise: Denoiser,
    sigmas: Sequence[float],
    x: torch.Tensor,
    order: int = 4,
    lower_order_final: bool = True,
    analytical_first_step: bool = False,
    sigma_data: float = 0.5,
    start: int = 0,
) -> Run:
    """iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", the improved
    PNDM of section 4 / Appendix): Adams-Bashforth with constant-step weights on d, in sigma::

        d_i = (x_i - D(x_i; sigma_i)) / sigma_i,  o = o_i,
        x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * sum_k w^o_k d_{i-k}
        w^1 = (1), w^2 = (3, -1)/2, w^3 = (23, -16, 5)/12, w^4 = (55, -59, 37, -9)/24

    every step, the last one to sigma = 0 included. ``x`` is the sample at ``sigmas[start]``.
    With AFS, d_0 = (1 - c_skip(sigma_0)) x_0 / sigma_0 enters the history without a model call.
    """
    levels = _levels(sigmas)
    num_steps = len(levels) - 1
    _check("ipndm", order, analytical_first_step, start, num_steps)
    run = Run(sample=x, levels=levels)
    slopes: list[torch.Tensor] = []  # d_start, ..., d_i
    for i in range(start, num_steps):
        s, t = levels[i], levels[i + 1]
        denoised = _denoised(denoise, x, i, levels, analytical_first_step, sigma_data, run)
        run.starts.append(x)
        run.denoised.append(denoised)
        slopes.append((x - denoised) / s)
        o = step_order(order, i, num_steps, lower_order_final, start)
        combined = sum(w * slopes[-1 - k] for k, w in enumerate(ADAMS_BASHFORTH[o]))
        x = x + (t - s) * combined
        run.orders.append(o)
        run.trajectory.append(x)
    run.sample = x
    return run


def variable_step_weights(levels: Sequence[float], i: int, order: int) -> list[float]:
    """``W_k = integral_{sigma_i}^{sigma_{i+1}} l_k(sigma) dsigma`` with the Lagrange basis polynomials
    ``l_k(sigma) = prod_{j != k} (sigma - sigma_{i-j}) / (sigma_{i-k} - sigma_{i-j})`` over the nodes
    ``sigma_i, ..., sigma_{i-order+1}``: Adams-Bashforth for uneven steps (Hairer, Norsett & Wanner, "Solving ODEs I",
    III.5), built and integrated as explicit polynomials in sigma."""
    from numpy.polynomial import polynomial as P

    nodes = [levels[i - k] for k in range(order)]
    weights = []
    for k in range(order):
        basis = np.array([1.0])
        for j in range(order):
            if j != k:
                basis = P.polymul(basis, np.array([-nodes[j], 1.0]) / (nodes[k] - nodes[j]))
        antiderivative = P.polyint(basis)
        weights.append(float(P.polyval(levels[i + 1], antiderivative) - P.polyval(levels[i], antiderivative)))
    return weights


def ipndm_v(
    denoise: Denoiser,
    sigmas: Sequence[float],
    x: torch.Tensor,
    order: int = 4,
    lower_order_final: bool = True,
    analytical_first_step: bool = False,
    sigma_data: float = 0.5,
    start: int = 0,
) -> Run:
    """iPNDM with variable steps: ``x_{i+1} = x_i + sum_k W_k d_{i-k}`` with the weights of
    :func:`variable_step_weights` (the polynomial through the last ``o_i`` values of d, integrated over the step),
    every step, the last one to sigma = 0 included; orders, AFS and starts as :func:`ipndm`."""
    levels = _levels(sigmas)
    num_steps = len(levels) - 1
    _check("ipndm_v", order, analytical_first_step, start, num_steps)
    run = Run(sample=x, levels=levels)
    slopes: list[torch.Tensor] = []
    for i in range(start, num_steps):
        denoised = _denoised(denoise, x, i, levels, analytical_first_step, sigma_data, run)
        run.starts.append(x)
        run.denoised.append(denoised)
        slopes.append((x - denoised) / levels[i])
        o = step_order(order, i, num_steps, lower_order_final, start)
        x = x + sum(w * slopes[-1 - k] for k, w in enumerate(variable_step_weights(levels, i, o)))
        run.orders.append(o)
        run.trajectory.append(x)
    run.sample = x
    return run


# ------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, data prediction)
# ------------------------------------------------------------------------------------------------
def dpmpp(
    denoise: Denoiser,
    sigmas: Sequence[float],
    x: torch.Tensor,
    order: int = 3,
    lower_order_final: bool = True,
    analytical_first_step: bool = False,
    sigma_data: float = 0.5,
    start: int = 0,
    taylor_third_order: bool = False,
) -> Run:
    """Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++": 2M is its Algorithm 2; 3M the third-order multistep
    update in data prediction that the authors' code and diffusers implement) with alpha = 1, step i from s to t,
    h = ln(s / t), E = expm1(-h):

        order 1 (DDIM):  x_t = (t/s) x_s - E D_s
        order 2:         r = ln(sigma_{i-1} / s) / h,  x_t = (t/s) x_s - E (D_s + (D_s - D_{i-1}) / (2 r))
        order 3:         r0 = ln(sigma_{i-1}/sigma_i)/h, r1 = ln(sigma_{i-2}/sigma_{i-1})/h,
                         D1_0 = (D_s - D_{i-1})/r0, D1_1 = (D_{i-1} - D_{i-2})/r1,
                         D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1),
                         x_t = (t/s) x_s - E D_s + (E/h + 1) D1 - ((E + h)/h^2 - 1/2) D2

    and the step to t = 0 is ``x = D_s`` (order 1, h = inf). With AFS, D_0 = c_skip(sigma_0) x_0 without a call.

    The published 3M update above is second order only: with D(lambda) = D_s + u D' + u^2 D''/2 (u = lambda -
    lambda_s) the divided differences give D1 = h D' + O(h^3) but D2 = h^2 D''/2 + O(h^3), while the exact integral
    ``(t/s) x_s + t int_0^h e^(lambda_s + u) D du`` needs ``-((E + h)/h^2 - 1/2) h^2 D''`` (coefficient ~ h/6 of
    h^2 D''): the D'' term is halved, a local error h^3 D''/12. ``taylor_third_order=True`` uses ``2 D2`` instead
    (the second divided difference times 2!, as DPM-Solver's single-step third-order Taylor update does), which is
    exact for D quadratic in lambda and third order.
    """
    levels = _levels(sigmas)
    num_steps = len(levels) - 1
    _check("dpmpp", order, analytical_first_step, start, num_steps)
    run = Run(sample=x, levels=levels)
    outputs: list[torch.Tensor] = []
    for i in range(start, num_steps):
        s, t = levels[i], levels[i + 1]
        denoised = _denoised(denoise, x, i, levels, analytical_first_step, sigma_data, run)
        run.starts.append(x)
        run.denoised.append(denoised)
        outputs.append(denoised)
        if t == 0.0:
            o = 1
            x = denoised
        else:
            o = step_order(order, i, num_steps, lower_order_final, start)
            h = math.log(s / t)
            e = math.expm1(-h)
            if o == 1:
                x = (t / s) * x - e * denoised
            elif o == 2:
                r = math.log(levels[i - 1] / s) / h
                x = (t / s) * x - e * (denoised + (denoised - outputs[-2]) / (2 * r))
            else:
                r0 = math.log(levels[i - 1] / s) / h
                r1 = math.log(levels[i - 2] / levels[i - 1]) / h
                d1_0 = (denoised - outputs[-2]) / r0
                d1_1 = (outputs[-2] - outputs[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1) * (2.0 if taylor_third_order else 1.0)
                x = (t / s) * x - e * denoised + (e / h + 1) * d1 - ((e + h) / h**2 - 0.5) * d2
        run.orders.append(o)
        run.trajectory.append(x)
    run.sample = x
    return run


# ------------------------------------------------------------------------------------------------
# UniPC (bh2, data prediction)
# ------------------------------------------------------------------------------------------------
def unipc_weights(h: float, ratios: Sequence[float], order: int) -> tuple[float, float, list[float], list[float]]:
    """The UniPC weights of one step (Zhao et al. 2023, "UniPC", section 3: UniC-p and UniP-p with B(h) = e^{-h} - 1,
    i.e. "bh2"; data prediction, so the exponential integrator runs in hh = -h).

    ``ratios`` are r_k = (lambda_{i-k} - lambda_i) / h for k = 1..order-1 (negative: past levels). With
    ``phi_1 = expm1(hh)`` and ``g_j = (e^hh - sum_{m<=j} hh^m / m!) / hh^j`` (``g_1 = expm1(hh)/hh - 1``,
    ``g_{j+1} = g_j / hh - 1/(j+1)!``), the order-p conditions are ``sum_k rho_k r_k^(j-1) = b_j = j! g_j / B(h)``,
    j = 1..p, over the nodes (r_1, ..., r_{p-1}, 1) - the last node is the new output D_t, used by the corrector only.

    Returns (phi_1, B(h), rho_predictor (p - 1 values), rho_corrector (p values)); the predictor's weights solve the
    first p - 1 conditions on the past nodes (p = 2: the paper's rho = 1/2), the corrector's all p on all nodes
    (p = 1: rho = 1/2).
    """
    hh = -h
    phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    g = phi_1 / hh - 1.0
    b = []
    for j in range(1, order + 1):
        b.append(math.factorial(j) * g / b_h)
        g = g / hh - 1.0 / math.factorial(j + 1)
    nodes = list(ratios) + [1.0]
    conditions = np.array([[node ** (j - 1) for node in nodes] for j in range(1, order + 1)], dtype=np.float64)
    if order == 1:
        rho_p: list[float] = []
    elif order == 2:
        rho_p = [0.5]
    else:
        rho_p = np.linalg.solve(conditions[:-1, :-1], np.array(b[:-1])).tolist()
    rho_c = [0.5] if order == 1 else np.linalg.solve(conditions, np.array(b)).tolist()
    return phi_1, b_h, rho_p, rho_c


def unipc(
    denoise: Denoiser,
    sigmas: Sequence[float],
    x: torch.Tensor,
    order: int = 3,
    lower_order_final: bool = True,
    analytical_first_step: bool = False,
    sigma_data: float = 0.5,
    start: int = 0,
) -> Run:
    """UniPC, bh2 predictor-corrector with data prediction (Zhao et al. 2023, "UniPC", section 3 / diffusers'
    ``UniPCMultistepScheduler(solver_type="bh2", predict_x0=True)``), alpha = 1, see :func:`unipc_weights`.

    Step i, order p = o_i, from the corrected sample x_i (s = sigma_i, t = sigma_{i+1}, lambda_j = -ln sigma_j):

        r_k = (lambda_{i-k} - lambda_i) / h,  D1_k = (D_{i-k} - D_i) / r_k   (k = 1..p-1)
        predictor (UniP-p):  x_{i+1} = (t/s) x_i - phi_1 D_i - B(h) sum_k rhoP_k D1_k
        corrector (UniC-p), once D_{i+1} = D(x_{i+1}; t) is known (at the next model call):
                             x_{i+1}^c = (t/s) x_i - phi_1 D_i - B(h) (sum_k rhoC_k D1_k + rhoC_p (D_{i+1} - D_i))

    The model is not called at the corrected sample; step i+1 starts from x_{i+1}^c. No corrector after the last
    call; the step to sigma = 0 is ``x = D`` of the last call. With AFS, D_0 = c_skip(sigma_0) x_0 without a call,
    and step 0 (order 1) is corrected at the first call as any other step.
    """
    levels = _levels(sigmas)
    num_steps = len(levels) - 1
    _check("unipc", order, analytical_first_step, start, num_steps)
    lam = [-math.log(s) if s > 0 else math.inf for s in levels]
    run = Run(sample=x, levels=levels)
    outputs: list[torch.Tensor] = []
    previous: tuple[torch.Tensor, int] | None = None  # (corrected x_{i-1}, order of step i-1)

    def base(i: int, x_i: torch.Tensor, p: int):
        """(t/s) x_i - phi_1 D_i, B(h), the D1_k and both weight sets of step i with order p."""
        s, t = levels[i], levels[i + 1]
        h = lam[i + 1] - lam[i]
        ratios = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
        differences = [(outputs[i - start - k] - outputs[i - start]) / r for k, r in zip(range(1, p), ratios)]
        phi_1, b_h, rho_p, rho_c = unipc_weights(h, ratios, p)
        return (t / s) * x_i - phi_1 * outputs[i - start], b_h, differences, rho_p, rho_c

    for i in range(start, num_steps):
        denoised = _denoised(denoise, x, i, levels, analytical_first_step, sigma_data, run)
        outputs.append(denoised)
        if previous is not None:  # UniC for step i - 1 with the new output
            x_prev, p_prev = previous
            x_base, b_h, differences, _, rho_c = base(i - 1, x_prev, p_prev)
            correction = sum(w * dk for w, dk in zip(rho_c[:-1], differences)) + rho_c[-1] * (denoised - outputs[-2])
            x = x_base - b_h * correction
        if levels[i + 1] == 0.0:
            o = 1
            x_next = denoised
        else:
            o = step_order(order, i, num_steps, lower_order_final, start)
            x_base, b_h, differences, rho_p, _ = base(i, x, o)
            x_next = x_base - b_h * sum(w * dk for w, dk in zip(rho_p, differences)) if differences else x_base
        run.starts.append(x)
        run.denoised.append(denoised)
        previous = (x, o)
        x = x_next
        run.orders.append(o)
        run.trajectory.append(x)
    run.sample = x
    return run


SOLVERS = {"ipndm": ipndm, "ipndm_v": ipndm_v, "dpmpp": dpmpp, "unipc": unipc}


def gaussian_ode_solution(x_start: torch.Tensor, sigma_start: float, sigma: float, data_std: float) -> torch.Tensor:
    """Exact probability-flow ODE solution for data N(0, data_std^2 I): ``x(sigma) = x(sigma_start)
    sqrt(sigma^2 + data_std^2) / sqrt(sigma_start^2 + data_std^2)`` (its denoiser is linear, D = c_skip x, so
    dx/dsigma = sigma x / (sigma^2 + data_std^2))."""
    return x_start * math.sqrt(sigma**2 + data_std**2) / math.sqrt(sigma_start**2 + data_std**2)
