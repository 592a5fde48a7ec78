"""Pretrained Stable Diffusion / SDXL / EDM-formulated UNets as denoisers D(x; sigma) (``pretrained_denoiser``).

Every expected value is computed here from the UNet's raw output and the formulas of the papers:

- discrete VP table (Ho et al. 2020): ``sigma_t = sqrt((1 - abar_t) / abar_t)``, SD's "scaled_linear" betas
  ``linspace(sqrt(0.00085), sqrt(0.012), 1000)^2``; input ``x / sqrt(sigma^2 + 1)`` at the timestep that linearly
  interpolates ``log sigma_t`` (EDM, Karras et al. 2022, section 2 / Table 1, VP column);
- eps: ``D = x - sigma eps``; v (Salimans & Ho 2022): ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v``;
- EDM-formulated (Playground v2.5, CosXL): ``D = sd^2/(sigma^2+sd^2) x +/- sigma sd/sqrt(sigma^2+sd^2)
  F(x/sqrt(sigma^2+sd^2); ln(sigma)/4)``, minus for diffusers' ``"v_prediction"``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    ScoreSdeVeScheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_edm import DiscreteVPPrecond, EDMFormulatedPrecond, pretrained_denoiser
from tiny_stable_diffusion import (
    make_tiny_edm_sdxl_pipeline,
    make_tiny_sd2_pipeline,
    make_tiny_sd_pipeline,
    make_tiny_sdxl_base_pipeline,
)

BUILDERS = {
    "sd1_epsilon": make_tiny_sd_pipeline,
    "sd2_v": make_tiny_sd2_pipeline,
    "sdxl": make_tiny_sdxl_base_pipeline,
    "edm_sdxl": make_tiny_edm_sdxl_pipeline,
    "cosxl_v": lambda tmp_dir: make_tiny_edm_sdxl_pipeline(tmp_dir, cosxl=True),
}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def sd_table_sigmas() -> np.ndarray:
    """SD's 1000 training noise levels, from the betas written out here."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def expected_timestep(sigma: float) -> float:
    """Linear interpolation of log sigma between the neighbouring table entries."""
    log_table = np.log(sd_table_sigmas())
    i = min(int(np.searchsorted(log_table, math.log(sigma), side="right") - 1), len(log_table) - 2)
    return i + (math.log(sigma) - log_table[i]) / (log_table[i + 1] - log_table[i])


def conditioning(pipe, batch: int, generator: torch.Generator) -> tuple[dict, dict]:
    """(wrapper kwargs, the same conditioning in the UNet's own keywords)."""
    unet = pipe.unet
    context = torch.randn(batch, 5, unet.config.cross_attention_dim, generator=generator)
    if unet.config.addition_embed_type != "text_time":
        return {"encoder_hidden_states": context}, {"encoder_hidden_states": context}
    text_embeds = torch.randn(batch, 32, generator=generator)
    time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).expand(batch, 6)
    return (
        {"encoder_hidden_states": context, "pooled_text_embeds": torch.cat([text_embeds, time_ids], dim=1)},
        {"encoder_hidden_states": context, "added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}},
    )


def expected_denoised(kind: str, unet, x: torch.Tensor, sigma: torch.Tensor, unet_kwargs: dict) -> torch.Tensor:
    """D from the UNet's raw output, by the formulas in the module docstring."""
    s = sigma.double().reshape(-1, 1, 1, 1)
    if kind.startswith(("edm", "cosxl")):
        sd = 1.0 if kind.startswith("cosxl") else 0.5
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        timestep = torch.log(sigma.double()) / 4
        raw = unet(x * c_in.float(), timestep.float(), **unet_kwargs).sample.double()
        sign = -1.0 if kind == "cosxl_v" else 1.0
        return sd**2 / (s**2 + sd**2) * x.double() + sign * s * sd / torch.sqrt(s**2 + sd**2) * raw
    timesteps = torch.tensor([expected_timestep(float(v)) for v in sigma], dtype=torch.float32)
    raw = unet((x.double() / torch.sqrt(s**2 + 1)).float(), timesteps, **unet_kwargs).sample.double()
    if kind == "sd2_v":
        return x.double() / (s**2 + 1) - s / torch.sqrt(s**2 + 1) * raw
    return x.double() - s * raw


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_denoiser_equals_the_formula_on_the_unets_raw_output(pipes, kind):
    pipe = pipes[kind]
    model = pretrained_denoiser(pipe.unet, pipe.scheduler)
    expected_class = EDMFormulatedPrecond if kind.startswith(("edm", "cosxl")) else DiscreteVPPrecond
    assert type(model) is expected_class
    generator = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(3, 4, 8, 8, generator=generator)
    sigma = torch.tensor([0.05, 1.3, 9.0], dtype=torch.float64)  # between table entries
    ours, theirs = conditioning(pipe, 3, generator)
    with torch.no_grad():
        denoised = model(x, sigma, **ours).sample
        expected = expected_denoised(kind, pipe.unet, x, sigma, theirs)
    assert denoised.dtype == torch.float32
    torch.testing.assert_close(denoised.double(), expected, rtol=1e-4, atol=1e-4)


class UNetInputs:
    """Records the sample and timestep each UNet call receives (forward pre-hook)."""

    def __init__(self, unet):
        self.samples, self.timesteps = [], []
        self.handle = unet.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.samples.append(args[0].detach().clone())
        self.timesteps.append(torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"]).clone())


@pytest.mark.parametrize("kind", ["sd1_epsilon", "sd2_v", "sdxl"])
def test_the_unet_gets_the_integer_timestep_at_table_levels_and_the_interpolated_one_between(pipes, kind):
    pipe = pipes[kind]
    model = pretrained_denoiser(pipe.unet, pipe.scheduler)
    table = sd_table_sigmas()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, 8, generator=generator)
    ours, _ = conditioning(pipe, 4, generator)
    at_table = torch.tensor(table[[0, 1, 500, 999]], dtype=torch.float64)
    between = torch.tensor(np.sqrt(table[[0, 10, 500, 998]] * table[[1, 11, 501, 999]]), dtype=torch.float64)
    inputs = UNetInputs(pipe.unet)
    try:
        with torch.no_grad():
            model(x, at_table, **ours)
            model(x, between, **ours)
    finally:
        inputs.handle.remove()
    assert inputs.timesteps[0].tolist() == [0.0, 1.0, 500.0, 999.0]  # exactly the integer timesteps
    expected = [expected_timestep(float(v)) for v in between]
    assert np.allclose(inputs.timesteps[1].double().numpy(), expected, rtol=0, atol=1e-4)
    assert not np.allclose(expected, np.round(expected), atol=0.1)  # genuinely fractional, near the midpoints
    for sample, sigma in zip(inputs.samples, (at_table, between)):
        scale = (1 / torch.sqrt(sigma**2 + 1)).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(sample.double(), x.double() * scale, rtol=1e-6, atol=1e-6)


def test_sigma_range_is_the_tables_ends(pipes):
    table = sd_table_sigmas()
    pipe = pipes["sd1_epsilon"]
    model = pretrained_denoiser(pipe.unet, pipe.scheduler)
    assert model.sigma_min == pytest.approx(table[0], rel=1e-12) and model.sigma_max == pytest.approx(table[-1], rel=1e-12)
    edm = pretrained_denoiser(pipes["edm_sdxl"].unet, pipes["edm_sdxl"].scheduler)
    assert (edm.sigma_min, edm.sigma_max, edm.config.sigma_data) == (0.002, 80.0, 0.5)
    cosxl = pretrained_denoiser(pipes["cosxl_v"].unet, pipes["cosxl_v"].scheduler)
    assert (cosxl.config.sigma_data, cosxl.config.prediction_type) == (1.0, "v_prediction")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_keeps_the_table_in_float64(pipes, dtype):
    pipe = pipes["sd1_epsilon"]
    model = pretrained_denoiser(copy.deepcopy(pipe.unet), pipe.scheduler).to(dtype)
    assert model.backbone.dtype == dtype
    assert model.log_table_sigmas.dtype == torch.float64
    np.testing.assert_array_equal(model.log_table_sigmas.numpy(), np.log(sd_table_sigmas()))
    # The timestep of a table level is still exactly its integer (a float16 table would blur neighbours together).
    levels = torch.tensor(sd_table_sigmas()[[3, 997, 998]], dtype=torch.float64)
    assert model.timestep(levels).tolist() == [3.0, 997.0, 998.0]


@pytest.mark.parametrize("kind", ["sd2_v", "cosxl_v"])
def test_save_and_load_rebuild_the_same_denoiser(pipes, kind, tmp_path):
    pipe = pipes[kind]
    model = pretrained_denoiser(pipe.unet, pipe.scheduler).eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    ours, _ = conditioning(pipe, 2, generator)
    sigma = torch.tensor([0.4, 5.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma, **ours).sample, model(x, sigma, **ours).sample, rtol=0, atol=0)
    if kind == "sd2_v":
        assert loaded.log_table_sigmas.dtype == torch.float64
        np.testing.assert_array_equal(loaded.log_table_sigmas.numpy(), np.log(sd_table_sigmas()))


@pytest.mark.parametrize(
    "scheduler", [FlowMatchEulerDiscreteScheduler(), ScoreSdeVeScheduler()], ids=lambda s: type(s).__name__
)
def test_a_scheduler_that_is_neither_a_table_nor_edm_is_refused_by_name(pipes, scheduler):
    with pytest.raises(ValueError, match=type(scheduler).__name__):
        pretrained_denoiser(pipes["sd1_epsilon"].unet, scheduler)


def test_an_edm_scheduler_with_an_unknown_prediction_type_is_refused(pipes):
    # As read from a checkpoint's scheduler_config.json, which names its class.
    config = dict(pipes["edm_sdxl"].scheduler.config) | {"_class_name": "EDMDPMSolverMultistepScheduler",
                                                          "prediction_type": "sample"}
    with pytest.raises(ValueError, match="EDMDPMSolverMultistepScheduler.*'sample'"):
        pretrained_denoiser(pipes["edm_sdxl"].unet, config)


@settings(max_examples=30, deadline=None)
@given(
    prediction_type=st.sampled_from(["epsilon", "v_prediction", "sample", "flow", "", None]),
    beta_schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]),
    num_train_timesteps=st.sampled_from([1, 2, 10, 1000, 0, -3]),
    class_name=st.sampled_from(["DDPMScheduler", "EulerDiscreteScheduler", "LCMScheduler", "MyScheduler"]),
)
def test_scheduler_configs_give_a_denoiser_with_a_finite_output_or_a_value_error(
    pipes, prediction_type, beta_schedule, num_train_timesteps, class_name
):
    """Input contract: any scheduler config gives a working denoiser or a ValueError; nothing else escapes."""
    config = {
        "_class_name": class_name, "prediction_type": prediction_type, "beta_schedule": beta_schedule,
        "num_train_timesteps": num_train_timesteps, "beta_start": 0.00085, "beta_end": 0.012,
    }
    pipe = pipes["sd1_epsilon"]
    try:
        model = pretrained_denoiser(pipe.unet, config)
    except ValueError:
        return
    assert prediction_type in ("epsilon", "v_prediction", "sample") and num_train_timesteps >= 2
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([model.sigma_max]), encoder_hidden_states=torch.randn(1, 3, 32)).sample
    assert torch.isfinite(out).all()


def test_from_backbone_reads_the_table_of_any_discrete_scheduler(pipes):
    """A DDPMScheduler with a linear table and an Euler config with v-prediction are read from their configs."""
    unet = pipes["sd1_epsilon"].unet
    linear = DiscreteVPPrecond.from_backbone(unet, scheduler=DDPMScheduler(beta_schedule="linear"))
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    np.testing.assert_allclose(linear.train_sigmas, np.sqrt((1 - alpha_bar) / alpha_bar), rtol=1e-12)
    v = DiscreteVPPrecond.from_backbone(unet, scheduler=EulerDiscreteScheduler(prediction_type="v_prediction"))
    assert v.config.prediction_type == "v_prediction" and v.config.beta_schedule == "linear"


# ---------------------------------------------------------------------------------------- SDXL text, whole pipelines
PROMPTS = ["a red cube", "two birds"]


def test_sdxl_prompt_encoding_matches_diffusers_sdxl_pipeline(pipes):
    """Both encoders' penultimate hidden states concatenated, the second's text_embeds pooled; the "zeros" empty prompt
    is SDXL's force_zeros_for_empty_prompt (diffusers' own encode_prompt is the reference)."""
    from diffusers_edm.pipelines.prompt_encoding import PromptEncoder

    pipe = pipes["sdxl"]
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, "zeros", pipe.tokenizer_2, pipe.text_encoder_2)
    ours = encoder.encode(PROMPTS)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    assert encoder.hidden_size == 64 and ours.embeds.shape == (2, 77, 64)
    torch.testing.assert_close(ours.embeds, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
    # Written out: the two penultimate layers side by side.
    ids = [tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
           for tok in (pipe.tokenizer, pipe.tokenizer_2)]
    with torch.no_grad():
        first = pipe.text_encoder(ids[0], output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    torch.testing.assert_close(ours.embeds, torch.cat([first, second.hidden_states[-2]], dim=-1), rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, second.text_embeds, rtol=0, atol=0)
    empty = encoder.empty(2)
    torch.testing.assert_close(empty.embeds, negative, rtol=0, atol=0)
    torch.testing.assert_close(empty.pooled, negative_pooled, rtol=0, atol=0)
    assert not empty.embeds.any()


class UNetCalls:
    """Records every UNet call's sample, timestep and SDXL added conditions."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        added = kwargs.get("added_cond_kwargs") or {}
        self.calls.append({
            "sample": args[0].detach().clone(), "timestep": torch.as_tensor(timestep).detach().clone(),
            "context": kwargs["encoder_hidden_states"].detach().clone(),
            **{key: value.detach().clone() for key, value in added.items()},
        })


@pytest.mark.parametrize("kind", ["sdxl", "edm_sdxl"])
def test_the_text_pipeline_drives_an_sdxl_unet_as_diffusers_sdxl_does(pipes, kind):
    """The package's text pipeline over an SDXL pipeline: finite images; the UNet gets diffusers' prompt embeddings
    (zeros for the unconditional half), pooled text_embeds and add_time_ids (16, 16, 0, 0, 16, 16), and at each call
    the scaled input and timestep of its formulation."""
    from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline

    pipe = pipes[kind]
    ours = EDMTextToImagePipeline.from_stable_diffusion(pipe, scheduler=EDMHeunScheduler())
    ours.set_progress_bar_config(disable=True)
    assert ours.config.empty_prompt == "zeros" and ours.text_encoder_2 is pipe.text_encoder_2
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    calls, inputs = UNetCalls(pipe.unet), []
    track = ours.denoiser.register_forward_pre_hook(
        lambda module, args: inputs.append((args[0].detach().clone(), torch.as_tensor(args[1]).detach().clone()))
    )
    try:
        images = ours(PROMPTS, guidance_scale=4.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    finally:
        calls.handle.remove()
        track.remove()
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert len(calls.calls) == 5  # Heun: 2 N - 1 model calls, both guidance halves in one batch
    time_ids = torch.tensor([16.0, 16.0, 0.0, 0.0, 16.0, 16.0])
    assert len(inputs) == len(calls.calls)
    for call, (x, sigma) in zip(calls.calls, inputs):
        torch.testing.assert_close(call["context"], torch.cat([embeds, negative]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(call["text_embeds"], torch.cat([pooled, negative_pooled]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(call["time_ids"], time_ids.expand(4, 6), rtol=0, atol=0)
        s = sigma.double().reshape(-1).expand(4)
        if kind == "edm_sdxl":
            expected_t, scale = torch.log(s) / 4, 1 / torch.sqrt(s**2 + 0.25)
        else:
            expected_t = torch.tensor([expected_timestep(float(v)) for v in s], dtype=torch.float64)
            scale = 1 / torch.sqrt(s**2 + 1)
        torch.testing.assert_close(call["timestep"].double(), expected_t, rtol=0, atol=1e-4)
        expected_input = x.double() * scale.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(call["sample"].double(), expected_input, rtol=1e-5, atol=1e-5)


def test_sd15_through_the_package_equals_diffusers_heun_with_karras_sigmas(pipes, tmp_path):
    """Exact by construction: EDM's deterministic Heun sampler (Algorithm 1) on the Karras grid between the table's ends
    is diffusers' HeunDiscreteScheduler(use_karras_sigmas=True, linspace spacing) on the same UNet, and guiding D
    equals guiding eps at a fixed sigma (D is affine in eps). Same initial noise, same steps: the same images."""
    from diffusers import HeunDiscreteScheduler, StableDiffusionPipeline

    from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline

    pipe = pipes["sd1_epsilon"]
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    reference_pipe = StableDiffusionPipeline(**{**pipe.components, "scheduler": HeunDiscreteScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace")})
    reference_pipe.set_progress_bar_config(disable=True)
    reference = reference_pipe(PROMPTS, num_inference_steps=5, guidance_scale=3.0, latents=noise.clone(),
                               height=16, width=16, output_type="np").images
    ours = EDMTextToImagePipeline.from_stable_diffusion(pipe, scheduler=EDMHeunScheduler(s_churn=0.0, rho=7.0))
    ours.set_progress_bar_config(disable=True)
    assert ours.config.empty_prompt == "encode"
    images = ours(PROMPTS, num_inference_steps=5, guidance_scale=3.0, latents=noise.clone(), output_type="np").images
    np.testing.assert_allclose(images, reference, rtol=0, atol=2e-4)
    assert np.abs(images - ours(PROMPTS, num_inference_steps=4, guidance_scale=3.0, latents=noise.clone(),
                                output_type="np").images).max() > 1e-3  # the comparison can tell samplers apart

    # save_pretrained -> from_pretrained gives identical images.
    ours.save_pretrained(tmp_path)
    loaded = EDMTextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.denoiser).__name__ == "DiscreteVPPrecond"
    again = loaded(PROMPTS, num_inference_steps=5, guidance_scale=3.0, latents=noise.clone(), output_type="np").images
    np.testing.assert_array_equal(again, images)


def test_an_sdxl_pipeline_saved_and_loaded_gives_identical_images(pipes, tmp_path):
    from diffusers import DiffusionPipeline

    from diffusers_edm import EDMTextToImagePipeline

    ours = EDMTextToImagePipeline.from_stable_diffusion(pipes["cosxl_v"])
    ours.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    images = ours("a tree", num_inference_steps=3, guidance_scale=2.0, latents=noise.clone(), output_type="np").images
    ours.save_pretrained(tmp_path)
    loaded = EDMTextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert loaded.config.empty_prompt == "zeros" and type(loaded.denoiser).__name__ == "EDMFormulatedPrecond"
    again = loaded("a tree", num_inference_steps=3, guidance_scale=2.0, latents=noise.clone(), output_type="np").images
    np.testing.assert_array_equal(again, images)
    assert DiffusionPipeline  # imported: the package's classes resolve once diffusers_edm is imported


def test_an_sdxl_unet_without_the_second_text_encoder_is_refused(pipes):
    from diffusers_edm import EDMHeunScheduler, EDMTextToImagePipeline

    pipe = pipes["sdxl"]
    with pytest.raises(ValueError, match="text_encoder_2"):
        EDMTextToImagePipeline(pretrained_denoiser(pipe.unet, pipe.scheduler), EDMHeunScheduler(), pipe.tokenizer,
                               CLIPTextModelWidth64.build())


class CLIPTextModelWidth64:
    """A single CLIP text encoder as wide as SDXL's concatenated sequence, so only the missing pooled input is wrong."""

    @staticmethod
    def build():
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=37, num_attention_heads=4,
                                            num_hidden_layers=1, max_position_embeddings=77))
