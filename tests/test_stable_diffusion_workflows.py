"""EDMHeunDiscreteScheduler swapped into real (tiny, offline) Stable Diffusion 1.x / img2img / SDXL pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import HeunDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.schedulers import AysSchedules

from diffusers_edm import EDMHeunDiscreteScheduler
from tiny_stable_diffusion import IMAGE_SIZE, SD15_SCHEDULER_CONFIG, CallRecorder, make_tiny_sd_pipeline, make_tiny_sdxl_pipeline

PROMPT = "a photo of an astronaut riding a horse"
STEPS = 4


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))


def generate(pipe, seed=0, steps=STEPS, **kwargs):
    return pipe(
        PROMPT, num_inference_steps=steps, height=IMAGE_SIZE, width=IMAGE_SIZE,
        generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs,
    ).images


@pytest.mark.parametrize("churn", [dict(s_churn=0.0), dict(s_churn=2.0, s_tmin=0.05, s_tmax=10.0)], ids=["deterministic", "churn"])
def test_text_to_image_with_swapped_scheduler(sd_pipe, churn):
    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, **churn)
    recorder = CallRecorder(sd_pipe.unet)
    try:
        first = generate(sd_pipe)
    finally:
        recorder.remove()
    assert first.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(first).all()
    assert len(recorder.timesteps) == 2 * STEPS - 1
    np.testing.assert_allclose(recorder.timesteps, sd_pipe.scheduler.timesteps.numpy())
    np.testing.assert_array_equal(first, generate(sd_pipe))
    assert not np.array_equal(first, generate(sd_pipe, seed=1))


def test_deterministic_run_equals_diffusers_heun_with_karras_sigmas(sd_pipe):
    # diffusers' Heun takes the Karras range from its spacing; "linspace" spans the whole training table, as ours does.
    sd_pipe.scheduler = HeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace")
    reference = generate(sd_pipe, steps=5)
    # diffusers carries unknown keys from config to config, so a churn set earlier on this pipe would survive
    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=0.0)
    ours = generate(sd_pipe, steps=5)
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=0)
    # and churn really changes the sampler
    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=5.0, s_tmax=10.0)
    assert np.abs(generate(sd_pipe, steps=5) - reference).max() > 1e-3


def test_shipped_ays_sigmas_through_the_pipeline(sd_pipe):
    """pipe(sigmas=AysSchedules["StableDiffusionSigmas"]): 14.615 at the top (the table ends at 14.6146) and a final 0."""
    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=0.0)
    levels = AysSchedules["StableDiffusionSigmas"]
    recorder = CallRecorder(sd_pipe.unet)
    try:
        images = generate(sd_pipe, sigmas=levels)
    finally:
        recorder.remove()
    steps = len(levels) - 1  # the final 0 is sigma_N
    assert len(recorder.timesteps) == 2 * steps - 1
    assert recorder.timesteps[0] == pytest.approx(999.0, abs=1e-3)
    assert images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(images).all()


def test_save_and_load_round_trip(sd_pipe, tmp_path):
    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=1.0, s_tmax=10.0)
    before = generate(sd_pipe)
    sd_pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, requires_safety_checker=False)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, EDMHeunDiscreteScheduler)
    assert loaded.scheduler.config.s_churn == 1.0 and loaded.scheduler.config.s_tmax == 10.0
    np.testing.assert_allclose(generate(loaded), before, atol=1e-6, rtol=0)


def test_image_to_image_starts_part_way(sd_pipe):
    scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=2.0, s_tmax=10.0)
    img2img = StableDiffusionImg2ImgPipeline(**{**sd_pipe.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    init_image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    recorder = CallRecorder(img2img.unet)
    try:
        out = img2img(PROMPT, image=init_image, strength=0.5, num_inference_steps=8,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    finally:
        recorder.remove()
    # strength 0.5 of 8 steps: the last 4 steps, from their first (Euler) call: 2 * 4 - 1 model calls
    assert scheduler.begin_index == 8
    assert len(recorder.timesteps) == 7
    np.testing.assert_allclose(recorder.timesteps, scheduler.timesteps[8:].numpy())
    assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(out).all()


def test_sdxl_with_swapped_scheduler(tmp_path):
    reference_scheduler = HeunDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG, use_karras_sigmas=True, timestep_spacing="linspace")
    pipe = make_tiny_sdxl_pipeline(tmp_path, reference_scheduler)
    reference = generate(pipe)
    pipe.scheduler = EDMHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    recorder = CallRecorder(pipe.unet)
    try:
        ours = generate(pipe)
    finally:
        recorder.remove()
    assert len(recorder.timesteps) == 2 * STEPS - 1
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=0)
    pipe.scheduler = EDMHeunDiscreteScheduler.from_config(pipe.scheduler.config, s_churn=3.0, s_tmax=10.0)
    churned = generate(pipe)
    assert np.isfinite(churned).all()
    np.testing.assert_array_equal(churned, generate(pipe))


def test_hand_written_model_index_entry_loads(sd_pipe, tmp_path):
    """["diffusers_edm", "EDMHeunDiscreteScheduler"] in model_index.json loads (diffusers looks the scheduler base
    class up in the named library, which re-exports SchedulerMixin)."""
    import json

    sd_pipe.scheduler = EDMHeunDiscreteScheduler.from_config(sd_pipe.scheduler.config, s_churn=0.5)
    sd_pipe.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    index["scheduler"] = ["diffusers_edm", "EDMHeunDiscreteScheduler"]
    index_path.write_text(json.dumps(index))
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, requires_safety_checker=False)
    assert isinstance(loaded.scheduler, EDMHeunDiscreteScheduler) and loaded.scheduler.config.s_churn == 0.5
