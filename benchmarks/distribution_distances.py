"""Distances between a set of samples and a Gaussian mixture, for the churn benchmark.

Two complementary distances:

- **moment Frechet distance**: the Frechet (2-Wasserstein) distance between the Gaussians with the sample
  mean/covariance and with the mixture's exact mean/covariance. Sensitive to a wrong overall spread
  (e.g. over-smoothed samples) and wrong mode weights, blind to the shape of each mode.
- **sliced Wasserstein-2**: the root mean over fixed random unit directions of the squared 1-D
  Wasserstein-2 distance between the projected sample set and an equally large set of exact mixture samples.
  Sensitive to the shape of each mode as well.

Both have a finite-sample floor: report them next to the same distance for an exact mixture sample of the
same size.
"""

from __future__ import annotations

import torch


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues from round-off clipped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def moment_frechet_distance(samples: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> float:
    """``|m1 - m2|^2 + tr(C1 + C2 - 2 (C2^1/2 C1 C2^1/2)^1/2)`` with (m1, C1) the samples' moments (float64)."""
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    sample_mean = flat.mean(0)
    sample_cov = torch.cov(flat.T)
    root = _sqrtm_psd(covariance)
    cross = _sqrtm_psd(root @ sample_cov @ root)
    value = ((sample_mean - mean) ** 2).sum() + torch.trace(sample_cov) + torch.trace(covariance) - 2.0 * torch.trace(cross)
    return float(value.clamp(min=0))


def random_directions(dim: int, count: int, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """``count`` fixed random unit vectors in ``dim`` dimensions (dim, count), float64."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(dim, count, generator=generator, dtype=torch.float64)
    return (directions / directions.norm(dim=0, keepdim=True)).to(device)


def sliced_wasserstein(samples: torch.Tensor, reference: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced Wasserstein-2 between two equally sized sample sets: sqrt(mean over directions of W2^2 of projections).

    In 1-D, W2 between two empirical distributions of n points each is the RMS difference of the sorted values.
    """
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    ref = reference.reshape(reference.shape[0], -1).to(torch.float64)
    if flat.shape != ref.shape:
        raise ValueError(f"sliced_wasserstein needs equally many samples, got {tuple(flat.shape)} and {tuple(ref.shape)}.")
    projected, projected_ref = (flat @ directions).sort(0).values, (ref @ directions).sort(0).values
    return float(((projected - projected_ref) ** 2).mean().sqrt())
