"""One latent codec for training and both pipelines (diffusers' conventions, written out here):

- ``shift_factor`` (SD3 / Flux VAEs): model latents ``z = (E - shift) * scale``, decoded as ``vae.decode(z / scale + shift)``;
- ``latents_mean`` / ``latents_std`` (SDXL-derived VAEs): ``z = (E - mean) * scale / std``, decoded as
  ``vae.decode(z * std / scale + mean)``;
- neither: ``z = E * scale``, decoded as ``vae.decode(z / scale)``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from diffusers_edm import EDMHeunScheduler, EDMPipeline, LatentCodec, LearnedVarianceDDPMScheduler, LearnedVariancePipeline
from diffusers_edm.models import EDMPrecond
from tiny_backbones import tiny_dit, tiny_unet

SCALE, SHIFT = 0.7, 0.3
MEAN, STD = [0.1, -0.2, 0.3, 0.05], [1.5, 0.5, 2.0, 1.0]


def tiny_vae(**normalisation) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16, scaling_factor=SCALE, **normalisation,
    ).eval()


def vae_latents_of_model_latents(z: torch.Tensor, normalisation: dict) -> torch.Tensor:
    """The expected inverse map, per the module docstring."""
    if "latents_mean" in normalisation:
        mean, std = (torch.tensor(normalisation[k]).reshape(1, -1, 1, 1) for k in ("latents_mean", "latents_std"))
        return z * std / SCALE + mean
    return z / SCALE + normalisation.get("shift_factor", 0.0)


NORMALISATIONS = {
    "shift": {"shift_factor": SHIFT},
    "mean_std": {"latents_mean": MEAN, "latents_std": STD},
    "scale_only": {},
}


@pytest.mark.parametrize("name", sorted(NORMALISATIONS))
def test_codec_round_trip_decodes_the_vae_latents(name):
    normalisation = NORMALISATIONS[name]
    vae = tiny_vae(**normalisation)
    codec = LatentCodec(vae)
    E = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    z = codec.normalize(E)
    torch.testing.assert_close(vae_latents_of_model_latents(z, normalisation), E, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(codec.decode(z), vae.decode(E).sample, rtol=1e-5, atol=1e-5)
        images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
        posterior = vae.encode(images).latent_dist
        expected = codec.normalize(posterior.sample(generator=torch.Generator().manual_seed(3)))
        torch.testing.assert_close(codec.encode(images, generator=torch.Generator().manual_seed(3)), expected)
    if name == "shift":
        torch.testing.assert_close(z, (E - SHIFT) * SCALE)


def test_bad_vae_normalisation_is_refused():
    with pytest.raises(ValueError, match="both or neither"):
        LatentCodec(tiny_vae(latents_mean=MEAN))
    with pytest.raises(ValueError, match="latents_std must hold finite numbers > 0"):
        LatentCodec(tiny_vae(latents_mean=MEAN, latents_std=[1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="3 entries for a VAE with 4 latent channels"):
        LatentCodec(tiny_vae(latents_mean=MEAN[:3], latents_std=STD[:3]))
    with pytest.raises(ValueError, match="scaling_factor must be a finite number > 0"):
        LatentCodec(AutoencoderKL.from_config({**tiny_vae().config, "scaling_factor": 0.0}))


def postprocess_pt(decoded: torch.Tensor) -> torch.Tensor:
    """diffusers' VaeImageProcessor for output_type="pt": [-1, 1] -> [0, 1], clamped."""
    return (decoded / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", ["shift", "mean_std"])
def test_edm_pipeline_decodes_with_the_vae_normalisation(name):
    normalisation = NORMALISATIONS[name]
    vae = tiny_vae(**normalisation)
    pipe = EDMPipeline(EDMPrecond.from_backbone(tiny_unet(channels=4)).eval(), EDMHeunScheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=2, num_inference_steps=2)
    latents = pipe(output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs).images
    images = pipe(output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).images
    with torch.no_grad():
        expected = postprocess_pt(vae.decode(vae_latents_of_model_latents(latents, normalisation)).sample)
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["shift", "mean_std"])
def test_learned_variance_pipeline_decodes_with_the_vae_normalisation(name):
    normalisation = NORMALISATIONS[name]
    vae = tiny_vae(**normalisation)
    pipe = LearnedVariancePipeline(unet=tiny_dit(learned_variance=True).eval(), scheduler=LearnedVarianceDDPMScheduler(num_train_timesteps=40, beta_schedule="squaredcos_cap_v2"), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[1, 3], num_inference_steps=3)
    latents = pipe(output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs).images
    images = pipe(output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).images
    with torch.no_grad():
        expected = postprocess_pt(vae.decode(vae_latents_of_model_latents(latents, normalisation)).sample)
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
