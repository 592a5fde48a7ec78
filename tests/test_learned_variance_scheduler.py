"""LearnedVarianceDDPMScheduler against an independent float64 implementation of Improved DDPM (Nichol & Dhariwal 2021)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

import learned_variance_reference as ref
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from benchmarks.host_syncs import count_host_syncs


@pytest.mark.parametrize("T", [1000, 4000])
def test_linear_betas_scaled_by_1000_over_T(T):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    np.testing.assert_allclose(scheduler.betas.numpy(), ref.linear_betas(T), rtol=1e-12)


def test_linear_betas_given_ends_are_used_as_is():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=500, beta_start=0.001, beta_end=0.01)
    np.testing.assert_allclose(scheduler.betas.numpy(), np.linspace(0.001, 0.01, 500), rtol=1e-12)


@pytest.mark.parametrize("T", [1000, 4000, 50])
def test_cosine_betas(T):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    expected = ref.cosine_betas(T)
    np.testing.assert_allclose(scheduler.betas.numpy(), expected, rtol=1e-9)
    assert expected.max() == pytest.approx(0.999)  # the cap is active at the end


def test_posterior_tables_and_clipped_log_variance():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    tab = ref.tables(ref.cosine_betas(1000))
    diffusion = scheduler.train_diffusion
    np.testing.assert_allclose(diffusion.posterior_variance, tab["beta_tilde"], rtol=1e-9)
    assert diffusion.posterior_variance[0] == 0.0
    assert diffusion.posterior_log_variance_clipped[0] == pytest.approx(math.log(tab["beta_tilde"][1]), rel=1e-12)
    np.testing.assert_allclose(diffusion.posterior_log_variance_clipped, tab["log_clipped"], rtol=1e-9)
    np.testing.assert_allclose(diffusion.posterior_mean_coef1, tab["coef1"], rtol=1e-9)
    np.testing.assert_allclose(diffusion.posterior_mean_coef2, tab["coef2"], rtol=1e-9)


def _draw(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variance_type", ["learned_range", "learned", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("channels", [3, 4])
def test_step_mean_and_variance(variance_type, prediction_type, channels):
    T, spacing = 200, "ddim10"
    scheduler = LearnedVarianceDDPMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type=variance_type, prediction_type=prediction_type
    )
    scheduler.set_timesteps(spacing)
    kept = list(range(0, T, 20))
    betas = ref.respaced_betas(ref.cosine_betas(T), kept)
    shape = (2, channels, 4, 4)
    x_t = _draw(shape, 0)
    model_output = _draw((2, 2 * channels, 4, 4), 1)
    prediction, v = model_output[:, :channels].numpy(), model_output[:, channels:].numpy()
    for i in [9, 4, 1]:
        t = kept[i]
        out = scheduler.step(model_output, torch.tensor(t), x_t, generator=torch.Generator().manual_seed(7))
        z = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
        mean, log_var, x0 = ref.reverse_mean_log_variance(betas, i, x_t.numpy(), prediction, v, variance_type, prediction_type)
        np.testing.assert_allclose(out.pred_original_sample.numpy(), x0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out.prev_sample.numpy(), mean + np.exp(0.5 * log_var) * z, rtol=1e-9, atol=1e-12)
    # last respaced step (t = 0): the mean, no noise, and the generator is not consumed
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    out = scheduler.step(model_output, 0, x_t, generator=generator)
    mean, _, _ = ref.reverse_mean_log_variance(betas, 0, x_t.numpy(), prediction, v, variance_type, prediction_type)
    np.testing.assert_allclose(out.prev_sample.numpy(), mean, rtol=1e-10, atol=1e-12)
    assert torch.equal(generator.get_state(), state)


def test_step_with_a_batch_of_timesteps_and_no_clipping():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    betas = ref.cosine_betas(100)
    x_t = _draw((2, 3, 2, 2), 0) * 3
    model_output = _draw((2, 6, 2, 2), 1)
    out = scheduler.step(model_output, torch.tensor([50, 0]), x_t, generator=torch.Generator().manual_seed(0))
    z = torch.randn((2, 3, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    for row, (i, noisy) in enumerate([(50, True), (0, False)]):
        mean, log_var, x0 = ref.reverse_mean_log_variance(
            betas, i, x_t[row].numpy(), model_output[row, :3].numpy(), model_output[row, 3:].numpy(), "learned_range", clip=False
        )
        expected = mean + (np.exp(0.5 * log_var) * z[row] if noisy else 0.0)
        np.testing.assert_allclose(out.prev_sample[row].numpy(), expected, rtol=1e-9, atol=1e-12)
    assert out.pred_original_sample.abs().max() > 1  # not clamped


def test_add_noise_and_float32_step():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=1000)
    abar = ref.alpha_bars(ref.linear_betas(1000))
    x0, noise = _draw((2, 3, 2, 2), 0), _draw((2, 3, 2, 2), 1)
    noisy = scheduler.add_noise(x0, noise, torch.tensor([10, 900]))
    for row, t in enumerate([10, 900]):
        expected = math.sqrt(abar[t]) * x0[row].numpy() + math.sqrt(1 - abar[t]) * noise[row].numpy()
        np.testing.assert_allclose(noisy[row].numpy(), expected, rtol=1e-12)
    out = scheduler.step(_draw((2, 6, 2, 2), 2).float(), 500, noisy.float(), generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == torch.float32 and out.prev_sample.isfinite().all()
    assert scheduler.scale_model_input(noisy, 3) is noisy
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1 and len(scheduler) == 1000


def test_config_round_trip(tmp_path):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=300, beta_schedule="squaredcos_cap_v2", variance_type="learned")
    scheduler.save_pretrained(tmp_path)
    loaded = LearnedVarianceDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.variance_type == "learned" and loaded.config.num_train_timesteps == 300
    np.testing.assert_array_equal(loaded.betas.numpy(), scheduler.betas.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta_schedule": "quadratic"}, "quadratic"),
        ({"variance_type": "fixed_small_log"}, "fixed_small_log"),
        ({"prediction_type": "v_prediction"}, "v_prediction"),
        ({"num_train_timesteps": 10}, "num_train_timesteps > 20"),
        ({"clip_sample_range": 0.0}, "clip_sample_range"),
        ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, "trained_betas"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnedVarianceDDPMScheduler(**kwargs)


def test_bad_step_inputs():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"2 \* 3 = 6 channels"):
        scheduler.step(torch.zeros(1, 3, 2, 2), 99, x)
    with pytest.raises(ValueError, match="5 channels"):
        scheduler.step(torch.zeros(1, 5, 2, 2), 99, x)
    with pytest.raises(ValueError, match=r"\[50\] are not in"):
        scheduler.step(torch.zeros(1, 6, 2, 2), 50, x)
    with pytest.raises(ValueError, match=r"\[100\] are not in"):
        scheduler.add_noise(x, x, torch.tensor([100]))
    fixed = LearnedVarianceDDPMScheduler(num_train_timesteps=100, variance_type="fixed_small")
    assert fixed.step(torch.zeros(1, 3, 2, 2), 0, x).prev_sample.shape == x.shape  # C channels are fine when fixed


def tiny_unet(in_channels: int = 3, num_class_embeds: int | None = None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    ).eval()


def test_inside_diffusers_ddpm_pipeline():
    T = 60
    unet = tiny_unet()
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images

    # independent loop: even spacing round(j (T-1)/3), float64 reverse steps, same noise draws as the pipeline
    kept = [round(j * (T - 1) / 3) for j in range(4)]
    betas = ref.respaced_betas(ref.cosine_betas(T), kept)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3, 8, 8), generator=generator).double().numpy()
    for i in reversed(range(4)):
        with torch.no_grad():
            out = unet(torch.from_numpy(x).float(), torch.tensor(kept[i])).sample.double().numpy()
        mean, log_var, _ = ref.reverse_mean_log_variance(betas, i, x, out[:, :3], out[:, 3:], "learned_range")
        if i > 0:
            z = torch.randn((2, 3, 8, 8), generator=generator).double().numpy()
            x = mean + np.exp(0.5 * log_var) * z
        else:
            x = mean
    expected = np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(images, expected, atol=2e-5)


def test_step_never_reads_the_device_once_the_schedule_is_set():
    """A sampling loop over ``scheduler.timesteps`` (tensors): the index is found on the device, noise masked there."""
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps("6,3")  # respaced: the timesteps are looked up in the kept table
    sample = _draw((2, 3, 4, 4), 0)
    outputs = [_draw((2, 6, 4, 4), 10 + i) for i in range(len(scheduler.timesteps))]
    generator = torch.Generator().manual_seed(0)
    calls = []
    for t, model_output in zip(scheduler.timesteps, outputs):
        per_example = t.repeat(2)
        with count_host_syncs() as counter:
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
            scheduler.step(model_output, per_example, sample, generator=generator)
        calls.append(counter.calls)
    assert all(not c for c in calls), calls

    # the device lookup and the host-checked Python-int path give the same step
    for t, model_output in zip(scheduler.timesteps, outputs):
        on_device = scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(1)).prev_sample
        on_host = scheduler.step(model_output, int(t), sample, generator=torch.Generator().manual_seed(1)).prev_sample
        torch.testing.assert_close(on_device, on_host, rtol=0, atol=0)
