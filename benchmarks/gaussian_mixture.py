"""An isotropic Gaussian mixture whose denoiser ``D(x; sigma) = E[y | y + sigma n = x]`` is known exactly.

Data ``y ~ sum_k w_k N(mu_k, s_k^2 I)`` in ``dim`` dimensions. The noisy marginal at level sigma is
``sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)``, so with posterior responsibilities
``r_k(x) ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I)``::

    D(x; sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))

Everything is computed in float64 on the mixture's device. The benchmark keeps its own copy (rather than
importing the test suite's) so that benchmarks and tests stay independent.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class GaussianMixture:
    """A fixed, seeded isotropic Gaussian mixture with an exact denoiser.

    The defaults give per-coordinate data standard deviation close to EDM's ``sigma_data = 0.5``
    (means ~ N(0, 0.4^2 I), component stds in [0.1, 0.3]) and well separated modes in 64 dimensions,
    so the probability-flow ODE has a sharp "mode selection" phase at intermediate sigma, where
    samplers make most of their error.

    Args:
        dim: dimension of the data (>= 64 for the benchmark).
        num_components: number of mixture components K.
        seed: seed of the NumPy generator that draws means, stds and weights.
        mean_scale: standard deviation of the component means around 0.
        std_range: the component standard deviations are drawn uniformly from this interval.
        device: where the parameters (and every computation) live.
    """

    def __init__(
        self,
        dim: int = 64,
        num_components: int = 8,
        seed: int = 0,
        mean_scale: float = 0.4,
        std_range: tuple[float, float] = (0.1, 0.3),
        device: str | torch.device = "cpu",
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.device = torch.device(device)
        self.means = torch.tensor(rng.normal(size=(num_components, dim)) * mean_scale, dtype=torch.float64, device=self.device)
        self.stds = torch.tensor(rng.uniform(*std_range, size=num_components), dtype=torch.float64, device=self.device)
        self.weights = torch.tensor(rng.dirichlet(np.full(num_components, 4.0)), dtype=torch.float64, device=self.device)
        self._log_weights = torch.log(self.weights)
        self._mean_sq_norms = (self.means**2).sum(-1)  # (K,)

    # ------------------------------------------------------------------ exact denoiser
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact ``D(x; sigma)`` for ``x`` of shape (B, ...) whose trailing dimensions flatten to ``dim``.

        Computed in float64 and returned in ``x``'s dtype. The squared distances use
        ``|x|^2 - 2 x.mu + |mu|^2`` (a (B, dim) x (dim, K) product) instead of a (B, K, dim) tensor:
        the reference ODE solver calls this tens of thousands of times.
        """
        shape, dtype = x.shape, x.dtype
        flat = x.reshape(shape[0], -1).to(torch.float64)
        sigma = float(sigma)
        var = self.stds**2 + sigma**2  # (K,)
        sq_dist = (flat**2).sum(-1, keepdim=True) - 2.0 * flat @ self.means.T + self._mean_sq_norms  # (B, K)
        log_resp = self._log_weights - 0.5 * sq_dist / var - 0.5 * self.dim * torch.log(var)
        resp = torch.softmax(log_resp, dim=1)  # (B, K)
        shrink = self.stds**2 / var  # (K,): how much of x - mu_k survives denoising
        denoised = (resp @ shrink)[:, None] * flat + (resp * (1.0 - shrink)) @ self.means
        return denoised.reshape(shape).to(dtype)

    def shrunk_denoiser(self, shrink: float):
        """A slightly wrong denoiser: ``D'(x; sigma) = m + (1 - shrink) (D(x; sigma) - m)``, m the data mean.

        Models a network that under-predicts the deviation of its output from the data mean by a constant
        fraction at every noise level (a typical symptom of an imperfectly fit model, which over-smooths).
        ``shrink = 0`` is the exact denoiser.
        """
        data_mean = self.mean()

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            exact = self.denoise(x, sigma)
            if shrink == 0:
                return exact
            mean = data_mean.reshape((1,) + tuple(x.shape[1:])).to(exact.dtype)
            return mean + (1.0 - shrink) * (exact - mean)

        return denoise

    def nearest_component(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the component mean nearest (Euclidean) to each sample of ``x`` (B, ...); -1 for a non-finite sample."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        finite = torch.isfinite(flat).all(dim=1)
        flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
        sq_dist = (flat**2).sum(-1, keepdim=True) - 2.0 * flat @ self.means.T + self._mean_sq_norms  # (B, K)
        return torch.where(finite, sq_dist.argmin(dim=1), torch.full_like(finite, -1, dtype=torch.long))

    # ------------------------------------------------------------------ the data distribution itself
    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` exact samples of the mixture (float64), drawn with ``generator`` (on the mixture's device)."""
        component = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.dim, generator=generator, dtype=torch.float64, device=self.device)
        return self.means[component] + self.stds[component, None] * noise

    def mean(self) -> torch.Tensor:
        """Exact mean ``sum_k w_k mu_k`` (dim,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Exact covariance ``sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T`` (dim, dim)."""
        mean = self.mean()
        second_moment = (self.means.T * self.weights) @ self.means
        second_moment = second_moment + torch.diag(torch.full((self.dim,), float(self.weights @ self.stds**2), dtype=torch.float64, device=self.device))
        return second_moment - torch.outer(mean, mean)

    def data_std(self) -> float:
        """Root-mean-square per-coordinate standard deviation of the data (compare with sigma_data = 0.5)."""
        return math.sqrt(float(torch.trace(self.covariance())) / self.dim)
