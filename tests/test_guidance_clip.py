"""CLIP guidance (GLIDE, Nichol et al. 2021, section 2.4) in sigma form, stated here independently of the package:

    D'(x; sigma) = D(x; sigma) + s sigma^2 grad_x sim(x),   sim = cos(E_img(image), E_txt(prompt))

- clean variant: ``image`` is CLIP's input made from ``D(x; sigma)`` (decoded by the VAE for latents): mapped from
  [-1, 1] to [0, 1], a single channel repeated to RGB, resized (bicubic, antialiased) to CLIP's ``image_size`` square,
  normalised by the image processor's mean and std; the gradient runs through the denoiser;
- noise-aware variant: ``E_img`` reads the noisy sample ``x`` and ``sigma`` itself.

The gradient is computed here by central finite differences of ``sim`` (never autograd), sample by sample, on a few
coordinates, with a tiny CLIPModel built from a config and a CLIPTokenizer whose vocabulary the test writes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextModel

from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline
from diffusers_edm.guidance import (
    MAX_CLIP_GUIDANCE_SCALE,
    ClipGuidance,
    GuidanceInterval,
    GuidedDenoiser,
    NoiseAwareCLIPModel,
    check_clip_guidance,
    check_clip_guidance_scale,
    clip_normalization,
    clip_text_embeddings,
)
from diffusers_edm.models import EDMPrecond, LatentCodec
from test_latent_codec import MEAN, STD, tiny_vae
from test_prompt_encoding import reference_encoding
from tiny_backbones import tiny_unet
from tiny_stable_diffusion import make_clip_tokenizer
from tiny_text_encoders import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_text_unet

CLIP_IMAGE_SIZE = 12  # samples are 8x8 pixels (upsampled for CLIP) or 8x8 latents decoded to 16x16 (downsampled)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation (its preprocessing)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red square", "the digit seven"]


def tiny_clip(seed: int = 3) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=1000, hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1,
            max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        ),
        vision_config=dict(
            image_size=CLIP_IMAGE_SIZE, patch_size=4, hidden_size=16, intermediate_size=24, num_attention_heads=2,
            num_hidden_layers=1, num_channels=3,
        ),
        projection_dim=8,
    )
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer")


class SmoothDenoiser:
    """A differentiable stand-in for ``D(x; sigma)`` in any dtype: EDM's ``c_skip x + c_out F(c_in x)`` with
    ``F = tanh(conv(.))`` (the real denoiser computes in float32, too coarse for float64 finite differences)."""

    def __init__(self, channels: int, dtype: torch.dtype = torch.float64, seed: int = 5):
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dtype)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        total = sigma**2 + 0.25  # sigma^2 + sigma_data^2
        c_skip, c_out, c_in = 0.25 / total, sigma * 0.5 / total.sqrt(), 1 / total.sqrt()
        return c_skip * x + c_out * torch.tanh(self.conv(c_in * x))


def reference_similarity(
    clip: CLIPModel, tokenizer, prompts: list[str], images: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD
) -> torch.Tensor:
    """``cos(E_img(CLIP input of images in [-1, 1]), E_txt(prompt))`` per sample, from the formula."""
    images = (images + 1) / 2
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    images = F.interpolate(images, size=(CLIP_IMAGE_SIZE,) * 2, mode="bicubic", align_corners=False, antialias=True)
    mean, std = (torch.tensor(v, dtype=images.dtype).reshape(1, 3, 1, 1) for v in (mean, std))
    pixels = ((images - mean) / std).to(clip.dtype)
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        image_embeds = clip.get_image_features(pixel_values=pixels).pooler_output
        text_embeds = clip.get_text_features(input_ids=ids).pooler_output
    return F.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1)


def finite_differences(similarity, x: torch.Tensor, coordinates: list[tuple[int, int]], step: float) -> torch.Tensor:
    """``(sim_i(x + h e_j) - sim_i(x - h e_j)) / 2h`` for each (sample i, flat coordinate j): only sample i moves."""
    values = []
    for i, j in coordinates:
        offset = torch.zeros_like(x)
        offset[i].view(-1)[j] = step
        values.append((similarity(x + offset)[i] - similarity(x - offset)[i]) / (2 * step))
    return torch.stack(values)


def picked(tensor: torch.Tensor, coordinates: list[tuple[int, int]]) -> torch.Tensor:
    return torch.stack([tensor[i].reshape(-1)[j] for i, j in coordinates])


def some_coordinates(x: torch.Tensor, per_sample: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    count = x[0].numel()
    return [(i, int(j)) for i in range(x.shape[0]) for j in torch.randperm(count, generator=generator)[:per_sample]]


def clean_term(conditional, clip, tokenizer, prompts, scale, batch, codec=None, processor=None) -> ClipGuidance:
    return ClipGuidance.from_prompt(
        conditional, clip, tokenizer, prompts, scale, batch, "cpu", codec=codec, clip_image_processor=processor
    )


# ---------------------------------------------------------------------------------------------- the formula
def test_clean_clip_guided_denoiser_equals_the_formula_in_float64(tokenizer):
    """Pixels, one noise level per sample, one prompt per sample, the processor's own mean and std."""
    clip = tiny_clip().double()
    denoise = SmoothDenoiser(channels=3)
    processor = CLIPImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma, scale = torch.tensor([0.7, 2.5], dtype=torch.float64), 3.0
    term = clean_term(denoise, clip, tokenizer, PROMPTS, scale, 2, processor=processor)
    guided = GuidedDenoiser(denoise, corrections=[term])(x, sigma, guided=True)

    def similarity(y):
        return reference_similarity(clip, tokenizer, PROMPTS, denoise(y, sigma), (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))

    coordinates = some_coordinates(x)
    gradient = finite_differences(similarity, x, coordinates, step=1e-5)
    sigma_of = torch.tensor([sigma[i] for i, _ in coordinates], dtype=torch.float64)
    expected = picked(denoise(x, sigma), coordinates) + scale * sigma_of**2 * gradient
    assert gradient.abs().max() > 1e-4  # a real gradient, so the comparison can fail
    torch.testing.assert_close(picked(guided, coordinates), expected, rtol=1e-6, atol=1e-9)
    # OpenAI CLIP's normalisation without a processor: a different term.
    default = clean_term(denoise, clip, tokenizer, PROMPTS, scale, 2)(x, sigma)
    assert not torch.allclose(default, term(x, sigma))


def test_clean_clip_guidance_through_the_real_denoiser_single_channel_and_a_scalar_sigma(tokenizer):
    """A float32 EDMPrecond over 1-channel images (repeated to RGB for CLIP), a 0-d noise level, one prompt for all."""
    denoiser = EDMPrecond.from_backbone(tiny_unet(channels=1)).eval()

    def denoise(y, sigma):
        return denoiser(y, sigma).sample

    clip = tiny_clip().double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma, scale = torch.tensor(1.3), 50.0
    term = clean_term(denoise, clip, tokenizer, "seven", scale, 2)
    change = term(x, sigma)
    coordinates = some_coordinates(x, per_sample=4)

    def similarity(y):
        with torch.no_grad():
            return reference_similarity(clip, tokenizer, ["seven"] * 2, denoise(y, sigma).double())

    gradient = finite_differences(similarity, x, coordinates, step=1e-2)
    expected = scale * 1.3**2 * gradient
    assert gradient.abs().max() > 1e-4
    torch.testing.assert_close(
        picked(change, coordinates).double(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max()
    )


def test_latent_clip_guidance_decodes_through_the_codec(tokenizer):
    """Latents: the image CLIP embeds is the codec's decoding of D (here a VAE with latents_mean / latents_std)."""
    codec = LatentCodec(tiny_vae(latents_mean=MEAN, latents_std=STD).double())
    clip = tiny_clip().double()
    denoise = SmoothDenoiser(channels=4)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma, scale = torch.tensor([0.4, 1.8], dtype=torch.float64), 2.0
    term = clean_term(denoise, clip, tokenizer, PROMPTS, scale, 2, codec=codec)
    change = term(x, sigma)
    scale_std_mean = [torch.tensor(v, dtype=torch.float64).reshape(1, 4, 1, 1) for v in (STD, MEAN)]

    def similarity(y):
        with torch.no_grad():  # the VAE's latents E = z std / scaling_factor + mean, then its decoder (16x16 images)
            z = denoise(y, sigma)
            vae_latents = z * scale_std_mean[0] / codec.vae.config.scaling_factor + scale_std_mean[1]
            images = codec.vae.decode(vae_latents).sample
        assert images.shape[-1] == 16
        return reference_similarity(clip, tokenizer, PROMPTS, images)

    coordinates = some_coordinates(x)
    gradient = finite_differences(similarity, x, coordinates, step=1e-3)
    sigma_of = torch.tensor([sigma[i] for i, _ in coordinates], dtype=torch.float64)
    expected = scale * sigma_of**2 * gradient
    assert gradient.abs().max() > 1e-4
    # The codec decodes in float32 (its documented precision): the comparison allows float32 rounding.
    torch.testing.assert_close(picked(change, coordinates), expected, rtol=1e-3, atol=1e-3 * expected.abs().max())


class TinyNoiseAwareCLIP(NoiseAwareCLIPModel):
    """A noise-aware CLIP: a CLIP text tower, and an image tower reading ``(x, sigma)`` (``x / sqrt(1 + sigma^2)``
    through a conv and a projection, plus a learned function of ``log sigma``)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.text = tiny_clip()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.project = torch.nn.Linear(4 * 64, 8)
        self.noise = torch.nn.Linear(1, 8)

    def forward(self, sample, sigma):
        sigma = torch.as_tensor(sigma, dtype=sample.dtype).reshape(-1, 1)
        features = torch.tanh(self.conv(sample / (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt())).flatten(1)
        return self.project(features) + self.noise(sigma.log())

    def get_text_features(self, input_ids):
        return self.text.get_text_features(input_ids=input_ids)


def test_noise_aware_clip_guidance_differentiates_the_encoder_at_x_and_sigma(tokenizer):
    model = TinyNoiseAwareCLIP().double().eval()
    denoise = SmoothDenoiser(channels=3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigma, scale = torch.tensor([0.9, 3.0], dtype=torch.float64), 1.5
    term = clean_term(denoise, model, tokenizer, PROMPTS, scale, 2)
    change = term(x, sigma)
    assert denoise.calls == 0  # the noisy sample itself is embedded: no denoiser call, no gradient through it
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = model.text.get_text_features(input_ids=ids).pooler_output

    def similarity(y):
        with torch.no_grad():
            return F.cosine_similarity(model(y, sigma), text, dim=-1)

    coordinates = some_coordinates(x)
    gradient = finite_differences(similarity, x, coordinates, step=1e-5)
    sigma_of = torch.tensor([sigma[i] for i, _ in coordinates], dtype=torch.float64)
    assert gradient.abs().max() > 1e-4
    torch.testing.assert_close(picked(change, coordinates), scale * sigma_of**2 * gradient, rtol=1e-6, atol=1e-9)


def test_text_embeddings_one_row_per_sample_in_prompt_order(tokenizer):
    """A list of prompts serves consecutive samples (diffusers' num_images_per_prompt order); rows are unit vectors."""
    clip = tiny_clip()
    rows = clip_text_embeddings(clip, tokenizer, PROMPTS, 4, "cpu")
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = clip.get_text_features(input_ids=ids).pooler_output
    expected = direct / direct.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(rows, expected[[0, 0, 1, 1]])
    torch.testing.assert_close(clip_text_embeddings(clip, tokenizer, "a red square", 3, "cpu"), expected[[0, 0, 0]])
    with pytest.raises(ValueError, match="3 prompts for 4 samples"):
        clip_text_embeddings(clip, tokenizer, ["a", "b", "c"], 4, "cpu")
    with pytest.raises(ValueError, match="prompt"):
        clip_text_embeddings(clip, tokenizer, [], 4, "cpu")


# ---------------------------------------------------------------------------------------------- the seam
def test_zero_scale_builds_no_term_and_the_guided_denoiser_is_the_plain_model(tokenizer):
    denoise = SmoothDenoiser(channels=3)
    assert clean_term(denoise, tiny_clip(), tokenizer, PROMPTS, 0.0, 2) is None
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    guided = GuidedDenoiser(denoise, corrections=[])
    assert not guided.has_guidance and guided.guided_calls([2.0, 1.0]) == (False, False)
    assert torch.equal(guided(x, 2.0, guided=False), denoise(x, 2.0))


def test_guidance_interval_applies_to_clip_guidance(tokenizer):
    """Outside (sigma_lo, sigma_hi] the plain D, with no CLIP call; inside, D plus the term."""
    clip = tiny_clip().double()
    clip_calls = []
    clip.vision_model.register_forward_pre_hook(lambda module, args: clip_calls.append(1))
    denoise = SmoothDenoiser(channels=3)
    term = clean_term(denoise, clip, tokenizer, PROMPTS, 4.0, 2)
    guided = GuidedDenoiser(denoise, corrections=[term], interval=GuidanceInterval(0.5, 2.0))
    sigmas = [10.0, 2.0, 1.0, 0.5, 0.1]
    assert guided.guided_calls(sigmas) == (False, True, True, False, False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for sigma, inside in zip(sigmas, guided.guided_calls(sigmas)):
        clip_calls.clear()
        value = guided(x, torch.tensor(sigma, dtype=torch.float64), inside)
        plain = denoise(x, sigma)
        if inside:
            assert len(clip_calls) == 1 and not torch.allclose(value, plain)
            similarity = lambda y: reference_similarity(clip, tokenizer, PROMPTS, denoise(y, sigma))  # noqa: E731
            coordinates = some_coordinates(x, per_sample=1)
            gradient = finite_differences(similarity, x, coordinates, 1e-5)
            expected = picked(plain, coordinates) + 4.0 * sigma**2 * gradient
            torch.testing.assert_close(picked(value, coordinates), expected, rtol=1e-6, atol=1e-9)
        else:
            assert clip_calls == [] and torch.equal(value, plain)


@pytest.mark.parametrize("latent", [False, True], ids=["pixels", "latents"])
def test_clip_guidance_term_makes_no_host_synchronisation(tokenizer, latent):
    channels = 4 if latent else 3
    denoiser = EDMPrecond.from_backbone(tiny_unet(channels=channels)).eval()
    codec = LatentCodec(tiny_vae(latents_mean=MEAN, latents_std=STD)) if latent else None
    term = clean_term(lambda y, s: denoiser(y, s).sample, tiny_clip(), tokenizer, PROMPTS, 2.0, 2, codec=codec)
    noise_aware = clean_term(None, TinyNoiseAwareCLIP(channels).eval(), tokenizer, PROMPTS, 2.0, 2)
    x = torch.randn(2, channels, 8, 8)
    with torch.no_grad(), count_host_syncs() as syncs:
        for sigma in (torch.tensor([0.3, 5.0]), torch.tensor(1.2), 0.7):
            term(x, sigma)
            noise_aware(x, sigma)
    assert syncs.count == 0, syncs.calls


# ---------------------------------------------------------------------------------------------- contracts
@settings(max_examples=40, deadline=None)
@given(
    scale=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2000), st.none(),
        st.sampled_from([-0.0, 1e-300, MAX_CLIP_GUIDANCE_SCALE, 1000.5, 1e300, "1", True]),
    ),
    has_clip_model=st.booleans(),
)
def test_clip_guidance_scale_contract(scale, has_clip_model):
    """A finite number in [0, 1000] (0 also for None without a CLIP model), or a ValueError naming the value; a
    positive scale needs a CLIP model, and a CLIP model needs a scale."""
    number = not isinstance(scale, (bool, str)) and scale is not None and math.isfinite(scale)
    in_range = number and 0 <= scale <= MAX_CLIP_GUIDANCE_SCALE
    if scale is None and not has_clip_model:
        assert check_clip_guidance_scale(scale, has_clip_model) == 0.0
    elif in_range and (scale == 0 or has_clip_model):
        assert check_clip_guidance_scale(scale, has_clip_model) == float(scale)
    else:
        with pytest.raises(ValueError, match="clip_guidance_scale") as error:
            check_clip_guidance_scale(scale, has_clip_model)
        if scale is not None:
            assert repr(scale) in str(error.value)


def test_clip_guidance_refuses_wrong_models_tokenizers_and_processors(tokenizer):
    clip = tiny_clip()
    with pytest.raises(ValueError, match="CLIPModel .* or a NoiseAwareCLIPModel .*got CLIPTextModel"):
        check_clip_guidance(CLIPTextModel(clip.config.text_config), tokenizer)
    with pytest.raises(ValueError, match="clip_tokenizer .*got NoneType"):
        check_clip_guidance(clip, None)
    with pytest.raises(ValueError, match="clip_tokenizer"):
        ClipGuidance.from_prompt(SmoothDenoiser(3), clip, None, "a", 1.0, 1, "cpu")
    with pytest.raises(ValueError, match="2 channels"):
        check_clip_guidance(clip, tokenizer, image_channels=2)
    check_clip_guidance(clip, tokenizer, image_channels=1)
    for processor, bad in (
        (CLIPImageProcessor(image_std=[0.2, 0.0, 0.3]), "0.0"),
        (CLIPImageProcessor(image_mean=[0.5, 0.5]), r"\(0.5, 0.5\)|\[0.5, 0.5\]"),
        (CLIPImageProcessor(image_mean=[0.5, math.nan, 0.5]), "nan"),
    ):
        with pytest.raises(ValueError, match=f"clip_image_processor.image_.*{bad}"):
            check_clip_guidance(clip, tokenizer, processor)
    assert clip_normalization(None) == (OPENAI_MEAN, OPENAI_STD)
    assert clip_normalization(CLIPImageProcessor()) == (OPENAI_MEAN, OPENAI_STD)
    with pytest.raises(ValueError, match="2 channels"):
        two_channels = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
        clean_term(SmoothDenoiser(2), clip.double(), tokenizer, "a", 1.0, 1)(two_channels, 1.0)


# ---------------------------------------------------------------------------------------------- the text pipeline
SIGMA = 3.0  # one Euler step from sigma = 3 to 0 returns the guided D(x_0; 3) itself (EDM Algorithm 1)


def latent_text_pipeline(tmp_path) -> EDMTextToImagePipeline:
    """A latent text-to-image pipeline: a tiny text UNet over 4-channel 8x8 latents, a tiny CLIP text encoder (its own
    16-token tokenizer) and a VAE decoding to 16x16 RGB."""
    denoiser = EDMPrecond.from_backbone(tiny_text_unet(channels=4, context_width=8)).eval()
    pipe = EDMTextToImagePipeline(
        denoiser, EDMHeunScheduler(solver="euler", sigma_max=SIGMA), tiny_clip_tokenizer(tmp_path / "text"),
        tiny_clip_text_encoder(), vae=tiny_vae(latents_mean=MEAN, latents_std=STD),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_to_image_pipeline_clip_guided_denoiser_equals_the_formula(tokenizer, tmp_path):
    """pipe(prompt, clip_model=..., clip_tokenizer=..., clip_guidance_scale=s): one Euler step returns
    D(x_0; 3, c) + s 3^2 grad sim, with sim from the prompt's CLIP text embedding and the VAE-decoded D."""
    pipe, clip = latent_text_pipeline(tmp_path), tiny_clip().double()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    scale = 40.0
    guided = pipe(PROMPTS, latents=noise, num_inference_steps=1, output_type="latent", clip_model=clip,
                  clip_tokenizer=tokenizer, clip_guidance_scale=scale).images
    context, _ = reference_encoding(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    vae, mean, std = pipe.vae, *(torch.tensor(v).reshape(1, 4, 1, 1) for v in (MEAN, STD))
    x = noise * SIGMA

    def denoise(y):
        with torch.no_grad():
            return pipe.denoiser(y, torch.tensor(SIGMA), None, context).sample

    def similarity(y):
        with torch.no_grad():  # the VAE's latents z std / scaling_factor + mean, decoded to 16x16 RGB
            images = vae.decode(denoise(y) * std / vae.config.scaling_factor + mean).sample
        return reference_similarity(clip, tokenizer, PROMPTS, images.double())

    coordinates = some_coordinates(x)
    gradient = finite_differences(similarity, x, coordinates, step=1e-2)
    expected = picked(denoise(x), coordinates).double() + scale * SIGMA**2 * gradient
    assert gradient.abs().max() > 1e-4
    change = (expected - picked(denoise(x), coordinates).double()).abs().max()
    torch.testing.assert_close(picked(guided, coordinates).double(), expected, rtol=0, atol=2e-2 * change)


def test_text_to_image_pipeline_zero_clip_scale_and_an_empty_interval_are_the_unguided_images(tokenizer, tmp_path):
    pipe, clip = latent_text_pipeline(tmp_path), tiny_clip()
    pipe.scheduler = EDMHeunScheduler()  # Heun, churn-free, sigma 80 -> 0.002

    def sample(**clip_arguments):
        return pipe("the digit seven", num_images_per_prompt=2, num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(0), **clip_arguments).images

    clip_calls = []
    clip.register_forward_pre_hook(lambda module, args: clip_calls.append(1))
    for tower in (clip.text_model, clip.vision_model):
        tower.register_forward_pre_hook(lambda module, args: clip_calls.append(1))
    plain = sample()
    assert np.array_equal(sample(clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=0.0), plain)
    assert clip_calls == []  # s = 0: no term built, CLIP never runs
    guided = sample(clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=100.0)
    assert np.isfinite(guided).all() and not np.array_equal(guided, plain)
    outside = sample(clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=100.0,
                     guidance_interval=(100.0, 200.0))  # above every noise level of the run
    assert np.array_equal(outside, plain)


def test_text_to_image_pipeline_refuses_bad_clip_arguments(tokenizer, tmp_path):
    pipe, clip = latent_text_pipeline(tmp_path), tiny_clip()
    call = dict(num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="clip_tokenizer"):
        pipe("seven", clip_model=clip, clip_guidance_scale=1.0, **call)
    with pytest.raises(ValueError, match="clip_guidance_scale=2.0 needs a clip_model"):
        pipe("seven", clip_guidance_scale=2.0, **call)
    with pytest.raises(ValueError, match="clip_guidance_scale must be .*got -1"):
        pipe("seven", clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=-1, **call)
    with pytest.raises(ValueError, match="got CLIPTextModel"):
        pipe("seven", clip_model=pipe.text_encoder, clip_tokenizer=tokenizer, clip_guidance_scale=1.0, **call)
    embeds, _ = reference_encoding(pipe.tokenizer, pipe.text_encoder, ["seven"])
    with pytest.raises(ValueError, match="pass prompt"):
        pipe(prompt_embeds=embeds, clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=1.0, **call)
    pipe.vae = None
    with pytest.raises(ValueError, match="no vae"):
        pipe("seven", clip_model=clip, clip_tokenizer=tokenizer, clip_guidance_scale=1.0, **call)
