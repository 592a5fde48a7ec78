"""Fine-tuning with ``--train_text_encoder`` (full and LoRA, SD 1.x and SDXL) and the EMA of a LoRA run.

- A LoRA run's EMA averages the adapters alone (the frozen weights are the base model's), with EDM's half-life
  schedule (Karras et al. 2022, Appendix F) written here: the exported LoRA weights are that average of the raw
  adapter weights of each step (read from the run's checkpoints).
- ``--train_text_encoder`` trains the text encoder(s) with the UNet: their weights change (LoRA: only the adapters),
  the stock-diffusers export and ``load_lora_weights`` on the base model hold them, and a run resumed from a
  checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from diffusers_edm import EDMTextToImagePipeline
from diffusers_edm.pipelines.prompt_encoding import PromptEncoder
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.captions import CaptionConditioner
from diffusers_edm.training.train import Trainer
from test_training_finetune import SIGMA_DATA, digits, finetune
from tiny_stable_diffusion import make_tiny_sd_pipeline, make_tiny_sdxl_base_pipeline
from tiny_training import reset_accelerate_state

BATCH = 2  # --train_batch_size of these runs (smaller than finetune()'s default: cheaper steps)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """The tiny SD 1.x and SDXL checkpoints saved as folders."""
    root = tmp_path_factory.mktemp("te-bases")
    folders = {}
    for name, make in (("sd1", make_tiny_sd_pipeline), ("sdxl", make_tiny_sdxl_base_pipeline)):
        make(root / f"{name}-build").save_pretrained(root / name)
        folders[name] = root / name
    return folders


def sd1(folder: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


def edm_ema_betas(steps: int, batch: int, halflife_kimg: float, rampup_ratio: float) -> list[float]:
    """EDM's EMA decay of optimizer steps 1..steps (Karras et al. 2022, Appendix F; NVlabs/edm training loop):
    ``h = min(halflife_kimg * 1000, n_img * rampup_ratio)`` with ``n_img`` the images seen before the step,
    ``beta = 0.5 ** (batch / max(h, 1e-8))``, ``ema <- beta ema + (1 - beta) theta``."""
    betas = []
    for step in range(1, steps + 1):
        halflife = min(halflife_kimg * 1000, (step - 1) * batch * rampup_ratio)
        betas.append(0.5 ** (batch / max(halflife, 1e-8)))
    return betas


def exported_lora_name(parameter: str) -> str:
    """diffusers' LoRA file name of a peft adapter parameter of the run's model (``denoiser.backbone.*`` for the
    UNet, ``text_encoder.*``): ``lora_A`` / ``lora_B`` are the ``down`` / ``up`` projections."""
    module, kind = re.fullmatch(r"(.*)\.lora_([AB])\.default\.weight", parameter).groups()
    direction = "down" if kind == "A" else "up"
    if module.startswith("denoiser.backbone."):
        return f"unet.{module.removeprefix('denoiser.backbone.')}.lora.{direction}.weight"
    return f"{module}.lora_linear_layer.{direction}.weight"


def frozen_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's non-adapter parameters under the base model's names (peft moves them to ``*.base_layer.*``)."""
    return {name.replace(".base_layer", ""): p for name, p in module.named_parameters() if "lora_" not in name}


def token_ids(tokenizer, prompt: str = "a handwritten 9") -> torch.Tensor:
    length = tokenizer.model_max_length
    return tokenizer([prompt], padding="max_length", max_length=length, return_tensors="pt").input_ids


@torch.no_grad()
def sdxl_text_inputs(pipe: StableDiffusionXLPipeline, prompt: str = "a handwritten 9") -> tuple[torch.Tensor, ...]:
    """SDXL's text conditioning (Podell et al. 2023, section 2.1): both encoders' penultimate hidden states
    concatenated along the channels, and the second encoder's projected final token (``text_embeds``)."""
    hidden = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        output = encoder(token_ids(tokenizer, prompt), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    return torch.cat(hidden, dim=-1), output.text_embeds


@torch.no_grad()
def sdxl_unet_output(unet: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                     pooled: torch.Tensor) -> torch.Tensor:
    """The SDXL UNet's raw output for 16x16 images, uncropped: ``add_time_ids = (16, 16, 0, 0, 16, 16)``."""
    count = x.shape[0]
    time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).expand(count, 6)
    return unet(x, timesteps, encoder_hidden_states=context.expand(count, -1, -1),
                added_cond_kwargs={"text_embeds": pooled.expand(count, -1), "time_ids": time_ids}).sample


@torch.no_grad()
def sdxl_held_out_edm_loss(pipe: StableDiffusionXLPipeline) -> float:
    """EDM's weighted denoising loss of an epsilon SDXL at fixed table levels and fixed noise, from the UNet's raw
    output: sigma_t = sqrt((1 - abar_t) / abar_t) of the scaled-linear table, x = y + sigma n, the UNet reads
    x / sqrt(sigma^2 + 1) at timestep t, D = x - sigma eps, loss = mean of (sigma^2 + sd^2)/(sigma sd)^2 |D - y|^2."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    timesteps = torch.tensor([20, 60, 120, 200, 300, 450, 600, 800])
    sigma = ((1 - alphas_cumprod[timesteps]) / alphas_cumprod[timesteps]).sqrt().float().reshape(-1, 1, 1, 1)
    y = pipe.vae.encode(digits(len(timesteps))).latent_dist.mean * pipe.vae.config.scaling_factor
    x = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(123))
    context, pooled = sdxl_text_inputs(pipe)
    denoised = x - sigma * sdxl_unet_output(pipe.unet, x / (sigma**2 + 1).sqrt(), timesteps, context, pooled)
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    return float((weight * (denoised - y) ** 2).mean())


# ------------------------------------------------------------------------------------------ LoRA: EMA, text encoders
def test_lora_ema_averages_the_adapters_alone_and_the_export_is_their_average(bases, tmp_path):
    halflife_kimg, rampup, steps = 0.004, 0.5, 2  # betas 0 and 0.25: the average differs from the last weights
    out = tmp_path / "lora"
    result = finetune(
        bases["sdxl"], out, "--lora_rank", "4", "--lora_alpha", "8", "--learning_rate", "1e-2", "--train_text_encoder",
        "--max_train_steps", str(steps), "--checkpointing_steps", "1", "--ema_halflife_kimg", str(halflife_kimg),
        "--ema_rampup_ratio", str(rampup), "--train_batch_size", str(BATCH),
    )
    model = result.model
    adapters = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    assert {name.split(".")[0] for name, _ in adapters} == {"denoiser", "text_encoder", "text_encoder_2"}
    # SDXL reads the first text encoder's penultimate hidden states: the adapters of its last layer never get a
    # gradient, so they are frozen too. Every other adapter trains, and nothing else.
    last = model.text_encoder.config.num_hidden_layers - 1
    last_layer = re.compile(rf"text_encoder\.(text_model\.)?encoder\.layers\.{last}\.")
    unread = {name for name, _ in adapters if last_layer.match(name)}
    assert len(unread) == 8  # lora_A and lora_B of q, k, v and out
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert [name for name, _ in trained] == [name for name, _ in adapters if name not in unread]
    # The EMA holds exactly one tensor per trained adapter parameter (in the optimizer's order), no frozen weight.
    assert [tuple(s.shape) for s in result.ema.shadow_params] == [tuple(p.shape) for _, p in trained]
    assert "and the text encoder(s)' q_proj, k_proj, v_proj, out_proj." in (out / "README.md").read_text()
    saved = load_file(out / f"checkpoint-{steps}" / "training_state.safetensors")
    saved_ema = [key for key in saved if key.startswith("ema.")]
    assert len(saved_ema) == len(trained)

    # The exported weights are EDM's EMA of the raw adapter weights after each step (the checkpoints' model weights).
    raw = [load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in range(1, steps + 1)]
    exported = load_file(out / "pytorch_lora_weights.safetensors")
    assert set(exported) == {exported_lora_name(name) for name, _ in adapters}
    betas = edm_ema_betas(steps, BATCH, halflife_kimg, rampup)
    assert betas[0] == 0.0 and 0 < betas[-1] < 1
    for name, _ in adapters:
        average = raw[0][name].double()
        for beta, weights in zip(betas[1:], raw[1:]):
            average = beta * average + (1 - beta) * weights[name].double()
        torch.testing.assert_close(exported[exported_lora_name(name)].double(), average, rtol=1e-6, atol=1e-7)
    up = [name for name, _ in adapters if name.startswith("text_encoder_2.") and "lora_B" in name][0]
    assert exported[exported_lora_name(up)].abs().max() > 0  # trained: peft's Gaussian init has B = 0
    assert not torch.equal(exported[exported_lora_name(up)], raw[-1][up])  # the average, not the last step

    # Only the adapters trained: the frozen weights of the text encoders and the UNet are the base model's, bit for bit.
    base = StableDiffusionXLPipeline.from_pretrained(bases["sdxl"])
    for name in ("text_encoder", "text_encoder_2"):
        frozen, original = frozen_weights(getattr(model, name)), dict(getattr(base, name).named_parameters())
        assert frozen.keys() == original.keys() and all(torch.equal(frozen[k], p) for k, p in original.items())
    frozen, original = frozen_weights(model.denoiser.backbone), dict(base.unet.named_parameters())
    assert frozen.keys() == original.keys() and all(torch.equal(frozen[k], p) for k, p in original.items())

    # load_lora_weights on the base model gives the trained text encoders and UNet (at their EMA weights; with
    # --lora_alpha 8 = 2 x rank, so the adapters' scale travels with the file).
    base_context, base_pooled = sdxl_text_inputs(base)
    base.load_lora_weights(out)
    result.ema.copy_to([p for _, p in trained])
    trained = StableDiffusionXLPipeline.from_pipe(
        base, text_encoder=model.text_encoder.eval(), text_encoder_2=model.text_encoder_2.eval(),
        unet=model.denoiser.backbone.eval(),
    )
    loaded_context, loaded_pooled = sdxl_text_inputs(base)
    trained_context, trained_pooled = sdxl_text_inputs(trained)
    torch.testing.assert_close(loaded_context, trained_context, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded_pooled, trained_pooled, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained_context, base_context, atol=1e-4)
    assert not torch.allclose(trained_pooled, base_pooled, atol=1e-4)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    torch.testing.assert_close(sdxl_unet_output(base.unet, x, t, trained_context, trained_pooled),
                               sdxl_unet_output(trained.unet, x, t, trained_context, trained_pooled),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- full: export, resume
def test_full_text_encoder_training_lowers_the_loss_exports_both_sdxl_encoders_and_resumes_exactly(bases, tmp_path):
    base = StableDiffusionXLPipeline.from_pretrained(bases["sdxl"])
    before = sdxl_held_out_edm_loss(base)
    # Half-life 0: the EMA is the last weights, so the export equals the trained model itself.
    run = ("--train_text_encoder", "--max_train_steps", "2", "--checkpointing_steps", "1", "--ema_halflife_kimg", "0",
           "--train_batch_size", str(BATCH))
    result = finetune(bases["sdxl"], tmp_path / "straight", *run)
    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "straight")
    edm = EDMTextToImagePipeline.from_pretrained(tmp_path / "straight" / "edm")
    for name in ("text_encoder", "text_encoder_2"):
        trained = getattr(result.model, name).state_dict()
        exported = getattr(stock, name).state_dict()
        assert exported.keys() == trained.keys()
        assert all(torch.equal(exported[key], trained[key].cpu()) for key in trained)
        assert all(torch.equal(getattr(edm, name).state_dict()[key], exported[key]) for key in exported)
        assert any(not torch.equal(exported[key], value) for key, value in getattr(base, name).state_dict().items())
    assert not torch.equal(stock.unet.conv_in.weight, base.unet.conv_in.weight)
    assert "full fine-tuning of the UNet and the text encoder(s)." in (tmp_path / "straight" / "README.md").read_text()
    after = sdxl_held_out_edm_loss(stock)
    assert after < before, (before, after)

    # Resumed from the step-1 checkpoint: the text encoders were checkpointed with the UNet, so the end is identical.
    finetune(bases["sdxl"], tmp_path / "resumed", *run,
             "--resume_from_checkpoint", str(tmp_path / "straight" / "checkpoint-1"))
    resumed = StableDiffusionXLPipeline.from_pretrained(tmp_path / "resumed")
    for name in ("text_encoder", "text_encoder_2", "unet"):
        expected, got = getattr(stock, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(got[key], expected[key]) for key in expected), name


# ---------------------------------------------------------------------------------------------- mixed precision
def test_the_trained_text_encoder_keeps_float32_weights_and_gets_the_gradient_under_mixed_precision(bases, tmp_path):
    reset_accelerate_state()
    args = parse_args([
        "--pretrained_model_name_or_path", str(bases["sd1"]), "--output_dir", str(tmp_path / "o"), "--resolution", "16",
        "--train_batch_size", "4", "--max_train_steps", "1", "--report_to", "none", "--sigma_data", "0.5",
        "--train_text_encoder", "--mixed_precision", "bf16",
    ])
    trainer = Trainer(args)
    trainer.setup()
    encoder = trainer.unwrapped_model().text_encoder
    assert all(p.dtype == torch.float32 and p.requires_grad for p in encoder.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in encoder.parameters())
    conditioning = trainer.recipe.conditioning({"captions": [["a handwritten 1"], ["a handwritten 2"]]})
    embeds = conditioning["encoder_hidden_states"]
    assert embeds.dtype == torch.bfloat16 and embeds.requires_grad
    embeds.float().square().sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


# ---------------------------------------------------------------------------------------------- bad input
def test_cached_text_embeddings_are_refused_with_a_trained_text_encoder(bases, tmp_path):
    with pytest.raises(ValueError, match="--train_text_encoder with --cache_text_embeddings"):
        parse_args(["--pretrained_model_name_or_path", str(bases["sd1"]), "--output_dir", str(tmp_path / "o"),
                    "--train_text_encoder", "--cache_text_embeddings"])
    pipe = sd1(bases["sd1"])
    with pytest.raises(ValueError, match="--cache_text_embeddings with --train_text_encoder"):
        CaptionConditioner(PromptEncoder(pipe.tokenizer, pipe.text_encoder), 0.1, torch.float32, cache=True,
                           trainable=True)


def test_a_trained_encoder_encodes_the_captions_and_the_dropped_ones_as_the_empty_prompt_with_gradient(bases):
    # Stable Diffusion's convention ("encode"): a dropped caption is "" through the (trained) text encoder.
    pipe = sd1(bases["sd1"])
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder.requires_grad_(True), "encode")
    captions = [["a handwritten 1"], ["a handwritten 2", "a handwritten two"]]
    for p, expected_prompts in ((0.0, None), (1.0, ["", ""])):
        torch.manual_seed(0)
        conditioner = CaptionConditioner(encoder, p, torch.float32, trainable=True)
        embeddings = conditioner(captions, torch.device("cpu"))
        torch.manual_seed(0)
        chosen = expected_prompts or [options[min(int(u * len(options)), len(options) - 1)]
                                       for u, options in zip(torch.rand(len(captions)).tolist(), captions)]
        with torch.no_grad():
            ids = token_ids(pipe.tokenizer, chosen[0]), token_ids(pipe.tokenizer, chosen[1])
            expected = torch.cat([pipe.text_encoder(row)[0] for row in ids])
        torch.testing.assert_close(embeddings.embeds.detach(), expected, rtol=1e-5, atol=1e-6)
        assert embeddings.embeds.requires_grad
