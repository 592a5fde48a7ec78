"""Captions of text-conditional training (``--caption_column``): the column check, the caption drawn per example and
step, caption dropout, the optional embedding cache, and the text encoder (a local tiny one, or a pretrained one).

The recipe follows GLIDE (Nichol et al. 2022) and Latent Diffusion (Rombach et al. 2022, section 3.3): a
frozen text encoder turns a caption into a sequence of hidden states that the backbone's cross-attention reads. For
classifier-free guidance (Ho & Salimans 2022, Algorithm 1) each example's caption is replaced by the *empty prompt*
with probability ``p = --proportion_empty_prompts``, decided anew at every step (a decision made once per caption,
as when embeddings are precomputed with the dropout baked in, would drop the same captions in every epoch).
The empty prompt is encoded by the one :class:`~diffusers_edm.pipelines.prompt_encoding.PromptEncoder` that the
exported pipeline uses too, by the run's ``--empty_prompt`` convention ("encode": ``""`` through the text encoder,
as Stable Diffusion 1.x/2.x; "zeros": all-zero embeddings, as SDXL's ``force_zeros_for_empty_prompt``).

Random draws come from the run's seeded torch RNGs, whose states Accelerate saves in every checkpoint: the caption
choice from the CPU generator (captions are host strings), the dropout from the generator of the training device.
So a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch
from torch.utils.data import default_collate

from ..pipelines.prompt_encoding import PromptEmbeddings, PromptEncoder


#: The local text encoder of ``--caption_column`` without ``--text_encoder``: a CLIPTextModel of this size.
LOCAL_TEXT_ENCODER_CONFIG: dict[str, int] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)
#: The local tokenizer's ``model_max_length`` is at least this (longer when a caption needs more tokens).
LOCAL_MIN_MAX_LENGTH = 16
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


# ---------------------------------------------------------------------------------------------- the caption column
def check_caption_column(dataset: datasets.Dataset, column: str, batch_size: int = 1024) -> tuple[list[str], list[str]]:
    """Refuse a caption column that is missing or holds anything but strings or non-empty lists of strings; return
    ``(captions, first_captions)``: every distinct caption, and each row's first caption, distinct (both in data-set
    order).

    Read once per data set (Arrow batches; no image is decoded). ``ValueError`` naming the column, the first bad
    row and the type found there.
    """
    if column not in dataset.column_names:
        raise ValueError(f"Caption column {column!r} not in the data set; its columns are {dataset.column_names}.")
    captions: dict[str, None] = {}
    first_captions: dict[str, None] = {}
    row = 0
    for batch in dataset.select_columns([column]).iter(batch_size=batch_size):
        for value in batch[column]:
            options = [value] if isinstance(value, str) else value
            if not isinstance(options, (list, tuple)) or not options or not all(isinstance(o, str) for o in options):
                if isinstance(value, (list, tuple)):
                    bad = [type(item).__name__ for item in value if not isinstance(item, str)]
                    found = f"a list holding {bad[0]}" if bad else "an empty list"
                else:
                    found = type(value).__name__
                raise ValueError(
                    f"Caption column {column!r}, row {row}: expected a string or a non-empty list of strings, got "
                    f"{found} ({value!r:.80})."
                )
            captions.update(dict.fromkeys(options))
            first_captions[options[0]] = None
            row += 1
    return list(captions), list(first_captions)


def collate_with_captions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of the images, labels and indices; ``"captions"`` stays a list (one list of strings per
    example: the examples may have different numbers of captions)."""
    captions = [item["captions"] for item in items]
    batch = default_collate([{key: value for key, value in item.items() if key != "captions"} for item in items])
    batch["captions"] = captions
    return batch


def draw_captions(captions: Sequence[Sequence[str]]) -> list[str]:
    """One caption per example, uniformly among its own, from the run's seeded CPU torch RNG (checkpointed).

    One ``torch.rand(B)`` on the CPU per batch: example ``i`` takes option ``floor(u_i * n_i)`` of its ``n_i``.
    """
    uniforms = torch.rand(len(captions)).tolist()  # a CPU tensor: no device is waited for
    return [options[min(int(u * len(options)), len(options) - 1)] for u, options in zip(uniforms, captions)]


# ---------------------------------------------------------------------------------------------- conditioning per step
class CaptionConditioner:
    """The text conditioning of one training batch: a caption drawn per example, its embeddings, and caption dropout.

    Args:
        prompt_encoder: the tokenizer + text encoder (frozen unless ``trainable``), and the empty-prompt convention.
        proportion_empty_prompts: ``p``, each example's probability of the empty prompt, drawn at every step.
        dtype: the dtype of the embeddings (the training dtype of the text encoder).
        cache: keep each caption's embeddings (keyed by the caption) after its first encoding; the dropout is still
            drawn per step, so the result equals the uncached one.
        trainable: the text encoder(s) are trained with the model: every batch is encoded with autograd, and by the
            "encode" convention the empty prompt too (it changes with the encoder, as in diffusers' scripts, which
            encode ``""`` for a dropped caption); nothing can be cached.
        autocast: with ``trainable``, the context the encoding runs in (the run's mixed-precision autocast: the
            encoder keeps float32 weights, as the prepared model does).
    """

    def __init__(
        self, prompt_encoder: PromptEncoder, proportion_empty_prompts: float, dtype: torch.dtype, cache: bool = False,
        trainable: bool = False, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"proportion_empty_prompts must lie in [0, 1], got {proportion_empty_prompts!r}.")
        if cache and trainable:
            raise ValueError(
                "Caption embeddings cannot be cached while the text encoder is trained (--cache_text_embeddings with "
                "--train_text_encoder): they change at every step. Drop one of them."
            )
        self.prompt_encoder, self.p, self.dtype = prompt_encoder, float(proportion_empty_prompts), dtype
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache else None
        self.trainable, self.autocast = trainable, autocast or contextlib.nullcontext

    def encode(self, prompts: list[str], device: torch.device) -> PromptEmbeddings:
        """The embeddings of ``prompts`` (no dropout), through the cache when there is one."""
        if self.cache is None:
            return self.prompt_encoder.encode(list(prompts), device, self.dtype)
        missing = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self.cache))
        if missing:
            encoded = self.prompt_encoder.encode(missing, device, self.dtype)
            for index, prompt in enumerate(missing):
                pooled = None if encoded.pooled is None else encoded.pooled[index]
                self.cache[prompt] = (encoded.embeds[index], pooled)
        rows = [self.cache[prompt] for prompt in prompts]
        pooled_rows = [pooled for _, pooled in rows]
        return PromptEmbeddings(
            embeds=torch.stack([embeds for embeds, _ in rows]),
            pooled=None if pooled_rows[0] is None else torch.stack(pooled_rows),
        )

    def dropout_mask(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Which examples get the empty prompt: ``u_i < p`` with one uniform per example from the device's seeded
        RNG, drawn at every call (no host synchronisation)."""
        return torch.rand(batch_size, device=device) < self.p

    def __call__(self, captions: Sequence[Sequence[str]], device: torch.device) -> PromptEmbeddings:
        """The conditioning of a batch: :func:`draw_captions`, :meth:`encode`, then the rows of :meth:`dropout_mask`
        replaced by the empty prompt's embeddings (``PromptEncoder.empty``, by the run's convention)."""
        chosen = draw_captions(captions)
        if self.trainable:
            return self._trained_encoder_conditioning(chosen, device)
        encoded = self.encode(chosen, device)
        dropped = self.dropout_mask(len(chosen), device)
        # The empty prompt's row is encoded once by the PromptEncoder and only expanded here.
        return encoded.where(dropped, self.prompt_encoder.empty(len(chosen), device, self.dtype))

    def _trained_encoder_conditioning(self, chosen: list[str], device: torch.device) -> PromptEmbeddings:
        """``trainable``: the captions (and ``""`` by the "encode" convention, in the same encoder call) encoded with
        autograd; the dropout mask drawn as in the frozen case, in the same RNG order."""
        encoder, count = self.prompt_encoder, len(chosen)
        encode_empty = encoder.empty_prompt == "encode"
        with self.autocast():
            encoded = encoder.encode_differentiable([*chosen, ""] if encode_empty else chosen, device, self.dtype)
        dropped = self.dropout_mask(count, device)
        pooled = encoded.pooled
        captions_part = PromptEmbeddings(encoded.embeds[:count], None if pooled is None else pooled[:count])
        if encode_empty:
            empty = PromptEmbeddings(
                encoded.embeds[count:].expand(count, *encoded.embeds.shape[1:]),
                None if pooled is None else pooled[count:].expand(count, *pooled.shape[1:]),
            )
        else:  # "zeros": all-zero embeddings of the same shapes, no gradient to carry
            zero_pooled = None if pooled is None else torch.zeros_like(captions_part.pooled)
            empty = PromptEmbeddings(torch.zeros_like(captions_part.embeds), zero_pooled)
        return captions_part.where(dropped, empty)


# ---------------------------------------------------------------------------------------------- text encoders
def caption_words(captions: Sequence[str]) -> list[str]:
    """The distinct words of ``captions`` as CLIP's tokenizer splits them (normalised, pre-tokenised, byte-level
    alphabet), sorted."""
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    words = {
        word
        for caption in captions
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))
    }
    return sorted(words)


def build_local_tokenizer(captions: Sequence[str]) -> Any:
    """A small CLIP tokenizer for the words of ``captions``, deterministic (the same captions give the same files).

    Its vocabulary is CLIP's layout in miniature: the 256 byte-level characters, each also with the end-of-word mark
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding token). The merges
    join each word's characters left to right (``s e``, ``se v``, ..., ``seve n</w>``), so a caption word is one token
    and any other text still tokenizes (byte by byte). ``model_max_length`` fits the longest caption plus the two
    special tokens (at least :data:`LOCAL_MIN_MAX_LENGTH`).
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(char + END_OF_WORD for char in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in caption_words(captions):
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        merged = symbols[0]
        for symbol in symbols[1:]:
            pair = (merged, symbol)
            merged = merged + symbol
            if merged not in vocab:
                merges.append(pair)
                vocab[merged] = len(vocab)
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    longest = max((len(tokenizer(caption).input_ids) for caption in captions), default=2)
    tokenizer.model_max_length = max(LOCAL_MIN_MAX_LENGTH, 8 * math.ceil(longest / 8))
    return tokenizer


def build_local_text_encoder(tokenizer: Any, seed: int) -> Any:
    """A ``CLIPTextModel`` of :data:`LOCAL_TEXT_ENCODER_CONFIG` for ``tokenizer``, initialised from ``seed`` (the
    same seed gives the same weights), frozen and in eval mode."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LOCAL_TEXT_ENCODER_CONFIG,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    finally:  # the run's own RNG continues as if no model had been built here
        torch.random.set_rng_state(generator_state)
    return model.eval().requires_grad_(False)


#: The ``model_type`` values of the text encoders ``--text_encoder`` loads, by class.
CLIP_MODEL_TYPES, T5_MODEL_TYPES = ("clip", "clip_text_model"), ("t5", "umt5", "mt5")


def load_text_encoder(name_or_path: str, tokenizer_name_or_path: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(tokenizer, text_encoder)`` from a local directory or Hub id: a ``CLIPTextModel`` (a CLIP checkpoint, e.g.
    ``openai/clip-vit-large-patch14``, or a text-encoder folder) or a ``T5EncoderModel`` (a T5 checkpoint), chosen by
    the config's ``model_type``; frozen, eval mode, in ``dtype``. The tokenizer comes from ``tokenizer_name_or_path``
    (default: the same place)."""
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel, T5EncoderModel

    config = AutoConfig.from_pretrained(name_or_path)
    model_type = getattr(config, "model_type", None)
    if model_type in CLIP_MODEL_TYPES:
        model_class = CLIPTextModel
    elif model_type in T5_MODEL_TYPES:
        model_class = T5EncoderModel
    else:
        raise ValueError(
            f"--text_encoder {name_or_path!r} is a {model_type!r} model; expected a CLIP text model or a T5 encoder "
            f"(model_type one of {CLIP_MODEL_TYPES + T5_MODEL_TYPES})."
        )
    text_encoder = model_class.from_pretrained(name_or_path, dtype=dtype).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or name_or_path)
    return tokenizer, text_encoder
