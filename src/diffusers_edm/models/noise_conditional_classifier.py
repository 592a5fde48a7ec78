"""A noise-conditional classifier ``p(y | x; sigma)`` for classifier guidance (Dhariwal & Nichol 2021, "Diffusion
Models Beat GANs on Image Synthesis", section 4 and appendix; the classifier is the encoder half of their UNet with
an attention-pooling head).

The network is built from diffusers' own UNet blocks (``get_down_block``, ``UNetMidBlock2D``, ``Timesteps`` +
``TimestepEmbedding``) and conditioned on the noise level with EDM's preconditioning (Karras et al. 2022, Table 1):
it sees ``c_in(sigma) x`` with ``c_in = 1/sqrt(sigma^2 + sigma_data^2)`` and the noise label
``c_noise(sigma) = ln(sigma)/4``, exactly as the EDM denoisers do, so it reads the same noisy samples
``x = y + sigma n`` (pixels or latents) that a sampler holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import AttentionPooling, TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from diffusers.utils import BaseOutput
from torch import nn

from ..value_checks import check_integer, check_real
from .preconditioned_denoisers import PreconditionedDenoiser
from .preconditioning import edm_preconditioning

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
POOLING_TYPES = ("attention", "mean")
TIME_SCALE_SHIFTS = ("default", "scale_shift")


@dataclass
class NoiseConditionalClassifierOutput(BaseOutput):
    """Output of :class:`NoiseConditionalClassifier`.

    Args:
        logits: unnormalised ``log p(y | x; sigma)`` over the classes, float32, shape ``(B, num_classes)``.
    """

    logits: torch.Tensor


def _height_width(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``sample_size`` as ``(height, width)``; ``ValueError`` naming it unless one or two positive integers."""
    sizes = [sample_size] if not isinstance(sample_size, (tuple, list)) else list(sample_size)
    if len(sizes) not in (1, 2):
        raise ValueError(f"sample_size must be an integer or (height, width), got {sample_size!r}.")
    for size in sizes:
        check_integer("sample_size", size, minimum=1, allowed="a positive integer or (height, width) of positive integers")
    return (int(sizes[0]), int(sizes[-1]))


class NoiseConditionalClassifier(ModelMixin, ConfigMixin):
    """ADM's noise-conditional classifier with EDM preconditioning:
    ``logits(x; sigma) = F(c_in(sigma) x; c_noise(sigma))`` with ``c_in = 1/sqrt(sigma^2 + sigma_data^2)`` and
    ``c_noise = ln(sigma)/4``.

    F is the encoder half of a diffusers UNet: ``conv_in``, the down blocks (the last without downsampling), the mid
    block, all fed the embedding of ``c_noise`` (sinusoidal ``Timesteps`` + ``TimestepEmbedding`` MLP), then a head:

    - ``pooling="attention"`` (ADM): GroupNorm, SiLU, a learned positional embedding per spatial position, multi-head
      attention pooling whose query is the spatial mean (diffusers' ``AttentionPooling``), a linear map to the logits.
      The positional embedding fixes the input size to ``sample_size``.
    - ``pooling="mean"``: GroupNorm, SiLU, the spatial mean, a linear map to the logits (any input size).

    Args:
        sample_size: ``H`` or ``(H, W)`` of the inputs (pixels or latents); must be divisible by
            ``2 ** (len(down_block_types) - 1)``.
        in_channels: channels of the inputs (3 for RGB pixels, the VAE's latent channels for latents).
        num_classes: number of classes (>= 2).
        sigma_data: standard deviation of the data, as in the denoiser (0.5 for images in [-1, 1]).
        sigma_min, sigma_max: the noise range the classifier was trained on (the training recipe draws its noise
            levels within it); guidance may read it, ``forward`` accepts any positive ``sigma``.
        down_block_types: diffusers down blocks, one per resolution: ``"DownBlock2D"``, ``"AttnDownBlock2D"`` or
            ``"ResnetDownsampleBlock2D"`` (ADM's residual downsampling).
        block_out_channels: channels of each down block.
        layers_per_block: residual blocks per down block.
        mid_block_attention: whether the mid block has its self-attention layer.
        attention_head_dim: channels per attention head (blocks, mid block and the pooling head).
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        norm_eps: GroupNorm epsilon.
        resnet_time_scale_shift: ``"scale_shift"`` (ADM's ``use_scale_shift_norm``) or ``"default"`` (additive).
        dropout: dropout in the residual blocks.
        pooling: ``"attention"`` or ``"mean"``.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        block_out_channels: tuple[int, ...] = (64, 128, 256),
        layers_per_block: int = 2,
        mid_block_attention: bool = True,
        attention_head_dim: int = 64,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "scale_shift",
        dropout: float = 0.0,
        pooling: str = "attention",
    ):
        super().__init__()
        height, width = _height_width(sample_size)
        check_integer("in_channels", in_channels, minimum=1)
        check_integer("num_classes", num_classes, minimum=2)
        check_real("sigma_data", sigma_data, minimum=0.0, exclusive_minimum=True)
        check_real("sigma_min", sigma_min, minimum=0.0, exclusive_minimum=True)
        check_real("sigma_max", sigma_max, minimum=sigma_min, exclusive_minimum=True)
        down_block_types, block_out_channels = tuple(down_block_types), tuple(block_out_channels)
        if not down_block_types or any(kind not in DOWN_BLOCK_TYPES for kind in down_block_types):
            raise ValueError(f"down_block_types must be a non-empty sequence of {DOWN_BLOCK_TYPES}, got {down_block_types!r}.")
        if len(block_out_channels) != len(down_block_types):
            raise ValueError(
                f"block_out_channels must have one entry per down block ({len(down_block_types)}), got {block_out_channels!r}."
            )
        check_integer("norm_num_groups", norm_num_groups, minimum=1)
        check_integer("attention_head_dim", attention_head_dim, minimum=1)
        for channels in block_out_channels:
            check_integer(
                "block_out_channels",
                channels,
                minimum=1,
                allowed=f"positive integers divisible by norm_num_groups={norm_num_groups} (one per down block)",
            )
            if channels % norm_num_groups:
                raise ValueError(
                    f"block_out_channels must be divisible by norm_num_groups={norm_num_groups}, got {block_out_channels!r}."
                )
        uses_attention = mid_block_attention or pooling == "attention" or "AttnDownBlock2D" in down_block_types
        if uses_attention and block_out_channels[-1] % attention_head_dim:
            raise ValueError(
                f"attention_head_dim={attention_head_dim} must divide the attention layers' channels "
                f"(block_out_channels[-1]={block_out_channels[-1]})."
            )
        check_integer("layers_per_block", layers_per_block, minimum=1)
        check_real("norm_eps", norm_eps, minimum=0.0, exclusive_minimum=True)
        check_real("dropout", dropout, minimum=0.0, maximum=1.0, exclusive_maximum=True)
        if not isinstance(mid_block_attention, bool):
            raise ValueError(f"mid_block_attention must be True or False, got {mid_block_attention!r}.")
        if resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
            raise ValueError(f"resnet_time_scale_shift must be one of {TIME_SCALE_SHIFTS}, got {resnet_time_scale_shift!r}.")
        if pooling not in POOLING_TYPES:
            raise ValueError(f"pooling must be one of {POOLING_TYPES}, got {pooling!r}.")
        factor = 2 ** (len(down_block_types) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"sample_size={sample_size!r} must be divisible by 2 ** (len(down_block_types) - 1) = {factor}."
            )

        base = block_out_channels[0]
        time_embed_dim = 4 * base
        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)
        self.time_proj = Timesteps(base, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        output_channels = base
        for index, (kind, channels) in enumerate(zip(down_block_types, block_out_channels)):
            input_channels, output_channels = output_channels, channels
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=layers_per_block,
                    in_channels=input_channels,
                    out_channels=output_channels,
                    temb_channels=time_embed_dim,
                    add_downsample=index < len(down_block_types) - 1,
                    resnet_eps=norm_eps,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim,
                    downsample_padding=1,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    dropout=dropout,
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=output_channels,
            temb_channels=time_embed_dim,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            resnet_time_scale_shift=resnet_time_scale_shift,
            attention_head_dim=attention_head_dim,
            resnet_groups=norm_num_groups,
            add_attention=mid_block_attention,
        )

        self.norm_out = nn.GroupNorm(norm_num_groups, output_channels, eps=norm_eps)
        self.act_out = nn.SiLU()
        if pooling == "attention":
            positions = (height // factor) * (width // factor)
            # ADM's AttentionPool2d: one learned embedding per spatial position, added before pooling.
            self.positional_embedding = nn.Parameter(torch.randn(positions, output_channels) / output_channels**0.5)
            self.attention_pool = AttentionPooling(output_channels // attention_head_dim, output_channels)
        self.classifier_head = nn.Linear(output_channels, num_classes)

    # ---------------------------------------------------------------------------------------- properties
    @property
    def sample_size(self) -> tuple[int, int]:
        """``(height, width)`` of the inputs the classifier was configured for."""
        return _height_width(self.config.sample_size)

    @property
    def num_classes(self) -> int:
        """Number of classes of the logits."""
        return int(self.config.num_classes)

    check_sigma = staticmethod(PreconditionedDenoiser.check_sigma)

    # ---------------------------------------------------------------------------------------- forward
    def network(self, scaled_sample: torch.Tensor, noise_label: torch.Tensor) -> torch.Tensor:
        """The raw network ``F(c_in x; c_noise)``: logits (float32, ``(B, num_classes)``) of an already scaled input.

        Args:
            scaled_sample: ``c_in(sigma) x``, ``(B, C, H, W)``.
            noise_label: ``c_noise(sigma)``, one float per sample, ``(B,)``.
        """
        embedding = self.time_proj(noise_label).to(self.dtype)  # sinusoids are float32 whatever the model's dtype
        embedding = self.time_embedding(embedding)
        hidden = self.conv_in(scaled_sample.to(self.dtype))
        for block in self.down_blocks:
            hidden, _ = block(hidden, embedding)
        hidden = self.mid_block(hidden, embedding)
        hidden = self.act_out(self.norm_out(hidden))
        if self.config.pooling == "attention":
            tokens = hidden.flatten(2).transpose(1, 2)  # (B, H'W', C)
            pooled = self.attention_pool(tokens + self.positional_embedding.to(tokens.dtype))
        else:
            pooled = hidden.mean(dim=(2, 3))
        return self.classifier_head(pooled).to(torch.float32)

    def forward(
        self, sample: torch.Tensor, sigma: torch.Tensor | float, return_dict: bool = True
    ) -> NoiseConditionalClassifierOutput | tuple[torch.Tensor]:
        """``logits = F(c_in(sigma) x; c_noise(sigma))``, ``c_in = 1/sqrt(sigma^2 + sigma_data^2)``, ``c_noise = ln(sigma)/4``.

        Args:
            sample: the noisy sample ``x = y + sigma n``, ``(B, C, H, W)``, in the denoiser's data space (pixels in
                [-1, 1] or latents), not pre-scaled.
            sigma: its noise level, a scalar (Python float or 0-d tensor) or one value per sample; finite and > 0
                (checked by :meth:`check_sigma`, which callers run once per call or data set, not here).
            return_dict: return a :class:`NoiseConditionalClassifierOutput` rather than a tuple ``(logits,)``.

        Shapes are checked, values are not: nothing here synchronises with the device. ``c_in x`` is formed in
        float32 (or the sample's dtype if wider), so ``torch.autograd.grad`` of ``log_softmax(logits)`` with respect
        to ``sample`` is the ``grad_x log p(y | x; sigma)`` of classifier guidance.
        """
        channels = self.config.in_channels
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a tensor of shape (B, {channels}, H, W), got {type(sample).__name__}.")
        if sample.ndim != 4 or sample.shape[1] != channels:
            raise ValueError(f"sample must have shape (B, {channels}, H, W), got {tuple(sample.shape)}.")
        if self.config.pooling == "attention" and tuple(sample.shape[2:]) != self.sample_size:
            raise ValueError(
                f"sample must be {self.sample_size} (height, width) for attention pooling (its positional embedding "
                f"is sized for sample_size), got {tuple(sample.shape[2:])}."
            )
        batch = sample.shape[0]
        sigma = PreconditionedDenoiser._noise_levels(sigma, batch, sample.device)
        _, _, c_in, c_noise = edm_preconditioning(sigma, self.config.sigma_data)
        x = sample.to(torch.promote_types(sample.dtype, torch.float32))
        logits = self.network(c_in.reshape(batch, 1, 1, 1) * x, c_noise)
        if not return_dict:
            return (logits,)
        return NoiseConditionalClassifierOutput(logits=logits)
