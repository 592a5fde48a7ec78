"""Model size presets for training: diffusers ``UNet2DModel`` (pixels or latents) and ``DiTTransformer2DModel`` (latents)
backbones, their text-conditional counterparts ``UNet2DConditionModel`` and ``PixArtTransformer2DModel`` (cross-attention
on a text encoder's hidden states), and the :class:`~diffusers_edm.models.NoiseConditionalClassifier`."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..models.backbones import build_backbone
from ..models.noise_conditional_classifier import NoiseConditionalClassifier

UNET_PRESETS: dict[str, dict[str, Any]] = {
    # A quarter of tiny's width: e.g. the weak model that guides a tiny one (autoguidance, Karras et al. 2024).
    "xs": dict(
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    # ~0.9M parameters: seconds per hundred steps on a 2-core CPU at 16x16.
    "tiny": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "small": dict(
        block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32, attention_head_dim=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    # DDPM's CIFAR-10 layout (35.7M parameters at 32x32).
    "base": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32, attention_head_dim=64,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
}

DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_layers=4, num_attention_heads=4, attention_head_dim=32, patch_size=2),
    "S/2": dict(num_layers=12, num_attention_heads=6, attention_head_dim=64, patch_size=2),
    "B/2": dict(num_layers=12, num_attention_heads=12, attention_head_dim=64, patch_size=2),
}


def make_backbone(
    kind: str,
    size: str,
    sample_size: int,
    channels: int,
    learned_variance: bool,
    num_classes: int,
    overrides: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A backbone for ``sample_size``-square inputs with ``channels`` channels.

    The output has ``2 * channels`` channels for a learned variance. A class-conditional backbone gets
    ``num_classes + 1`` label rows, the last one the null label of classifier-free guidance.
    """
    out_channels = 2 * channels if learned_variance else channels
    if kind == "unet":
        config = dict(UNET_PRESETS[size], sample_size=sample_size, in_channels=channels, out_channels=out_channels)
        if num_classes > 0:
            config["num_class_embeds"] = num_classes + 1
        config.update(overrides or {})
        check_unet_resolution(config, sample_size)
        return build_backbone("UNet2DModel", config)
    if num_classes < 1:
        raise ValueError("--backbone dit is class-conditional (adaLN-Zero on the label): pass --label_column.")
    config = dict(
        DIT_PRESETS[size], sample_size=sample_size, in_channels=channels, out_channels=out_channels,
        num_embeds_ada_norm=num_classes, norm_type="ada_norm_zero",
    )
    config.update(overrides or {})
    if sample_size % config["patch_size"] != 0:
        raise ValueError(f"The DiT's patch size {config['patch_size']} does not divide its input size {sample_size}.")
    return build_backbone("DiTTransformer2DModel", config)


def check_unet_resolution(config: dict[str, Any], sample_size: int) -> None:
    """``ValueError`` unless ``sample_size`` survives the UNet's downsamplings (one per level but the last)."""
    depth = len(config["block_out_channels"]) - 1
    if sample_size % (2**depth) != 0:
        raise ValueError(
            f"A UNet with {depth + 1} resolution levels halves its input {depth} times: the resolution "
            f"{sample_size} must be divisible by {2**depth}."
        )


# A UNet preset's self-attention blocks become blocks with self- and cross-attention in its text-conditional version.
CROSS_ATTENTION_BLOCKS = {"AttnDownBlock2D": "CrossAttnDownBlock2D", "AttnUpBlock2D": "CrossAttnUpBlock2D"}


def make_text_backbone(
    kind: str,
    size: str,
    sample_size: int,
    channels: int,
    text_hidden_size: int,
    overrides: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A text-conditional backbone for ``sample_size``-square inputs with ``channels`` channels, whose cross-attention
    reads the text encoder's hidden states of width ``text_hidden_size``.

    - ``unet``: a ``UNet2DConditionModel`` (Latent Diffusion, Rombach et al. 2022, section 3.3) of the
      :data:`UNET_PRESETS` layout, its attention blocks with cross-attention (and its middle block, diffusers'
      ``UNetMidBlock2DCrossAttn``), ``cross_attention_dim = text_hidden_size``;
    - ``dit``: a ``PixArtTransformer2DModel`` (PixArt-alpha, Chen et al. 2023: DiT blocks with cross-attention to the
      text, adaLN-single on the noise level) of the :data:`DIT_PRESETS` size, ``caption_channels = text_hidden_size``
      (projected to the transformer's width), without the 1024-px resolution / aspect-ratio conditions.

    ``overrides`` (``--backbone_config``) replace preset keys; a width that then differs from the text encoder's is
    refused where the recipe wraps the backbone.
    """
    if kind == "unet":
        preset = dict(UNET_PRESETS[size])
        for key in ("down_block_types", "up_block_types"):
            preset[key] = tuple(CROSS_ATTENTION_BLOCKS.get(block, block) for block in preset[key])
        config = dict(
            preset, sample_size=sample_size, in_channels=channels, out_channels=channels, cross_attention_dim=text_hidden_size
        )
        config.update(overrides or {})
        check_unet_resolution(config, sample_size)
        return build_backbone("UNet2DConditionModel", config)
    config = dict(
        DIT_PRESETS[size], sample_size=sample_size, in_channels=channels, out_channels=channels,
        caption_channels=text_hidden_size, norm_type="ada_norm_single", use_additional_conditions=False,
    )
    config.update(overrides or {})
    # PixArt projects the caption to the transformer's width, which its cross-attention then reads.
    config.setdefault("cross_attention_dim", config["num_attention_heads"] * config["attention_head_dim"])
    if sample_size % config["patch_size"] != 0:
        raise ValueError(f"The PixArt transformer's patch size {config['patch_size']} does not divide its input size {sample_size}.")
    return build_backbone("PixArtTransformer2DModel", config)


# The encoder halves of the UNet presets above (ADM's classifier is the encoder half of its UNet), for --task classifier.
CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    "xs": dict(
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    ),
    "tiny": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    ),
    "small": dict(
        block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32, attention_head_dim=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    ),
    "base": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32, attention_head_dim=64,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    ),
}


def make_classifier(
    size: str, sample_size: int, channels: int, num_classes: int, overrides: dict[str, Any] | None = None, **config: Any
) -> NoiseConditionalClassifier:
    """A :class:`NoiseConditionalClassifier` of preset ``size`` for ``sample_size``-square inputs with ``channels``
    channels; ``config`` (e.g. ``pooling``, ``sigma_data``) and then ``overrides`` (``--backbone_config``) replace
    preset keys. ``ValueError`` naming override keys the classifier does not have."""
    settings = dict(CLASSIFIER_PRESETS[size], sample_size=sample_size, in_channels=channels, num_classes=num_classes, **config)
    unknown = sorted(set(overrides or {}) - set(inspect.signature(NoiseConditionalClassifier.__init__).parameters) - {"self"})
    if unknown:
        raise ValueError(
            f"--backbone_config keys {unknown} are not NoiseConditionalClassifier settings (with --task classifier the "
            "file configures the classifier, e.g. block_out_channels, down_block_types, layers_per_block)."
        )
    settings.update(overrides or {})
    return NoiseConditionalClassifier(**settings)
