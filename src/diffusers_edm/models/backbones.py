"""The backbone networks F a preconditioned denoiser can wrap, and how each is built, stored and called.

A wrapper's config holds its backbone as plain data (class name + config dict) because a module cannot be a
config value; :func:`backbone_spec` writes that data and :func:`build_backbone` reads it.
The supported classes take the noise label, class labels and text conditioning under different argument names;
:func:`backbone_caller` is the one place that knows them.

Text conditioning: ``UNet2DConditionModel`` (Latent Diffusion, Rombach et al. 2022, section 3.3) and
``PixArtTransformer2DModel`` (PixArt-alpha, Chen et al. 2023: a DiT whose blocks add cross-attention) read a sequence
of text embeddings (``encoder_hidden_states``). A pooled text vector is added to the time embedding where the backbone
has an input for it (GLIDE, Nichol et al. 2022, section 2.3, projects the final token's state): a
``UNet2DConditionModel`` with ``class_embed_type="projection"`` or ``"simple_projection"`` takes it in place of class
labels. A UNet with ``addition_embed_type="text"`` pools the sequence itself (its ``TextTimeEmbedding`` reads
``encoder_hidden_states``), so it needs nothing more. SDXL's ``addition_embed_type="text_time"`` (Podell et al. 2023,
section 2.2) adds the second text encoder's pooled embedding and the six micro-conditioning numbers
``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``: here they travel as one pooled vector, the pooled
embedding followed by those six numbers, split into diffusers' ``added_cond_kwargs`` only when the UNet is called (so
guidance batches and caption dropout treat them as one vector).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel, UNet2DModel
from diffusers.models.embeddings import LabelEmbedding

SUPPORTED_BACKBONES: dict[str, type[torch.nn.Module]] = {
    "UNet2DModel": UNet2DModel,
    "UNet2DConditionModel": UNet2DConditionModel,
    "DiTTransformer2DModel": DiTTransformer2DModel,
    "PixArtTransformer2DModel": PixArtTransformer2DModel,
}

#: UNet2DConditionModel class-embedding types that project a vector (here: the pooled text embedding), not label ids.
POOLED_EMBED_TYPES = ("projection", "simple_projection")
#: SDXL's micro-conditioning numbers per sample: ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``.
SDXL_TIME_IDS = 6


def backbone_class(name: str) -> type[torch.nn.Module]:
    """The backbone class called ``name``; ``ValueError`` for any other name."""
    if name not in SUPPORTED_BACKBONES:
        raise ValueError(f"Unsupported backbone_class {name!r}; expected one of {sorted(SUPPORTED_BACKBONES)}.")
    return SUPPORTED_BACKBONES[name]


def backbone_spec(backbone: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    """``(class name, config as JSON-able plain data)`` of a supported backbone instance; ``TypeError`` otherwise.

    Subclasses are refused: ``from_pretrained`` would rebuild the base class and silently change the model.
    """
    name = type(backbone).__name__
    if SUPPORTED_BACKBONES.get(name) is not type(backbone):
        raise TypeError(
            f"Unsupported backbone {type(backbone).__module__}.{type(backbone).__qualname__}; expected an instance of "
            f"one of {sorted(SUPPORTED_BACKBONES)} from diffusers."
        )
    # Private keys (_class_name, _diffusers_version, _use_default_values, ...) describe the file, not the network.
    config = {key: value for key, value in backbone.config.items() if not key.startswith("_")}
    return name, json.loads(json.dumps(config))


def build_backbone(name: str, config: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised backbone of class ``name`` from its plain-data ``config``."""
    if not isinstance(config, dict):
        raise TypeError(f"backbone_config must be a dict of the backbone's config, got {type(config).__name__}.")
    return backbone_class(name).from_config(config)


def disable_internal_label_dropout(backbone: torch.nn.Module) -> None:
    """Switch off label dropout inside the backbone (DiT drops 10% of labels per block in train mode).

    The embedding table keeps its extra "null" row, so classifier-free guidance can still use it; the training code
    decides once per sample which labels to drop, with :func:`drop_class_labels` (classifier-free guidance, Ho &
    Salimans 2022, Algorithm 1: one dropout decision per example).
    """
    for module in backbone.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def drop_class_labels(class_labels: torch.LongTensor, dropout: float, null_class_label: int) -> torch.LongTensor:
    """Classifier-free guidance training: each label independently becomes ``null_class_label`` with probability ``dropout``.

    One uniform draw per example from the global torch RNG on the labels' device (``u_i < dropout`` drops label i),
    so a checkpointed run resumes with the same decisions. No host synchronisation.
    """
    dropped = torch.rand(class_labels.shape[0], device=class_labels.device) < dropout
    return torch.where(dropped, torch.full_like(class_labels, null_class_label), class_labels)


def image_channels(backbone: torch.nn.Module) -> int:
    """Channels C of the sample the backbone denoises (its input channels)."""
    return int(backbone.config.in_channels)


def output_channels(backbone: torch.nn.Module) -> int:
    """Channels of the backbone's output: C, or 2C for a learned-variance backbone."""
    if isinstance(backbone, (DiTTransformer2DModel, PixArtTransformer2DModel)):
        return int(backbone.out_channels)
    return int(backbone.config.out_channels)


def sample_size(backbone: torch.nn.Module) -> tuple[int, int]:
    """``(height, width)`` of the samples the backbone was configured for."""
    size = backbone.config.sample_size
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def class_table_size(backbone: torch.nn.Module) -> int:
    """Rows of the backbone's class-embedding table (0 without one): the valid label ids are ``0..size-1``.

    DiT's table has ``num_embeds_ada_norm + 1`` rows, the last one being its classifier-free "null" label.
    UNets embed ids only with ``class_embed_type=None`` and ``num_class_embeds`` set; their other class
    embedding types take vectors, which this package does not use.
    """
    if isinstance(backbone, DiTTransformer2DModel):
        return int(backbone.config.num_embeds_ada_norm) + 1
    if isinstance(backbone, PixArtTransformer2DModel):
        return 0  # its num_embeds_ada_norm sizes the timestep embedding, there is no class table
    if pooled_text_width(backbone) is not None:
        return 0
    if backbone.config.class_embed_type is not None:
        raise ValueError(
            f"{type(backbone).__name__} with class_embed_type={backbone.config.class_embed_type!r} is not supported; "
            "class conditioning needs class_embed_type=None and num_class_embeds (label ids)."
        )
    return int(backbone.config.num_class_embeds or 0)


def uses_cross_attention(backbone: torch.nn.Module) -> bool:
    """Whether the backbone takes ``encoder_hidden_states``."""
    return isinstance(backbone, (UNet2DConditionModel, PixArtTransformer2DModel))


def context_width(backbone: torch.nn.Module) -> int | None:
    """Width of the text embeddings the backbone reads (``None``: no cross-attention).

    ``UNet2DConditionModel``: ``encoder_hid_dim`` where it projects its input, else ``cross_attention_dim`` (one
    width for all blocks); ``PixArtTransformer2DModel``: ``caption_channels`` (its caption projection's input), else
    ``cross_attention_dim``.
    """
    if not uses_cross_attention(backbone):
        return None
    config = backbone.config
    if isinstance(backbone, PixArtTransformer2DModel):
        return int(config.caption_channels if config.caption_channels is not None else config.cross_attention_dim)
    if config.encoder_hid_dim is not None:
        return int(config.encoder_hid_dim)
    width = config.cross_attention_dim
    if isinstance(width, (list, tuple)):
        if len(set(width)) != 1:
            raise ValueError(
                f"UNet2DConditionModel with per-block cross_attention_dim={list(width)} is not supported: one text "
                "sequence feeds every block, so all blocks need the same width."
            )
        width = width[0]
    return int(width)


def pooled_text_width(backbone: torch.nn.Module) -> int | None:
    """Width of the pooled text vector the backbone adds to its time embedding (``None``: it takes none): a
    ``UNet2DConditionModel`` with ``class_embed_type`` in :data:`POOLED_EMBED_TYPES` reads
    ``projection_class_embeddings_input_dim`` channels."""
    if isinstance(backbone, UNet2DConditionModel) and backbone.config.class_embed_type in POOLED_EMBED_TYPES:
        return int(backbone.config.projection_class_embeddings_input_dim)
    if takes_sdxl_time_ids(backbone):
        # The add embedding reads the pooled text embedding and the Fourier features of the six micro-conditions.
        config = backbone.config
        text_width = int(config.projection_class_embeddings_input_dim) - SDXL_TIME_IDS * int(config.addition_time_embed_dim)
        return text_width + SDXL_TIME_IDS
    return None


def takes_sdxl_time_ids(backbone: torch.nn.Module) -> bool:
    """Whether the backbone is an SDXL UNet (``addition_embed_type="text_time"``): its pooled vector ends with the
    :data:`SDXL_TIME_IDS` micro-conditioning numbers."""
    return isinstance(backbone, UNet2DConditionModel) and backbone.config.addition_embed_type == "text_time"


#: ``call(module, sample, noise_label, class_labels, encoder_hidden_states, pooled_text_embeds=None)``.
BackboneCall = Callable[..., torch.Tensor]


def _call_unet_condition(
    module: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
    pooled_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    added_cond_kwargs = None
    if pooled_text_embeds is not None and module.config.addition_embed_type == "text_time":
        # SDXL: the pooled vector is the pooled text embedding followed by the six micro-conditioning numbers.
        added_cond_kwargs = {
            "text_embeds": pooled_text_embeds[:, :-SDXL_TIME_IDS], "time_ids": pooled_text_embeds[:, -SDXL_TIME_IDS:]
        }
    elif pooled_text_embeds is not None:
        # A UNet with a projection class embedding reads the pooled text vector where others read label ids.
        class_labels = pooled_text_embeds
    return module(
        sample, timestep=noise_label, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels,
        added_cond_kwargs=added_cond_kwargs, return_dict=False,
    )[0]


def _call_pixart(
    module: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
    pooled_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``PixArtTransformer2DModel``: text through cross-attention; its micro-conditions (resolution and aspect
    ratio, PixArt-alpha's 1024-px models) only where ``use_additional_conditions``, given as the sample's own
    height and width, the same in training and sampling. No class labels, no pooled vector."""
    added_cond_kwargs = {"resolution": None, "aspect_ratio": None}
    if module.use_additional_conditions:
        batch, (height, width) = sample.shape[0], sample.shape[-2:]
        # Filled on the device (no host-to-device copy per call).
        added_cond_kwargs = {
            "resolution": torch.stack(
                [sample.new_full((batch,), float(height)), sample.new_full((batch,), float(width))], dim=1
            ),
            "aspect_ratio": sample.new_full((batch, 1), height / width),
        }
    return module(
        sample, encoder_hidden_states=encoder_hidden_states, timestep=noise_label, added_cond_kwargs=added_cond_kwargs,
        return_dict=False,
    )[0]


def _call_with_class_labels(
    module: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
    pooled_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``UNet2DModel`` and ``DiTTransformer2DModel``: the same keywords, no cross-attention."""
    return module(sample, timestep=noise_label, class_labels=class_labels, return_dict=False)[0]


_CALLS: tuple[tuple[type[torch.nn.Module], BackboneCall], ...] = (
    (DiTTransformer2DModel, _call_with_class_labels),
    (PixArtTransformer2DModel, _call_pixart),
    (UNet2DConditionModel, _call_unet_condition),
    (UNet2DModel, _call_with_class_labels),
)
SUPPORTED_CLASSES = tuple(cls for cls, _ in _CALLS)


def backbone_caller(backbone: torch.nn.Module) -> BackboneCall:
    """The calling convention of ``backbone``'s class:
    ``call(module, sample, noise_label, class_labels, encoder_hidden_states, pooled_text_embeds=None)``.

    The class is read from the unwrapped module (DDP, FSDP, DeepSpeed and ``torch.compile`` wrappers are looked
    through, with Accelerate's ``extract_model_from_parallel``), while the returned function calls whatever module
    it is given, so a training loop decides once, at setup, and then calls the *wrapped* model (DDP's gradient
    hooks, the compiled graph) with the argument names of the backbone inside. ``TypeError`` for other classes.
    """
    module = backbone
    if not isinstance(module, SUPPORTED_CLASSES):  # a wrapper: unwrap (only then, it costs some microseconds)
        module = extract_model_from_parallel(backbone, keep_torch_compile=False)
    for cls, call in _CALLS:
        if isinstance(module, cls):
            return call
    raise TypeError(
        f"Unsupported backbone {type(module).__module__}.{type(module).__qualname__}; expected one of {sorted(SUPPORTED_BACKBONES)}."
    )


def call_backbone(
    backbone: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
    pooled_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F(sample; noise_label)``: the raw network output, whatever the backbone's argument names (and wrappers).

    Looks the convention up on every call; a loop that calls the same model many times takes
    :func:`backbone_caller` once instead.
    """
    return backbone_caller(backbone)(
        backbone, sample, noise_label, class_labels, encoder_hidden_states, pooled_text_embeds
    )
