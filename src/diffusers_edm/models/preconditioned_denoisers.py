"""Preconditioned denoisers ``D(x; sigma)`` over diffusers backbones: EDM, VP, VE and iDDPM (EDM Table 1).

Each wrapper is a ``ModelMixin, ConfigMixin`` whose config stores its backbone as plain data (class name and
config), so ``save_pretrained`` writes one ``config.json`` and one safetensors file (keys ``backbone.*``) and
``from_pretrained`` rebuilds both. The coefficients come from :mod:`diffusers_edm.models.preconditioning`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..noise_schedules import iddpm_sigma_table, vp_sigma
from ..value_checks import check_increasing_pair, check_integer, check_real
from .backbones import (
    backbone_spec,
    build_backbone,
    call_backbone,
    class_table_size,
    context_width,
    disable_internal_label_dropout,
    drop_class_labels,
    image_channels,
    output_channels,
    pooled_text_width,
    sample_size,
    uses_cross_attention,
)
from .preconditioning import (
    Preconditioning,
    edm_preconditioning,
    iddpm_preconditioning,
    nearest_table_index,
    ve_preconditioning,
    vp_preconditioning,
)


MAX_DISCRETE_LEVELS = 1_000_000


def sigma_tensor(sigma: object, device: torch.device | str | None = None) -> torch.Tensor:
    """``sigma`` as a tensor (no look at the values); a ``ValueError`` naming it for input that is no number at all
    (text, None, ragged lists)."""
    if isinstance(sigma, (str, bytes, bool)) or sigma is None:
        raise ValueError(f"sigma must be a number or a tensor of noise levels, got {sigma!r}.")
    try:
        return torch.as_tensor(sigma, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(f"sigma must be a number or a tensor of noise levels, got {sigma!r}.") from error


def label_tensor(class_labels: torch.Tensor | int | list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """``class_labels`` as an integer tensor (no look at the values); ``TypeError`` for a non-integer dtype,
    ``ValueError`` naming input that is not label ids at all (text, ragged lists, ids beyond int64)."""
    try:
        labels = torch.as_tensor(class_labels, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(f"class_labels must be integer label ids (int64), got {class_labels!r}.") from error
    if labels.numel() == 0:
        raise ValueError(f"class_labels must hold at least one label id, got {class_labels!r}.")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"class_labels must be integer label ids, got dtype {labels.dtype}.")
    return labels


@dataclass
class PreconditionedDenoiserOutput(BaseOutput):
    """Output of a preconditioned denoiser.

    Args:
        sample: ``D(x; sigma)``, the estimate of the clean sample, in float32, shape ``(B, C, H, W)``.
        variance_channels: for a learned-variance backbone (2C output channels), the raw last C channels of
            ``F`` (Improved DDPM's variance interpolation ``v``); ``None`` otherwise.
    """

    sample: torch.Tensor
    variance_channels: torch.Tensor | None = None


class PreconditionedDenoiser(ModelMixin, ConfigMixin):
    """Shared machinery of the four wrappers: ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``.

    Subclasses define :meth:`preconditioning`, ``sigma_min`` / ``sigma_max`` and, where the model only supports
    some noise levels, :meth:`round_sigma`.

    Class conditioning uses label ids ``0..num_classes-1``. ``null_class_label`` (an id of the backbone's class
    table at or above ``num_classes``) is the "no class" label of classifier-free guidance; during training
    (``model.train()``) each sample's label is replaced by it with probability ``label_dropout``.
    """

    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        num_classes: int,
        null_class_label: int | None,
        label_dropout: float,
    ):
        super().__init__()
        check_integer("num_classes", num_classes, minimum=0)
        if null_class_label is not None:
            check_integer(
                "null_class_label",
                null_class_label,
                minimum=num_classes,
                allowed=f"None or an integer label id >= num_classes={num_classes} (a row of the backbone's class table "
                "that is not a real class)",
            )
        check_real("label_dropout", label_dropout, minimum=0.0, maximum=1.0, allowed="a probability in [0, 1]")
        if label_dropout > 0 and null_class_label is None:
            raise ValueError(f"label_dropout={label_dropout} needs a null_class_label to drop labels to.")
        if not isinstance(backbone_config, dict):
            raise ValueError(f"backbone_config must be a dict (the backbone's config), got {backbone_config!r}.")
        self._attach_backbone(build_backbone(backbone_class, backbone_config))

    def _attach_backbone(self, backbone: torch.nn.Module) -> None:
        channels, out_channels = image_channels(backbone), output_channels(backbone)
        if out_channels not in (channels, 2 * channels):
            raise ValueError(
                f"The backbone maps {channels} to {out_channels} channels; expected {channels} (denoiser) or "
                f"{2 * channels} (learned variance)."
            )
        rows = class_table_size(backbone)
        num_classes, null_label = self.config.num_classes, self.config.null_class_label
        if (rows > 0) != (num_classes > 0):
            raise ValueError(
                f"num_classes={num_classes} does not fit the backbone: its class-embedding table has {rows} rows "
                "(set num_classes >= 1 exactly when the backbone is class-conditional)."
            )
        if num_classes > rows or (null_label is not None and null_label >= rows):
            raise ValueError(
                f"The backbone's class-embedding table has {rows} rows (ids 0..{rows - 1}); it cannot hold "
                f"num_classes={num_classes} and null_class_label={null_label}."
            )
        disable_internal_label_dropout(backbone)
        self.backbone = backbone

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module, **config: Any) -> "PreconditionedDenoiser":
        """Wrap an existing backbone instance (it is used as is, not copied), e.g. ``EDMPrecond.from_backbone(unet, sigma_data=0.5)``.

        ``config`` holds the wrapper's own parameters. Without ``num_classes`` it is read from the backbone:
        a DiT's ``num_embeds_ada_norm`` classes with its extra row as null label, a UNet's ``num_class_embeds``
        classes (no null label), or 0. DiT's internal label dropout is switched off on the instance.
        """
        name, backbone_config = backbone_spec(backbone)
        if "num_classes" not in config:
            rows = class_table_size(backbone)
            if name == "DiTTransformer2DModel":
                config.update(num_classes=rows - 1, null_class_label=config.get("null_class_label", rows - 1))
            else:
                config["num_classes"] = rows
        # The wrapper's own backbone is built without memory and replaced by the given instance.
        with init_empty_weights():
            wrapper = cls(backbone_class=name, backbone_config=backbone_config, **config)
        wrapper._attach_backbone(backbone)
        return wrapper

    # ---------------------------------------------------------------------------------------- family-specific
    @property
    def sigma_min(self) -> float:
        """Smallest noise level the model supports: the config's, unless a family derives it from its schedule."""
        return float(self.config.sigma_min)

    @property
    def sigma_max(self) -> float:
        """Largest noise level the model supports: the config's, unless a family derives it from its schedule."""
        return float(self.config.sigma_max)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        """``c_skip, c_out, c_in, c_noise`` (float32, shape of ``sigma``) of this family at noise levels ``sigma``."""
        raise NotImplementedError(f"{type(self).__name__} must define preconditioning().")

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The noise levels the model supports nearest to ``sigma``: every positive level, for this family."""
        return torch.as_tensor(sigma)

    # ---------------------------------------------------------------------------------------- properties
    @property
    def image_channels(self) -> int:
        """Channels C of the samples this denoiser takes (pixels or latents)."""
        return image_channels(self.backbone)

    @property
    def sample_size(self) -> tuple[int, int]:
        """``(height, width)`` of the samples the backbone was configured for."""
        return sample_size(self.backbone)

    @property
    def learned_variance(self) -> bool:
        """Whether the backbone outputs 2C channels (the last C returned as ``variance_channels``)."""
        return output_channels(self.backbone) == 2 * self.image_channels

    @property
    def uses_cross_attention(self) -> bool:
        """Whether ``forward`` needs ``encoder_hidden_states`` (a ``UNet2DConditionModel`` or
        ``PixArtTransformer2DModel`` backbone)."""
        return uses_cross_attention(self.backbone)

    @property
    def context_width(self) -> int | None:
        """Width of the text embeddings (``encoder_hidden_states``) the backbone reads; ``None`` without
        cross-attention."""
        return context_width(self.backbone)

    @property
    def pooled_text_width(self) -> int | None:
        """Width of the pooled text vector ``forward`` needs (``pooled_text_embeds``); ``None``: it takes none."""
        return pooled_text_width(self.backbone)

    # ---------------------------------------------------------------------------------------- forward
    @staticmethod
    def _noise_levels(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        """``sigma`` as one float level per sample; shapes only, no look at the values.

        A Python number becomes a filled device tensor (no host-to-device copy, which would wait for the device);
        a tensor is used where it lives (callers keep per-step noise levels on the model's device).
        """
        if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
            return torch.full((batch,), float(sigma), device=device)
        sigma = sigma_tensor(sigma, device)
        if not sigma.is_floating_point():
            sigma = sigma.to(torch.float32)
        if sigma.numel() == 1:
            return sigma.reshape(1).expand(batch)
        if sigma.numel() == batch:
            return sigma.reshape(batch)
        raise ValueError(f"sigma must be a scalar or hold one value per sample ({batch}), got shape {tuple(sigma.shape)}.")

    @staticmethod
    def check_sigma(sigma: torch.Tensor | float) -> torch.Tensor:
        """``sigma`` as a floating tensor; ``ValueError`` unless every level is finite and > 0.

        Looks at the values (one host synchronisation on an accelerator): call it once per pipeline call or data
        set, not per model call. :meth:`forward` only checks shapes.
        """
        levels = sigma_tensor(sigma)
        if not levels.is_floating_point():
            levels = levels.to(torch.float32)
        if not bool(torch.all(torch.isfinite(levels) & (levels > 0))):
            raise ValueError(f"sigma must be finite and > 0, got {levels.reshape(-1).tolist()}.")
        return levels

    def _label_ids(
        self, class_labels: torch.Tensor | int | list[int] | None, batch: int, device: torch.device | str
    ) -> torch.LongTensor | None:
        """``class_labels`` as ``batch`` label ids; checks presence, dtype and shape only (no host synchronisation)."""
        num_classes, null_label = self.config.num_classes, self.config.null_class_label
        if num_classes == 0:
            if class_labels is not None:
                raise ValueError(f"{type(self).__name__} is unconditional (num_classes=0) but got class_labels.")
            return None
        if class_labels is None:
            if null_label is None:
                raise ValueError(
                    f"This model is class-conditional (num_classes={num_classes}) without a null label: pass class_labels."
                )
            return torch.full((batch,), null_label, dtype=torch.long, device=device)
        labels = label_tensor(class_labels, device)
        if labels.numel() == 1:
            labels = labels.reshape(1).expand(batch)
        elif labels.numel() == batch:
            labels = labels.reshape(batch)
        else:
            raise ValueError(f"class_labels must be one id or one per sample ({batch}), got shape {tuple(labels.shape)}.")
        return labels.long()

    def check_class_labels(
        self, class_labels: torch.Tensor | int | list[int] | None, batch: int, device: torch.device | str = "cpu"
    ) -> torch.LongTensor | None:
        """``class_labels`` as ``batch`` label ids (``None`` for an unconditional model); ``ValueError`` when invalid.

        Missing labels become the null label where the model has one. Ids must lie in ``0..num_classes-1`` or
        equal ``null_class_label``. Looks at the values (one host synchronisation on an accelerator): call it once
        per pipeline call or data set; :meth:`forward` only checks shapes.
        """
        labels = self._label_ids(class_labels, batch, device)
        if labels is None or class_labels is None:
            return labels
        num_classes, null_label = self.config.num_classes, self.config.null_class_label
        valid = (labels >= 0) & (labels < num_classes)
        if null_label is not None:
            valid |= labels == null_label
        if not bool(valid.all()):
            allowed = f"0..{num_classes - 1}" + ("" if null_label is None else f" or the null label {null_label}")
            raise ValueError(f"class_labels must be in {allowed}, got {labels[~valid].tolist()}.")
        return labels

    def forward(
        self,
        sample: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | int | list[int] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
        pooled_text_embeds: torch.Tensor | None = None,
    ) -> PreconditionedDenoiserOutput | tuple:
        """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)[:, :C]``.

        Args:
            sample: the noisy sample ``x``, ``(B, C, H, W)``.
            sigma: its noise level, a scalar or one value per sample; finite and > 0 (checked by
                :meth:`check_sigma`, which callers run once per pipeline call or data set, not here).
            class_labels: label ids for a class-conditional model (one, or one per sample); ``None`` uses the
                null label where the model has one. Their range is checked by :meth:`check_class_labels`, not here.
            encoder_hidden_states: the cross-attention context ``(B, L, context_width)`` of a
                ``UNet2DConditionModel`` or ``PixArtTransformer2DModel`` backbone (text embeddings).
            return_dict: return a :class:`PreconditionedDenoiserOutput` rather than a tuple.
            pooled_text_embeds: ``(B, pooled_text_width)``, the pooled text vector for a backbone that adds one to
                its time embedding (a ``UNet2DConditionModel`` with a projection class embedding); else ``None``.

        The coefficients and ``D`` are float32 whatever the backbone's dtype; the backbone gets ``c_in x`` in its
        own dtype and ``c_noise`` as a float32 tensor of shape ``(B,)``. Nothing here synchronises with the device.
        """
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a tensor of shape (B, {self.image_channels}, H, W), got {type(sample).__name__}.")
        if sample.ndim != 4 or sample.shape[1] != self.image_channels:
            raise ValueError(
                f"sample must have shape (B, {self.image_channels}, H, W) for this backbone, got {tuple(sample.shape)}."
            )
        if self.uses_cross_attention != (encoder_hidden_states is not None):
            need = "needs" if self.uses_cross_attention else "does not take"
            raise ValueError(f"This denoiser's {type(self.backbone).__name__} backbone {need} encoder_hidden_states.")
        batch = sample.shape[0]
        if encoder_hidden_states is not None and (
            encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch
            or encoder_hidden_states.shape[-1] != self.context_width
        ):
            raise ValueError(
                f"encoder_hidden_states must have shape ({batch}, L, {self.context_width}) for this denoiser's "
                f"{type(self.backbone).__name__} (batch {batch}, width {self.context_width}), got "
                f"{tuple(encoder_hidden_states.shape)}."
            )
        pooled_width = self.pooled_text_width
        if (pooled_width is None) != (pooled_text_embeds is None):
            need = "does not take" if pooled_width is None else f"needs (width {pooled_width})"
            raise ValueError(
                f"This denoiser's {type(self.backbone).__name__} backbone {need} pooled_text_embeds"
                + ("" if pooled_text_embeds is None else f"; got shape {tuple(pooled_text_embeds.shape)}") + "."
            )
        if pooled_text_embeds is not None and tuple(pooled_text_embeds.shape) != (batch, pooled_width):
            raise ValueError(
                f"pooled_text_embeds must have shape ({batch}, {pooled_width}) for this denoiser, got "
                f"{tuple(pooled_text_embeds.shape)}."
            )
        sigma = self._noise_levels(sigma, batch, sample.device)
        labels = self._label_ids(class_labels, batch, sample.device)
        if labels is not None and self.training and self.config.label_dropout > 0:
            labels = drop_class_labels(labels, self.config.label_dropout, self.config.null_class_label)

        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        c_skip, c_out, c_in = (c.reshape(batch, 1, 1, 1) for c in (c_skip, c_out, c_in))
        x = sample.to(torch.float32)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.to(self.backbone.dtype)
        if pooled_text_embeds is not None:
            pooled_text_embeds = pooled_text_embeds.to(self.backbone.dtype)
        output = call_backbone(
            self.backbone, (c_in * x).to(self.backbone.dtype), c_noise, labels, encoder_hidden_states, pooled_text_embeds
        ).to(torch.float32)
        channels = self.image_channels
        denoised = c_skip * x + c_out * output[:, :channels]
        variance_channels = output[:, channels:] if self.learned_variance else None
        if not return_dict:
            return (denoised, variance_channels)
        return PreconditionedDenoiserOutput(sample=denoised, variance_channels=variance_channels)


class EDMPrecond(PreconditionedDenoiser):
    """EDM preconditioning: ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd/sqrt(sigma^2+sd^2)``,
    ``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4`` with ``sd = sigma_data``.

    Args:
        backbone_class: ``"UNet2DModel"``, ``"UNet2DConditionModel"``, ``"DiTTransformer2DModel"`` or
            ``"PixArtTransformer2DModel"``.
        backbone_config: the backbone's config as a plain dict.
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).
        sigma_min, sigma_max: the range of noise levels the model supports (EDM: 0 and infinity).
        num_classes: number of classes (0: unconditional).
        null_class_label: label id of "no class" for classifier-free guidance, or None.
        label_dropout: probability of replacing a training label by the null label.
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        sigma_data: float = 0.5,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        check_real("sigma_data", sigma_data, minimum=0.0, exclusive_minimum=True)
        check_real("sigma_min", sigma_min, minimum=0.0)
        check_real("sigma_max", sigma_max, minimum=0.0, exclusive_minimum=True, allow_infinity=True)
        check_increasing_pair("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        return edm_preconditioning(sigma, self.config.sigma_data)


class VPPrecond(PreconditionedDenoiser):
    """VP (DDPM++) preconditioning: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2+1)``,
    ``c_noise = (M-1) t(sigma)`` with ``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1+sigma^2)) - beta_min) / beta_d``.

    Args:
        backbone_class, backbone_config, num_classes, null_class_label, label_dropout: see :class:`EDMPrecond`.
        beta_d, beta_min: the VP schedule ``sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)``.
        M: number of discrete training timesteps the noise label is scaled to.
        epsilon_t: smallest training time; ``sigma_min = sigma(epsilon_t)``, ``sigma_max = sigma(1)``.
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        check_real("beta_d", beta_d, minimum=0.0, exclusive_minimum=True)
        check_real("beta_min", beta_min, minimum=0.0, exclusive_minimum=True)
        # The noise label (M - 1) t(sigma) is a float32 tensor: a million timesteps is already far beyond use.
        check_integer("M", M, minimum=2, maximum=MAX_DISCRETE_LEVELS)
        check_real("epsilon_t", epsilon_t, minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)

    @property
    def sigma_min(self) -> float:
        return float(vp_sigma(self.config.epsilon_t, self.config.beta_d, self.config.beta_min))

    @property
    def sigma_max(self) -> float:
        return float(vp_sigma(1.0, self.config.beta_d, self.config.beta_min))

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        return vp_preconditioning(sigma, self.config.beta_d, self.config.beta_min, self.config.M)


class VEPrecond(PreconditionedDenoiser):
    """VE (NCSN++) preconditioning: ``c_skip = 1``, ``c_out = sigma``, ``c_in = 1``, ``c_noise = log(sigma/2)``.

    Args:
        backbone_class, backbone_config, num_classes, null_class_label, label_dropout: see :class:`EDMPrecond`.
        sigma_min, sigma_max: the noise range of VE training (0.02 to 100).
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        check_real("sigma_min", sigma_min, minimum=0.0, exclusive_minimum=True)
        check_real("sigma_max", sigma_max, minimum=0.0, exclusive_minimum=True)
        check_increasing_pair("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        return ve_preconditioning(sigma)


class IDDPMPrecond(PreconditionedDenoiser):
    """Improved-DDPM (ADM) preconditioning: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2+1)``,
    ``c_noise = M-1-argmin_j abs(u_j - sigma)`` over the cosine table ``u_0 > ... > u_M = 0``.

    The model only knows the M table levels ``u_0..u_{M-1}``: :meth:`round_sigma` maps noise levels to them
    (pass it to ``EDMHeunScheduler.set_timesteps(round_sigma=...)``, as EDM's sampler rounds its steps).

    Args:
        backbone_class, backbone_config, num_classes, null_class_label, label_dropout: see :class:`EDMPrecond`.
        C_1: the clamp of ``alpha_bar(j-1)/alpha_bar(j)`` in the table recursion (0.001).
        C_2: the cosine schedule's offset (0.008).
        M: number of table levels (1000).
    """

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: dict[str, Any],
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        num_classes: int = 0,
        null_class_label: int | None = None,
        label_dropout: float = 0.0,
    ):
        # The table is M + 1 float64 levels built by a Python loop: a million levels is already far beyond use.
        check_integer("M", M, minimum=2, maximum=MAX_DISCRETE_LEVELS)
        check_real("C_1", C_1, minimum=0.0, maximum=1.0, exclusive_minimum=True)
        check_real("C_2", C_2, minimum=0.0)
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        # The levels are fixed by the config: kept as float64 NumPy for the host-side range, and as a buffer so they
        # move with the model and are never copied to the device per call. The buffer is not saved (the config
        # defines it) and `_apply` below rebuilds it in float64 after every move or cast.
        self._table_values = iddpm_sigma_table(M, C_1, C_2)
        self.register_buffer("sigma_table", self._table_tensor(torch.device("cpu")), persistent=False)
        # DistributedDataParallel would broadcast every buffer at every forward; this one is the same on every rank.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["sigma_table"])

    def _table_tensor(self, device: torch.device) -> torch.Tensor:
        # float64 where the device has it (MPS has none): dtype casts of the model cannot coarsen the levels.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.from_numpy(self._table_values).to(device=device, dtype=dtype)

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        # Rebuilt from the config's values rather than converted: `.half()` would round them, and a move from the
        # meta device (`to_empty`, empty-weight loading) would leave them uninitialised.
        self.sigma_table = self._table_tensor(self.sigma_table.device)
        return module

    @property
    def sigma_min(self) -> float:
        """``u_{M-1}``, the smallest positive table level (a host value: reading it never waits for the device)."""
        return float(self._table_values[self.config.M - 1])

    @property
    def sigma_max(self) -> float:
        """``u_0``, the largest table level."""
        return float(self._table_values[0])

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The table level ``u_j`` nearest to each ``sigma`` (``argmin_j abs(u_j - sigma)``), in ``sigma``'s dtype."""
        sigma = torch.as_tensor(sigma)
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        if sigma.device.type == "cpu":
            # Host levels (a scheduler's set_timesteps): the host copy, since reading the buffer would wait for the device.
            table = torch.from_numpy(self._table_values)
        else:
            table = self.sigma_table.to(sigma.device)  # no copy when sigma lives on the model's device
        return table[nearest_table_index(sigma, table)].to(dtype)

    def preconditioning(self, sigma: torch.Tensor) -> Preconditioning:
        return iddpm_preconditioning(sigma, self.sigma_table)
