"""LearnedVarianceTextToImagePipeline (GLIDE's family): classifier-free guidance against the empty prompt acts on the
eps channels only, and the variance channels are the conditional branch's, unguided (GLIDE, Nichol et al. 2022,
section 3.2). Expected outputs come from the backbone called directly with each half's text embeddings."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_edm import LearnedVarianceTextToImagePipeline
from diffusers_edm.guidance import ClassifierFreeNoiseGuidance
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from test_prompt_encoding import reference_encoding
from tiny_text_encoders import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_pixart, tiny_t5_encoder, tiny_text_unet

T = 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def glide_pipeline(tokenizer, unet=None, text_encoder=None, **kwargs) -> LearnedVarianceTextToImagePipeline:
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    pipe = LearnedVarianceTextToImagePipeline(
        unet or tiny_text_unet(channels=3, context_width=8, out_channels=6), scheduler, tokenizer,
        text_encoder or tiny_clip_text_encoder(), **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def raw(unet, x, t, context):
    return unet(x, torch.full((x.shape[0],), float(t)), encoder_hidden_states=context).sample


def test_guidance_term_guides_eps_and_keeps_the_conditional_variance(tokenizer):
    unet = tiny_text_unet(channels=3, context_width=8, out_channels=6).eval()
    encoder = tiny_clip_text_encoder()
    conditional, _ = reference_encoding(tokenizer, encoder, ["seven", "two"])
    empty, _ = reference_encoding(tokenizer, encoder, [""])
    empty = empty.expand(2, -1, -1)
    x, t, w = torch.randn(2, 3, 8, 8, generator=seeded(1)), torch.tensor(17), 3.0
    with torch.no_grad():
        guided = ClassifierFreeNoiseGuidance(unet, None, None, w, conditional, empty)(x, t)
        out_c, out_u = raw(unet, x, 17, conditional), raw(unet, x, 17, empty)
    assert (out_c[:, 3:] - out_u[:, 3:]).abs().max() > 1e-4  # the halves' variance outputs differ: the test can tell
    torch.testing.assert_close(guided[:, :3], out_u[:, :3] + w * (out_c[:, :3] - out_u[:, :3]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, 3:], out_c[:, 3:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("empty_prompt", ["encode", "zeros"])
def test_pipeline_step_gets_guided_eps_and_conditional_variance(tokenizer, empty_prompt):
    """The model output the scheduler's first step receives, against the backbone called directly at x_T."""
    pipe = glide_pipeline(tokenizer, empty_prompt=empty_prompt)
    received = []
    original_step = pipe.scheduler.step
    pipe.scheduler.step = lambda model_output, t, sample, **kw: (received.append((model_output, t, sample)), original_step(model_output, t, sample, **kw))[1]
    w = 2.5
    pipe(["seven", "two"], guidance_scale=w, num_inference_steps=4, generator=seeded(), output_type="latent")
    assert len(received) == 4
    model_output, t, x_T = received[0]
    torch.testing.assert_close(x_T, torch.randn(2, 3, 8, 8, generator=seeded()))
    conditional, _ = reference_encoding(tokenizer, pipe.text_encoder, ["seven", "two"])
    empty, _ = reference_encoding(tokenizer, pipe.text_encoder, [""])
    if empty_prompt == "zeros":
        empty = torch.zeros_like(empty)
    with torch.no_grad():
        out_c, out_u = raw(pipe.unet, x_T, t, conditional), raw(pipe.unet, x_T, t, empty.expand(2, -1, -1))
    torch.testing.assert_close(model_output[:, :3], out_u[:, :3] + w * (out_c[:, :3] - out_u[:, :3]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model_output[:, 3:], out_c[:, 3:], rtol=1e-4, atol=1e-5)


def test_unit_weight_is_one_forward_per_step_and_save_load_is_identical(tokenizer, tmp_path):
    pipe = glide_pipeline(tokenizer)
    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    pipe("seven", num_images_per_prompt=3, num_inference_steps=4, generator=seeded(), output_type="latent")
    assert batches == [3] * 4
    kwargs = dict(prompt=["seven", "two"], guidance_scale=2.0, num_inference_steps=4, output_type="np")
    expected = pipe(generator=seeded(2), **kwargs).images
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is LearnedVarianceTextToImagePipeline
    assert (loaded(generator=seeded(2), **kwargs).images == expected).all()


def test_pixart_with_t5(tokenizer):
    pipe = glide_pipeline(tokenizer, unet=tiny_pixart(channels=3, caption_channels=12), text_encoder=tiny_t5_encoder(d_model=12))
    images = pipe(["seven"], guidance_scale=2.0, num_inference_steps=3, generator=seeded(), output_type="pt").images
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()


def test_bad_components_name_both_sides(tokenizer):
    with pytest.raises(ValueError, match=r"maps 3 to 3 channels; a learned-variance model outputs 6"):
        glide_pipeline(tokenizer, unet=tiny_text_unet(channels=3, context_width=8))
    with pytest.raises(ValueError, match=r"CLIPTextModel \(hidden size\) has width 16 but the UNet2DConditionModel reads .* width 8"):
        glide_pipeline(tokenizer, text_encoder=tiny_clip_text_encoder(hidden_size=16))
    pipe = glide_pipeline(tokenizer)
    with pytest.raises(ValueError, match=r"prompt_embeds has width 4 but the UNet2DConditionModel reads .* width 8"):
        pipe(prompt_embeds=torch.randn(1, 16, 4), num_inference_steps=2)
