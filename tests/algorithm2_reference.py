"""An independent statement of EDM's sampler (Karras et al. 2022, Algorithm 2 and Table 1), for the tests.

Nothing here imports diffusers_edm: the schedulers are checked against these plain loops and formulas.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor


class GaussianMixtureDenoiser:
    """The exact denoiser D(x; sigma) = E[y | y + sigma n = x] of an isotropic Gaussian mixture.

    Data y ~ sum_k w_k N(mu_k, s_k^2 I) in ``dim`` dimensions; then x ~ sum_k w_k N(mu_k, (s_k^2 + sigma^2) I) and
    E[y | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)), r_k the posterior responsibilities.
    Works on tensors of shape (B, ...) whose trailing dimensions flatten to ``dim``.
    """

    def __init__(self, dim: int, num_components: int = 3, seed: int = 0, spread: float = 1.0):
        rng = np.random.default_rng(seed)
        self.means = torch.tensor(rng.normal(size=(num_components, dim)) * spread, dtype=torch.float64)
        self.stds = torch.tensor(rng.uniform(0.05, 0.3, size=num_components), dtype=torch.float64)
        self.weights = torch.tensor(rng.dirichlet(np.ones(num_components)), dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        flat = x.reshape(shape[0], -1).to(torch.float64)
        var = self.stds**2 + sigma**2  # (K,)
        sq_dist = ((flat[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        dim = flat.shape[1]
        log_resp = torch.log(self.weights) - 0.5 * sq_dist / var - 0.5 * dim * torch.log(var)
        resp = torch.softmax(log_resp, dim=1)
        shrink = self.stds**2 / var  # (K,)
        per_component = self.means[None] + shrink[None, :, None] * (flat[:, None, :] - self.means[None])
        return (resp[:, :, None] * per_component).sum(1).reshape(shape).to(dtype)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        component = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component, None] * noise


def algorithm2(
    denoise,
    sigmas: list[float],
    x_start: torch.Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    heun: bool = True,
    generator: torch.Generator | None = None,
    start_step: int = 0,
    start_is_churned: bool = False,
    calls: list | None = None,
) -> torch.Tensor:
    """EDM Algorithm 2 as a plain loop (Karras et al. 2022, Algorithm 2).

    ``sigmas`` are sigma_0..sigma_{N-1}; sigma_N = 0 is appended. ``x_start`` is x at step ``start_step``; when
    ``start_is_churned`` it is already x_hat of that step (the first churn is then not drawn). ``calls``, if given,
    receives (x, sigma) of every evaluation of D, in order.
    """
    t = [float(s) for s in sigmas] + [0.0]
    num_steps = len(sigmas)
    x = x_start
    for i in range(start_step, num_steps):
        gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        t_hat = t[i] * (1 + gamma)
        x_hat = x
        if gamma > 0 and not (start_is_churned and i == start_step):
            n = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * s_noise * n
        denoised = denoise(x_hat, t_hat)
        if calls is not None:
            calls.append((x_hat.clone(), t_hat))
        d = (x_hat - denoised) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if heun and t[i + 1] != 0:
            denoised_next = denoise(x_next, t[i + 1])
            if calls is not None:
                calls.append((x_next.clone(), t[i + 1]))
            d2 = (x_next - denoised_next) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (d + d2) / 2
        x = x_next
    return x


# ------------------------------------------------------------------------------------------------
# Time discretizations, each straight from its formula (Karras et al. 2022, Table 1)
# ------------------------------------------------------------------------------------------------
def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    return [
        (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(n)
    ]


def vp_sigmas(n: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> list[float]:
    beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - beta_d / 2
    out = []
    for i in range(n):
        t = 1 + i / (n - 1) * (epsilon_s - 1)
        out.append(math.sqrt(math.exp(beta_d * t**2 / 2 + beta_min * t) - 1))
    return out


def ve_sigmas(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    return [math.sqrt(sigma_max**2 * (sigma_min**2 / sigma_max**2) ** (i / (n - 1))) for i in range(n)]


def iddpm_sigmas(n: int, sigma_min: float, sigma_max: float, M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> list[float]:
    def alpha_bar(j):
        return math.sin(math.pi / 2 * j / (M * (C_2 + 1))) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    v = [value for value in u if sigma_min <= value <= sigma_max]
    return [v[round(i * (len(v) - 1) / (n - 1))] for i in range(n)]


def vp_table_sigmas(beta_schedule: str, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of a discrete VP training table."""
    if beta_schedule == "linear":
        betas = [beta_start + (beta_end - beta_start) * i / (T - 1) for i in range(T)]
    elif beta_schedule == "scaled_linear":
        betas = [(math.sqrt(beta_start) + (math.sqrt(beta_end) - math.sqrt(beta_start)) * i / (T - 1)) ** 2 for i in range(T)]
    elif beta_schedule == "squaredcos_cap_v2":
        def f(t):
            return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)]
    else:
        raise ValueError(beta_schedule)
    alpha_bar, sigmas = 1.0, []
    for beta in betas:
        alpha_bar *= 1 - beta
        sigmas.append(math.sqrt((1 - alpha_bar) / alpha_bar))
    return np.array(sigmas)
