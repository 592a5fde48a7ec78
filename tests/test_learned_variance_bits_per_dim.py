"""bits_per_dim on a model whose outputs make every vlb term computable by hand."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from scipy.stats import norm

import learned_variance_reference as ref
from diffusers_edm.evaluation import bits_per_dim
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler

T = 20


def _images(n: int) -> torch.Tensor:
    values = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 127.5 - 1
    values[0, 0, 0, 0], values[-1, 2, 3, 3] = -1.0, 1.0
    return values


class OracleModel:
    """Knows the data (indexed by the `class_labels` it is given): eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t),
    so its x_0 prediction and posterior mean are exact; v is a constant."""

    def __init__(self, images: torch.Tensor, alpha_bars: np.ndarray, v: float):
        self.images, self.alpha_bars, self.v = images, alpha_bars, v

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        abar = torch.from_numpy(self.alpha_bars[t.numpy()]).reshape(-1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * self.images[class_labels]) / (1 - abar).sqrt()
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


def expected_bits_per_dim(images: np.ndarray, betas: np.ndarray, v: float) -> np.ndarray:
    """prior + sum_{i>=1} KL(variance only, means equal) + decoder NLL at the exact mean x_0, per image, / ln 2."""
    tab = ref.tables(betas)
    frac = (v + 1) / 2
    log_var = frac * np.log(betas) + (1 - frac) * tab["log_clipped"]
    kl_terms = [0.5 * (-1 + log_var[i] - tab["log_clipped"][i] + math.exp(tab["log_clipped"][i] - log_var[i])) for i in range(1, len(betas))]
    std = math.exp(0.5 * log_var[0])
    upper, lower = norm.cdf((images + 1 / 255 - images) / std), norm.cdf((images - 1 / 255 - images) / std)
    probability = np.where(images < -0.999, upper, np.where(images > 0.999, 1 - lower, upper - lower))
    decoder = -np.log(probability).reshape(len(images), -1).mean(1)
    a_T = tab["abar"][-1]
    prior = (0.5 * (-1 - math.log(1 - a_T) + (1 - a_T) + a_T * images**2)).reshape(len(images), -1).mean(1)
    return (prior + sum(kl_terms) + decoder) / math.log(2)


@pytest.mark.parametrize("respacing, v", [(None, 0.3), ("ddim5", -1.0), ("3,2", 1.0)])
def test_bits_per_dim_known_answer(respacing, v):
    images = _images(3)
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    full_betas = ref.cosine_betas(T)
    model = OracleModel(images, ref.alpha_bars(full_betas), v)
    result = bits_per_dim(
        model, images, scheduler, batch_size=2, respacing=respacing, class_labels=torch.arange(3),
        generator=torch.Generator().manual_seed(0), show_progress=respacing is None,
    )
    kept = {None: list(range(T)), "ddim5": [0, 4, 8, 12, 16], "3,2": [0, 4, 9, 10, 19]}[respacing]
    expected = expected_bits_per_dim(images.numpy(), ref.respaced_betas(full_betas, kept), v)
    np.testing.assert_allclose(result.per_image.numpy(), expected, rtol=1e-8)
    assert result.bits_per_dim == pytest.approx(expected.mean(), rel=1e-8)
    assert result.vlb_terms.shape == (3, len(kept))
    if v == -1.0:  # the model's variance is the true posterior one: every KL term vanishes
        assert result.vlb_terms[:, 1:].abs().max() < 1e-9


def test_bits_per_dim_with_a_tiny_unet():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=4, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    images = _images(2).float()
    result = bits_per_dim(unet, images, scheduler, batch_size=2, show_progress=False)
    assert np.isfinite(result.bits_per_dim) and result.bits_per_dim > 0
    torch.testing.assert_close(result.per_image, result.prior + result.vlb_terms.sum(1))


def test_bits_per_dim_rejects_bad_input():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    model = OracleModel(_images(1), ref.alpha_bars(ref.cosine_betas(T)), 0.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*1\.5"):
        bits_per_dim(model, torch.full((1, 3, 4, 4), 1.5), scheduler)
    with pytest.raises(ValueError, match="ddim8"):
        bits_per_dim(model, _images(1), scheduler, respacing="ddim8")
    with pytest.raises(ValueError, match="one label per image"):
        bits_per_dim(model, _images(1), scheduler, class_labels=torch.arange(2))
