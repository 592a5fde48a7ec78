"""EDMPipeline: schedulers, guidance, output types, saving and loading (Karras et al. 2022, Algorithms 1-2, Table 1)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from diffusers_edm import EDMHeunScheduler
from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VPPrecond
from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.pipelines import model_card as model_card_module
from tiny_backbones import tiny_dit, tiny_unet, tiny_unet_condition, tiny_vae



def conditional_pipeline(scheduler=None) -> EDMPipeline:
    denoiser = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
    return EDMPipeline(denoiser, scheduler or EDMHeunScheduler())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- schedulers
@pytest.mark.parametrize("scheduler_sigma_data", [0.5, 0.3])
def test_diffusers_edm_euler_matches_heun_scheduler_euler(scheduler_sigma_data):
    """Same denoiser, same sigmas, no churn: diffusers' EDMEulerScheduler (raw-output convention, even with its own
    sigma_data) and EDMHeunScheduler(solver="euler") give the same image."""
    pipe = conditional_pipeline(EDMHeunScheduler(solver="euler"))
    reference = pipe(class_labels=[1, 4], num_inference_steps=5, generator=seeded(), output_type="latent").images
    pipe.scheduler = EDMEulerScheduler(sigma_data=scheduler_sigma_data)
    adapted = pipe(class_labels=[1, 4], num_inference_steps=5, generator=seeded(), output_type="latent").images
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(adapted, reference, rtol=1e-4, atol=1e-4)


def test_algorithm1_single_euler_step_returns_the_denoised_initial_noise():
    """One Euler step to sigma = 0: x_1 = x_0 - sigma_0 (x_0 - D(x_0))/sigma_0 = D(x_0; sigma_0), x_0 = sigma_max n."""
    pipe = conditional_pipeline(EDMHeunScheduler(solver="euler"))
    sample = pipe(class_labels=[2], num_inference_steps=1, generator=seeded(3), output_type="latent").images
    x0 = torch.randn(1, 3, 8, 8, generator=seeded(3)) * 80.0
    torch.testing.assert_close(sample, pipe.denoiser(x0, 80.0, class_labels=[2]).sample, rtol=1e-5, atol=1e-4)  # float32 x_0 ~ 300


def test_heun_uses_each_model_call_sigma_and_epsilon_prediction_matches_sample():
    pipe = conditional_pipeline(EDMHeunScheduler())
    received = []
    pipe.denoiser.register_forward_pre_hook(lambda m, args: received.append(float(torch.as_tensor(args[1]))))
    by_sample = pipe(class_labels=3, num_inference_steps=4, generator=seeded(), output_type="latent").images
    rho, n = 7.0, 4
    steps = [(80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho for i in range(n)]
    expected_calls = [steps[0], steps[1], steps[1], steps[2], steps[2], steps[3], steps[3]]
    assert received == pytest.approx(expected_calls, rel=1e-12)
    pipe.scheduler = EDMHeunScheduler(prediction_type="epsilon")
    by_epsilon = pipe(class_labels=3, num_inference_steps=4, generator=seeded(), output_type="latent").images
    torch.testing.assert_close(by_epsilon, by_sample, rtol=1e-4, atol=1e-4)


def test_iddpm_denoiser_is_sampled_on_its_table():
    pipe = EDMPipeline(IDDPMPrecond.from_backbone(tiny_unet()).eval(), EDMHeunScheduler(discretization="iddpm", s_churn=10))
    received = []
    pipe.denoiser.register_forward_pre_hook(lambda m, args: received.append(torch.as_tensor(args[1]).double()))
    pipe(num_inference_steps=4, generator=seeded(), output_type="latent")
    table = pipe.denoiser.sigma_table
    for sigma in received:
        assert float((table - sigma).abs().min()) <= 1e-12 * float(sigma)


def test_churn_and_sde_schedulers_use_the_generator():
    for scheduler in (EDMHeunScheduler(s_churn=40, s_noise=1.003), EDMDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")):
        pipe = conditional_pipeline(scheduler)
        first = pipe(class_labels=1, num_inference_steps=4, generator=seeded(5), output_type="latent").images
        again = pipe(class_labels=1, num_inference_steps=4, generator=seeded(5), output_type="latent").images
        other = pipe(class_labels=1, num_inference_steps=4, latents=torch.randn(1, 3, 8, 8, generator=seeded(5)), output_type="latent").images
        assert torch.equal(first, again) and torch.isfinite(first).all()
        assert not torch.allclose(first, other)  # same initial noise, other sampler noise


# ---------------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_classifier_free_guidance(guidance_scale):
    """One Euler step returns D_guided(x_0) = D(x_0, null) + w (D(x_0, y) - D(x_0, null)); w = 1 is the conditional model."""
    pipe = conditional_pipeline(EDMHeunScheduler(solver="euler"))
    labels_seen = []
    pipe.denoiser.backbone.register_forward_pre_hook(lambda m, a, k: labels_seen.append(k["class_labels"].tolist()), with_kwargs=True)
    sample = pipe(class_labels=[0, 4], guidance_scale=guidance_scale, num_inference_steps=1, generator=seeded(1), output_type="latent").images
    x0 = torch.randn(2, 3, 8, 8, generator=seeded(1)) * 80.0
    conditional = pipe.denoiser(x0, 80.0, class_labels=[0, 4]).sample
    null = pipe.denoiser(x0, 80.0, class_labels=[5, 5]).sample
    torch.testing.assert_close(sample, null + guidance_scale * (conditional - null), rtol=1e-5, atol=1e-4)
    # One batched call per step; the second half carries the null label.
    assert labels_seen[0] == ([0, 4] if guidance_scale == 1.0 else [0, 4, 5, 5])


# ---------------------------------------------------------------------------------------------- outputs
def test_output_types_shapes_ranges_and_reproducibility():
    pipe = conditional_pipeline()
    kwargs = dict(class_labels=[0, 1, 2], num_inference_steps=3)
    pt = pipe(generator=seeded(), output_type="pt", **kwargs).images
    assert pt.shape == (3, 3, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    assert torch.equal(pt, pipe(generator=seeded(), output_type="pt", **kwargs).images)
    arrays = pipe(generator=seeded(), output_type="np", **kwargs).images
    assert arrays.shape == (3, 8, 8, 3) and np.isfinite(arrays).all() and arrays.min() >= 0 and arrays.max() <= 1
    np.testing.assert_allclose(arrays, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    images = pipe(generator=seeded(), **kwargs).images
    assert len(images) == 3 and all(isinstance(i, PIL.Image.Image) and i.size == (8, 8) for i in images)
    latents = pipe(generator=seeded(), output_type="latent", **kwargs).images
    torch.testing.assert_close((latents / 2 + 0.5).clamp(0, 1), pt)
    (image,) = pipe(generator=seeded(), output_type="pt", return_dict=False, **kwargs)
    assert torch.equal(image, pt)


def test_callback_on_step_end_sees_every_call_and_can_replace_latents():
    pipe = conditional_pipeline()
    steps = []

    def callback(pipeline, i, t, tensors):
        steps.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == len(pipeline.scheduler.timesteps) - 1 else tensors

    out = pipe(class_labels=1, num_inference_steps=3, output_type="latent", callback_on_step_end=callback).images
    assert steps == list(range(5)) and torch.equal(out, torch.zeros_like(out))


def test_cross_attention_backbone_takes_encoder_hidden_states():
    pipe = EDMPipeline(EDMPrecond.from_backbone(tiny_unet_condition(channels=3)).eval(), EDMHeunScheduler())
    context = torch.randn(1, 3, 8)
    out = pipe(batch_size=2, encoder_hidden_states=context, num_inference_steps=2, generator=seeded(), output_type="pt").images
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- saving and loading
def test_pixel_pipeline_round_trip_and_diffusion_pipeline_loading(tmp_path):
    pipe = conditional_pipeline(EDMHeunScheduler(s_churn=5))
    expected = pipe(class_labels=[1, 2], num_inference_steps=3, generator=seeded(), output_type="pt").images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["denoiser"] == ["diffusers_edm.models.preconditioned_denoisers", "EDMPrecond"]
    assert index["latent_space"] is False
    for loader in (EDMPipeline, DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path)
        assert isinstance(loaded, EDMPipeline) and isinstance(loaded.scheduler, EDMHeunScheduler)
        actual = loaded(class_labels=[1, 2], num_inference_steps=3, generator=seeded(), output_type="pt").images
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    half = EDMPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    assert half.denoiser.dtype == torch.float16
    assert torch.isfinite(half(class_labels=[1, 2], num_inference_steps=3, generator=seeded(), output_type="pt").images).all()


def test_latent_pipeline_round_trip_and_missing_vae(tmp_path):
    denoiser = VPPrecond.from_backbone(tiny_dit(learned_variance=True)).eval()
    pipe = EDMPipeline(denoiser, EDMDPMSolverMultistepScheduler(), vae=tiny_vae().eval())
    kwargs = dict(class_labels=[3, 10], num_inference_steps=3)
    expected = pipe(output_type="pt", generator=seeded(), **kwargs).images
    assert expected.shape == (2, 3, 16, 16) and expected.min() >= 0 and expected.max() <= 1
    latents = pipe(output_type="latent", generator=seeded(), **kwargs).images
    assert latents.shape == (2, 4, 8, 8)
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1), expected)

    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.config.latent_space and loaded.vae.dtype == torch.bfloat16
    assert torch.isfinite(loaded(output_type="pt", generator=seeded(), **kwargs).images).all()
    loaded = EDMPipeline.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(output_type="pt", generator=seeded(), **kwargs).images, expected, rtol=0, atol=1e-6)

    without_vae = EDMPipeline.from_pretrained(tmp_path, vae=None)
    with pytest.raises(ValueError, match="no vae"):
        without_vae(output_type="pil", **kwargs)
    latents_again = without_vae(output_type="latent", generator=seeded(), **kwargs).images
    torch.testing.assert_close(latents_again, latents, rtol=1e-6, atol=1e-4)


def test_push_to_hub_uploads_a_model_card(tmp_path, monkeypatch):
    pipe = conditional_pipeline()
    uploaded = {}

    class Repo:
        repo_id = "someone/tiny-edm"

    monkeypatch.setattr(model_card_module, "create_repo", lambda repo_id, **kwargs: Repo())

    def upload(working_dir, repo_id, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(os.listdir(working_dir))
        uploaded["card"] = open(os.path.join(working_dir, "README.md")).read()

    monkeypatch.setattr(pipe, "_upload_folder", upload)
    pipe.push_to_hub("tiny-edm")
    assert uploaded["repo_id"] == "someone/tiny-edm"
    assert {"README.md", "model_index.json", "denoiser", "scheduler"} <= set(uploaded["files"])
    card = uploaded["card"]
    assert "library_name: diffusers" in card and "- diffusers-edm" in card
    assert "EDMHeunScheduler" in card and "`s_churn`: `0.0`" in card
    # The usage example is generated from the config: the 5 classes 0..4 (test_model_cards.py runs it).
    assert 'EDMPipeline.from_pretrained("someone/tiny-edm")' in card and "class_labels=[0, 1, 2, 3, 4]" in card


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    pipe = conditional_pipeline()
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0, class_labels=1)
    with pytest.raises(ValueError, match=r"class_labels must be in 0\.\.4"):
        pipe(class_labels=[7], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=1, output_type="jpeg")
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(class_labels=1, latents=torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="Got 3 class_labels for batch_size=2"):
        pipe(batch_size=2, class_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="real class label"):
        pipe(class_labels=[5], guidance_scale=2.0)

    no_null = EDMPipeline(EDMPrecond.from_backbone(tiny_unet(num_class_embeds=4)).eval(), EDMHeunScheduler())
    with pytest.raises(ValueError, match="null_class_label"):
        no_null(class_labels=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match="pass class_labels"):
        no_null(num_inference_steps=1)
    unconditional = EDMPipeline(EDMPrecond.from_backbone(tiny_unet()).eval(), EDMHeunScheduler())
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(class_labels=1, num_inference_steps=1)
    with pytest.raises(TypeError, match="Unsupported scheduler DDPMScheduler"):
        EDMPipeline(unconditional.denoiser, DDPMScheduler())
    with pytest.raises(TypeError, match="denoiser must be"):
        EDMPipeline(tiny_unet(), EDMHeunScheduler())
    with pytest.raises(ValueError, match="latent channels"):
        EDMPipeline(unconditional.denoiser, EDMHeunScheduler(), vae=tiny_vae())
