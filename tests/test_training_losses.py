"""EDM / VP / VE / iDDPM denoising losses (EDM, Karras et al. 2022, eq. 8 and Table 1) and EDM's EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from diffusers_edm.losses.denoising import EDMLoss, IDDPMLoss, VELoss, VPLoss
from diffusers_edm.models import EDMPrecond
from diffusers_edm.training.ema import EDMEMAModel


class RecordingDenoiser(torch.nn.Module):
    """D(x; sigma) = y + offset for known clean data y; records what it is given."""

    def __init__(self, clean: torch.Tensor, offset: float):
        super().__init__()
        self.clean, self.offset = clean, offset
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma, **conditioning):
        self.inputs.append((x.clone(), sigma.clone()))

        class Output:
            sample = self.clean + self.offset

        return Output()


def reference_weight(kind: str, sigma: np.ndarray, sigma_data: float = 0.5) -> np.ndarray:
    if kind == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return 1.0 / sigma**2


@pytest.mark.parametrize("kind,loss", [("edm", EDMLoss()), ("vp", VPLoss()), ("ve", VELoss()), ("iddpm", IDDPMLoss())])
def test_loss_is_weighted_squared_error_at_the_noised_input(kind, loss):
    torch.manual_seed(0)
    clean = torch.rand(512, 1, 2, 2) * 2 - 1
    denoiser = RecordingDenoiser(clean, offset=0.3)
    output = loss(denoiser, clean)
    x, sigma = denoiser.inputs[0]
    np.testing.assert_allclose(output.sigma.numpy(), sigma.numpy())
    # x = y + sigma n with standard normal n
    noise = ((x - clean) / sigma.reshape(-1, 1, 1, 1)).flatten()
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    expected = reference_weight(kind, sigma.double().numpy())[:, None, None, None] * 0.3**2
    np.testing.assert_allclose(output.loss.double().numpy(), np.broadcast_to(expected, clean.shape), rtol=1e-5)


def test_sigma_distributions_follow_reference():
    torch.manual_seed(1)
    count = 40000
    log_sigma = EDMLoss(P_mean=-1.2, P_std=1.2).sample_sigma(count, torch.device("cpu")).double().log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.03 and abs(log_sigma.std().item() - 1.2) < 0.03

    # VP: t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d is uniform on (1e-5, 1)
    sigma = VPLoss().sample_sigma(count, torch.device("cpu")).double()
    t = (torch.sqrt(0.1**2 + 2 * 19.9 * torch.log(1 + sigma**2)) - 0.1) / 19.9
    assert t.min() >= 1e-5 - 1e-7 and t.max() <= 1 + 1e-6
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.005

    # VE: log sigma uniform on [log 0.02, log 100]
    u = (VELoss().sample_sigma(count, torch.device("cpu")).double().log() - math.log(0.02)) / math.log(100 / 0.02)
    assert u.min() >= -1e-6 and u.max() <= 1 + 1e-6 and abs(u.mean().item() - 0.5) < 0.01

    # iDDPM: levels of the cosine table u_0..u_{M-1}, uniformly
    def alpha_bar(j):
        return math.sin(math.pi / 2 * j / (1000 * 1.008)) ** 2

    table = [0.0] * 1001
    for j in range(1000, 0, -1):
        table[j - 1] = math.sqrt((table[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), 0.001) - 1)
    drawn = IDDPMLoss().sample_sigma(count, torch.device("cpu")).double().numpy()
    distances = np.abs(drawn[:, None] - np.array(table[:1000])[None]).min(1)
    assert distances.max() < 1e-5 * max(table)


def test_edm_loss_equals_unit_weighted_mse_on_the_effective_target():
    """lambda |D - y|^2 = |F - (y - c_skip x) / c_out|^2 with EDM's c_skip, c_out (EDM eq. 8 and Table 1)."""
    torch.manual_seed(2)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1)
    denoiser = EDMPrecond.from_backbone(unet, sigma_data=0.5)
    clean = torch.rand(6, 1, 8, 8) * 2 - 1
    recorder = []
    original_forward = denoiser.backbone.forward

    def recording_forward(sample, timestep, *args, **kwargs):
        output = original_forward(sample, timestep, *args, **kwargs)
        recorder.append(output[0] if isinstance(output, tuple) else output.sample)
        return output

    denoiser.backbone.forward = recording_forward
    torch.manual_seed(3)
    output = EDMLoss(sigma_data=0.5)(denoiser, clean)
    torch.manual_seed(3)
    sigma = (torch.randn(6) * 1.2 - 1.2).exp().double()
    x = clean.double() + torch.randn_like(clean).double() * sigma.reshape(-1, 1, 1, 1)
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out = 0.25 / (s**2 + 0.25), s * 0.5 / torch.sqrt(s**2 + 0.25)
    target = (clean.double() - c_skip * x) / c_out
    torch.testing.assert_close(output.loss.double(), (recorder[0].double() - target) ** 2, rtol=2e-4, atol=1e-6)


def test_edm_ema_decay_and_update_follow_reference():
    param = torch.nn.Parameter(torch.zeros(3))
    ema = EDMEMAModel([param], batch_size=64, ema_halflife_kimg=0.5, ema_rampup_ratio=0.05)
    for step in range(1, 400):
        param.data += 1.0
        previous = ema.shadow_params[0].clone()
        ema.step([param])
        halflife = min(500.0, (step - 1) * 64 * 0.05)  # images seen before this step
        beta = 0.5 ** (64 / max(halflife, 1e-8))
        assert ema.cur_decay_value == pytest.approx(beta, rel=1e-12)
        torch.testing.assert_close(ema.shadow_params[0], param.data + beta * (previous - param.data))
    state = ema.state_dict()
    restored = EDMEMAModel([torch.nn.Parameter(torch.zeros(3))], batch_size=64, ema_halflife_kimg=0.5)
    restored.load_state_dict(state)
    assert restored.optimization_step == ema.optimization_step
    with pytest.raises(ValueError, match="batch_size"):
        EDMEMAModel([torch.nn.Parameter(torch.zeros(3))], batch_size=32, ema_halflife_kimg=0.5).load_state_dict(state)


@pytest.mark.parametrize("rampup_ratio", [0.05, None])
def test_edm_ema_trajectory_of_a_scalar_follows_edms_training_loop(rampup_ratio):
    """EDM's loop: ema_halflife_nimg = min(halflife, cur_nimg * ratio) with cur_nimg BEFORE ``cur_nimg += batch``."""
    batch, halflife_kimg = 32, 0.4
    values = [float(v) for v in np.random.default_rng(3).normal(size=60).cumsum()]
    param = torch.nn.Parameter(torch.tensor([values[0]], dtype=torch.float64))
    ema = EDMEMAModel([param], batch_size=batch, ema_halflife_kimg=halflife_kimg, ema_rampup_ratio=rampup_ratio)
    reference, cur_nimg = values[0], 0
    for value in values[1:]:
        param.data.fill_(value)  # the optimizer step
        ema.step([param])
        halflife_nimg = halflife_kimg * 1000
        if rampup_ratio is not None:
            halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
        beta = 0.5 ** (batch / max(halflife_nimg, 1e-8))
        reference = value + (reference - value) * beta  # p_ema = p_net.lerp(p_ema, beta)
        cur_nimg += batch
        assert ema.shadow_params[0].item() == pytest.approx(reference, rel=1e-12, abs=1e-12)
    if rampup_ratio is not None:  # the first update (cur_nimg = 0) copies the weights: beta = 0
        first = EDMEMAModel([torch.nn.Parameter(torch.zeros(1))], batch_size=batch, ema_rampup_ratio=rampup_ratio)
        weights = torch.nn.Parameter(torch.full((1,), 5.0))
        first.step([weights])
        assert first.cur_decay_value == 0.0 and first.shadow_params[0].item() == 5.0


@pytest.mark.parametrize("make", [lambda: EDMLoss(P_std=0), lambda: VPLoss(epsilon_t=0), lambda: VELoss(sigma_min=5, sigma_max=1)])
def test_bad_loss_settings_are_errors(make):
    with pytest.raises(ValueError):
        make()
