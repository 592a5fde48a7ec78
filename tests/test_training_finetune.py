"""Fine-tuning a pretrained Stable Diffusion / SDXL checkpoint with EDM's recipe (``--pretrained_model_name_or_path``):
the loss weights and the truncated log-normal against formulas written here, the refusals of bad input, and tiny
offline runs (a tiny SD 1.x / 2.x / SDXL saved to a folder as the "pretrained" model) whose exports load in stock
diffusers, whose held-out EDM loss falls, and whose LoRA runs resume exactly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    EDMDPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image
from safetensors.torch import load_file

from diffusers_edm import EDMTextToImagePipeline
from diffusers_edm.losses import LOSS_WEIGHTINGS, TruncatedLogNormalLoss
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.train import main
from test_model_cards import python_blocks
from tiny_stable_diffusion import (
    make_tiny_edm_sdxl_pipeline,
    make_tiny_sd2_pipeline,
    make_tiny_sd_pipeline,
    make_tiny_sdxl_base_pipeline,
)
from tiny_training import reset_accelerate_state

SIGMA_DATA = 0.5  # given on the command line: the held-out loss below uses the same EDM weight


# ---------------------------------------------------------------------------------------------- formulas
def test_loss_weights_are_the_stated_formulas():
    sigma = torch.tensor([0.01, 0.1, 0.3, 0.4472, 1.0, 3.0, 14.6])
    sd = 0.7
    assert torch.allclose(LOSS_WEIGHTINGS["edm"](sigma, sd), (sigma**2 + sd**2) / (sigma * sd) ** 2)
    assert torch.equal(LOSS_WEIGHTINGS["uniform"](sigma, sd), torch.ones_like(sigma))
    # Min-SNR-5 (Hang et al. 2023): eps-MSE weight min(SNR, 5) / SNR, SNR = 1/sigma^2; |D - y|^2 = sigma^2 |eps error|^2.
    snr = 1 / sigma**2
    eps_weight = torch.minimum(snr, torch.tensor(5.0)) / snr
    assert torch.allclose(LOSS_WEIGHTINGS["min-snr"](sigma, sd), eps_weight / sigma**2)


def test_sigma_is_the_log_normal_truncated_to_the_model_range():
    from scipy import stats
    from scipy.special import ndtr

    sigma_min, sigma_max, P_mean, P_std = 0.03, 14.6, -1.2, 1.2
    loss = TruncatedLogNormalLoss(sigma_min, sigma_max, P_mean, P_std)
    torch.manual_seed(0)
    log_sigma = loss.sample_sigma(40_000, torch.device("cpu")).double().log().numpy()
    assert log_sigma.min() >= math.log(sigma_min) - 1e-6 and log_sigma.max() <= math.log(sigma_max) + 1e-6
    a, b = ((math.log(sigma_min) - P_mean) / P_std, (math.log(sigma_max) - P_mean) / P_std)

    def truncated_cdf(x):  # the normal CDF renormalised on [a, b] (no mass piled at the ends, unlike clamping)
        z = np.clip((x - P_mean) / P_std, a, b)
        return (ndtr(z) - ndtr(a)) / (ndtr(b) - ndtr(a))

    assert stats.kstest(log_sigma, truncated_cdf).pvalue > 1e-3
    assert np.mean(log_sigma <= math.log(sigma_min) + 1e-4) < 1e-3  # clamping would put ~2.6% here


def test_the_loss_noise_is_drawn_in_logical_order_whatever_the_memory_layout():
    # Eq. 8 with D(x; sigma) = x: lambda(sigma) |sigma n|^2, where (as the loss documents) one uniform per sample gives
    # ln sigma = P_mean + P_std ndtri(u), u ~ U(Phi(a), Phi(b)), then n ~ N(0, I) of the images' shape, from one RNG state.
    loss = TruncatedLogNormalLoss(0.03, 14.6, -1.2, 1.2, "uniform")
    images = torch.randn(3, 4, 8, 8)
    identity = lambda x, sigma, **_: type("Output", (), {"sample": x})()  # noqa: E731
    torch.manual_seed(7)
    low, high = loss.cdf_range
    sigma = (-1.2 + 1.2 * torch.special.ndtri(low + (high - low) * torch.rand(3))).exp()
    expected = (sigma.reshape(-1, 1, 1, 1) * torch.randn(3, 4, 8, 8)) ** 2
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(7)
        output = loss(identity, images.to(memory_format=layout))
        assert torch.allclose(output.loss, expected, rtol=1e-5, atol=1e-6), layout


# ---------------------------------------------------------------------------------------------- checkpoints, runs
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """The tiny checkpoints saved as folders: SD 1.x (eps), SD 2.x (v), SDXL and the EDM-formulated SDXL
    (Playground v2.5's scheduler config)."""
    root = tmp_path_factory.mktemp("bases")
    folders = {}
    for name, make in (("sd1", make_tiny_sd_pipeline), ("sd2", make_tiny_sd2_pipeline), ("sdxl", make_tiny_sdxl_base_pipeline),
                       ("edm_sdxl", make_tiny_edm_sdxl_pipeline)):
        make(root / f"{name}-build").save_pretrained(root / name)
        folders[name] = root / name
    return folders


def finetune(base: Path, output_dir: Path, *extra: str):
    reset_accelerate_state()
    return main([
        "--pretrained_model_name_or_path", str(base), "--output_dir", str(output_dir), "--resolution", "16",
        "--train_batch_size", "4", "--max_train_steps", "4", "--checkpointing_steps", "2", "--logging_steps", "1",
        "--validation_steps", "100", "--num_validation_images", "1", "--sample_steps", "2", "--report_to", "none",
        "--learning_rate", "2e-3", "--lr_rampup_kimg", "0", "--sigma_data", str(SIGMA_DATA), *extra,
    ])


def digits(count: int = 8) -> torch.Tensor:
    """The last ``count`` embedded digits as 16x16 RGB in [-1, 1] (the evaluation images)."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[-count:]).float() / 16 * 2 - 1
    return torch.nn.functional.interpolate(images[:, None], size=16, mode="nearest").expand(-1, 3, -1, -1).contiguous()


@torch.no_grad()
def held_out_edm_loss(pipe: StableDiffusionPipeline, prediction_type: str) -> float:
    """EDM's weighted denoising loss at fixed table levels and fixed noise, computed from the UNet's raw output:
    sigma_t = sqrt((1 - abar_t) / abar_t) of SD's scaled-linear table, x = y + sigma n, the UNet reads
    x / sqrt(sigma^2 + 1) at the integer timestep t; eps: D = x - sigma eps; v: D = x/(sigma^2+1) - sigma/sqrt(sigma^2+1) v;
    loss = mean of (sigma^2 + sd^2)/(sigma sd)^2 |D - y|^2."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    timesteps = torch.tensor([20, 60, 120, 200, 300, 450, 600, 800])
    sigma = ((1 - alphas_cumprod[timesteps]) / alphas_cumprod[timesteps]).sqrt().float().reshape(-1, 1, 1, 1)
    y = pipe.vae.encode(digits(len(timesteps))).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(123))
    x = y + sigma * noise
    ids = pipe.tokenizer(["a handwritten 9"] * len(timesteps), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    context = pipe.text_encoder(ids)[0]
    output = pipe.unet(x / (sigma**2 + 1).sqrt(), timesteps, encoder_hidden_states=context).sample
    if prediction_type == "epsilon":
        denoised = x - sigma * output
    else:
        denoised = x / (sigma**2 + 1) - sigma / (sigma**2 + 1).sqrt() * output
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    return float((weight * (denoised - y) ** 2).mean())


def run_card_example(folder: Path) -> dict:
    namespace: dict = {"__name__": "__model_card__"}
    exec(compile(python_blocks((folder / "README.md").read_text()), "README.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name, prediction_type", [("sd1", "epsilon"), ("sd2", "v_prediction")])
def test_full_finetuning_lowers_the_held_out_loss_and_exports_for_stock_diffusers(bases, tmp_path, name, prediction_type):
    base = StableDiffusionPipeline.from_pretrained(bases[name], safety_checker=None, requires_safety_checker=False)
    assert base.scheduler.config.get("prediction_type", "epsilon") == prediction_type
    before = held_out_edm_loss(base, prediction_type)
    finetune(bases[name], tmp_path / "out")

    stock = StableDiffusionPipeline.from_pretrained(tmp_path / "out", safety_checker=None, requires_safety_checker=False)
    assert isinstance(stock.scheduler, UniPCMultistepScheduler)
    assert stock.scheduler.config.prediction_type == prediction_type
    after = held_out_edm_loss(stock, prediction_type)
    assert after < 0.9 * before, (before, after)
    images = stock("a handwritten 3", num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    edm = EDMTextToImagePipeline.from_pretrained(tmp_path / "out" / "edm")
    assert torch.equal(edm.denoiser.backbone.conv_in.weight, stock.unet.conv_in.weight)
    images = edm("a handwritten 3", num_inference_steps=2, output_type="np").images
    assert np.isfinite(images).all()
    if name == "sd1":
        card = (tmp_path / "out" / "README.md").read_text()
        assert f"base_model: {bases[name]}" in card and "diffusers-edm-train --pretrained_model_name_or_path" in card
        namespace = run_card_example(tmp_path / "out")
        assert all(np.isfinite(np.asarray(image)).all() for image in namespace["images"])


def test_sdxl_finetuning_exports_a_stock_sdxl_pipeline(bases, tmp_path):
    finetune(bases["sdxl"], tmp_path / "out", "--max_train_steps", "2")
    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out")
    images = stock("a handwritten 3", num_inference_steps=2, output_type="np", height=16, width=16).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    base = StableDiffusionXLPipeline.from_pretrained(bases["sdxl"])
    assert not torch.equal(stock.unet.conv_in.weight, base.unet.conv_in.weight)  # trained, SDXL conditions and all


@torch.no_grad()
def held_out_edm_sdxl_loss(pipe: StableDiffusionXLPipeline) -> float:
    """EDM's weighted denoising loss of an EDM-formulated SDXL at fixed levels and fixed noise, from the UNet's raw
    output F (Karras et al. 2022, Table 1, with diffusers' EDM noise label): sd = the scheduler's sigma_data,
    x = y + sigma n, D = c_skip x + c_out F(c_in x; c_noise), c_skip = sd^2/(sigma^2+sd^2),
    c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4; the UNet also reads the
    pooled text embedding and time_ids (16, 16, 0, 0, 16, 16); loss = mean of (sigma^2+sd^2)/(sigma sd)^2 |D - y|^2."""
    sd = pipe.scheduler.config.sigma_data
    sigma = torch.tensor([0.02, 0.1, 0.3, 0.6, 1.0, 2.0, 5.0, 20.0]).reshape(-1, 1, 1, 1)
    y = pipe.vae.encode(digits(len(sigma))).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(123))
    x = y + sigma * noise
    context, _, pooled, _ = pipe.encode_prompt(
        "a handwritten 9", device="cpu", num_images_per_prompt=len(sigma), do_classifier_free_guidance=False
    )
    time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).expand(len(sigma), -1)
    output = pipe.unet(x / (sigma**2 + sd**2).sqrt(), sigma.flatten().log() / 4, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    denoised = sd**2 / (sigma**2 + sd**2) * x + sigma * sd / (sigma**2 + sd**2).sqrt() * output
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return float((weight * (denoised - y) ** 2).mean())


def test_edm_formulated_sdxl_finetuning_lowers_the_held_out_loss_and_exports_for_stock_diffusers(bases, tmp_path):
    base = StableDiffusionXLPipeline.from_pretrained(bases["edm_sdxl"])
    assert isinstance(base.scheduler, EDMDPMSolverMultistepScheduler) and base.scheduler.config.sigma_data == SIGMA_DATA
    before = held_out_edm_sdxl_loss(base)
    finetune(bases["edm_sdxl"], tmp_path / "out", "--max_train_steps", "3", "--learning_rate", "5e-3")

    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out")
    assert isinstance(stock.scheduler, EDMDPMSolverMultistepScheduler)
    assert stock.scheduler.config.sigma_data == SIGMA_DATA and stock.scheduler.config.prediction_type == "epsilon"
    after = held_out_edm_sdxl_loss(stock)
    assert after < 0.9 * before, (before, after)
    images = stock("a handwritten 3", num_inference_steps=2, output_type="np", height=16, width=16,
                   generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    edm = EDMTextToImagePipeline.from_pretrained(tmp_path / "out" / "edm")
    assert torch.equal(edm.denoiser.backbone.conv_in.weight, stock.unet.conv_in.weight)


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def test_lora_finetuning_lowers_the_loss_loads_on_the_base_and_resumes_exactly(bases, tmp_path):
    base = StableDiffusionPipeline.from_pretrained(bases["sd1"], safety_checker=None, requires_safety_checker=False)
    before = held_out_edm_loss(base, "epsilon")
    lora = ("--lora_rank", "4", "--learning_rate", "1e-2")
    finetune(bases["sd1"], tmp_path / "straight", *lora)
    weights = lora_weights(tmp_path / "straight")
    # diffusers' LoRA format (convert_state_dict_to_diffusers): unet.<layer>.lora.down / lora.up on the four targets.
    assert weights and all(key.startswith("unet.") and (".lora.down." in key or ".lora.up." in key) for key in weights)
    assert {key.split(".lora.")[0].rsplit(".", 1)[-1] for key in weights} == {"to_k", "to_q", "to_v", "0"}
    assert not (tmp_path / "straight" / "model_index.json").exists()

    base.load_lora_weights(tmp_path / "straight")
    after = held_out_edm_loss(base, "epsilon")  # the base model with the LoRA loaded by stock diffusers
    assert after < before, (before, after)
    images = base("a handwritten 3", num_inference_steps=2, output_type="np").images
    assert np.isfinite(images).all()

    # Interrupted at step 2 and resumed: bit-identical LoRA weights.
    finetune(bases["sd1"], tmp_path / "resumed", *lora, "--max_train_steps", "2")
    at_two = lora_weights(tmp_path / "resumed")
    finetune(bases["sd1"], tmp_path / "resumed", *lora, "--resume_from_checkpoint", "latest")
    resumed = lora_weights(tmp_path / "resumed")
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert any(not torch.equal(at_two[k], weights[k]) for k in weights)  # steps 3 and 4 changed the weights


# ---------------------------------------------------------------------------------------------- SDXL micro-conditioning
IMAGE_SIZES = ((20, 36), (40, 18), (17, 29), (50, 22))  # (width, height): none square, none at the 16-pixel resolution


@pytest.fixture
def sized_images(tmp_path) -> tuple[Path, dict[tuple[int, int], Image.Image]]:
    """An image folder of random RGB images of :data:`IMAGE_SIZES` with captions; and the images by (height, width)."""
    folder, rng = tmp_path / "sized", np.random.default_rng(0)
    folder.mkdir()
    images, lines = {}, []
    for number, (width, height) in enumerate(IMAGE_SIZES):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image.save(folder / f"{number}.png")
        images[(height, width)] = image
        lines.append(json.dumps({"file_name": f"{number}.png", "text": f"picture {number}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder, images


def resized(image: Image.Image, resolution: int = 16) -> Image.Image:
    """Shorter side to ``resolution``, each side ``round(side * resolution / shorter side)`` (bicubic)."""
    scale = resolution / min(image.size)
    return image.resize(tuple(round(side * scale) for side in image.size), Image.Resampling.BICUBIC)


def record_sdxl_training_inputs(monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Lists that fill, per training step, with the pixels the recipe encodes and the ``time_ids`` the UNet receives
    (its forward under autograd: sampling runs without)."""
    from diffusers import UNet2DConditionModel

    from diffusers_edm.training.recipes.finetune import FineTuneRecipe

    pixels, time_ids = [], []
    latents, forward = FineTuneRecipe.latents, UNet2DConditionModel.forward

    def recording_latents(self, images, batch):
        pixels.append(images.detach().clone())
        return latents(self, images, batch)

    def recording_forward(self, *args, added_cond_kwargs=None, **kwargs):
        if torch.is_grad_enabled():
            time_ids.append(added_cond_kwargs["time_ids"].detach().clone())
        return forward(self, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(FineTuneRecipe, "latents", recording_latents)
    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    return pixels, time_ids


def test_sdxl_time_ids_are_each_images_size_and_center_crop_also_with_cached_latents(bases, sized_images, tmp_path, monkeypatch):
    # Podell et al. 2023, section 2.2: (orig_h, orig_w, crop_top, crop_left, target_h, target_w); the image is resized
    # to shorter side 16 (H', W') and center-cropped at top = floor((H' - 16) / 2), left = floor((W' - 16) / 2).
    folder, images = sized_images
    _, time_ids = record_sdxl_training_inputs(monkeypatch)
    finetune(bases["sdxl"], tmp_path / "out", "--train_data_dir", str(folder), "--max_train_steps", "2",
             "--cache_latents")
    expected = []
    for (height, width), image in images.items():
        resized_width, resized_height = resized(image).size
        expected.append((height, width, (resized_height - 16) // 2, (resized_width - 16) // 2, 16, 16))
    rows = sorted(tuple(row) for step in time_ids for row in step.round().long().tolist())
    assert rows == sorted(expected * 2)  # four images, batch 4: each image once per step


def test_sdxl_time_ids_follow_random_crops_and_flips(bases, sized_images, tmp_path, monkeypatch):
    # Each example's pixels are the crop at (crop_top, crop_left) of its image resized to shorter side 16, or, for a
    # flipped example, of its flipped image resized (the flip comes first, as in diffusers' SDXL script).
    folder, images = sized_images
    pixels, time_ids = record_sdxl_training_inputs(monkeypatch)
    finetune(bases["sdxl"], tmp_path / "out", "--train_data_dir", str(folder), "--max_train_steps", "2",
             "--no-center_crop", "--random_flip")
    assert len(pixels) == len(time_ids) == 2
    flips, offsets = [], set()
    for step_pixels, step_ids in zip(pixels, time_ids):
        for seen, (height, width, top, left, target_h, target_w) in zip(step_pixels, step_ids.round().long().tolist()):
            assert (target_h, target_w) == (16, 16)
            image = images[(height, width)]
            crops = {
                flipped: torch.from_numpy(np.asarray(resized(source).crop((left, top, left + 16, top + 16)), np.float32)
                                          / 127.5 - 1).permute(2, 0, 1)
                for flipped, source in ((False, image), (True, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
            }
            matches = [flipped for flipped, crop in crops.items() if torch.allclose(seen, crop, atol=1.5 / 127.5)]
            assert len(matches) == 1, (height, width, top, left)
            flips.append(matches[0])
            offsets.add((top, left))
    assert any(flips) and not all(flips)  # both kinds occurred
    assert len(offsets) > len(IMAGE_SIZES)  # random crops: not one offset per image


def test_cached_latents_give_the_uncached_result(bases, sized_images, tmp_path):
    # --cache_latents: the posteriors are encoded once, each step samples them anew from the same RNG. Four images in
    # batches of 3: the VAE returns channels-last latents, and the cache joins a batch of 3 and a batch of 1, which
    # torch stores contiguous; the loss's noise must not depend on that memory layout.
    lora = ("--lora_rank", "4", "--learning_rate", "1e-2", "--max_train_steps", "2",
            "--train_data_dir", str(sized_images[0]), "--train_batch_size", "3")
    finetune(bases["sd1"], tmp_path / "uncached", *lora)
    finetune(bases["sd1"], tmp_path / "cached", *lora, "--cache_latents")
    uncached, cached = lora_weights(tmp_path / "uncached"), lora_weights(tmp_path / "cached")
    assert all(torch.allclose(cached[k], uncached[k], atol=1e-5, rtol=1e-4) for k in uncached)


# ---------------------------------------------------------------------------------------------- bad input
def parse(base: Path, tmp_path: Path, *extra: str):
    return parse_args(["--pretrained_model_name_or_path", str(base), "--output_dir", str(tmp_path / "o"), *extra])


@pytest.mark.parametrize("option, value", [
    ("--backbone", "unet"), ("--model_size", "small"), ("--precond", "edm"), ("--text_encoder", "clip"),
    ("--label_column", "label"),
])
def test_options_the_checkpoint_decides_are_refused_at_parse_time(bases, tmp_path, option, value):
    with pytest.raises(ValueError, match=f"--pretrained_model_name_or_path .* and {option}"):
        parse(bases["sd1"], tmp_path, option, value)


def test_lora_options_are_checked(bases, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--lora_rank must be an integer >= 1, got 0"):
        parse(bases["sd1"], tmp_path, "--lora_rank", "0")
    with pytest.raises(ValueError, match="--lora_alpha 8.0 needs --lora_rank"):
        parse(bases["sd1"], tmp_path, "--lora_alpha", "8")
    with pytest.raises(ValueError, match="--lora_rank applies to --pretrained_model_name_or_path only"):
        parse_args(["--output_dir", str(tmp_path / "o"), "--lora_rank", "4"])
    assert parse(bases["sd1"], tmp_path, "--lora_rank", "4").lora_alpha == 4.0
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ValueError, match=r"needs the package 'peft'.*diffusers-edm\[lora\]"):
        parse(bases["sd1"], tmp_path, "--lora_rank", "4")


def test_a_lora_rank_above_the_layer_width_is_refused_at_start_up(bases, tmp_path):
    # The tiny UNet's attention layers (its 32-channel blocks, cross-attention width 32) are 32 wide.
    with pytest.raises(ValueError, match=r"--lora_rank 33 is above the width of the adapted layer '.*' \(32\)"):
        finetune(bases["sd1"], tmp_path / "out", "--lora_rank", "33")


def test_8bit_adam_without_bitsandbytes_names_the_extra(bases, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ValueError, match=r"needs the package 'bitsandbytes'.*diffusers-edm\[bnb\]"):
        parse(bases["sd1"], tmp_path, "--use_8bit_adam")


def test_cache_latents_with_random_flips_is_refused(bases, tmp_path):
    with pytest.raises(ValueError, match="--cache_latents .* --random_flip"):
        parse(bases["sd1"], tmp_path, "--cache_latents", "--random_flip")


def test_a_checkpoint_with_an_unsupported_scheduler_is_refused_at_parse_time(tmp_path):
    base = tmp_path / "flow"
    make_tiny_sd_pipeline(tmp_path / "build").save_pretrained(base)
    (base / "scheduler" / "scheduler_config.json").write_text(
        '{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}'
    )
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler.*discrete VP table.*EDM formulation"):
        parse(base, tmp_path)

