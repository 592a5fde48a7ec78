"""Prompts to text embeddings: the one place text is encoded, for sampling and training alike.

A tokenizer and a frozen text encoder turn each prompt into a sequence of hidden states ``(L, C)`` that the backbone's
cross-attention reads (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", section
3.3; Nichol et al. 2022, "GLIDE", section 2.3), plus a pooled vector where the encoder gives one (CLIP's final-token
state, GLIDE's "last token" projection; T5 gives none).

Classifier-free guidance (Ho & Salimans 2021) needs an *unconditional* input, and it must be the same at both ends:
training replaces a caption by it with probability p (caption dropout), sampling feeds it to the unconditional half.
Two conventions are in use, recorded in the pipeline's config as ``empty_prompt``:

- ``"encode"``: the empty string ``""`` encoded by the text encoder (Stable Diffusion 1.x / 2.x);
- ``"zeros"``: all-zero sequence and pooled embeddings of the same shapes (SDXL's ``force_zeros_for_empty_prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The conventions for the unconditional ("empty") prompt: see the module docstring.
EMPTY_PROMPT_CONVENTIONS = ("encode", "zeros")

#: Above this a tokenizer's ``model_max_length`` is transformers' "no limit" placeholder (``int(1e30)``), not a length.
MAX_SEQUENCE_LENGTH = 100_000


def check_empty_prompt(empty_prompt: object) -> str:
    """``empty_prompt`` if it is one of :data:`EMPTY_PROMPT_CONVENTIONS`; ``ValueError`` naming it otherwise."""
    if not isinstance(empty_prompt, str) or empty_prompt not in EMPTY_PROMPT_CONVENTIONS:
        raise ValueError(
            f"empty_prompt must be one of {EMPTY_PROMPT_CONVENTIONS} ('encode': the text encoder's encoding of \"\"; "
            f"'zeros': all-zero embeddings), got {empty_prompt!r}."
        )
    return empty_prompt


def check_prompts(prompt: object, name: str = "prompt") -> list[str]:
    """``prompt`` (a string or a non-empty list / tuple of strings) as a list of strings; ``ValueError`` naming
    ``name`` and the bad value otherwise."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and len(prompt) > 0:
        bad = [item for item in prompt if not isinstance(item, str)]
        if not bad:
            return list(prompt)
        raise ValueError(f"{name} must be a string or a list of strings, got a list holding {bad[0]!r}.")
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}.")


def text_hidden_size(text_encoder: torch.nn.Module) -> int:
    """Width C of the text encoder's hidden states: ``config.hidden_size`` (CLIP, BERT) or ``config.d_model`` (T5)."""
    config = text_encoder.config
    size = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if size is None:
        raise ValueError(
            f"Cannot read the hidden size of the text encoder {type(text_encoder).__name__}: its config has neither "
            "hidden_size nor d_model."
        )
    return int(size)


def check_context_width(width: int, expected: int, *, source: str, target: str) -> None:
    """``ValueError`` naming both sides unless text embeddings of ``width`` channels (from ``source``) fit the
    cross-attention of ``target``, which reads ``expected`` channels."""
    if int(width) != int(expected):
        raise ValueError(
            f"{source} has width {int(width)} but {target} reads text embeddings of width {int(expected)} "
            "(its cross_attention_dim / caption_channels); use a text encoder or prompt embeddings of that width."
        )


@dataclass
class PromptEmbeddings:
    """The encoded prompts of a batch.

    Args:
        embeds: the hidden-state sequences, ``(B, L, C)``.
        pooled: one pooled vector per prompt, ``(B, C')``, or ``None`` where the encoder gives none (T5).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PromptEmbeddings":
        return PromptEmbeddings(
            self.embeds.to(device=device, dtype=dtype),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )

    def repeat_interleave(self, repeats: int) -> "PromptEmbeddings":
        """Each prompt's rows ``repeats`` times in a row (``num_images_per_prompt``)."""
        return PromptEmbeddings(
            self.embeds.repeat_interleave(repeats, dim=0),
            None if self.pooled is None else self.pooled.repeat_interleave(repeats, dim=0),
        )

    def cat(self, other: "PromptEmbeddings") -> "PromptEmbeddings":
        """``[self, other]`` along the batch (the two halves of one batched classifier-free guidance call)."""
        if (self.pooled is None) != (other.pooled is None):
            raise ValueError("Cannot join prompt embeddings with a pooled vector and ones without.")
        return PromptEmbeddings(
            torch.cat([self.embeds, other.embeds]),
            None if self.pooled is None else torch.cat([self.pooled, other.pooled]),
        )

    def where(self, replace: torch.Tensor, replacement: "PromptEmbeddings") -> "PromptEmbeddings":
        """Rows of ``replacement`` where ``replace`` (a ``(B,)`` bool tensor) is true, else these rows: caption dropout
        with ``replacement = encoder.empty(B, ...)``, decided on the device (no host synchronisation)."""
        if (self.pooled is None) != (replacement.pooled is None):
            raise ValueError("Cannot mix prompt embeddings with a pooled vector and ones without.")
        mask = replace.reshape(-1, 1, 1)
        embeds = torch.where(mask, replacement.embeds, self.embeds)
        pooled = None if self.pooled is None else torch.where(mask[:, :, 0], replacement.pooled, self.pooled)
        return PromptEmbeddings(embeds, pooled)


class PromptEncoder:
    """Tokenizer + frozen text encoder + the empty-prompt convention (see the module docstring).

    Args:
        tokenizer: a transformers tokenizer; prompts are padded to (and truncated at) its ``model_max_length``.
        text_encoder: a transformers text model (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
            ``T5EncoderModel``, ...); its ``last_hidden_state`` is the sequence, its ``pooler_output`` (or
            ``text_embeds`` for CLIP with projection) the pooled vector, where it has one.
        empty_prompt: ``"encode"`` or ``"zeros"``, the unconditional input's convention.
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, empty_prompt: str = "encode"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.empty_prompt = check_empty_prompt(empty_prompt)
        length = getattr(tokenizer, "model_max_length", None)
        if not isinstance(length, int) or not 0 < length <= MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"The tokenizer's model_max_length must be the text encoder's sequence length (1..{MAX_SEQUENCE_LENGTH}), "
                f"got {length!r}; set it in its tokenizer_config.json."
            )
        positions = getattr(text_encoder.config, "max_position_embeddings", None)
        if positions is not None and length > positions:
            raise ValueError(
                f"The tokenizer pads prompts to model_max_length={length} tokens but the text encoder "
                f"{type(text_encoder).__name__} has max_position_embeddings={positions}."
            )
        self.max_length = length
        # The one-row empty-prompt embeddings per (device, dtype): encoded once, then only expanded.
        self._empty: dict[tuple[torch.device, torch.dtype], PromptEmbeddings] = {}

    @property
    def hidden_size(self) -> int:
        """Width C of the sequence embeddings (checked against the backbone's cross-attention width)."""
        return text_hidden_size(self.text_encoder)

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` (and ``attention_mask``) of ``prompts``, padded to ``max_length`` and truncated there."""
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(
        self, prompts: list[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeddings:
        """The text encoder's embeddings of ``prompts`` (a list of strings), on ``device`` in ``dtype``."""
        prompts = check_prompts(prompts)
        tokens = self.tokenize(prompts)
        encoder_device = self.text_encoder.device
        # As Stable Diffusion's pipelines: the attention mask only for encoders configured to use one.
        mask = tokens["attention_mask"].to(encoder_device) if getattr(
            self.text_encoder.config, "use_attention_mask", False
        ) else None
        output = self.text_encoder(tokens["input_ids"].to(encoder_device), attention_mask=mask, return_dict=True)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            pooled = getattr(output, "text_embeds", None)
        return PromptEmbeddings(output.last_hidden_state, pooled).to(device=device, dtype=dtype)

    def empty(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeddings:
        """``batch_size`` rows of the unconditional input by the convention: ``encode([""])``, or zeros of its shapes.

        Encoded once per device and dtype; later calls expand the cached row (no encoder call, no copy)."""
        target = self.text_encoder.device if device is None else torch.device(device)
        key = (target, dtype or self.text_encoder.dtype)
        if key not in self._empty:
            row = self.encode([""], device=target, dtype=key[1])
            if self.empty_prompt == "zeros":
                row = PromptEmbeddings(
                    torch.zeros_like(row.embeds), None if row.pooled is None else torch.zeros_like(row.pooled)
                )
            self._empty[key] = row
        row = self._empty[key]
        return PromptEmbeddings(
            row.embeds.expand(batch_size, *row.embeds.shape[1:]),
            None if row.pooled is None else row.pooled.expand(batch_size, *row.pooled.shape[1:]),
        )

    def check_fits(self, width: int, target: str) -> None:
        """``ValueError`` naming both sides unless the encoder's hidden size is ``width``, what ``target``'s
        cross-attention reads."""
        check_context_width(
            self.hidden_size, width, source=f"The text encoder {type(self.text_encoder).__name__} (hidden size)",
            target=target,
        )
