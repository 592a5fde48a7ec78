"""Text-conditional backbones under the four preconditionings: UNet2DConditionModel (Latent Diffusion) and
PixArtTransformer2DModel (PixArt-alpha, a DiT with cross-attention).

``D`` is checked against EDM Table 1 (Karras et al. 2022) evaluated here from the raw backbone called directly:
``D = c_skip x + c_out F(c_in x; c_noise, text)[:, :C]`` (PixArt's learned-sigma channels dropped from D).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from test_models_preconditioning import reference_coefficients
from tiny_text_encoders import tiny_pixart, tiny_text_unet

WRAPPERS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}
SIGMA_DATA = 0.8  # not EDM's default 0.5
SIGMA = 1.7
BACKBONES = {
    "unet": lambda: tiny_text_unet(context_width=8),
    "unet_pooled": lambda: tiny_text_unet(context_width=8, pooled_width=6),
    "unet_text_pool": lambda: tiny_text_unet(context_width=8, pool_sequence=True),
    "pixart": lambda: tiny_pixart(caption_channels=8),
    "pixart_micro": lambda: tiny_pixart(caption_channels=8, learned_variance=False, additional_conditions=True),
}


def coefficients(family: str, sigma: float) -> tuple[float, float, float, float]:
    """EDM Table 1; EDM's own at sigma_data = SIGMA_DATA."""
    if family == "edm":
        sd = SIGMA_DATA
        root = math.sqrt(sigma**2 + sd**2)
        return sd**2 / root**2, sigma * sd / root, 1 / root, math.log(sigma) / 4
    return reference_coefficients(family, sigma)


def wrap(family: str, backbone: torch.nn.Module):
    config = {"sigma_data": SIGMA_DATA} if family == "edm" else {}
    return WRAPPERS[family].from_backbone(backbone, **config).eval()


def raw_output(name: str, backbone, x, c_noise, context, pooled):
    """The backbone's output F, called with diffusers' own argument names (not through the package)."""
    timestep = torch.full((x.shape[0],), float(c_noise))
    if name.startswith("pixart"):
        added = {"resolution": None, "aspect_ratio": None}
        if backbone.config.use_additional_conditions:  # the sample's own size, as the package documents
            added = {
                "resolution": torch.tensor([[x.shape[-2], x.shape[-1]]] * x.shape[0], dtype=torch.float32),
                "aspect_ratio": torch.tensor([[x.shape[-2] / x.shape[-1]]] * x.shape[0]),
            }
        return backbone(x, encoder_hidden_states=context, timestep=timestep, added_cond_kwargs=added).sample
    return backbone(x, timestep, encoder_hidden_states=context, class_labels=pooled).sample


def inputs(denoiser, batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    context = torch.randn(batch, 5, denoiser.context_width, generator=generator)
    pooled = None if denoiser.pooled_text_width is None else torch.randn(batch, denoiser.pooled_text_width, generator=generator)
    return x, context, pooled


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_denoiser_is_table_1_of_the_raw_backbone(family, name):
    denoiser = wrap(family, BACKBONES[name]())
    x, context, pooled = inputs(denoiser)
    with torch.no_grad():
        output = denoiser(x, SIGMA, encoder_hidden_states=context, pooled_text_embeds=pooled)
        c_skip, c_out, c_in, c_noise = coefficients(family, SIGMA)
        F = raw_output(name, denoiser.backbone, c_in * x, c_noise, context, pooled)
    assert output.sample.shape == x.shape and torch.isfinite(output.sample).all()
    torch.testing.assert_close(output.sample, c_skip * x + c_out * F[:, :4], rtol=1e-4, atol=1e-5)
    if F.shape[1] == 8:  # learned sigma: dropped from D, returned as the variance channels
        torch.testing.assert_close(output.variance_channels, F[:, 4:], rtol=1e-4, atol=1e-5)
    else:
        assert output.variance_channels is None


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_save_and_load_give_the_same_denoiser(family, name, tmp_path):
    denoiser = wrap(family, BACKBONES[name]())
    denoiser.save_pretrained(tmp_path)
    loaded = WRAPPERS[family].from_pretrained(tmp_path).eval()
    assert type(loaded.backbone) is type(denoiser.backbone)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in denoiser.config.items() if not k.startswith("_")
    }
    x, context, pooled = inputs(denoiser)
    with torch.no_grad():
        expected = denoiser(x, SIGMA, encoder_hidden_states=context, pooled_text_embeds=pooled).sample
        assert torch.equal(loaded(x, SIGMA, encoder_hidden_states=context, pooled_text_embeds=pooled).sample, expected)


def test_text_inputs_are_checked_against_the_backbone():
    pixart = EDMPrecond.from_backbone(tiny_pixart(caption_channels=8))
    x = torch.randn(2, 4, 8, 8)
    assert pixart.context_width == 8 and pixart.uses_cross_attention and pixart.config.num_classes == 0
    with pytest.raises(ValueError, match=r"needs encoder_hidden_states"):
        pixart(x, 1.0)
    with pytest.raises(ValueError, match=r"shape \(2, L, 8\).*width 8.*got \(2, 5, 12\)"):
        pixart(x, 1.0, encoder_hidden_states=torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match=r"does not take pooled_text_embeds"):
        pixart(x, 1.0, encoder_hidden_states=torch.randn(2, 5, 8), pooled_text_embeds=torch.randn(2, 8))
    pooled_unet = EDMPrecond.from_backbone(tiny_text_unet(pooled_width=6))
    with pytest.raises(ValueError, match=r"needs \(width 6\) pooled_text_embeds"):
        pooled_unet(x, 1.0, encoder_hidden_states=torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"pooled_text_embeds must have shape \(2, 6\)"):
        pooled_unet(x, 1.0, encoder_hidden_states=torch.randn(2, 5, 8), pooled_text_embeds=torch.randn(2, 5))
