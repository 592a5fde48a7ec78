"""Tiny Stable Diffusion (1.x and XL) pipelines built offline from small configs, for end-to-end tests.

The CLIP tokenizer is made from a vocab/merges pair written here: every byte-level character (and its
end-of-word form) is a token and there are no merges, which is a valid BPE tokenizer of the real kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

IMAGE_SIZE = 16  # pixels; latents are 8x8 with the two-block VAE below

# The scheduler config Stable Diffusion 1.x ships (runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json).
SD15_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


# Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json): the SD table, v-prediction.
SD2_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}

# SDXL (stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json).
SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# An EDM-formulated SDXL (playgroundai/playground-v2.5-1024px-aesthetic, scheduler/scheduler_config.json).
PLAYGROUND_SCHEDULER_CONFIG = {
    "algorithm_type": "dpmsolver++",
    "final_sigmas_type": "zero",
    "lower_order_final": True,
    "prediction_type": "epsilon",
    "rho": 7.0,
    "sigma_data": 0.5,
    "sigma_max": 80.0,
    "sigma_min": 0.002,
    "solver_order": 2,
    "solver_type": "midpoint",
}

# A CosXL-style EDM formulation: v-prediction with sigma_data 1 (stabilityai/cosxl's EDMEulerScheduler settings).
COSXL_SCHEDULER_CONFIG = {"prediction_type": "v_prediction", "sigma_data": 1.0, "sigma_min": 0.002, "sigma_max": 120.0}


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def make_clip_tokenizer(directory: Path) -> CLIPTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for char in _byte_level_alphabet():
        vocab[char] = len(vocab)
    for char in _byte_level_alphabet():
        vocab[char + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(directory)


def _text_config(**overrides) -> CLIPTextConfig:
    config = dict(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32,
        layer_norm_eps=1e-05, hidden_act="gelu",
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=IMAGE_SIZE,
    )


def make_tiny_sd_pipeline(tmp_dir: Path) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with the SD 1.x scheduler config and random tiny weights (seeded)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=make_clip_tokenizer(tmp_dir / "tokenizer"), scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_sdxl_pipeline(tmp_dir: Path, scheduler) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline (two text encoders, micro-conditioning) with random tiny weights (seeded)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    pipe = StableDiffusionXLPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=make_clip_tokenizer(tmp_dir / "tokenizer"), tokenizer_2=make_clip_tokenizer(tmp_dir / "tokenizer_2"),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_sd2_pipeline(tmp_dir: Path) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline in SD 2.x form (linear attention projections, v-prediction DDIM config)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=_vae().eval(), text_encoder=CLIPTextModel(_text_config()).eval(),
        tokenizer=make_clip_tokenizer(tmp_dir / "tokenizer"), scheduler=DDIMScheduler.from_config(SD2_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_sdxl_base_pipeline(tmp_dir: Path) -> StableDiffusionXLPipeline:
    """The tiny SDXL with SDXL's own EulerDiscreteScheduler config (a discrete VP table, epsilon)."""
    return make_tiny_sdxl_pipeline(tmp_dir, EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))


def make_tiny_edm_sdxl_pipeline(tmp_dir: Path, cosxl: bool = False) -> StableDiffusionXLPipeline:
    """The tiny SDXL in EDM's formulation: Playground v2.5's EDMDPMSolverMultistepScheduler config (sigma_data 0.5),
    or with ``cosxl`` CosXL's v-prediction EDMEulerScheduler config (sigma_data 1)."""
    scheduler = (
        EDMEulerScheduler.from_config(COSXL_SCHEDULER_CONFIG) if cosxl
        else EDMDPMSolverMultistepScheduler.from_config(PLAYGROUND_SCHEDULER_CONFIG)
    )
    return make_tiny_sdxl_pipeline(tmp_dir, scheduler)


class CallRecorder:
    """Counts a module's forward calls and records the timestep of each (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.timesteps: list[float] = []
        self._handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.timesteps.append(float(torch.as_tensor(timestep).reshape(-1)[0]))

    def remove(self) -> None:
        self._handle.remove()
