"""Independent float64 implementation of DDPM / Improved DDPM's discrete diffusion (Ho et al. 2020 eqs. 6-7, Nichol &
Dhariwal 2021 eqs. 15-18; docs/algorithms.md section 4), for the learned-variance tests.

Written from the reference text with plain Python / NumPy loops; it imports nothing from diffusers_edm.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm


def linear_betas(T: int) -> np.ndarray:
    """Improved DDPM's linear schedule: 1e-4 .. 0.02 scaled by 1000 / T."""
    scale = 1000.0 / T
    return np.array([scale * 1e-4 + (scale * 0.02 - scale * 1e-4) * i / (T - 1) for i in range(T)])


def cosine_betas(T: int, s: float = 0.008) -> np.ndarray:
    def f(t: float) -> float:
        return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2

    return np.array([min(1 - (f(t + 1) / f(0)) / (f(t) / f(0)), 0.999) for t in range(T)])


def alpha_bars(betas: np.ndarray) -> np.ndarray:
    out, running = [], 1.0
    for beta in betas:
        running *= 1.0 - beta
        out.append(running)
    return np.array(out)


def respaced_betas(betas: np.ndarray, kept: list[int]) -> np.ndarray:
    abar = alpha_bars(betas)
    new, last = [], 1.0
    for t in range(len(betas)):
        if t in kept:
            new.append(1 - abar[t] / last)
            last = abar[t]
    return np.array(new)


def tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Per-index posterior quantities: beta_tilde, its clipped log, mean coefficients."""
    abar = alpha_bars(betas)
    K = len(betas)
    beta_tilde, coef1, coef2 = [], [], []
    for i in range(K):
        abar_prev = abar[i - 1] if i > 0 else 1.0
        beta_tilde.append(betas[i] * (1 - abar_prev) / (1 - abar[i]))
        coef1.append(betas[i] * math.sqrt(abar_prev) / (1 - abar[i]))
        coef2.append((1 - abar_prev) * math.sqrt(1 - betas[i]) / (1 - abar[i]))
    beta_tilde = np.array(beta_tilde)
    log_clipped = np.log(np.array([beta_tilde[1]] + list(beta_tilde[1:])))
    return {"abar": abar, "beta_tilde": beta_tilde, "log_clipped": log_clipped, "coef1": np.array(coef1), "coef2": np.array(coef2)}


def reverse_mean_log_variance(
    betas: np.ndarray, i: int, x_t: np.ndarray, prediction: np.ndarray, v: np.ndarray | None,
    variance_type: str, prediction_type: str = "epsilon", clip: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, log variance and x0 of p(x_{t-1} | x_t) at index i."""
    tab = tables(betas)
    abar = tab["abar"][i]
    if prediction_type == "epsilon":
        x0 = math.sqrt(1 / abar) * x_t - math.sqrt(1 / abar - 1) * prediction
    else:
        x0 = prediction.copy()
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = tab["coef1"][i] * x0 + tab["coef2"][i] * x_t
    if variance_type == "learned_range":
        frac = (v + 1) / 2
        log_var = frac * math.log(betas[i]) + (1 - frac) * tab["log_clipped"][i]
    elif variance_type == "learned":
        log_var = v.copy()
    elif variance_type == "fixed_small":
        log_var = np.full_like(x_t, tab["log_clipped"][i])
    else:  # fixed_large: beta, with beta_tilde_1 at index 0 (Improved DDPM)
        log_var = np.full_like(x_t, math.log(tab["beta_tilde"][1] if i == 0 else betas[i]))
    return mean, log_var, x0


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def discretized_log_likelihood(x: np.ndarray, mean: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """log P(bin of x) under N(mean, exp(log_scale)^2); bins of width 2/255, open at -0.999 / 0.999."""
    std = np.exp(log_scale)
    upper = norm.cdf(x + 1 / 255, loc=mean, scale=std)
    lower = norm.cdf(x - 1 / 255, loc=mean, scale=std)
    probability = np.where(x < -0.999, upper, np.where(x > 0.999, 1 - lower, upper - lower))
    return np.log(np.maximum(probability, 1e-12))
