"""The backbone networks F a preconditioned denoiser can wrap, and how each is built, stored and called.

A wrapper's config holds its backbone as plain data (class name + config dict) because a module cannot be a
config value; :func:`backbone_spec` writes that data and :func:`build_backbone` reads it.
The three supported classes take the noise label and class labels under different argument names;
:func:`backbone_caller` is the one place that knows them.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel
from diffusers.models.embeddings import LabelEmbedding

SUPPORTED_BACKBONES: dict[str, type[torch.nn.Module]] = {
    "UNet2DModel": UNet2DModel,
    "UNet2DConditionModel": UNet2DConditionModel,
    "DiTTransformer2DModel": DiTTransformer2DModel,
}


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
    if isinstance(backbone, DiTTransformer2DModel):
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
    if backbone.config.class_embed_type is not None:
        raise ValueError(
            f"{type(backbone).__name__} with class_embed_type={backbone.config.class_embed_type!r} is not supported; "
            "class conditioning needs class_embed_type=None and num_class_embeds (label ids)."
        )
    return int(backbone.config.num_class_embeds or 0)


def uses_cross_attention(backbone: torch.nn.Module) -> bool:
    """Whether the backbone takes ``encoder_hidden_states``."""
    return isinstance(backbone, UNet2DConditionModel)


BackboneCall = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor, "torch.LongTensor | None", "torch.Tensor | None"], torch.Tensor
]


def _call_unet_condition(
    module: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
) -> torch.Tensor:
    return module(
        sample, timestep=noise_label, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels,
        return_dict=False,
    )[0]


def _call_with_class_labels(
    module: torch.nn.Module,
    sample: torch.Tensor,
    noise_label: torch.Tensor,
    class_labels: torch.LongTensor | None,
    encoder_hidden_states: torch.Tensor | None,
) -> torch.Tensor:
    """``UNet2DModel`` and ``DiTTransformer2DModel``: the same keywords, no cross-attention."""
    return module(sample, timestep=noise_label, class_labels=class_labels, return_dict=False)[0]


_CALLS: tuple[tuple[type[torch.nn.Module], BackboneCall], ...] = (
    (DiTTransformer2DModel, _call_with_class_labels),
    (UNet2DConditionModel, _call_unet_condition),
    (UNet2DModel, _call_with_class_labels),
)
SUPPORTED_CLASSES = tuple(cls for cls, _ in _CALLS)


def backbone_caller(backbone: torch.nn.Module) -> BackboneCall:
    """The calling convention of ``backbone``'s class: ``call(module, sample, noise_label, class_labels, encoder_hidden_states)``.

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
) -> torch.Tensor:
    """``F(sample; noise_label)``: the raw network output, whatever the backbone's argument names (and wrappers).

    Looks the convention up on every call; a loop that calls the same model many times takes
    :func:`backbone_caller` once instead.
    """
    return backbone_caller(backbone)(backbone, sample, noise_label, class_labels, encoder_hidden_states)
