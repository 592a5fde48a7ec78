"""EDMTextToImagePipeline: prompts, classifier-free guidance against the empty prompt (one batched call), autoguidance
with a weak text model, the guidance interval, every scheduler, saving and loading, and bad input.

Expected values are computed here from the tokenizer and text encoder called directly and from the denoiser called
directly (EDM Algorithm 1 with one Euler step to sigma = 0 returns D(x_0; sigma_0), Karras et al. 2022; classifier-free
guidance D_u + w (D_c - D_u), Ho & Salimans 2021, eq. 6; autoguidance D_weak + w (D - D_weak), Karras et al. 2024, eq. 2).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from diffusers_edm import EDMHeunScheduler, EDMMultistepScheduler, EDMPipeline, EDMTextToImagePipeline
from diffusers_edm.models import EDMPrecond, VPPrecond
from test_prompt_encoding import reference_encoding
from tiny_text_encoders import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_pixart, tiny_t5_encoder, tiny_text_unet

SIGMA_MAX = 80.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def text_pipeline(tokenizer, scheduler=None, backbone=None, text_encoder=None, **kwargs) -> EDMTextToImagePipeline:
    denoiser = EDMPrecond.from_backbone(backbone or tiny_text_unet(channels=3, context_width=8)).eval()
    pipe = EDMTextToImagePipeline(
        denoiser, scheduler or EDMHeunScheduler(), tokenizer, text_encoder or tiny_clip_text_encoder(), **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ContextRecorder:
    """Records the batch, text context and class_labels slot (the pooled vector of a projection UNet) of every
    backbone call."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict] = []
        module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.calls.append({"batch": args[0].shape[0], "context": kwargs["encoder_hidden_states"].clone(),
                           "class_labels": kwargs.get("class_labels")})


# ---------------------------------------------------------------------------------------------- guidance inputs
@pytest.mark.parametrize("empty_prompt", ["encode", "zeros"])
def test_unconditional_half_gets_the_empty_prompt_and_the_conditional_half_the_prompt(tokenizer, empty_prompt):
    pipe = text_pipeline(tokenizer, empty_prompt=empty_prompt)
    recorder = ContextRecorder(pipe.denoiser.backbone)
    prompts = ["a handwritten 7", "the digit two"]
    pipe(prompts, num_images_per_prompt=2, guidance_scale=3.0, num_inference_steps=2, generator=seeded(),
         output_type="latent")
    prompt_embeds, _ = reference_encoding(tokenizer, pipe.text_encoder, prompts)
    empty_embeds, _ = reference_encoding(tokenizer, pipe.text_encoder, [""])
    if empty_prompt == "zeros":
        empty_embeds = torch.zeros_like(empty_embeds)
    expected_conditional = prompt_embeds[[0, 0, 1, 1]]  # num_images_per_prompt=2, in prompt order
    assert len(recorder.calls) == 3  # Heun, 2 steps: 3 model calls, each one batched forward of both halves
    for call in recorder.calls:
        assert call["batch"] == 8
        torch.testing.assert_close(call["context"][:4], expected_conditional)
        torch.testing.assert_close(call["context"][4:], empty_embeds.expand(4, -1, -1))


def test_negative_prompt_replaces_the_empty_prompt(tokenizer):
    pipe = text_pipeline(tokenizer)
    recorder = ContextRecorder(pipe.denoiser.backbone)
    pipe(["seven", "two"], negative_prompt="blurry", guidance_scale=2.0, num_inference_steps=1, generator=seeded(),
         output_type="latent")
    negative, _ = reference_encoding(tokenizer, pipe.text_encoder, ["blurry"])
    torch.testing.assert_close(recorder.calls[0]["context"][2:], negative.expand(2, -1, -1))


def test_guided_sample_is_the_classifier_free_formula(tokenizer):
    """One Euler step from sigma_max to 0 returns D_guided(x_0; sigma_max) = D_u + w (D_c - D_u)."""
    pipe = text_pipeline(tokenizer, EDMHeunScheduler(solver="euler"))
    w, prompts = 2.5, ["a handwritten 7", "three"]
    sample = pipe(prompts, guidance_scale=w, num_inference_steps=1, generator=seeded(4), output_type="latent").images
    x0 = torch.randn(2, 3, 8, 8, generator=seeded(4)) * SIGMA_MAX
    conditional, _ = reference_encoding(tokenizer, pipe.text_encoder, prompts)
    empty, _ = reference_encoding(tokenizer, pipe.text_encoder, [""])
    with torch.no_grad():
        d_c = pipe.denoiser(x0, SIGMA_MAX, encoder_hidden_states=conditional).sample
        d_u = pipe.denoiser(x0, SIGMA_MAX, encoder_hidden_states=empty.expand(2, -1, -1)).sample
    assert (d_c - d_u).abs().max() > 1e-3  # the prompt matters, so the test can tell the halves apart
    torch.testing.assert_close(sample, d_u + w * (d_c - d_u), rtol=1e-4, atol=1e-4)


def test_unit_weight_makes_one_unbatched_forward_per_model_call(tokenizer):
    pipe = text_pipeline(tokenizer)
    recorder = ContextRecorder(pipe.denoiser.backbone)
    pipe(["seven", "two", "one"], guidance_scale=1.0, num_inference_steps=3, generator=seeded(), output_type="latent")
    assert [call["batch"] for call in recorder.calls] == [3] * 5  # Heun, 3 steps: 5 model calls


SCHEDULERS = {
    "heun": lambda: EDMHeunScheduler(),
    "multistep": lambda: EDMMultistepScheduler(),
    "diffusers_euler": lambda: EDMEulerScheduler(),
    "diffusers_dpm": lambda: EDMDPMSolverMultistepScheduler(),
}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_samples_with_text_guidance(tokenizer, scheduler):
    pipe = text_pipeline(tokenizer, SCHEDULERS[scheduler]())
    recorder = ContextRecorder(pipe.denoiser.backbone)
    images = pipe("seven", num_images_per_prompt=2, guidance_scale=2.0, num_inference_steps=3, generator=seeded(),
                  output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    assert recorder.calls and all(call["batch"] == 4 for call in recorder.calls)


def test_guidance_interval_guides_only_inside(tokenizer):
    pipe = text_pipeline(tokenizer, EDMHeunScheduler(solver="euler"))
    recorder = ContextRecorder(pipe.denoiser.backbone)
    pipe("seven", guidance_scale=2.0, guidance_interval=(1.0, 20.0), num_inference_steps=4, generator=seeded(),
         output_type="latent")
    rho, n = 7.0, 4  # EDM's schedule (eq. 5) with EDMHeunScheduler's defaults
    sigmas = [(SIGMA_MAX ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - SIGMA_MAX ** (1 / rho))) ** rho for i in range(n)]
    assert [call["batch"] for call in recorder.calls] == [2 if 1.0 < s <= 20.0 else 1 for s in sigmas]


def test_autoguidance_with_a_weak_text_model(tokenizer):
    weak = EDMPrecond.from_backbone(tiny_text_unet(channels=3, context_width=8, seed=5)).eval()
    pipe = text_pipeline(tokenizer, EDMHeunScheduler(solver="euler"), guidance_denoiser=weak)
    weak_recorder = ContextRecorder(weak.backbone)
    w = 2.0
    sample = pipe("seven", guidance_scale=w, num_inference_steps=1, generator=seeded(2), output_type="latent").images
    x0 = torch.randn(1, 3, 8, 8, generator=seeded(2)) * SIGMA_MAX
    prompt, _ = reference_encoding(tokenizer, pipe.text_encoder, ["seven"])
    torch.testing.assert_close(weak_recorder.calls[0]["context"], prompt)  # the weak model gets the prompt too
    with torch.no_grad():
        d_main = pipe.denoiser(x0, SIGMA_MAX, encoder_hidden_states=prompt).sample
        d_weak = weak(x0, SIGMA_MAX, encoder_hidden_states=prompt).sample
    torch.testing.assert_close(sample, d_weak + w * (d_main - d_weak), rtol=1e-4, atol=1e-4)


def test_pooled_text_vector_reaches_a_projection_unet(tokenizer):
    """GLIDE adds a projection of the final token to the time embedding: the conditional half gets CLIP's pooled
    output of the prompt, the unconditional half that of the empty prompt."""
    pipe = text_pipeline(tokenizer, backbone=tiny_text_unet(channels=3, context_width=8, pooled_width=8))
    recorder = ContextRecorder(pipe.denoiser.backbone)
    pipe(["seven", "two"], guidance_scale=2.0, num_inference_steps=1, generator=seeded(), output_type="latent")
    _, pooled = reference_encoding(tokenizer, pipe.text_encoder, ["seven", "two"])
    _, empty_pooled = reference_encoding(tokenizer, pipe.text_encoder, [""])
    torch.testing.assert_close(recorder.calls[0]["class_labels"], torch.cat([pooled, empty_pooled.expand(2, -1)]))
    t5 = text_pipeline(tokenizer, backbone=tiny_text_unet(channels=3, context_width=8, pooled_width=8),
                       text_encoder=tiny_t5_encoder(d_model=8))
    with pytest.raises(ValueError, match=r"needs a pooled text vector of width 8 .* T5EncoderModel gives none"):
        t5("seven", num_inference_steps=1)


def test_pixart_backbone_with_t5_and_guidance(tokenizer):
    pipe = text_pipeline(tokenizer, backbone=tiny_pixart(channels=3, caption_channels=12),
                         text_encoder=tiny_t5_encoder(d_model=12), scheduler=EDMMultistepScheduler())
    recorder = ContextRecorder(pipe.denoiser.backbone)
    images = pipe(["seven", "two"], guidance_scale=2.0, num_inference_steps=2, generator=seeded(), output_type="np").images
    assert images.shape == (2, 8, 8, 3) and (images >= 0).all() and (images <= 1).all()
    empty, _ = reference_encoding(tokenizer, pipe.text_encoder, [""])
    torch.testing.assert_close(recorder.calls[0]["context"][2:], empty.expand(2, -1, -1))


# ---------------------------------------------------------------------------------------------- saving
def test_save_and_load_give_identical_images(tokenizer, tmp_path):
    pipe = text_pipeline(tokenizer, EDMMultistepScheduler(), empty_prompt="zeros")
    kwargs = dict(prompt=["seven", "two"], guidance_scale=2.0, num_inference_steps=3, output_type="np")
    expected = pipe(generator=seeded(1), **kwargs).images
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is EDMTextToImagePipeline and loaded.config.empty_prompt == "zeros"
    assert type(loaded.text_encoder) is type(pipe.text_encoder) and loaded.tokenizer.model_max_length == 16
    actual = loaded(generator=seeded(1), **kwargs).images
    assert (expected == actual).all()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_names_both_sides(tokenizer):
    pipe = text_pipeline(tokenizer)
    with pytest.raises(ValueError, match=r"latents hold 3 samples but 2 prompt\(s\) x num_images_per_prompt=2 make 4"):
        pipe(["a", "b"], num_images_per_prompt=2, latents=torch.randn(3, 3, 8, 8), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"negative_prompt has 3 prompts but prompt has 2"):
        pipe(["a", "b"], negative_prompt=["x", "y", "z"], guidance_scale=2.0, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"prompt_embeds has width 12 but the denoiser reads .* width 8"):
        pipe(prompt_embeds=torch.randn(2, 16, 12), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"exactly one of prompt or prompt_embeds, got both"):
        pipe("a", prompt_embeds=torch.randn(1, 16, 8), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"exactly one of prompt or prompt_embeds, got neither"):
        pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match=r"num_images_per_prompt must be an integer >= 1, got 0"):
        pipe("a", num_images_per_prompt=0)
    with pytest.raises(ValueError, match=r"text encoder CLIPTextModel \(hidden size\) has width 16 but the denoiser's "
                                         r"UNet2DConditionModel reads .* width 8"):
        text_pipeline(tokenizer, text_encoder=tiny_clip_text_encoder(hidden_size=16))
    with pytest.raises(ValueError, match=r"needs a denoiser with cross-attention"):
        from tiny_backbones import tiny_unet

        EDMTextToImagePipeline(EDMPrecond.from_backbone(tiny_unet()), EDMHeunScheduler(), tokenizer, tiny_clip_text_encoder())
    with pytest.raises(ValueError, match=r"empty_prompt must be one of"):
        text_pipeline(tokenizer, empty_prompt="none")


def test_prompt_embeds_give_the_same_images_as_the_prompts(tokenizer):
    pipe = text_pipeline(tokenizer)
    kwargs = dict(guidance_scale=2.0, num_inference_steps=2, output_type="latent")
    by_prompt = pipe(["seven", "two"], negative_prompt="blurry", generator=seeded(), **kwargs).images
    embeds, _ = reference_encoding(tokenizer, pipe.text_encoder, ["seven", "two"])
    negative, _ = reference_encoding(tokenizer, pipe.text_encoder, ["blurry"])
    by_embeds = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=seeded(), **kwargs).images
    torch.testing.assert_close(by_embeds, by_prompt)


# ---------------------------------------------------------------------------------------------- EDMPipeline's context
def test_edm_pipeline_guidance_gives_the_unconditional_half_its_own_context():
    """The defect of issue 16: EDMPipeline's classifier-free guidance gave both halves the same context. With
    negative_encoder_hidden_states the unconditional half gets it (a text-only model can be guided); without it the
    context is shared and only the label is nulled (documented)."""
    from tiny_backbones import tiny_unet_condition

    text_only = EDMPipeline(EDMPrecond.from_backbone(tiny_unet_condition()).eval(), EDMHeunScheduler())
    text_only.set_progress_bar_config(disable=True)
    recorder = ContextRecorder(text_only.denoiser.backbone)
    context, negative = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    text_only(batch_size=2, encoder_hidden_states=context, negative_encoder_hidden_states=negative, guidance_scale=2.0,
              num_inference_steps=1, output_type="latent")
    torch.testing.assert_close(recorder.calls[0]["context"], torch.cat([context, negative.expand(2, -1, -1)]))

    labelled = EDMPipeline(
        EDMPrecond.from_backbone(tiny_unet_condition(num_class_embeds=6), num_classes=5, null_class_label=5).eval(),
        EDMHeunScheduler(),
    )
    labelled.set_progress_bar_config(disable=True)
    recorder = ContextRecorder(labelled.denoiser.backbone)
    labelled(class_labels=[1, 2], encoder_hidden_states=context, guidance_scale=2.0, num_inference_steps=1,
             output_type="latent")
    torch.testing.assert_close(recorder.calls[0]["context"], torch.cat([context, context]))
    assert recorder.calls[0]["class_labels"].tolist() == [1, 2, 5, 5]
    with pytest.raises(ValueError, match=r"encoder_hidden_states has width 4 but .* width 8"):
        text_only(batch_size=2, encoder_hidden_states=torch.randn(2, 5, 4), num_inference_steps=1)


# ---------------------------------------------------------------------------------------------- model cards
def test_model_cards_examples_run(tokenizer, tmp_path):
    from test_learned_variance_text_pipeline import glide_pipeline
    from test_model_cards import REPO_ID, run_usage_example

    for name, pipe in {"edm": text_pipeline(tokenizer), "glide": glide_pipeline(tokenizer)}.items():
        directory = tmp_path / name
        pipe.save_pretrained(directory)
        card = str(pipe.model_card(REPO_ID, num_inference_steps=2, guidance_scale=2.0, prompts=["seven", "two"]))
        assert "- text-to-image" in card
        code, images = run_usage_example(card, REPO_ID, directory)
        assert "prompt=['seven', 'two']" in code and "guidance_scale=2.0" in code
        assert len(images) == 2


def test_latent_pipeline_with_a_vae_and_a_step_callback(tokenizer):
    from tiny_backbones import tiny_vae

    pipe = text_pipeline(tokenizer, EDMHeunScheduler(), backbone=tiny_text_unet(channels=4, context_width=8), vae=tiny_vae())
    assert pipe.config.latent_space
    seen = []

    def callback(pipeline, i, t, tensors):
        seen.append(i)
        return {"latents": tensors["latents"]}

    images = pipe("seven", guidance_scale=2.0, num_inference_steps=2, generator=seeded(), output_type="np",
                  callback_on_step_end=callback).images
    assert images.shape == (1, 16, 16, 3) and seen == [0, 1, 2]  # decoded at twice the latent size; 3 model calls
