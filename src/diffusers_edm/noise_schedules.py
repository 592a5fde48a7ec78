"""Noise levels: the one place where sigma grids, VP noise schedules and beta tables are computed.

Everything here follows Karras et al. 2022 ("EDM", Algorithm 2 and Table 1), Ho et al. 2020 (DDPM, section 4)
and Nichol & Dhariwal 2021 (Improved DDPM, section 3.2) and works in float64 NumPy (or Python floats).
Schedulers, model wrappers and losses import these functions and move the results to their own device and
dtype; nothing else in the package recomputes a sigma grid.

Notation: ``sigma`` is the noise standard deviation of the "variance exploding" form
``x = y + sigma * n``. A VP model's ``alpha_bar`` maps to it by ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

from .value_checks import check_integer, check_real

ArrayLike = Union[np.ndarray, float, torch.Tensor]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DISCRETIZATIONS = ("edm", "vp", "ve", "iddpm", "logsnr", "time_uniform")

# What a model's output may be, by the way the model is called (the one place these lists are defined):
# - "sigma": a sigma-conditioned (EDM-native) model returns D(x; sigma) ("sample") or eps = (x - D) / sigma;
# - "discrete_vp": a discrete-time VP network returns eps (Ho et al. 2020, eq. 11), v = sqrt(alpha_bar) eps -
#   sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, section 4) or x_0 ("sample");
# - "ddpm_posterior": the DDPM reverse step (Improved DDPM) reads eps or x_0.
PREDICTION_TYPES: dict[str, tuple[str, ...]] = {
    "sigma": ("sample", "epsilon"),
    "discrete_vp": ("epsilon", "v_prediction", "sample"),
    "ddpm_posterior": ("epsilon", "sample"),
}


# --------------------------------------------------------------------------------------------
# Validation of user-given constants
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Discrete-time (DDPM-style) tables
# --------------------------------------------------------------------------------------------
def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """Improved DDPM's cosine ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos(((t + s) / (1 + s)) * pi / 2)^2``, t in [0, 1]."""
    t = np.asarray(t, dtype=np.float64)
    f = np.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2
    f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2
    return f / f0


def betas_for_schedule(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    max_beta: float = 0.999,
) -> np.ndarray:
    """The ``num_train_timesteps`` betas of a discrete diffusion, in float64.

    - ``"linear"``: ``linspace(beta_start, beta_end, T)``.
    - ``"scaled_linear"``: ``linspace(sqrt(beta_start), sqrt(beta_end), T)^2`` (Stable Diffusion).
    - ``"squaredcos_cap_v2"``: cosine, ``beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), max_beta)``
      with ``s = 0.008`` (Improved DDPM).
    - ``trained_betas``, when given, is used as is and overrides the schedule name.
    """
    if trained_betas is not None:
        try:
            betas = np.asarray(trained_betas, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"trained_betas must be a sequence of numbers in (0, 1), got {trained_betas!r}.") from error
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"trained_betas must be a non-empty 1-D sequence, got shape {betas.shape}.")
    else:
        num_train_timesteps = check_integer("num_train_timesteps", num_train_timesteps, minimum=1)
        if beta_schedule in ("linear", "scaled_linear"):
            open_unit = dict(minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
            beta_start = check_real("beta_start", beta_start, **open_unit)
            beta_end = check_real("beta_end", beta_end, **open_unit)
        if beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        elif beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            steps = np.arange(num_train_timesteps, dtype=np.float64)
            ratio = cosine_alpha_bar((steps + 1) / num_train_timesteps) / cosine_alpha_bar(steps / num_train_timesteps)
            betas = np.minimum(1.0 - ratio, max_beta)
        else:
            raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; expected one of {BETA_SCHEDULES} or trained_betas.")
    if not np.all((betas > 0) & (betas < 1)):  # also refuses NaN
        raise ValueError(f"Every beta must lie in (0, 1); got values from {np.nanmin(betas)} to {np.nanmax(betas)}.")
    return betas


def sigmas_from_betas(betas: np.ndarray) -> np.ndarray:
    """The sigma of each training timestep: ``sqrt((1 - alpha_bar_t) / alpha_bar_t)``, increasing in t."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def table_timestep(log_sigma: torch.Tensor, log_table_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional training timestep of each noise level of a discrete VP table: linear interpolation of ``log sigma``
    over the table's increasing ``log sigma_t`` (timestep ``t`` at entry ``t``), clamped to the table's ends.

    ``t = i + (log sigma - log sigma_i) / (log sigma_{i+1} - log sigma_i)`` with ``sigma_i <= sigma < sigma_{i+1}``,
    so a table level gives exactly its integer timestep. Runs where the tensors live (host or device), in the
    promoted dtype of the two, without a look at the values (no host synchronisation).
    """
    dtype = torch.promote_types(log_sigma.dtype, log_table_sigmas.dtype)
    table = log_table_sigmas.to(device=log_sigma.device, dtype=dtype)
    value = torch.clamp(log_sigma.to(dtype), min=table[0], max=table[-1])
    # Index i of the interval [log sigma_i, log sigma_{i+1}] holding the value; the last level falls in the last one.
    lower = (torch.searchsorted(table, value, right=True) - 1).clamp(0, table.shape[0] - 2)
    low, high = table[lower], table[lower + 1]
    return lower.to(dtype) + (value - low) / (high - low)


# --------------------------------------------------------------------------------------------
# Continuous-time schedules of EDM's generalized sampler
# --------------------------------------------------------------------------------------------
def vp_sigma(t: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> ArrayLike:
    """VP noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``.

    Takes NumPy values (computed in float64) or a torch tensor (computed on its device, in its dtype).
    """
    if isinstance(t, torch.Tensor):
        return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> ArrayLike:
    """Inverse of :func:`vp_sigma`: ``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``.

    Evaluated in the algebraically equal form ``2 log(1 + sigma^2) / (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) + beta_min)``,
    which avoids the cancellation of the difference at small sigma in float32. Takes NumPy values or a torch tensor.
    """
    if isinstance(sigma, torch.Tensor):
        log_term = torch.log1p(sigma.square())
        return 2.0 * log_term / (torch.sqrt(beta_min**2 + 2.0 * beta_d * log_term) + beta_min)
    log_term = np.log1p(np.asarray(sigma, dtype=np.float64) ** 2)
    return 2.0 * log_term / (np.sqrt(beta_min**2 + 2.0 * beta_d * log_term) + beta_min)


def iddpm_sigma_table(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> np.ndarray:
    """The ``M + 1`` noise levels ``u_0 > u_1 > ... > u_M = 0`` of Improved DDPM's cosine table.

    ``u_M = 0`` and, for j = M..1, ``u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1) / abar(j), C_1) - 1)``
    with ``abar(j) = sin(pi/2 * j / (M (C_2 + 1)))^2``.
    """
    if M < 1:
        raise ValueError(f"M must be a positive integer, got {M!r}.")

    def alpha_bar(j: int) -> float:
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1.0)) ** 2

    u = np.zeros(M + 1, dtype=np.float64)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1.0) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1.0)
    return u


# --------------------------------------------------------------------------------------------
# Time-step discretizations (the N noise levels a sampler visits)
# --------------------------------------------------------------------------------------------
def sigma_steps(
    discretization: str,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    epsilon_s: float = 1e-3,
    iddpm_M: int = 1000,
    iddpm_C_1: float = 0.001,
    iddpm_C_2: float = 0.008,
) -> np.ndarray:
    """The noise levels ``sigma_0 > ... > sigma_{N-1}`` of EDM's generalized sampler (no final 0).

    With ``r_i = i / (N - 1)`` (``r_0 = 0`` when N = 1):

    - ``"edm"``: ``sigma_i = (sigma_max^(1/rho) + r_i (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.
    - ``"vp"``: ``sigma_i = sigma_vp(1 + r_i (epsilon_s - 1))`` with beta_d, beta_min refit so that
      ``sigma_vp(1) = sigma_max`` and ``sigma_vp(epsilon_s) = sigma_min``.
    - ``"ve"``: ``sigma_i^2 = sigma_max^2 (sigma_min^2 / sigma_max^2)^r_i`` (geometric).
    - ``"iddpm"``: the iDDPM table levels within [sigma_min, sigma_max], ``v_0 > ... > v_{K-1}``,
      taken at ``v_{round((K - 1) / (N - 1) * i)}``.
    - ``"logsnr"``: uniform in ``lambda = -ln sigma`` (half the log-SNR), ``ln sigma_i = ln sigma_max + r_i (ln sigma_min
      - ln sigma_max)``, the grid of DPM-Solver (Lu et al. 2022, section 3.3) and UniPC; these are the ``"ve"`` levels.
    - ``"time_uniform"``: uniform in VP time (DEIS's time-uniform grid, Zhang & Chen 2023); these are the ``"vp"`` levels.
    """
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"Unknown discretization {discretization!r}; expected one of {DISCRETIZATIONS}.")
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_steps!r}.")
    if not (0.0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"Need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    steps = np.arange(num_steps, dtype=np.float64)
    ramp = steps / (num_steps - 1) if num_steps > 1 else steps

    # Overflow (e.g. sigma_max^2 beyond float64) or underflow is reported below as an unusable range.
    try:
        with np.errstate(all="ignore"):
            if discretization == "edm":
                if rho <= 0:
                    raise ValueError(f"rho must be > 0, got {rho}.")
                max_inv_rho, min_inv_rho = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
                sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
            elif discretization in ("vp", "time_uniform"):
                if not (0.0 < epsilon_s < 1.0):
                    raise ValueError(f"epsilon_s must lie in (0, 1), got {epsilon_s}.")
                beta_d = 2.0 * (math.log(sigma_min**2 + 1.0) / epsilon_s - math.log(sigma_max**2 + 1.0)) / (epsilon_s - 1.0)
                beta_min = math.log(sigma_max**2 + 1.0) - 0.5 * beta_d
                sigmas = vp_sigma(1.0 + ramp * (epsilon_s - 1.0), beta_d, beta_min)
            elif discretization in ("ve", "logsnr"):  # geometric: uniform in log sigma
                sigmas = np.sqrt(sigma_max**2 * (sigma_min**2 / sigma_max**2) ** ramp)
            else:  # iddpm
                u = iddpm_sigma_table(iddpm_M, iddpm_C_1, iddpm_C_2)
                levels = u[(u >= sigma_min) & (u <= sigma_max)]
                if len(levels) < num_steps:
                    raise ValueError(
                        f"discretization 'iddpm' has only {len(levels)} table levels within "
                        f"[sigma_min={sigma_min}, sigma_max={sigma_max}], fewer than num_inference_steps={num_steps}."
                    )
                scale = (len(levels) - 1) / (num_steps - 1) if num_steps > 1 else 0.0
                sigmas = levels[np.round(scale * steps).astype(np.int64)]
    except (OverflowError, ZeroDivisionError):
        sigmas = np.array([math.nan])
    # strictly decreasing (NaN compares false), finite at the top and positive at the bottom: finite and positive
    if not (math.isfinite(sigmas[0]) and sigmas[-1] > 0 and (sigmas[1:] < sigmas[:-1]).all()):
        settings = f" and rho={rho:g}" if discretization == "edm" else ""
        raise ValueError(
            f"discretization {discretization!r} with {num_steps} steps from sigma_max={sigma_max:g} to sigma_min="
            f"{sigma_min:g}{settings} gives noise levels that are not finite, positive and strictly decreasing in "
            "float64; use a narrower range or fewer steps."
        )
    return sigmas


def check_sigma_steps(sigmas: Sequence[float] | np.ndarray | torch.Tensor, name: str = "sigmas") -> np.ndarray:
    """Validate user-given noise levels and return ``sigma_0 > ... > sigma_{N-1} > 0`` as float64.

    The levels must be finite, positive and strictly decreasing; one final 0 is allowed (it is the ``sigma_N = 0``
    that every schedule ends with, and is dropped here because the schedulers append it).
    """
    try:
        values = np.asarray(
            sigmas.detach().cpu().double().numpy() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64
        ).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a sequence of numbers, got {sigmas!r}.") from error
    if len(values) > 1 and values[-1] == 0:
        values = values[:-1]
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one positive noise level, got {np.asarray(sigmas).tolist()!r}.")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"{name} must be finite and positive, with at most one final 0 (the appended sigma_N = 0), "
            f"got {values.tolist()}."
        )
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"{name} must be strictly decreasing, got {values.tolist()}.")
    return values
