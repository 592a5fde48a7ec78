"""EDMMultistepScheduler / EDMMultistepDiscreteScheduler in real (tiny, offline) pipelines, and their contracts.

What is checked against statements written here (not against the package's own output):

- the noise levels of a run: EDM's rho grid (Karras et al. 2022, eq. 5) over the training table's range
  ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``, with ``M`` levels for ``M`` model calls, or ``M + 1`` with the
  analytical first step, whose first level takes no call;
- a discrete VP UNet is called at the fractional timestep ``t = interp(ln sigma, ln table, 0..T-1)`` with the input
  ``x / sqrt(sigma^2 + 1)`` of the sigma-space sample ``x``;
- the order of step i of a run that starts at step i_0: ``min(order, i - i_0 + 1)``, and, with lower_order_final and
  S < 15 steps, at most ``S - i`` (the step to sigma = 0 of DPM-Solver++ / UniPC has order 1);
- the denoiser read from an eps / v / x_0 output and the first-order step ``x_t = (t / s) x_s - expm1(-h) D_s``
  (DPM-Solver++ 1 = DDIM) or ``x_t = x_s + (t - s) d_s`` (iPNDM 1 = Euler).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from algorithm2_reference import vp_table_sigmas
from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    EDMPipeline,
)
from diffusers_edm.models import EDMPrecond
from test_pipeline_noise_range import FAMILIES, RELATIVE, STEPS as RANGE_STEPS, U, backbone_sigmas
from test_pipeline_noise_range import M as IDDPM_M
from tiny_backbones import tiny_unet
from tiny_stable_diffusion import IMAGE_SIZE, SD15_SCHEDULER_CONFIG, make_tiny_sd_pipeline, make_tiny_sdxl_pipeline

PROMPT = "a photo of an astronaut riding a horse"
SD_TABLE = vp_table_sigmas("scaled_linear")  # sigma of each training timestep, increasing
SOLVERS = ["ipndm", "dpmpp", "unipc"]
# Stable Diffusion 2.x ships v-prediction with the same table (stabilityai/stable-diffusion-2-1 scheduler config).
SD2_SCHEDULER_CONFIG = {**SD15_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}


def rho_levels(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    i = np.arange(n)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def table_call_sigmas(num_calls: int, analytical_first_step: bool = False) -> np.ndarray:
    """The noise level of each model call over Stable Diffusion's table range."""
    levels = rho_levels(SD_TABLE[0], SD_TABLE[-1], num_calls + analytical_first_step)
    return levels[1:] if analytical_first_step else levels


def fractional_timesteps(sigmas: np.ndarray) -> np.ndarray:
    """t = interp(ln sigma, ln sigma_table, 0..T-1)."""
    return np.interp(np.log(sigmas), np.log(SD_TABLE), np.arange(len(SD_TABLE)))


def expected_orders(num_steps: int, order: int, first_step: int, to_zero_first_order: bool) -> list[int]:
    """The order rule of the spec, written out: warm-up from the run's first step, diffusers' lower_order_final."""
    orders = []
    for i in range(num_steps):
        if i < first_step:
            orders.append(0)
            continue
        o = min(order, i - first_step + 1)
        if num_steps < 15:
            o = min(o, num_steps - i)
        if to_zero_first_order and i == num_steps - 1:
            o = 1
        orders.append(o)
    return orders


class UNetRecorder:
    """Records the input sample and timestep of every UNet call (a forward pre-hook)."""

    def __init__(self, unet: torch.nn.Module):
        self.inputs: list[torch.Tensor] = []
        self.timesteps: list[float] = []
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.inputs.append(sample.detach().clone())
        self.timesteps.append(float(torch.as_tensor(timestep).reshape(-1)[0]))

    def remove(self) -> None:
        self._handle.remove()


def run_recorded(pipe, num_calls: int, seed: int = 0, **kwargs):
    """Run ``pipe`` from known initial noise; return (images, UNet inputs, UNet timesteps, sigma-space latents x_i
    before each call)."""
    latent_shape = (1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(100 + seed))
    latents: list[torch.Tensor | None] = [None]  # x_0, set once the pipeline has set the schedule

    def keep(pipeline, i, t, tensors):
        latents.append(tensors["latents"].clone())
        return tensors

    recorder = UNetRecorder(pipe.unet)
    try:
        images = pipe(
            PROMPT, num_inference_steps=num_calls, height=IMAGE_SIZE, width=IMAGE_SIZE, latents=noise.clone(),
            generator=torch.Generator().manual_seed(seed), output_type="np", callback_on_step_end=keep, **kwargs,
        ).images
    finally:
        recorder.remove()
    latents[0] = noise * pipe.scheduler.init_noise_sigma  # the pipeline's x_0 = noise * init_noise_sigma
    return images, recorder.inputs, recorder.timesteps, latents


def check_unet_calls(pipe, num_calls: int, analytical_first_step: bool = False, **kwargs) -> np.ndarray:
    images, inputs, timesteps, latents = run_recorded(pipe, num_calls, **kwargs)
    sigmas = table_call_sigmas(num_calls, analytical_first_step)
    assert len(timesteps) == num_calls
    np.testing.assert_allclose(timesteps, fractional_timesteps(sigmas), rtol=1e-5, atol=1e-4)
    for call, sigma in enumerate(sigmas):
        # classifier-free guidance: the batch is [uncond, cond], both halves are the same latents
        expected = latents[call] / math.sqrt(sigma**2 + 1)
        torch.testing.assert_close(inputs[call][:1], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(inputs[call][1:], expected, rtol=1e-5, atol=1e-5)
    assert images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(images).all()
    return images


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))


# ---------------------------------------------------------------------------------------------- Stable Diffusion
@pytest.mark.parametrize("solver", SOLVERS + ["auto"])
def test_sd15_text_to_image_calls_the_unet_at_the_fractional_timesteps(sd_pipe, solver):
    sd_pipe.scheduler = EDMMultistepDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG, solver=solver)
    images = check_unet_calls(sd_pipe, 5)
    np.testing.assert_array_equal(images, run_recorded(sd_pipe, 5)[0])  # deterministic


def test_sd15_with_the_analytical_first_step_saves_a_call(sd_pipe):
    sd_pipe.scheduler = EDMMultistepDiscreteScheduler.from_config(
        SD15_SCHEDULER_CONFIG, solver="unipc", analytical_first_step=True
    )
    check_unet_calls(sd_pipe, 4, analytical_first_step=True)
    # x_1 = a x_0 after DPM-Solver++ / UniPC's first-order step with D_0 = c_skip x_0 (sigma_data = 1):
    # a = sigma_1 / sigma_0 - expm1(-h) c_skip(sigma_0), h = ln(sigma_0 / sigma_1)
    s0, s1 = rho_levels(SD_TABLE[0], SD_TABLE[-1], 5)[:2]
    a = s1 / s0 - math.expm1(-math.log(s0 / s1)) / (s0**2 + 1)
    assert sd_pipe.scheduler.init_noise_sigma == pytest.approx(a * s0, rel=1e-12)


@pytest.mark.parametrize("solver", ["ipndm", "unipc"])
def test_sd2_v_prediction_text_to_image(sd_pipe, solver):
    sd_pipe.scheduler = EDMMultistepDiscreteScheduler.from_config(SD2_SCHEDULER_CONFIG, solver=solver)
    assert sd_pipe.scheduler.config.prediction_type == "v_prediction"
    check_unet_calls(sd_pipe, 4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("solver", ["ipndm", "dpmpp"])
def test_first_step_reads_the_output_kind_and_takes_the_first_order_step(prediction_type, solver):
    scheduler = EDMMultistepDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG, prediction_type=prediction_type, solver=solver)
    scheduler.set_timesteps(6)
    s0, s1 = table_call_sigmas(6)[:2]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) * s0
    output = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    result = scheduler.step(output, scheduler.timesteps[0], x)
    if prediction_type == "epsilon":
        denoised = x - s0 * output
    elif prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) y, sqrt(abar) = 1 / sqrt(s^2 + 1)
        denoised = x / (s0**2 + 1) - s0 / math.sqrt(s0**2 + 1) * output
    else:
        denoised = output
    torch.testing.assert_close(result.pred_original_sample, denoised, rtol=1e-12, atol=1e-12)
    if solver == "ipndm":  # Euler: x_1 = x_0 + (sigma_1 - sigma_0) (x_0 - D_0) / sigma_0
        expected = x + (s1 - s0) * (x - denoised) / s0
    else:  # DDIM: x_1 = (sigma_1 / sigma_0) x_0 - expm1(-h) D_0
        expected = s1 / s0 * x - math.expm1(-math.log(s0 / s1)) * denoised
    torch.testing.assert_close(result.prev_sample, expected, rtol=1e-12, atol=1e-12)


def test_sdxl_with_the_swapped_scheduler(tmp_path):
    pipe = make_tiny_sdxl_pipeline(tmp_path, DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER_CONFIG))
    pipe.scheduler = EDMMultistepDiscreteScheduler.from_config(pipe.scheduler.config, solver="dpmpp")
    recorder = UNetRecorder(pipe.unet)
    try:
        images = pipe(PROMPT, num_inference_steps=5, height=IMAGE_SIZE, width=IMAGE_SIZE,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    finally:
        recorder.remove()
    np.testing.assert_allclose(recorder.timesteps, fractional_timesteps(table_call_sigmas(5)), rtol=1e-5, atol=1e-4)
    assert images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("solver", ["ipndm", "unipc"])
def test_image_to_image_starts_part_way_and_warms_up_there(sd_pipe, solver):
    scheduler = EDMMultistepDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG, solver=solver, analytical_first_step=True)
    img2img = StableDiffusionImg2ImgPipeline(**{**sd_pipe.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    init_image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    recorder = UNetRecorder(img2img.unet)
    try:
        out = img2img(PROMPT, image=init_image, strength=0.5, num_inference_steps=8,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    finally:
        recorder.remove()
    # strength 0.5 of 8 calls: the last 4 calls, from call 4 (step 5 after the analytical step 0)
    assert scheduler.begin_index == 4 and len(recorder.timesteps) == 4
    np.testing.assert_allclose(recorder.timesteps, fractional_timesteps(table_call_sigmas(8, True)[4:]), rtol=1e-5, atol=1e-4)
    order = 4 if solver == "ipndm" else 3
    assert list(scheduler.plan.orders) == expected_orders(9, order, first_step=5, to_zero_first_order=solver != "ipndm")
    assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(out).all()


def test_add_noise_noises_to_the_begin_call_level():
    scheduler = EDMMultistepDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(3)
    clean = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    noisy = scheduler.add_noise(clean, noise, scheduler.timesteps[3:4].repeat(2))
    torch.testing.assert_close(noisy, clean + table_call_sigmas(8)[3] * noise, rtol=1e-6, atol=1e-6)


def test_sd_pipeline_save_and_load_round_trip(sd_pipe, tmp_path):
    sd_pipe.scheduler = EDMMultistepDiscreteScheduler.from_config(
        SD15_SCHEDULER_CONFIG, solver="unipc", solver_order=2, analytical_first_step=True
    )
    before = run_recorded(sd_pipe, 4)[0]
    sd_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"][1] == "EDMMultistepDiscreteScheduler"
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, requires_safety_checker=False)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, EDMMultistepDiscreteScheduler)
    config = loaded.scheduler.config
    assert (config.solver, config.solver_order, config.analytical_first_step) == ("unipc", 2, True)
    np.testing.assert_allclose(run_recorded(loaded, 4)[0], before, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- EDMPipeline
@pytest.mark.parametrize("analytical_first_step", [False, True], ids=["calls", "afs"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_edm_pipeline_samples_every_wrapper_within_its_noise_range(family, analytical_first_step):
    wrapper, (low, high), _ = FAMILIES[family]
    scheduler = EDMMultistepScheduler(solver="unipc" if analytical_first_step else "ipndm",
                                      analytical_first_step=analytical_first_step)
    pipe = EDMPipeline(wrapper.from_backbone(tiny_unet()).eval(), scheduler)
    sigmas = backbone_sigmas(pipe, family)
    assert len(sigmas) == RANGE_STEPS
    outside = [s for s in sigmas if not low * (1 - RELATIVE) <= s <= high * (1 + RELATIVE)]
    assert not outside, f"{family} ({low}..{high}) was called at {outside}"
    sampler_low, sampler_high = max(0.002, low), min(80.0, high)  # EDM's sampler range within the model's
    if family == "iddpm":  # rounded to the nearest table level
        sampler_low, sampler_high = (min(U[:IDDPM_M], key=lambda u: abs(u - s)) for s in (sampler_low, sampler_high))
    assert min(sigmas) == pytest.approx(sampler_low, rel=RELATIVE)
    # the first level: the first call's, or the analytical step's (which calls nothing)
    top = float(scheduler.sigmas[0]) if analytical_first_step else max(sigmas)
    assert top == pytest.approx(sampler_high, rel=RELATIVE)
    if analytical_first_step:
        assert max(sigmas) < sampler_high * (1 - RELATIVE)


def test_edm_pipeline_save_and_load_round_trip(tmp_path):
    denoiser = EDMPrecond.from_backbone(tiny_unet()).eval()
    pipe = EDMPipeline(denoiser, EDMMultistepScheduler(solver="dpmpp", solver_order=2, discretization="logsnr"))
    pipe.set_progress_bar_config(disable=True)
    before = pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent").images
    pipe.save_pretrained(tmp_path)
    loaded = EDMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, EDMMultistepScheduler) and loaded.scheduler.config.discretization == "logsnr"
    after = loaded(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent").images
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- from_config
def test_from_config_swaps_with_the_heun_schedulers_both_ways(tmp_path):
    """A saved Heun config names its solver ("euler"); the multistep scheduler reads it as its default "auto", and
    a multistep config's solver reads as "heun" (as diffusers' UniPC reads DPM-Solver's solver_type)."""
    EDMHeunScheduler(solver="euler", sigma_max=60.0).save_config(tmp_path / "heun")
    heun_config = EDMHeunScheduler.load_config(tmp_path / "heun")
    multistep = EDMMultistepScheduler.from_config(heun_config)
    assert multistep.config.solver == "auto" and multistep.config.sigma_max == 60.0
    back = EDMHeunScheduler.from_config(EDMMultistepScheduler(solver="unipc").config)
    assert back.config.solver == "heun"
    discrete = EDMMultistepDiscreteScheduler.from_config(EDMHeunDiscreteScheduler(solver="euler", beta_schedule="scaled_linear").config)
    assert discrete.config.solver == "auto" and discrete.config.beta_schedule == "scaled_linear"
    # other values are still checked
    with pytest.raises(ValueError, match="'rk4'"):
        EDMMultistepScheduler.from_config(heun_config, solver="rk4")


def test_from_config_of_diffusers_edm_dpm_solver_keeps_the_shared_settings():
    scheduler = EDMMultistepScheduler.from_config(
        EDMDPMSolverMultistepScheduler(sigma_min=0.01, sigma_max=50.0, sigma_data=0.3, rho=5.0).config,
        prediction_type="sample",
    )
    config = scheduler.config
    assert (config.sigma_min, config.sigma_max, config.sigma_data, config.rho) == (0.01, 50.0, 0.3, 5.0)
    assert EDMMultistepScheduler in EDMHeunScheduler().compatibles
    assert EDMMultistepDiscreteScheduler in EDMHeunDiscreteScheduler().compatibles
    assert DPMSolverMultistepScheduler in EDMMultistepDiscreteScheduler().compatibles


# ---------------------------------------------------------------------------------------------- host syncs, dtypes
def toy_sigma_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    return sample / (1 + timestep.to(sample.dtype))


@pytest.mark.parametrize("analytical_first_step", [False, True], ids=["calls", "afs"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("discrete", [False, True], ids=["sigma", "discrete"])
def test_no_host_sync_in_any_call_once_the_begin_index_is_set(discrete, solver, analytical_first_step):
    if discrete:
        scheduler = EDMMultistepDiscreteScheduler.from_config(
            SD15_SCHEDULER_CONFIG, solver=solver, analytical_first_step=analytical_first_step
        )
    else:
        scheduler = EDMMultistepScheduler(solver=solver, analytical_first_step=analytical_first_step)
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        with count_host_syncs() as syncs:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(0.1 * model_input, t, x).prev_sample
        assert syncs.count == 0, syncs.calls
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", SOLVERS)
def test_half_precision_steps_in_float32_and_keeps_its_dtype(solver, dtype):
    """Each half-precision step equals the float32 step of the same (half-rounded) inputs, rounded once at the end:
    the arithmetic and the stored history are float32, and neither the float64 weights nor the history change the
    sample's dtype."""
    half = EDMMultistepScheduler(solver=solver, analytical_first_step=True)
    full = EDMMultistepScheduler(solver=solver, analytical_first_step=True)
    for scheduler in (half, full):
        scheduler.set_timesteps(6)
        scheduler.set_begin_index(0)
    x = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * half.init_noise_sigma).to(dtype)
    for t in half.timesteps:
        output = toy_sigma_model(x.float(), t).to(dtype)
        result = half.step(output, t, x)
        reference = full.step(output.float(), t, x.float())
        assert result.prev_sample.dtype == dtype and result.pred_original_sample.dtype == dtype
        assert reference.prev_sample.dtype == torch.float32  # float64 weights do not promote float32 samples
        torch.testing.assert_close(result.prev_sample, reference.prev_sample.to(dtype), rtol=0, atol=0)
        x = result.prev_sample
    assert torch.isfinite(x.float()).all()


# ---------------------------------------------------------------------------------------------- bad input
def test_a_learned_variance_output_is_refused_by_name():
    scheduler = EDMMultistepDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    sample = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="8 channels for a 4-channel sample: this is a learned-variance output"):
        scheduler.step(torch.zeros(1, 8, 8, 8), scheduler.timesteps[0], sample)


@pytest.mark.parametrize("scheduler_class", [EDMMultistepScheduler, EDMMultistepDiscreteScheduler])
def test_step_before_set_timesteps_is_a_value_error(scheduler_class):
    scheduler = scheduler_class()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 1.0, torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize(
    "settings,named",
    [
        (dict(solver="dpm++"), "'dpm++'"),
        (dict(solver="heun2"), "'heun2'"),
        (dict(solver=None), "None"),
        (dict(solver="ipndm", solver_order=5), "solver_order must be None (the solver's default) or an integer from 1 to 4"),
        (dict(solver="dpmpp", solver_order=4), "from 1 to 3 for solver='dpmpp', got 4"),
        (dict(solver="unipc", solver_order=0), "got 0"),
        (dict(solver="unipc", solver_order=2.5), "got 2.5"),
        (dict(solver="unipc", solver_order="3"), "got '3'"),
        (dict(lower_order_final="yes"), "lower_order_final must be True or False, got 'yes'"),
        (dict(analytical_first_step=1), "analytical_first_step must be True or False, got 1"),
        (dict(sigma_data=0.0), "sigma_data must be a finite number > 0, got 0.0"),
        (dict(discretization="karras"), "'karras'"),
        (dict(prediction_type="v_prediction"), "'v_prediction'"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_value(settings, named):
    with pytest.raises(ValueError) as error:
        EDMMultistepScheduler(**settings)
    assert named in str(error.value), str(error.value)


def test_the_analytical_first_step_needs_two_levels():
    scheduler = EDMMultistepScheduler(analytical_first_step=True)
    with pytest.raises(ValueError, match=r"analytical_first_step needs at least 2 noise levels.*got 1: \[3.0\]"):
        scheduler.set_timesteps(sigmas=[3.0])
    scheduler.set_timesteps(sigmas=[3.0, 1.0, 0.0])  # two levels: one model call, at 1.0
    assert scheduler.evaluation_sigmas.tolist() == [1.0]
