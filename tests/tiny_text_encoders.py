"""Tiny text encoders (CLIPTextModel, T5EncoderModel) and a CLIP tokenizer whose vocabulary is written here, offline.

The tokenizer is :func:`tiny_stable_diffusion.make_clip_tokenizer`'s (every byte-level character a token, no merges)
with a short ``model_max_length`` so that the tests' sequences stay small.
"""

from __future__ import annotations

from pathlib import Path

import torch
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
