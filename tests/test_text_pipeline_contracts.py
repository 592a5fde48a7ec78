"""The input contract of the text pipelines' new ``__call__`` arguments, as property tests in the style of
test_entry_point_contracts.py: every call either raises a ``ValueError`` / ``TypeError`` naming one of its bad
arguments, or returns finite images of shape ``(prompts x num_images_per_prompt, C, H, W)``. Whether each drawn value
is valid is stated here from the documented rules, independently of the code."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline, LearnedVarianceTextToImagePipeline
from diffusers_edm.models import EDMPrecond
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from test_entry_point_contracts import CONTRACT, assert_finite, bad, check_contract, drawn, ok
from tiny_text_encoders import SEQUENCE_LENGTH, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_text_unet

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    tokenizer = tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    pipes = {
        "EDMTextToImagePipeline": EDMTextToImagePipeline(
            EDMPrecond.from_backbone(tiny_text_unet(channels=3)).eval(), EDMHeunScheduler(), tokenizer,
            tiny_clip_text_encoder(),
        ),
        "LearnedVarianceTextToImagePipeline": LearnedVarianceTextToImagePipeline(
            tiny_text_unet(channels=3, out_channels=6).eval(), LearnedVarianceDDPMScheduler(num_train_timesteps=40),
            tokenizer, tiny_clip_text_encoder(),
        ),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


words = st.text(alphabet="abc 7", max_size=6)


@pytest.mark.parametrize("name", ["EDMTextToImagePipeline", "LearnedVarianceTextToImagePipeline"])
@CONTRACT
@given(data=st.data())
def test_text_pipeline_call(pipelines, name, data):
    pipe = pipelines[name]
    use_embeds = data.draw(st.booleans(), label="prompt as embeddings")
    if use_embeds:
        count = data.draw(st.integers(1, 2), label="prompts")
        prompt = (None, True)
        embeds = drawn(data, "prompt_embeds", ok(st.just(torch.randn(count, SEQUENCE_LENGTH, 8))),
                       bad(torch.randn(count, SEQUENCE_LENGTH, 5), torch.randn(count, 8), torch.ones(count, 4, 8, dtype=torch.long), "text"))
    else:
        prompt = drawn(data, "prompt", ok(st.one_of(words, st.lists(words, min_size=1, max_size=2))),
                       bad([], 3, [None], b"seven", ["a", 7]))
        embeds = (None, True)
        count = 1 if isinstance(prompt[0], str) or not prompt[1] else len(prompt[0])
    per_prompt = drawn(data, "num_images_per_prompt", ok(st.integers(1, 2)), bad(0, -1, 2.5, NAN, "2", None, True))
    batch = count * (per_prompt[0] if per_prompt[1] else 1)
    negative = drawn(data, "negative_prompt", ok(st.sampled_from([None, "blurry", ["x"] * count])),
                     bad(["x"] * (count + 1), 5, [None], []))
    guidance = drawn(data, "guidance_scale", ok(st.sampled_from([1.0, 0.0, 2.5])), bad(NAN, INF, "2", None))
    interval = drawn(data, "guidance_interval", ok(st.sampled_from([None, (0.5, 10.0)])), bad((3.0, 1.0), (NAN, 1.0), "x", (1.0,)))
    params = {"num_images_per_prompt": per_prompt, "negative_prompt": negative, "guidance_scale": guidance,
              "guidance_interval": interval, ("prompt_embeds" if use_embeds else "prompt"): embeds if use_embeds else prompt}
    kwargs = dict(prompt=prompt[0], prompt_embeds=embeds[0], negative_prompt=negative[0], num_images_per_prompt=per_prompt[0],
                  guidance_scale=guidance[0], guidance_interval=interval[0], num_inference_steps=2, output_type="pt")
    if name == "EDMTextToImagePipeline":
        latents = drawn(data, "latents", ok(st.sampled_from([None, "right"])), bad("more", "nan", "shape"))
        shapes = {"right": (batch, 3, 8, 8), "more": (batch + 1, 3, 8, 8), "nan": (batch, 3, 8, 8), "shape": (batch, 3, 4, 4)}
        value = None if latents[0] is None else torch.randn(shapes[latents[0]])
        if latents[0] == "nan":
            value[0, 0, 0, 0] = NAN
        params["latents"] = latents
        kwargs["latents"] = value
    images = check_contract(lambda: pipe(**kwargs).images, params)
    if images is not None:
        assert_finite(images, (batch, 3, 8, 8), torch.float32)
