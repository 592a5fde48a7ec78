"""EDMHeunDiscreteScheduler: Algorithm 2 in sigma space driving a discrete-time VP model (Karras et al. 2022, Algorithm 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler
from diffusers.schedulers import AysSchedules

from algorithm2_reference import GaussianMixtureDenoiser, algorithm2, edm_sigmas, vp_table_sigmas
from diffusers_edm import EDMHeunDiscreteScheduler

SHAPE = (3, 4, 2, 2)
DIM = 16


@pytest.fixture(scope="module")
def denoiser() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(DIM, seed=4, spread=0.5)


class AnalyticVPModel:
    """A discrete-time VP network built from an exact denoiser: it receives x_t = x / sqrt(sigma^2 + 1) and a
    training timestep, and answers eps, v or x_0. The sigma of each call is taken from the test's own list of
    expected evaluation sigmas, so a wrong input scaling or call order changes the result."""

    def __init__(self, denoise, call_sigmas: list[float], prediction_type: str):
        self.denoise, self.call_sigmas, self.prediction_type = denoise, call_sigmas, prediction_type
        self.timesteps: list[float] = []

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = self.call_sigmas[len(self.timesteps)]
        self.timesteps.append(float(timestep))
        x = x_t * math.sqrt(sigma**2 + 1)
        y = self.denoise(x, sigma)
        eps = (x - y) / sigma
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1 - abar) y, with sqrt(abar) = 1/sqrt(sigma^2+1)
            return (eps - sigma * y) / math.sqrt(sigma**2 + 1)
        return y


def expected_calls(sigmas: list[float], hats: list[float]) -> list[float]:
    calls = []
    for i in range(len(sigmas)):
        calls.append(hats[i])
        if i < len(sigmas) - 1:
            calls.append(sigmas[i + 1])
    return calls


def run(scheduler, model, x, generator=None):
    for t in scheduler.timesteps:
        output = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_default_range_is_the_training_table(beta_schedule):
    scheduler = EDMHeunDiscreteScheduler(beta_schedule=beta_schedule)
    scheduler.set_timesteps(10)
    table = vp_table_sigmas(beta_schedule)
    np.testing.assert_allclose(scheduler.sigmas[:-1].numpy(), edm_sigmas(10, table[0], table[-1]), rtol=1e-10)
    assert scheduler.init_noise_sigma == pytest.approx(table[-1], rel=1e-12)


def test_timesteps_interpolate_log_sigma_over_the_table():
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", s_churn=3.0, s_tmax=5.0)
    scheduler.set_timesteps(8)
    log_table = np.log(vp_table_sigmas("scaled_linear"))
    assert len(scheduler.timesteps) == 2 * 8 - 1 and scheduler.timesteps.dtype == torch.float32
    for t, sigma in zip(scheduler.timesteps.tolist(), scheduler.evaluation_sigmas.tolist()):
        low = min(int(math.floor(t)), len(log_table) - 2)
        w = t - low
        # the table's log-sigma, linearly interpolated at the fractional timestep, gives back the call's sigma
        assert math.exp((1 - w) * log_table[low] + w * log_table[low + 1]) == pytest.approx(sigma, rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    "churn", [dict(), dict(s_churn=20.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003)], ids=["deterministic", "churn"]
)
def test_matches_algorithm_2_with_a_vp_model(denoiser, prediction_type, churn):
    num_steps = 9
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type, **churn)
    scheduler.set_timesteps(num_steps)

    table = vp_table_sigmas("scaled_linear")
    sigmas = edm_sigmas(num_steps, table[0], table[-1])
    gamma = min(churn.get("s_churn", 0.0) / num_steps, math.sqrt(2) - 1)
    hats = [s * (1 + gamma) if churn.get("s_tmin", 0) <= s <= churn.get("s_tmax", math.inf) else s for s in sigmas]

    generator = torch.Generator().manual_seed(8)
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    expected = algorithm2(denoiser, sigmas, noise * sigmas[0], generator=generator, **churn)

    generator = torch.Generator().manual_seed(8)
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    model = AnalyticVPModel(denoiser, expected_calls(sigmas, hats), prediction_type)
    result = run(scheduler, model, noise * scheduler.init_noise_sigma, generator)
    assert len(model.timesteps) == 2 * num_steps - 1
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


def test_churned_sigma_hat_is_capped_at_the_table_maximum():
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", s_churn=4.0)  # s_tmax = inf
    scheduler.set_timesteps(4)
    table_max = vp_table_sigmas("scaled_linear")[-1]
    assert float(scheduler.sigmas_hat[0]) == pytest.approx(table_max, rel=1e-12)
    assert scheduler.timesteps.max() <= 999
    assert float(scheduler.sigmas_hat[1]) == pytest.approx(float(scheduler.sigmas[1]) * 2 ** 0.5, rel=1e-12)


def test_image_to_image_add_noise_uses_the_begin_call_sigma():
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", s_churn=8.0, s_tmax=20.0)
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(6)
    clean, noise = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    noisy = scheduler.add_noise(clean, noise, scheduler.timesteps[6:7].repeat(2))
    sigma_hat_3 = float(scheduler.sigmas[3]) * (1 + min(8.0 / 8, math.sqrt(2) - 1))
    torch.testing.assert_close(noisy, torch.full_like(noisy, sigma_hat_3))
    # the first model call of the run is scaled with the same sigma
    scaled = scheduler.scale_model_input(noisy, scheduler.timesteps[6])
    torch.testing.assert_close(scaled, noisy / math.sqrt(sigma_hat_3**2 + 1))


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize(
    "source",
    [
        # Stable Diffusion 1.x: PNDM, scaled_linear, epsilon
        PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1),
        # Stable Diffusion 2.x (768): DDIM with v-prediction
        DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"),
        # SDXL: Euler with leading spacing
        EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                               timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False),
        DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    algorithm_type="dpmsolver++", solver_order=2),
    ],
    ids=["sd1-pndm", "sd2-ddim-v", "sdxl-euler", "dpmsolver"],
)
def test_from_config_of_shipped_scheduler_configs(source):
    scheduler = EDMHeunDiscreteScheduler.from_config(source.config, s_churn=2.5, s_tmin=0.1, s_tmax=8.0)
    assert scheduler.config.prediction_type == source.config.prediction_type
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.s_churn, scheduler.config.s_tmin, scheduler.config.s_tmax) == (2.5, 0.1, 8.0)
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), source.alphas_cumprod.numpy(), rtol=1e-5)
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) == 9


def test_config_round_trip(tmp_path):
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", s_churn=1.5)
    scheduler.save_pretrained(tmp_path)
    loaded = EDMHeunDiscreteScheduler.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(scheduler.config)


def test_trained_betas_are_used():
    betas = np.linspace(1e-4, 0.03, 50)
    scheduler = EDMHeunDiscreteScheduler(trained_betas=betas.tolist(), num_train_timesteps=50)
    alpha_bar = np.cumprod(1 - betas)
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), alpha_bar, rtol=1e-12)
    scheduler.set_timesteps(4)
    assert float(scheduler.sigmas[0]) == pytest.approx(math.sqrt((1 - alpha_bar[-1]) / alpha_bar[-1]), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(sigma_max=50.0), "sigma_max"),
        (dict(sigma_min=1e-5), "sigma_min"),
        (dict(sigma_min=5.0, sigma_max=2.0), "sigma_min < sigma_max"),
        (dict(s_churn=-1.0), "s_churn"),
        (dict(solver="dpm"), "solver"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EDMHeunDiscreteScheduler(**kwargs)


def test_bad_custom_sigmas_are_a_clear_error():
    scheduler = EDMHeunDiscreteScheduler()
    with pytest.raises(ValueError, match="training table"):
        scheduler.set_timesteps(sigmas=[100.0, 1.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(sigmas=[1.0, 3.0])


# ------------------------------------------------------------------------------------------------ default schedule
def test_a_default_schedule_exists_after_init():
    """As diffusers' discrete schedulers: after __init__ the schedule visits every training timestep (T-1 .. 0),
    so scale_model_input and add_noise work before set_timesteps."""
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler = EDMHeunDiscreteScheduler(**config)
    # Heun: timestep 999 once, then every t from 998 to 0 twice (correction of one step, Euler call of the next)
    expected = [999.0] + [float(t) for t in range(998, -1, -1) for _ in range(2)]
    np.testing.assert_allclose(scheduler.timesteps.numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), HeunDiscreteScheduler(**config).timesteps.numpy(), atol=1e-3)
    assert scheduler.num_inference_steps == 1000

    table = vp_table_sigmas("scaled_linear")
    sample = torch.ones(2, 4, 2, 2)
    torch.testing.assert_close(scheduler.scale_model_input(sample, 999.0), sample / math.sqrt(table[999] ** 2 + 1))
    fresh = EDMHeunDiscreteScheduler(**config)
    clean, noise = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    noisy = fresh.add_noise(clean, noise, torch.tensor([999.0, 500.0]))
    torch.testing.assert_close(noisy[:, 0, 0, 0], torch.tensor([table[999], table[500]], dtype=torch.float32))


# ------------------------------------------------------------------------------------------------ initial noise
def test_initial_and_image_to_image_noise_with_churn_and_s_noise():
    """At the first call of a churned step i the sample is x_hat_i, with std sqrt(sigma_i^2 + S_noise^2 (sigma_hat_i^2
    - sigma_i^2)): init_noise_sigma for step 0, add_noise for a run that begins at step i."""
    s_noise, num_steps = 2.0, 6
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", sigma_max=5.0, s_churn=3.0, s_noise=s_noise)
    scheduler.set_timesteps(num_steps)
    table = vp_table_sigmas("scaled_linear")
    sigmas = edm_sigmas(num_steps, table[0], 5.0)
    gamma = min(3.0 / num_steps, math.sqrt(2) - 1)

    def start_std(sigma: float) -> float:
        sigma_hat = sigma * (1 + gamma)
        return math.sqrt(sigma**2 + s_noise**2 * (sigma_hat**2 - sigma**2))

    assert scheduler.init_noise_sigma == pytest.approx(start_std(sigmas[0]), rel=1e-12)
    scheduler.set_begin_index(2 * 3)
    noisy = scheduler.add_noise(torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), scheduler.timesteps[6:7])
    torch.testing.assert_close(noisy, torch.full_like(noisy, start_std(sigmas[3])))


# ------------------------------------------------------------------------------------------------ custom sigmas
@pytest.mark.parametrize("name", ["StableDiffusionSigmas", "StableDiffusionXLSigmas"])
def test_shipped_ays_sigma_schedules_are_accepted(name):
    """diffusers' AYS schedules start at 14.615 (the table ends at 14.6146, 2.5e-5 relative below) and end in 0."""
    levels = AysSchedules[name]
    scheduler = EDMHeunDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler.set_timesteps(sigmas=levels)
    table_max = vp_table_sigmas("scaled_linear")[-1]
    assert levels[0] > table_max and levels[-1] == 0
    expected = [table_max] + list(levels[1:])  # the top clamped to the table, the final 0 is sigma_N
    np.testing.assert_allclose(scheduler.sigmas.numpy(), expected, rtol=1e-12)
    assert scheduler.num_inference_steps == len(levels) - 1
    assert scheduler.timesteps[0] == pytest.approx(999.0, abs=1e-4)


def test_levels_near_the_table_ends_are_clamped_and_others_refused():
    table = vp_table_sigmas("scaled_linear")
    scheduler = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear")
    scheduler.set_timesteps(sigmas=[table[-1] * (1 + 5e-5), 1.0, table[0] * (1 - 5e-5)])
    np.testing.assert_allclose(scheduler.sigmas.numpy(), [table[-1], 1.0, table[0], 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="training table"):
        scheduler.set_timesteps(sigmas=[table[-1] * (1 + 2e-4), 1.0])
    with pytest.raises(ValueError, match="training table"):
        scheduler.set_timesteps(sigmas=[1.0, table[0] * (1 - 2e-4)])
    with pytest.raises(ValueError, match="strictly decreasing"):  # both clamp to the table's top
        scheduler.set_timesteps(sigmas=[table[-1] * (1 + 5e-5), table[-1] * (1 + 1e-5), 1.0])
    # the configured range follows the same rule
    clamped = EDMHeunDiscreteScheduler(beta_schedule="scaled_linear", sigma_max=14.615)
    clamped.set_timesteps(4)
    assert float(clamped.sigmas[0]) == pytest.approx(table[-1], rel=1e-12)
