"""EDMHeunScheduler against a plain Algorithm 2 loop and the discretization formulas (Karras et al. 2022, Algorithm 2, Table 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from algorithm2_reference import GaussianMixtureDenoiser, algorithm2, edm_sigmas, iddpm_sigmas, ve_sigmas, vp_sigmas
from diffusers_edm import EDMHeunScheduler

SHAPE = (4, 2, 3, 3)
DIM = 2 * 3 * 3


@pytest.fixture(scope="module")
def denoiser() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(DIM, seed=1)


def run_scheduler(scheduler, denoise, x, generator=None, timesteps=None, record=None, predict="sample"):
    """The standard diffusers loop: scale_model_input -> model -> step."""
    for t in scheduler.timesteps if timesteps is None else timesteps:
        model_input = scheduler.scale_model_input(x, t)
        sigma = float(t)
        denoised = denoise(model_input, sigma)
        if record is not None:
            record.append((model_input.clone(), sigma))
        output = denoised if predict == "sample" else (model_input - denoised) / sigma
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x


def initial_noise(seed: int) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=generator, dtype=torch.float64), generator


@pytest.mark.parametrize("num_steps", [1, 2, 5, 18])
def test_deterministic_heun_equals_algorithm_1(denoiser, num_steps):
    scheduler = EDMHeunScheduler()
    scheduler.set_timesteps(num_steps)
    noise, _ = initial_noise(0)
    sigmas = edm_sigmas(num_steps, 0.002, 80.0) if num_steps > 1 else [80.0]
    expected = algorithm2(denoiser, sigmas, noise * sigmas[0])
    result = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma)
    assert scheduler.init_noise_sigma == pytest.approx(sigmas[0], rel=1e-14)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "churn",
    [
        dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),  # EDM's ImageNet-64 setting
        dict(s_churn=80.0, s_tmin=0.0, s_tmax=10.0, s_noise=1.0),  # gamma capped at sqrt(2) - 1
    ],
)
def test_churned_heun_matches_algorithm_2_draw_for_draw(denoiser, churn):
    num_steps = 12
    scheduler = EDMHeunScheduler(**churn)
    scheduler.set_timesteps(num_steps)
    sigmas = edm_sigmas(num_steps, 0.002, 80.0)

    noise, generator = initial_noise(3)
    calls_expected: list = []
    expected = algorithm2(denoiser, sigmas, noise * sigmas[0], generator=generator, calls=calls_expected, **churn)

    noise, generator = initial_noise(3)
    calls: list = []
    result = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma, generator=generator, record=calls)

    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)
    # The model is evaluated at the churned point (x_hat, sigma_hat), call by call.
    assert len(calls) == len(calls_expected) == 2 * num_steps - 1
    for (x, sigma), (x_ref, sigma_ref) in zip(calls, calls_expected):
        assert sigma == pytest.approx(sigma_ref, rel=1e-14)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-10)
    assert any(h > s for h, s in zip(scheduler.sigmas_hat.tolist(), sigmas)), "churn must be active"


def test_churn_at_the_first_step_draws_x_hat_0_directly(denoiser):
    """With s_tmax >= sigma_max, step 0 is churned: x_hat_0 ~ N(0, sigma_hat_0^2) is drawn as the initial noise,
    and from then on the draws match a plain loop started at x_hat_0."""
    churn = dict(s_churn=10.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)
    num_steps = 8
    scheduler = EDMHeunScheduler(**churn)
    scheduler.set_timesteps(num_steps)
    sigmas = edm_sigmas(num_steps, 0.002, 80.0)
    gamma = min(10.0 / num_steps, math.sqrt(2) - 1)
    assert scheduler.init_noise_sigma == pytest.approx(80.0 * (1 + gamma), rel=1e-14)

    noise, generator = initial_noise(5)
    expected = algorithm2(denoiser, sigmas, noise * 80.0 * (1 + gamma), generator=generator, start_is_churned=True, **churn)
    noise, generator = initial_noise(5)
    result = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma, generator=generator)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


# 2^24 draws for S_noise = 1.003: the relative standard error of an empirical std is 1 / sqrt(2 * 2^24) = 1.7e-4,
# while sigma_hat_0 differs from the right std by 1.5e-3 relative there.
@pytest.mark.parametrize("s_noise,count", [(1.003, 2**24), (7.0, 2**18)])
def test_initial_noise_has_the_distribution_of_a_churned_x_hat_0(s_noise, count):
    """Algorithm 2 starts at x_0 = sigma_0 n_0 and, with step 0 churned, evaluates the model at
    x_hat_0 = x_0 + S_noise sqrt(sigma_hat_0^2 - sigma_0^2) n, whose standard deviation is
    sqrt(sigma_0^2 + S_noise^2 (sigma_hat_0^2 - sigma_0^2)) (sigma_hat_0 only for S_noise = 1). A pipeline draws
    randn * init_noise_sigma as the first model input; both must have the same distribution."""
    num_steps = 8
    scheduler = EDMHeunScheduler(s_churn=40.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=s_noise)
    scheduler.set_timesteps(num_steps)
    sigma_0 = 80.0
    sigma_hat_0 = sigma_0 * (1 + min(40.0 / num_steps, math.sqrt(2) - 1))
    expected_std = math.sqrt(sigma_0**2 + s_noise**2 * (sigma_hat_0**2 - sigma_0**2))
    assert scheduler.init_noise_sigma == pytest.approx(expected_std, rel=1e-12)

    generator = torch.Generator().manual_seed(0)
    pipeline_start = torch.randn(count, generator=generator) * scheduler.init_noise_sigma
    x_0 = sigma_0 * torch.randn(count, generator=generator)
    algorithm2_start = x_0 + s_noise * math.sqrt(sigma_hat_0**2 - sigma_0**2) * torch.randn(count, generator=generator)
    tolerance = 4.5 / math.sqrt(2 * count)
    for sample in (pipeline_start, algorithm2_start):
        assert float(sample.double().std()) / expected_std == pytest.approx(1.0, abs=tolerance)
        assert abs(float(sample.double().mean())) / expected_std < 4.5 / math.sqrt(count)
    ratio = float(pipeline_start.double().std() / algorithm2_start.double().std())
    assert ratio == pytest.approx(1.0, abs=tolerance * math.sqrt(2))
    # and the same shape of distribution: a two-sample Kolmogorov-Smirnov test on a subsample
    assert ks_2samp(pipeline_start[:100_000].numpy(), algorithm2_start[:100_000].numpy()).pvalue > 1e-3


def test_euler_solver_and_epsilon_prediction(denoiser):
    churn = dict(s_churn=30.0, s_tmin=0.01, s_tmax=20.0, s_noise=1.0)
    num_steps = 10
    sigmas = edm_sigmas(num_steps, 0.002, 80.0)
    noise, generator = initial_noise(7)
    expected = algorithm2(denoiser, sigmas, noise * 80.0, heun=False, generator=generator, **churn)

    scheduler = EDMHeunScheduler(solver="euler", prediction_type="epsilon", **churn)
    scheduler.set_timesteps(num_steps)
    assert scheduler.order == 1 and len(scheduler.timesteps) == num_steps
    noise, generator = initial_noise(7)
    result = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma, generator=generator, predict="epsilon")
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver,calls", [("heun", lambda n: 2 * n - 1), ("euler", lambda n: n)])
def test_timesteps_list_every_model_call(solver, calls):
    num_steps = 6
    scheduler = EDMHeunScheduler(solver=solver, s_churn=5.0, s_tmin=0.1, s_tmax=30.0)
    scheduler.set_timesteps(num_steps)
    sigmas = edm_sigmas(num_steps, 0.002, 80.0) + [0.0]
    gamma = min(5.0 / num_steps, math.sqrt(2) - 1)
    hats = [s * (1 + gamma) if 0.1 <= s <= 30.0 else s for s in sigmas[:-1]]
    expected = []
    for i in range(num_steps):
        expected.append(hats[i])
        if solver == "heun" and i < num_steps - 1:
            expected.append(sigmas[i + 1])
    assert len(scheduler.timesteps) == calls(num_steps)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=1e-14)
    assert scheduler.sigmas.dtype == torch.float64


@pytest.mark.parametrize(
    "discretization,formula,sigma_min,sigma_max",
    [
        ("edm", edm_sigmas, 0.002, 80.0),
        ("vp", vp_sigmas, 0.002, 80.0),
        ("ve", ve_sigmas, 0.02, 100.0),
        ("iddpm", iddpm_sigmas, 0.002, 80.0),
    ],
)
@pytest.mark.parametrize("num_steps", [7, 18])
def test_each_discretization_follows_its_formula(discretization, formula, sigma_min, sigma_max, num_steps):
    scheduler = EDMHeunScheduler(discretization=discretization, sigma_min=sigma_min, sigma_max=sigma_max)
    scheduler.set_timesteps(num_steps)
    np.testing.assert_allclose(scheduler.sigmas[:-1].numpy(), formula(num_steps, sigma_min, sigma_max), rtol=1e-12)
    assert scheduler.sigmas[-1] == 0


def test_custom_sigmas(denoiser):
    levels = [20.0, 7.5, 1.0, 0.3, 0.01]
    scheduler = EDMHeunScheduler()
    scheduler.set_timesteps(sigmas=torch.tensor(levels))
    assert scheduler.num_inference_steps == 5
    np.testing.assert_allclose(scheduler.sigmas.numpy(), levels + [0.0], rtol=1e-7)
    noise, _ = initial_noise(11)
    expected = algorithm2(denoiser, scheduler.sigmas[:-1].tolist(), noise * 20.0)
    torch.testing.assert_close(run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("s_tmax", [float("inf"), 5.0])
def test_image_to_image_start_part_way(denoiser, s_tmax):
    """add_noise at the first call's sigma + set_begin_index, as diffusers' img2img pipelines do."""
    churn = dict(s_churn=20.0, s_tmin=0.0, s_tmax=s_tmax, s_noise=1.0)
    num_steps, start = 10, 4
    scheduler = EDMHeunScheduler(**churn)
    scheduler.set_timesteps(num_steps)
    begin = start * scheduler.order
    scheduler.set_begin_index(begin)
    timesteps = scheduler.timesteps[begin:]

    generator = torch.Generator().manual_seed(2)
    clean = denoiser.sample(SHAPE[0], generator).reshape(SHAPE)
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    x = scheduler.add_noise(clean, noise, timesteps[:1])
    result = run_scheduler(scheduler, denoiser, x, generator=torch.Generator().manual_seed(9), timesteps=timesteps)

    sigmas = edm_sigmas(num_steps, 0.002, 80.0)
    gamma = min(20.0 / num_steps, math.sqrt(2) - 1) if sigmas[start] <= s_tmax else 0.0
    x_start = clean + sigmas[start] * (1 + gamma) * noise
    expected = algorithm2(
        denoiser, sigmas, x_start, start_step=start, start_is_churned=True, generator=torch.Generator().manual_seed(9), **churn
    )
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


def test_add_noise_takes_one_sigma_per_sample():
    scheduler = EDMHeunScheduler()
    clean, noise = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    out = scheduler.add_noise(clean, noise, torch.tensor([0.5, 2.0, 10.0]))
    assert out[:, 0, 0, 0].tolist() == [0.5, 2.0, 10.0]


def test_half_precision_keeps_dtype_and_stays_close(denoiser):
    scheduler = EDMHeunScheduler(s_churn=10.0, s_tmax=40.0)
    scheduler.set_timesteps(6)
    noise, generator = initial_noise(4)
    x = (noise * scheduler.init_noise_sigma).to(torch.bfloat16)
    for t in scheduler.timesteps:
        out = scheduler.step(denoiser(x, float(t)), t, x, generator=generator)
        assert out.prev_sample.dtype == torch.bfloat16 and out.pred_original_sample.dtype == torch.bfloat16
        x = out.prev_sample
    assert torch.isfinite(x.float()).all()


def test_config_round_trip(tmp_path):
    scheduler = EDMHeunScheduler(s_churn=40.0, s_tmin=0.05, s_noise=1.003, discretization="vp")
    scheduler.save_config(tmp_path)
    loaded = EDMHeunScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert loaded.config.s_tmax == float("inf")
    override = EDMHeunScheduler.from_config(loaded.config, s_churn=0.0, solver="euler")
    assert override.config.s_churn == 0.0 and override.order == 1 and override.config.discretization == "vp"


def test_rerunning_after_set_timesteps(denoiser):
    scheduler = EDMHeunScheduler()
    noise, _ = initial_noise(0)
    scheduler.set_timesteps(4)
    first = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma)
    scheduler.set_timesteps(4)
    second = run_scheduler(scheduler, denoiser, noise * scheduler.init_noise_sigma)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sigma_min=0.0), "sigma_min"),
        (dict(sigma_min=-1.0), "sigma_min"),
        (dict(sigma_min=90.0), "sigma_max"),
        (dict(rho=0.0), "rho"),
        (dict(s_churn=-1.0), "s_churn"),
        (dict(s_noise=-0.5), "s_noise"),
        (dict(prediction_type="v_prediction"), "prediction_type"),
        (dict(solver="rk4"), "solver"),
        (dict(discretization="cosine"), "discretization"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EDMHeunScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(sigmas=[1.0, 2.0]), "strictly decreasing"),
        (dict(sigmas=[2.0, 2.0]), "strictly decreasing"),
        (dict(sigmas=[2.0, 0.0, 0.0]), "positive"),  # one final 0 is the appended sigma_N; a second is not a level
        (dict(sigmas=[3.0, 0.0, 1.0]), "positive"),
        (dict(sigmas=[0.0]), "positive"),
        (dict(sigmas=[2.0, -1.0]), "positive"),
        (dict(sigmas=[]), "at least one"),
        (dict(), "exactly one"),
        (dict(num_inference_steps=4, sigmas=[1.0]), "exactly one"),
    ],
)
def test_bad_set_timesteps_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EDMHeunScheduler().set_timesteps(**kwargs)


def test_bad_step_input_is_a_clear_error():
    scheduler = EDMHeunScheduler()
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 80.0, x)
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[0]
    with pytest.raises(ValueError, match="learned-variance"):
        scheduler.step(torch.zeros(1, 6, 4, 4), t, x)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(1, 3, 4, 5), t, x)
    with pytest.raises(ValueError, match="not the first model call"):
        scheduler.step(x, 33.3, x)
    with pytest.raises(ValueError, match="multiple of order"):
        scheduler.set_begin_index(1)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match="have been stepped"):
        scheduler.step(x, t, x)
