"""Tiny diffusers backbones (UNet2DModel, UNet2DConditionModel, DiT) and a tiny AutoencoderKL, built offline from configs."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

SAMPLE_SIZE = 8
CROSS_ATTENTION_DIM = 8


def tiny_unet(channels: int = 3, out_channels: int | None = None, num_class_embeds: int | None = None, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SAMPLE_SIZE,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    )


def tiny_unet_condition(channels: int = 4, num_class_embeds: int | None = None, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    )


def tiny_dit(channels: int = 4, learned_variance: bool = False, num_classes: int = 10, seed: int = 0) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=channels,
        out_channels=2 * channels if learned_variance else channels,
        num_layers=2,
        sample_size=SAMPLE_SIZE,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )


def tiny_vae(latent_channels: int = 4, seed: int = 0) -> AutoencoderKL:
    """Two blocks: latents are half the image size."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=2 * SAMPLE_SIZE,
    )
