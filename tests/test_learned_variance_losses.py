"""Gaussian KL, discretized decoder NLL, vlb terms and the hybrid loss against Improved DDPM's definitions (Nichol &
Dhariwal 2021, section 2 and eq. 16; float64)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch

import learned_variance_reference as ref
from diffusers_edm.gaussian_diffusion import DiscreteGaussianDiffusion
from diffusers_edm.losses import discretized_gaussian_log_likelihood, hybrid_loss, normal_kl, prior_bits, vlb_term_bits

T = 30


def _draw(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _images(shape, seed):
    """8-bit values scaled to [-1, 1], with both extremes present."""
    values = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).double() / 127.5 - 1
    values.view(-1)[0], values.view(-1)[1] = -1.0, 1.0
    return values


def test_normal_kl():
    m1, lv1, m2, lv2 = (_draw((50,), s) for s in range(4))
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2).numpy(), ref.normal_kl(*(a.numpy() for a in (m1, lv1, m2, lv2))), rtol=1e-12)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-15


def test_discretized_gaussian_log_likelihood():
    x = _images((400,), 0)
    means = x + 0.05 * _draw((400,), 1)
    log_scales = -3 + 0.5 * _draw((400,), 2)
    got = discretized_gaussian_log_likelihood(x, means, log_scales).numpy()
    np.testing.assert_allclose(got, ref.discretized_log_likelihood(x.numpy(), means.numpy(), log_scales.numpy()), rtol=1e-7, atol=1e-9)
    # probabilities of all 256 bins sum to one
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    total = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, 0.3), torch.full_like(grid, -1.0)).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("variance_type", ["learned_range", "learned", "fixed_large"])
def test_vlb_terms_and_prior(variance_type):
    betas = ref.cosine_betas(T)
    diffusion = DiscreteGaussianDiffusion(betas)
    tab = ref.tables(betas)
    x0 = _images((3, 3, 4, 4), 3)
    noise = _draw((3, 3, 4, 4), 4)
    timesteps = torch.tensor([0, 1, 17])
    abar = tab["abar"][timesteps.numpy()].reshape(-1, 1, 1, 1)
    x_t = torch.from_numpy(np.sqrt(abar) * x0.numpy() + np.sqrt(1 - abar) * noise.numpy())
    model_output = _draw((3, 6, 4, 4), 5)
    got = vlb_term_bits(diffusion, model_output, x0, x_t, timesteps, variance_type, clip_denoised=True).numpy()
    for row, t in enumerate(timesteps.tolist()):
        mean, log_var, _ = ref.reverse_mean_log_variance(
            betas, t, x_t[row].numpy(), model_output[row, :3].numpy(), model_output[row, 3:].numpy(), variance_type
        )
        if t == 0:
            expected = -ref.discretized_log_likelihood(x0[row].numpy(), mean, 0.5 * log_var).mean() / math.log(2)
        else:
            true_mean = tab["coef1"][t] * x0[row].numpy() + tab["coef2"][t] * x_t[row].numpy()
            expected = ref.normal_kl(true_mean, tab["log_clipped"][t], mean, log_var).mean() / math.log(2)
        assert got[row] == pytest.approx(expected, rel=1e-9)
    prior = prior_bits(diffusion, x0).numpy()
    a_T = tab["abar"][-1]
    expected_prior = ref.normal_kl(math.sqrt(a_T) * x0.numpy(), math.log(1 - a_T), 0.0, 0.0).reshape(3, -1).mean(1) / math.log(2)
    np.testing.assert_allclose(prior, expected_prior, rtol=1e-9)


class TwoHeadModel(torch.nn.Module):
    """eps and v from separate 1x1 convolutions, so each head's parameters feed only its own channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.eps_head = torch.nn.Conv2d(channels, channels, 1).double()
        self.variance_head = torch.nn.Conv2d(channels, channels, 1).double()

    def forward(self, x):
        return torch.cat([self.eps_head(x), torch.tanh(self.variance_head(x))], dim=1)


def test_hybrid_loss_value_and_stop_gradient():
    torch.manual_seed(0)
    betas = ref.cosine_betas(T)
    diffusion = DiscreteGaussianDiffusion(betas)
    model = TwoHeadModel(4)
    x0 = _images((4, 4, 3, 3), 0)
    noise = _draw((4, 4, 3, 3), 1)
    timesteps = torch.tensor([0, 3, 12, 29])
    abar = ref.alpha_bars(betas)[timesteps.numpy()].reshape(-1, 1, 1, 1)
    x_t = torch.from_numpy(np.sqrt(abar) * x0.numpy() + np.sqrt(1 - abar) * noise.numpy())
    out = hybrid_loss(model(x_t), x0, x_t, noise, timesteps, diffusion)

    eps = model(x_t)[:, :4].detach().numpy()
    np.testing.assert_allclose(out.mse.detach().numpy(), ((eps - noise.numpy()) ** 2).reshape(4, -1).mean(1), rtol=1e-12)
    np.testing.assert_allclose(out.loss.detach().numpy(), (out.mse + 0.001 * T * out.vlb).detach().numpy(), rtol=1e-12)

    eps_params, variance_params = list(model.eps_head.parameters()), list(model.variance_head.parameters())
    vlb_grads = torch.autograd.grad((0.001 * T * out.vlb).sum(), eps_params + variance_params, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.all(g == 0) for g in vlb_grads[: len(eps_params)])
    assert any(g is not None and g.abs().sum() > 0 for g in vlb_grads[len(eps_params) :])
    # the hybrid gradient of the eps head is exactly the L_simple gradient
    hybrid_grads = torch.autograd.grad(out.loss.sum(), eps_params, retain_graph=True)
    mse_grads = torch.autograd.grad(out.mse.sum(), eps_params)
    for hybrid, mse in zip(hybrid_grads, mse_grads):
        torch.testing.assert_close(hybrid, mse, rtol=0, atol=0)


def test_hybrid_loss_rejects_fixed_variance():
    diffusion = DiscreteGaussianDiffusion(ref.cosine_betas(T))
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="fixed_small"):
        hybrid_loss(torch.zeros(1, 6, 2, 2), x, x, x, torch.tensor([1]), diffusion, variance_type="fixed_small")
    with pytest.raises(ValueError, match="one timestep per example"):
        vlb_term_bits(diffusion, torch.zeros(2, 6, 2, 2), torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2), torch.tensor([1]))
