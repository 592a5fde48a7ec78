"""Tiny text encoders (CLIPTextModel, T5EncoderModel), a CLIP tokenizer whose vocabulary is written here, and tiny
text-conditional backbones (UNet2DConditionModel, PixArtTransformer2DModel), all offline.

The tokenizer is :func:`tiny_stable_diffusion.make_clip_tokenizer`'s (every byte-level character a token, no merges)
with a short ``model_max_length`` so that the tests' sequences stay small.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

from tiny_stable_diffusion import make_clip_tokenizer

SEQUENCE_LENGTH = 16
BOS, EOS = 512, 513  # the ids make_clip_tokenizer gives <|startoftext|> and <|endoftext|>


def tiny_clip_tokenizer(directory: Path, sequence_length: int = SEQUENCE_LENGTH) -> CLIPTokenizer:
    tokenizer = make_clip_tokenizer(Path(directory))
    tokenizer.model_max_length = sequence_length
    return tokenizer


def tiny_clip_text_encoder(hidden_size: int = 8, seed: int = 0, sequence_length: int = SEQUENCE_LENGTH) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=1000, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=sequence_length, bos_token_id=BOS, eos_token_id=EOS,
        pad_token_id=EOS, projection_dim=hidden_size,
    )
    return CLIPTextModel(config).eval()


def tiny_t5_encoder(d_model: int = 8, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=1000, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1, num_heads=2)).eval()


def tiny_text_unet(
    channels: int = 4, context_width: int = 8, out_channels: int | None = None, pooled_width: int | None = None,
    pool_sequence: bool = False, seed: int = 0,
) -> UNet2DConditionModel:
    """A UNet2DConditionModel reading ``context_width``-wide text; with ``pooled_width``, a projection class
    embedding of the pooled text vector (GLIDE's final-token projection added to the time embedding); with
    ``pool_sequence``, ``addition_embed_type="text"`` (the UNet attention-pools the sequence into its time embedding)."""
    torch.manual_seed(seed)
    pooled = {} if pooled_width is None else {"class_embed_type": "projection", "projection_class_embeddings_input_dim": pooled_width}
    if pool_sequence:
        pooled.update(addition_embed_type="text", addition_embed_type_num_heads=2)
    return UNet2DConditionModel(
        sample_size=8, in_channels=channels, out_channels=out_channels or channels, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=context_width, attention_head_dim=4,
        **pooled,
    )


def tiny_pixart(
    channels: int = 4, caption_channels: int = 8, learned_variance: bool = True, additional_conditions: bool = False,
    seed: int = 0,
) -> PixArtTransformer2DModel:
    """A PixArtTransformer2DModel (inner width 24, divisible by 3 for its resolution / aspect-ratio embeddings)."""
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=channels,
        out_channels=2 * channels if learned_variance else channels, num_layers=1, sample_size=8, patch_size=2,
        cross_attention_dim=24, caption_channels=caption_channels, num_embeds_ada_norm=1000,
        use_additional_conditions=additional_conditions,
    )
