"""EDMPipeline as one file, for diffusers' ``custom_pipeline=`` mechanism: needs diffusers, not diffusers-edm.

This is the standalone twin of ``diffusers_edm.EDMPipeline`` and of the denoisers ``EDMPrecond``, ``VPPrecond``,
``VEPrecond`` and ``IDDPMPrecond`` (same config format, same weights layout, same formulas: EDM Table 1,
Karras et al. 2022). ``tests/test_pipeline_edm_single_file.py`` checks that both give the same numbers.

Load a pipeline saved by this file (self-contained: it copies this file into the folder):

    pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    # or, naming the file explicitly:
    pipe = DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/pipeline_edm.py", trust_remote_code=True)

Limits: without diffusers-edm the scheduler must be diffusers' ``EDMEulerScheduler`` or
``EDMDPMSolverMultistepScheduler`` (EDM's churned Heun sampler lives in diffusers-edm). A folder saved by
diffusers-edm names ``diffusers_edm`` modules in ``model_index.json``, which diffusers does not import on its own;
load its denoiser with this file's class (``EDMPrecond.from_pretrained(path, subfolder="denoiser")``) instead.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ConfigMixin,
    DiffusionPipeline,
    DiTTransformer2DModel,
    ModelMixin,
    SchedulerMixin,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.embeddings import LabelEmbedding
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BACKBONES = {cls.__name__: cls for cls in (UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel)}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ------------------------------------------------------------------------------------------------ noise levels
def iddpm_sigma_table(M: int, C_1: float, C_2: float) -> np.ndarray:
    """``u_0 > ... > u_M = 0``: ``u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1)/abar(j), C_1) - 1)``, ``abar(j) = sin(pi/2 j/(M (C_2+1)))^2``."""
    u = np.zeros(M + 1, dtype=np.float64)
    for j in range(M, 0, -1):
        ratio = math.sin(0.5 * math.pi * (j - 1) / M / (C_2 + 1)) ** 2 / math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(ratio, C_1) - 1)
    return u


def nearest_table_index(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(sigma.dtype, table.dtype)
    return (sigma.to(dtype).unsqueeze(-1) - table.to(sigma.device, dtype)).abs().argmin(dim=-1)


# ------------------------------------------------------------------------------------------------ denoisers
@dataclass
class PreconditionedDenoiserOutput(BaseOutput):
    """``sample``: D(x; sigma) in float32; ``variance_channels``: the raw last C channels of a 2C-channel backbone."""

    sample: torch.Tensor
    variance_channels: torch.Tensor | None = None


class PreconditionedDenoiser(ModelMixin, ConfigMixin):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)[:, :C]`` over a UNet2DModel, UNet2DConditionModel or DiT backbone."""

    def __init__(self, backbone_class, backbone_config, num_classes, null_class_label, label_dropout):
        super().__init__()
        if backbone_class not in BACKBONES:
            raise ValueError(f"Unsupported backbone_class {backbone_class!r}; expected one of {sorted(BACKBONES)}.")
        if null_class_label is not None and null_class_label < num_classes:
            raise ValueError(f"null_class_label must be >= num_classes={num_classes}, got {null_class_label}.")
        if label_dropout > 0 and null_class_label is None:
            raise ValueError("label_dropout > 0 needs a null_class_label.")
        self._attach_backbone(BACKBONES[backbone_class].from_config(backbone_config))

    def _attach_backbone(self, backbone: torch.nn.Module) -> None:
        channels = backbone.config.in_channels
        out = backbone.out_channels if isinstance(backbone, DiTTransformer2DModel) else backbone.config.out_channels
        if out not in (channels, 2 * channels):
            raise ValueError(f"The backbone maps {channels} to {out} channels; expected {channels} or {2 * channels}.")
        if isinstance(backbone, DiTTransformer2DModel):
            rows = backbone.config.num_embeds_ada_norm + 1
        else:
            rows = backbone.config.num_class_embeds or 0
        null_label = self.config.null_class_label
        if (rows > 0) != (self.config.num_classes > 0) or self.config.num_classes > rows or (null_label or 0) >= max(rows, 1):
            raise ValueError(f"num_classes/null_class_label do not fit the backbone's {rows}-row class table.")
        for module in backbone.modules():  # DiT drops labels per block in train mode; the wrapper does it once
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0
        self.backbone = backbone
        self.image_channels, self.learned_variance = channels, out == 2 * channels
        size = backbone.config.sample_size
        self.sample_size = (size, size) if isinstance(size, int) else tuple(size)

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module, **config: Any) -> "PreconditionedDenoiser":
        """Wrap an existing backbone instance (used as is)."""
        if BACKBONES.get(type(backbone).__name__) is not type(backbone):
            raise TypeError(f"Unsupported backbone {type(backbone).__name__}; expected one of {sorted(BACKBONES)}.")
        plain = json.loads(json.dumps({k: v for k, v in backbone.config.items() if not k.startswith("_")}))
        wrapper = cls(backbone_class=type(backbone).__name__, backbone_config=plain, **config)
        wrapper._attach_backbone(backbone)
        return wrapper

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def _label_ids(self, class_labels, batch: int, device) -> torch.LongTensor | None:
        """Label ids of one forward: presence, dtype and shape only (no look at the values, no host synchronisation)."""
        num_classes, null_label = self.config.num_classes, self.config.null_class_label
        if num_classes == 0:
            if class_labels is not None:
                raise ValueError("This denoiser is unconditional (num_classes=0) but got class_labels.")
            return None
        if class_labels is None:
            if null_label is None:
                raise ValueError(f"This denoiser is class-conditional (num_classes={num_classes}): pass class_labels.")
            return torch.full((batch,), null_label, dtype=torch.long, device=device)
        try:
            labels = torch.as_tensor(class_labels, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise ValueError(f"class_labels must be integer label ids (int64), got {class_labels!r}.") from error
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"class_labels must be integer label ids, got dtype {labels.dtype}.")
        if labels.numel() not in (1, batch):
            raise ValueError(f"class_labels must be one id or one per sample ({batch}), got shape {tuple(labels.shape)}.")
        return labels.reshape(-1).expand(batch).long()

    def check_class_labels(self, class_labels, batch: int, device="cpu") -> torch.LongTensor | None:
        """Validated label ids (ids in 0..num_classes-1 or the null label); one host synchronisation: once per call."""
        labels = self._label_ids(class_labels, batch, device)
        if labels is None or class_labels is None:
            return labels
        num_classes, null_label = self.config.num_classes, self.config.null_class_label
        valid = ((labels >= 0) & (labels < num_classes)) | (labels == (-1 if null_label is None else null_label))
        if not bool(valid.all()):
            raise ValueError(f"class_labels must be in 0..{num_classes - 1} or the null label {null_label}, got {labels[~valid].tolist()}.")
        return labels

    def forward(self, sample, sigma, class_labels=None, encoder_hidden_states=None, return_dict=True):
        """Coefficients and D in float32; the backbone gets ``c_in x`` in its dtype and ``c_noise`` as a (B,) tensor.

        Values are not checked here (that would wait for the device at every call): the pipeline checks the labels
        once per call, and its schedule keeps sigma finite, > 0 and within ``[sigma_min, sigma_max]``."""
        if sample.ndim != 4 or sample.shape[1] != self.image_channels:
            raise ValueError(f"sample must have shape (B, {self.image_channels}, H, W), got {tuple(sample.shape)}.")
        batch = sample.shape[0]
        if isinstance(sigma, (int, float)):
            sigma = torch.full((batch,), float(sigma), device=sample.device)  # no host-to-device copy
        sigma = torch.as_tensor(sigma, device=sample.device)
        sigma = (sigma if sigma.is_floating_point() else sigma.float()).reshape(-1).expand(batch)
        labels = self._label_ids(class_labels, batch, sample.device)
        if labels is not None and self.training and self.config.label_dropout > 0:
            dropped = torch.rand(batch, device=sample.device) < self.config.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.config.null_class_label), labels)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        c_skip, c_out, c_in = (c.reshape(batch, 1, 1, 1) for c in (c_skip, c_out, c_in))
        x = sample.to(torch.float32)
        model_input = (c_in * x).to(self.backbone.dtype)
        if isinstance(self.backbone, DiTTransformer2DModel):
            output = self.backbone(model_input, timestep=c_noise, class_labels=labels, return_dict=False)[0]
        elif isinstance(self.backbone, UNet2DConditionModel):
            output = self.backbone(model_input, c_noise, encoder_hidden_states, class_labels=labels, return_dict=False)[0]
        else:
            output = self.backbone(model_input, c_noise, class_labels=labels, return_dict=False)[0]
        output = output.to(torch.float32)
        denoised = c_skip * x + c_out * output[:, : self.image_channels]
        variance = output[:, self.image_channels :] if self.learned_variance else None
        if not return_dict:
            return (denoised, variance)
        return PreconditionedDenoiserOutput(sample=denoised, variance_channels=variance)


class EDMPrecond(PreconditionedDenoiser):
    """EDM: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = log(s)/4."""

    @register_to_config
    def __init__(self, backbone_class, backbone_config, sigma_data=0.5, sigma_min=0.0, sigma_max=float("inf"),
                 num_classes=0, null_class_label=None, label_dropout=0.0):
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def preconditioning(self, sigma):
        sigma, sd = sigma.float(), self.config.sigma_data
        variance = sigma**2 + sd**2
        return sd**2 / variance, sigma * sd / variance.sqrt(), variance.rsqrt(), sigma.log() / 4


class VPPrecond(PreconditionedDenoiser):
    """VP: c_skip = 1, c_out = -s, c_in = 1/sqrt(s^2+1), c_noise = (M-1) t(s), t(s) = (sqrt(b_min^2 + 2 b_d log(1+s^2)) - b_min)/b_d."""

    @register_to_config
    def __init__(self, backbone_class, backbone_config, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,
                 num_classes=0, null_class_label=None, label_dropout=0.0):
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        sigma_of_t = lambda t: math.sqrt(math.expm1(0.5 * beta_d * t**2 + beta_min * t))  # noqa: E731
        self.sigma_min, self.sigma_max = sigma_of_t(epsilon_t), sigma_of_t(1.0)

    def preconditioning(self, sigma):
        sigma, beta_d, beta_min = sigma.float(), self.config.beta_d, self.config.beta_min
        log_term = torch.log1p(sigma**2)  # t(s) in the cancellation-free form 2L / (sqrt(b_min^2 + 2 b_d L) + b_min)
        t = 2 * log_term / (torch.sqrt(beta_min**2 + 2 * beta_d * log_term) + beta_min)
        return torch.ones_like(sigma), -sigma, (sigma**2 + 1).rsqrt(), (self.config.M - 1) * t


class VEPrecond(PreconditionedDenoiser):
    """VE: c_skip = 1, c_out = s, c_in = 1, c_noise = log(s/2)."""

    @register_to_config
    def __init__(self, backbone_class, backbone_config, sigma_min=0.02, sigma_max=100.0,
                 num_classes=0, null_class_label=None, label_dropout=0.0):
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def preconditioning(self, sigma):
        sigma = sigma.float()
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (sigma / 2).log()


class IDDPMPrecond(PreconditionedDenoiser):
    """iDDPM: c_skip = 1, c_out = -s, c_in = 1/sqrt(s^2+1), c_noise = M-1-argmin_j |u_j - s| over the cosine table."""

    @register_to_config
    def __init__(self, backbone_class, backbone_config, C_1=0.001, C_2=0.008, M=1000,
                 num_classes=0, null_class_label=None, label_dropout=0.0):
        super().__init__(backbone_class, backbone_config, num_classes, null_class_label, label_dropout)
        self._table_values = iddpm_sigma_table(M, C_1, C_2)
        self.sigma_min, self.sigma_max = float(self._table_values[M - 1]), float(self._table_values[0])
        # A non-persistent buffer (moves with the model, never copied per call), rebuilt in float64 by `_apply`.
        self.register_buffer("sigma_table", self._table_tensor(torch.device("cpu")), persistent=False)

    def _table_tensor(self, device):
        return torch.from_numpy(self._table_values).to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self.sigma_table = self._table_tensor(self.sigma_table.device)
        return module

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        table = self.sigma_table.to(sigma.device)
        return table[nearest_table_index(sigma, table)].to(dtype)

    def preconditioning(self, sigma):
        index = nearest_table_index(sigma, self.sigma_table)
        sigma = sigma.float()
        return torch.ones_like(sigma), -sigma, (sigma**2 + 1).rsqrt(), (self.config.M - 1 - index).float()


# ------------------------------------------------------------------------------------------------ pipeline
class EDMPipeline(DiffusionPipeline):
    """Sampling a preconditioned denoiser; see ``diffusers_edm.EDMPipeline`` (same arguments and behaviour).

    With diffusers' EDM schedulers (which apply their own c_skip/c_out to a raw network output F) the pipeline
    passes ``F = (D - c_skip x) / c_out``, inverting their affine ``precondition_outputs`` exactly.
    """

    model_cpu_offload_seq = "denoiser->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    # `denoiser` is annotated ModelMixin: a saved folder loads this file twice (pipeline and denoiser/), and the two
    # copies' classes differ, which would make diffusers warn about the component's type.
    def __init__(self, denoiser: ModelMixin, scheduler: SchedulerMixin, vae: AutoencoderKL | None = None,
                 latent_space: bool | None = None):
        super().__init__()
        latent_space = vae is not None if latent_space is None else bool(latent_space)
        if vae is not None and not latent_space:
            raise ValueError("A vae was given but latent_space=False.")
        self.register_modules(denoiser=denoiser, scheduler=scheduler, vae=vae)
        self.register_to_config(latent_space=latent_space)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def _raw_output_scheduler(self, scheduler) -> bool:
        return callable(getattr(scheduler, "precondition_outputs", None))

    def _set_timesteps(self, num_inference_steps: int, device):
        """EDM's sampler range ``[max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)]``, then
        ``net.round_sigma``; diffusers' EDM schedulers read their range from the config, so a copy samples it."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
        scheduler, denoiser = self.scheduler, self.denoiser
        sigma_min = max(float(scheduler.config.sigma_min), denoiser.sigma_min)
        sigma_max = min(float(scheduler.config.sigma_max), denoiser.sigma_max)
        if not sigma_min < sigma_max:
            raise ValueError(
                f"The scheduler's noise range [{scheduler.config.sigma_min}, {scheduler.config.sigma_max}] and the "
                f"denoiser's [{denoiser.sigma_min}, {denoiser.sigma_max}] do not overlap."
            )
        if "round_sigma" in inspect.signature(scheduler.set_timesteps).parameters:  # diffusers-edm's EDMHeunScheduler
            lowest, highest = denoiser.sigma_min, denoiser.sigma_max
            scheduler.set_timesteps(num_inference_steps, device=device, sigma_min=sigma_min, sigma_max=sigma_max,
                                    round_sigma=lambda sigma: denoiser.round_sigma(sigma.clamp(lowest, highest)))
            return scheduler
        if (sigma_min, sigma_max) != (scheduler.config.sigma_min, scheduler.config.sigma_max):
            scheduler = type(scheduler).from_config(scheduler.config, sigma_min=sigma_min, sigma_max=sigma_max)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``vae.decode`` of ``z * std / scaling_factor + mean`` (config with latents_mean / latents_std), else
        ``z / scaling_factor + shift_factor`` (the same map as diffusers-edm's LatentCodec)."""
        config = self.vae.config
        scale = float(config.scaling_factor) if getattr(config, "scaling_factor", None) is not None else 1.0
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=latents.device).reshape(1, -1, 1, 1) for v in (mean, std))
            latents = latents * std / scale + mean
        else:
            latents = latents / scale + float(getattr(config, "shift_factor", None) or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].to(torch.float32)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, guidance_scale: float = 1.0, num_inference_steps: int = 18,
                 generator=None, latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs=("latents",),
                 encoder_hidden_states: torch.Tensor | None = None):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}.")
        if self.config.latent_space and self.vae is None and output_type != "latent":
            raise ValueError("This pipeline samples latents but has no vae; load its vae or use output_type='latent'.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number (1.0: no guidance), got {guidance_scale!r}.")
        denoiser, device = self.denoiser, self._execution_device
        null_label = denoiser.config.null_class_label
        if guidance_scale != 1.0 and null_label is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs a denoiser with a null_class_label; use 1.0.")
        if class_labels is not None and not isinstance(class_labels, int):
            try:
                count = torch.as_tensor(class_labels).numel()
            except (TypeError, ValueError, RuntimeError, OverflowError) as error:
                raise ValueError(f"class_labels must be integer label ids (int64), got {class_labels!r}.") from error
            if count == 0:
                raise ValueError(f"class_labels must hold at least one label id, got {class_labels!r}.")
            if batch_size == 1:
                batch_size = count
            elif count not in (1, batch_size):
                raise ValueError(f"Got {count} class_labels for batch_size={batch_size}; give one label or one per sample.")
        labels = denoiser.check_class_labels(class_labels, batch_size, device)
        guided = guidance_scale != 1.0
        if guided:
            if bool((labels == null_label).any()):
                raise ValueError("Classifier-free guidance needs a real class label for every sample, not the null label.")
            labels = torch.cat([labels, torch.full_like(labels, null_label)])
            if encoder_hidden_states is not None:
                encoder_hidden_states = torch.cat([encoder_hidden_states] * 2)

        scheduler = self._set_timesteps(num_inference_steps, device)
        scheduler.set_begin_index(0)  # as diffusers' pipelines do: no timestep look-up (a host sync) in the loop
        raw = self._raw_output_scheduler(scheduler)
        if raw:
            call_sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
            one, zero = torch.ones((), device=device), torch.zeros((), device=device)
            c_skips, c_outs = scheduler.precondition_outputs(one, zero, call_sigmas), scheduler.precondition_outputs(zero, one, call_sigmas)
        shape = (batch_size, denoiser.image_channels, *denoiser.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        # EDM starts at sigma_0 n: sigmas[0] for diffusers' EDM schedulers (their init_noise_sigma is sqrt(sigma_max^2+1)).
        initial_sigma = float(scheduler.sigmas[0]) if raw else float(scheduler.init_noise_sigma)
        latents = latents.to(device=device, dtype=torch.float32) * initial_sigma

        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            scheduler.scale_model_input(latents, t)  # the denoiser applies its own c_in; this advances the scheduler
            sigma = call_sigmas[scheduler.step_index] if raw else t
            denoised = denoiser(torch.cat([latents] * 2) if guided else latents, sigma, labels, encoder_hidden_states).sample
            if guided:
                conditional, unconditional = denoised.chunk(2)
                denoised = unconditional + guidance_scale * (conditional - unconditional)
            if raw:
                model_output = (denoised - c_skips[scheduler.step_index] * latents) / c_outs[scheduler.step_index]
            elif scheduler.config.prediction_type == "epsilon":
                model_output = (latents - denoised) / sigma.to(latents.dtype)
            else:
                model_output = denoised
            latents = scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, tensors).pop("latents", latents)

        image = latents
        if output_type != "latent":
            if self.vae is not None:
                image = self._decode(latents)
            image = self.image_processor.postprocess(image.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save a self-contained folder: this file goes to the root and to ``denoiser/``, and ``model_index.json``
        names it, so ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` needs diffusers only."""
        if kwargs.get("push_to_hub"):
            raise ValueError("Save to a folder, then upload it with huggingface_hub's upload_folder.")
        super().save_pretrained(save_directory, **kwargs)
        source, module = Path(__file__), Path(__file__).stem
        shutil.copyfile(source, Path(save_directory) / source.name)
        shutil.copyfile(source, Path(save_directory) / "denoiser" / source.name)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [module, type(self).__name__]
        index["denoiser"] = [module, type(self.denoiser).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
