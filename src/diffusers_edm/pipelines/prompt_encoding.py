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

SDXL (Podell et al. 2023, section 2.1) has two tokenizers and text encoders: the sequence is the concatenation (along
the channels) of both encoders' penultimate hidden states, the pooled vector the second encoder's projected final
token (``text_embeds``). Its UNet also reads six micro-conditioning numbers (section 2.2),
``add_time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)``: :func:`sdxl_time_ids` builds them and
:meth:`PromptEmbeddings.with_time_ids` appends them to the pooled vector, the form the package's denoisers take.
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

    def with_time_ids(self, time_ids: torch.Tensor) -> "PromptEmbeddings":
        """SDXL: the pooled vector followed by the micro-conditioning numbers ``time_ids`` (``(6,)`` for every row,
        or ``(B, 6)``), the pooled input of a denoiser over an SDXL UNet (``addition_embed_type="text_time"``)."""
        if self.pooled is None:
            raise ValueError("SDXL's micro-conditioning needs a pooled text vector (the second text encoder's).")
        time_ids = time_ids.to(device=self.pooled.device, dtype=self.pooled.dtype)
        time_ids = time_ids.reshape(-1, time_ids.shape[-1]).expand(len(self), time_ids.shape[-1])
        return PromptEmbeddings(self.embeds, torch.cat([self.pooled, time_ids], dim=1))

    def where(self, replace: torch.Tensor, replacement: "PromptEmbeddings") -> "PromptEmbeddings":
        """Rows of ``replacement`` where ``replace`` (a ``(B,)`` bool tensor) is true, else these rows: caption dropout
        with ``replacement = encoder.empty(B, ...)``, decided on the device (no host synchronisation)."""
        if (self.pooled is None) != (replacement.pooled is None):
            raise ValueError("Cannot mix prompt embeddings with a pooled vector and ones without.")
        if replace.numel() != len(self) or len(replacement) != len(self):
            raise ValueError(
                f"Caption dropout needs one decision and one replacement row per caption: {len(self)} captions, "
                f"{replace.numel()} decisions and {len(replacement)} replacement rows."
            )
        mask = replace.reshape(-1, 1, 1)
        embeds = torch.where(mask, replacement.embeds, self.embeds)
        pooled = None if self.pooled is None else torch.where(mask[:, :, 0], replacement.pooled, self.pooled)
        return PromptEmbeddings(embeds, pooled)


def sequence_length(tokenizer, text_encoder: torch.nn.Module, name: str = "tokenizer") -> int:
    """The tokenizer's ``model_max_length`` (the padded prompt length); ``ValueError`` naming it unless it is a
    length the text encoder can read."""
    length = getattr(tokenizer, "model_max_length", None)
    if not isinstance(length, int) or not 0 < length <= MAX_SEQUENCE_LENGTH:
        raise ValueError(
            f"The {name}'s model_max_length must be the text encoder's sequence length (1..{MAX_SEQUENCE_LENGTH}), "
            f"got {length!r}; set it in its tokenizer_config.json."
        )
    positions = getattr(text_encoder.config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise ValueError(
            f"The {name} pads prompts to model_max_length={length} tokens but the text encoder "
            f"{type(text_encoder).__name__} has max_position_embeddings={positions}."
        )
    return length


def sdxl_time_ids(
    original_size: tuple[int, int], crops_coords_top_left: tuple[int, int], target_size: tuple[int, int],
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SDXL's micro-conditioning ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` as a ``(6,)`` tensor
    (Podell et al. 2023, section 2.2; built once per call or batch, on the host)."""
    values = [*original_size, *crops_coords_top_left, *target_size]
    if len(values) != 6 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(
            "SDXL's micro-conditioning needs original_size, crops_coords_top_left and target_size as pairs of numbers, "
            f"got {original_size!r}, {crops_coords_top_left!r}, {target_size!r}."
        )
    return torch.tensor(values, dtype=torch.float32).to(device=device, dtype=dtype)


class PromptEncoder:
    """Tokenizer + frozen text encoder + the empty-prompt convention (see the module docstring).

    Args:
        tokenizer: a transformers tokenizer; prompts are padded to (and truncated at) its ``model_max_length``.
        text_encoder: a transformers text model (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
            ``T5EncoderModel``, ...); its ``last_hidden_state`` is the sequence, its ``pooler_output`` (or
            ``text_embeds`` for CLIP with projection) the pooled vector, where it has one.
        empty_prompt: ``"encode"`` or ``"zeros"``, the unconditional input's convention.
        tokenizer_2, text_encoder_2: SDXL's second tokenizer and text encoder (``CLIPTextModelWithProjection``).
            With them the sequence is both encoders' penultimate hidden states concatenated along the channels, and
            the pooled vector the second encoder's ``text_embeds``.
    """

    def __init__(
        self, tokenizer, text_encoder: torch.nn.Module, empty_prompt: str = "encode", tokenizer_2=None,
        text_encoder_2: torch.nn.Module | None = None,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2
        self.empty_prompt = check_empty_prompt(empty_prompt)
        if (tokenizer_2 is None) != (text_encoder_2 is None):
            raise ValueError(
                "SDXL's second text encoder needs its tokenizer: give both tokenizer_2 and text_encoder_2 or neither, "
                f"got tokenizer_2={type(tokenizer_2).__name__} and text_encoder_2={type(text_encoder_2).__name__}."
            )
        self.max_length = sequence_length(tokenizer, text_encoder)
        if text_encoder_2 is not None:
            length_2 = sequence_length(tokenizer_2, text_encoder_2, "tokenizer_2")
            if length_2 != self.max_length:
                raise ValueError(
                    f"SDXL's two tokenizers must pad to the same length (their sequences are concatenated along the "
                    f"channels), got model_max_length {self.max_length} and {length_2}."
                )
        # The one-row empty-prompt embeddings per (device, dtype): encoded once, then only expanded.
        self._empty: dict[tuple[torch.device, torch.dtype], PromptEmbeddings] = {}

    @property
    def hidden_size(self) -> int:
        """Width C of the sequence embeddings (checked against the backbone's cross-attention width): the text
        encoder's, or the sum of SDXL's two."""
        return sum(text_hidden_size(encoder) for encoder in self.text_encoders)

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """The text encoder, and SDXL's second one where there is one."""
        return (self.text_encoder,) if self.text_encoder_2 is None else (self.text_encoder, self.text_encoder_2)

    def tokenize(self, prompts: list[str], tokenizer=None) -> dict[str, torch.Tensor]:
        """``input_ids`` (and ``attention_mask``) of ``prompts`` by ``tokenizer`` (default: the first), padded to
        ``max_length`` and truncated there."""
        return (tokenizer or self.tokenizer)(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(
        self, prompts: list[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeddings:
        """The text encoder's embeddings of ``prompts`` (a list of strings), on ``device`` in ``dtype``."""
        return self.encode_differentiable(prompts, device, dtype)

    def encode_differentiable(
        self, prompts: list[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeddings:
        """:meth:`encode` with autograd recording: the embeddings carry the gradient to the text encoder(s), for
        training them (``--train_text_encoder``)."""
        prompts = check_prompts(prompts)
        if self.text_encoder_2 is not None:
            return self._encode_sdxl(prompts).to(device=device, dtype=dtype)
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

    def _encode_sdxl(self, prompts: list[str]) -> PromptEmbeddings:
        """SDXL: both encoders' penultimate hidden states, concatenated along the channels; the second's
        ``text_embeds`` (projected final token) as the pooled vector. SDXL's pipelines pass no attention mask."""
        sequences = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = self.tokenize(prompts, tokenizer)["input_ids"].to(encoder.device)
            output = encoder(ids, output_hidden_states=True, return_dict=True)
            sequences.append(output.hidden_states[-2])
        pooled = getattr(output, "text_embeds", None)
        if pooled is None:
            pooled = output.pooler_output
        device = sequences[0].device
        return PromptEmbeddings(torch.cat([sequence.to(device) for sequence in sequences], dim=-1), pooled.to(device))

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
        names = " + ".join(type(encoder).__name__ for encoder in self.text_encoders)
        check_context_width(
            self.hidden_size, width, source=f"The text encoder {names} (hidden size)", target=target,
        )


def check_latents_count(latents: object, prompts: int, num_images_per_prompt: int) -> None:
    """``ValueError`` naming both sides when ``latents`` (a tensor) does not hold one sample per image of the call,
    ``prompts x num_images_per_prompt``."""
    batch_size = prompts * num_images_per_prompt
    if isinstance(latents, torch.Tensor) and latents.ndim >= 1 and latents.shape[0] != batch_size:
        raise ValueError(
            f"latents hold {latents.shape[0]} samples but {prompts} prompt(s) x num_images_per_prompt="
            f"{num_images_per_prompt} make {batch_size} images."
        )


def check_prompt_embeds(name: str, embeds: object, width: int, target: str = "the denoiser") -> torch.Tensor:
    """``embeds`` if it is a floating-point ``(N, L, width)`` tensor; ``ValueError`` naming ``name`` and both sides."""
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 3 or embeds.shape[0] == 0:
        got = f"shape {tuple(embeds.shape)}, {embeds.dtype}" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"{name} must be a floating-point tensor (prompts, sequence, {width}), got {got}.")
    check_context_width(embeds.shape[-1], width, source=name, target=target)
    return embeds


def check_pooled_embeds(name: str, pooled: object, rows: tuple[int, ...]) -> None:
    """``ValueError`` naming ``name`` unless ``pooled`` is ``None`` or a floating-point ``(N, C')`` tensor with ``N``
    in ``rows``."""
    if pooled is None:
        return
    if not isinstance(pooled, torch.Tensor) or not pooled.is_floating_point() or pooled.ndim != 2:
        got = f"shape {tuple(pooled.shape)}, {pooled.dtype}" if isinstance(pooled, torch.Tensor) else type(pooled).__name__
        raise ValueError(f"{name} must be a floating-point tensor (prompts, width), got {got}.")
    if pooled.shape[0] not in rows:
        raise ValueError(f"{name} has {pooled.shape[0]} rows but the call needs {' or '.join(map(str, rows))}.")


class TextPromptsMixin:
    """The prompt arguments of the text pipelines (diffusers' ``StableDiffusionPipeline`` conventions: ``prompt``,
    ``negative_prompt``, ``prompt_embeds``, ``negative_prompt_embeds``, ``num_images_per_prompt``). The pipeline has
    the components ``tokenizer`` and ``text_encoder`` and the config value ``empty_prompt``."""

    @property
    def prompt_encoder(self) -> PromptEncoder:
        """The :class:`~diffusers_edm.pipelines.prompt_encoding.PromptEncoder` of the current tokenizer, text encoder
        and ``empty_prompt`` (rebuilt when a component is swapped; it caches the empty prompt's embeddings)."""
        cached = self.__dict__.get("_prompt_encoder")
        tokenizer_2, text_encoder_2 = getattr(self, "tokenizer_2", None), getattr(self, "text_encoder_2", None)
        if (
            cached is None or cached.tokenizer is not self.tokenizer or cached.text_encoder is not self.text_encoder
            or cached.tokenizer_2 is not tokenizer_2 or cached.text_encoder_2 is not text_encoder_2
            or cached.empty_prompt != self.config.empty_prompt
        ):
            cached = PromptEncoder(self.tokenizer, self.text_encoder, self.config.empty_prompt, tokenizer_2, text_encoder_2)
            self.__dict__["_prompt_encoder"] = cached
        return cached

    # ------------------------------------------------------------------------------------------ prompts
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        negative_prompt: str | list[str] | None,
        negative_prompt_embeds: torch.Tensor | None,
        negative_pooled_prompt_embeds: torch.Tensor | None,
        classifier_free: bool,
        device: torch.device,
        dtype: torch.dtype,
        width: int,
        model: str = "the denoiser",
    ) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
        """The conditional embeddings of the prompts (one row per prompt) and, for classifier-free guidance, the
        unconditional ones (negative prompt, else the empty prompt by the ``empty_prompt`` convention), on ``device``
        in ``dtype``, checked against the model's text ``width``. Every check names the argument and both sides."""
        # Every argument is checked before anything is encoded (also the negative ones when w = 1).
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(
                "Give exactly one of prompt or prompt_embeds, got "
                + ("both." if prompt is not None else "neither.")
            )
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Give at most one of negative_prompt or negative_prompt_embeds, got both.")
        if prompt is not None:
            prompts = check_prompts(prompt)
            count = len(prompts)
        else:
            prompt_embeds = check_prompt_embeds("prompt_embeds", prompt_embeds, width, model)
            count = prompt_embeds.shape[0]
        check_pooled_embeds("pooled_prompt_embeds", pooled_prompt_embeds, (count,))
        negatives = None
        if negative_prompt is not None:
            negatives = check_prompts(negative_prompt, "negative_prompt")
            if len(negatives) not in (1, count):
                raise ValueError(
                    f"negative_prompt has {len(negatives)} prompts but prompt has {count}; give one negative prompt or "
                    f"one per prompt."
                )
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = check_prompt_embeds("negative_prompt_embeds", negative_prompt_embeds, width, model)
            if negative_prompt_embeds.shape[0] not in (1, count):
                raise ValueError(
                    f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} rows but there are {count} prompts; "
                    f"give 1 or {count}."
                )
        check_pooled_embeds("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds, (1, count))

        encoder = self.prompt_encoder
        if prompt is not None:
            conditional = encoder.encode(prompts, device=device, dtype=dtype)
        else:
            conditional = PromptEmbeddings(prompt_embeds, pooled_prompt_embeds).to(device=device, dtype=dtype)
        if not classifier_free:
            return conditional, None
        if negatives is not None:
            unconditional = encoder.encode(negatives * (count if len(negatives) == 1 else 1), device=device, dtype=dtype)
        elif negative_prompt_embeds is not None:
            pooled = negative_pooled_prompt_embeds
            unconditional = PromptEmbeddings(
                negative_prompt_embeds.expand(count, *negative_prompt_embeds.shape[1:]),
                None if pooled is None else pooled.expand(count, *pooled.shape[1:]),
            ).to(device=device, dtype=dtype)
        else:
            unconditional = encoder.empty(count, device=device, dtype=dtype)
        if unconditional.embeds.shape[1:] != conditional.embeds.shape[1:]:
            raise ValueError(
                f"The unconditional embeddings have shape {tuple(unconditional.embeds.shape[1:])} per prompt but the "
                f"prompt's have {tuple(conditional.embeds.shape[1:])}; both halves of classifier-free guidance need "
                "the same sequence length (pad prompt_embeds to the tokenizer's model_max_length)."
            )
        return conditional, unconditional

    def embeddings_for_model(
        self,
        conditional: PromptEmbeddings,
        unconditional: PromptEmbeddings | None,
        num_images_per_prompt: int,
        pooled_width: int | None,
        model: str,
    ) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
        """Both halves repeated ``num_images_per_prompt`` times, with the pooled vector the model needs (checked
        against ``pooled_width``) or without one when it takes none (``pooled_width=None``)."""

        def fitted(embeddings: PromptEmbeddings, name: str) -> PromptEmbeddings:
            if pooled_width is None:
                return PromptEmbeddings(embeddings.embeds).repeat_interleave(num_images_per_prompt)
            if embeddings.pooled is None:
                raise ValueError(
                    f"{model} needs a pooled text vector of width {pooled_width} but {name} has none (the text encoder "
                    f"{type(self.text_encoder).__name__} gives none, or pass pooled_prompt_embeds)."
                )
            check_context_width(embeddings.pooled.shape[-1], pooled_width, source=f"{name}'s pooled vector", target=model)
            return embeddings.repeat_interleave(num_images_per_prompt)

        return fitted(conditional, "prompt"), None if unconditional is None else fitted(
            unconditional, "the unconditional input"
        )
