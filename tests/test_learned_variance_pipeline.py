"""LearnedVariancePipeline: pixel and latent sampling, classifier-free guidance on eps only, save/load."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel

import learned_variance_reference as ref
from diffusers_edm.pipelines.pipeline_learned_variance import LearnedVariancePipeline
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler

T = 40


def tiny_class_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=3,
    )


def tiny_dit_pipeline() -> LearnedVariancePipeline:
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=4, patch_size=2, num_embeds_ada_norm=5, norm_num_groups=1,
    )
    # adaLN-Zero starts with a zero final layer; perturb it so the outputs depend on the labels.
    with torch.no_grad():
        for parameter in dit.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, sample_size=8,
    )
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    pipe = LearnedVariancePipeline(unet=dit, scheduler=scheduler, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guided_pixel_sampling_matches_reference_loop():
    unet = tiny_class_unet().eval()
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    pipe = LearnedVariancePipeline(unet=unet, scheduler=scheduler, null_class_label=2)
    pipe.set_progress_bar_config(disable=True)
    w, labels = 3.0, [0, 1]
    sample = pipe(class_labels=labels, guidance_scale=w, num_inference_steps="3,2", generator=torch.Generator().manual_seed(0), output_type="latent").images

    kept = [0, 10, 19, 20, 39]  # "3,2": sections 0..19 and 20..39
    betas = ref.respaced_betas(ref.cosine_betas(T), kept)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3, 8, 8), generator=generator).double().numpy()
    for i in reversed(range(len(kept))):
        inputs = torch.from_numpy(np.concatenate([x, x])).float()
        with torch.no_grad():
            out = unet(inputs, torch.full((4,), kept[i]), class_labels=torch.tensor(labels + [2, 2])).sample.double().numpy()
        eps = out[2:, :3] + w * (out[:2, :3] - out[2:, :3])  # guidance on eps only
        mean, log_var, _ = ref.reverse_mean_log_variance(betas, i, x, eps, out[:2, 3:], "learned_range")  # conditional v
        x = mean + np.exp(0.5 * log_var) * torch.randn((2, 3, 8, 8), generator=generator).double().numpy() if i > 0 else mean
    np.testing.assert_allclose(sample.numpy(), x, atol=5e-5)


def test_latent_dit_output_types_and_save_load(tmp_path):
    pipe = tiny_dit_pipeline()
    pipe.unet.train()
    kwargs = dict(class_labels=[1, 3], guidance_scale=1.5, num_inference_steps=4)
    images = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    assert images.shape == (2, 8, 8, 3) and images.min() >= 0 and images.max() <= 1
    assert pipe.unet.training  # the pipeline samples in eval mode and restores the mode
    latents = pipe(generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).images
    assert latents.shape == (2, 4, 4, 4)
    pt = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), images, atol=1e-6)
    pil = pipe(generator=torch.Generator().manual_seed(0), output_type="pil", **kwargs).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (8, 8)
    unguided = pipe(generator=torch.Generator().manual_seed(0), output_type="latent", class_labels=[1, 3], num_inference_steps=4).images
    assert not torch.allclose(unguided, latents)

    pipe.save_pretrained(tmp_path)
    loaded = LearnedVariancePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, LearnedVarianceDDPMScheduler)
    again = loaded(generator=torch.Generator().manual_seed(0), output_type="latent", return_dict=False, **kwargs)[0]
    torch.testing.assert_close(again, latents)


def test_pixel_pipeline_without_vae_round_trip(tmp_path):
    pipe = LearnedVariancePipeline(
        unet=tiny_class_unet(), scheduler=LearnedVarianceDDPMScheduler(num_train_timesteps=T), null_class_label=2
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = LearnedVariancePipeline.from_pretrained(tmp_path)
    assert loaded.vae is None and loaded.config.null_class_label == 2
    a = pipe(class_labels=1, batch_size=2, num_inference_steps="ddim4", generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = loaded(class_labels=1, batch_size=2, num_inference_steps="ddim4", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert a.shape == (2, 3, 8, 8)
    torch.testing.assert_close(a, b)


def test_bad_pipeline_inputs():
    pipe = tiny_dit_pipeline()
    with pytest.raises(ValueError, match="class_labels"):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[0], output_type="jpeg")
    with pytest.raises(ValueError, match="ddim9"):
        pipe(class_labels=[0], num_inference_steps="ddim9")
    unet_pipe = LearnedVariancePipeline(unet=tiny_class_unet(), scheduler=LearnedVarianceDDPMScheduler(num_train_timesteps=T))
    with pytest.raises(ValueError, match="null_class_label"):
        unet_pipe(class_labels=[0], guidance_scale=2.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="needs class_labels"):
        unet_pipe(guidance_scale=2.0, num_inference_steps=2)
