"""``LearnedVarianceDDPMScheduler``: ancestral DDPM sampling with Improved DDPM's learned variances and respacing."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..gaussian_diffusion import (
    DiscreteGaussianDiffusion,
    check_prediction_type,
    check_variance_type,
    space_timesteps,
)
from ..noise_schedules import betas_for_schedule
from ..value_checks import check_integer, check_real
from .compatibles import PackageCompatiblesMixin
from .planned_schedule import check_device, check_float_tensor, check_generator, check_timestep_type

# Improved DDPM's linear schedule: 1e-4 .. 0.02 for T = 1000, both ends scaled by 1000 / T.
IMPROVED_DDPM_LINEAR_BETA_START = 0.0001
IMPROVED_DDPM_LINEAR_BETA_END = 0.02


class LearnedVarianceDDPMScheduler(PackageCompatiblesMixin, SchedulerMixin, ConfigMixin):
    """DDPM ancestral sampler for models with a learned variance (Nichol & Dhariwal 2021), any respacing.

    At each kept timestep ``t`` (index ``i`` of the respaced diffusion) the model output (``2C`` channels: eps or
    x_0, then ``v``) gives ``x_0`` (``sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps``, clamped to
    ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample``), the posterior mean
    ``coef1 x_0 + coef2 x_t`` and the log variance (``learned_range``:
    ``frac log(beta) + (1 - frac) log(beta_tilde)``, ``frac = (v + 1) / 2``); then
    ``x_{t-1} = mean + exp(0.5 log var) z``, with no noise at the last step. All of it is computed from the
    respaced betas (:mod:`diffusers_edm.gaussian_diffusion`), while the network is called with the original ``t``
    (``scheduler.timesteps`` holds them), so a model trained with 4000 steps samples in 50.

    Differences from diffusers' ``DDPMScheduler`` with ``variance_type="learned_range"``: the posterior log
    variance is clipped at index 0 (not clamped at 1e-20), no noise is added at the last respaced step whatever
    the spacing, and respacing follows Improved DDPM (``"ddimK"``, section counts ``"10,15,20"``).

    Works in diffusers' ``DDPMPipeline`` and in
    :class:`~diffusers_edm.pipelines.pipeline_learned_variance.LearnedVariancePipeline`.

    Args:
        num_train_timesteps: T, the number of training timesteps.
        beta_start, beta_end: ends of the ``"linear"`` / ``"scaled_linear"`` schedules. ``None`` (default) gives
            Improved DDPM's linear schedule, ``1e-4 * 1000/T`` .. ``0.02 * 1000/T``; given values are used as they
            are, as in diffusers (so a ``DDPMScheduler`` config keeps its meaning).
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (cosine, s = 0.008, beta capped
            at 0.999).
        trained_betas: explicit betas; override ``beta_schedule``.
        variance_type: ``"learned_range"`` (default), ``"learned"`` (v is the log variance), ``"fixed_small"``
            (posterior variance) or ``"fixed_large"`` (beta). Fixed types accept ``C``- or ``2C``-channel outputs.
        prediction_type: ``"epsilon"`` or ``"sample"`` (the model predicts x_0).
        clip_sample: clamp the x_0 prediction to ``[-clip_sample_range, clip_sample_range]``.
        clip_sample_range: the clamp range (1.0 for images in [-1, 1]).
    """

    _compatibles = ["DDPMScheduler"]  # samples a learned variance; with this, compatibles lists the class itself too
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "learned_range",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ):
        check_variance_type(variance_type)
        check_prediction_type(prediction_type)
        check_real("clip_sample_range", clip_sample_range, minimum=0.0, exclusive_minimum=True)
        check_integer("num_train_timesteps", num_train_timesteps, minimum=1)
        scale = 1000.0 / num_train_timesteps
        if beta_end is None:
            beta_end = IMPROVED_DDPM_LINEAR_BETA_END * scale
            if trained_betas is None and beta_schedule in ("linear", "scaled_linear") and beta_end >= 1.0:
                raise ValueError(
                    f"Improved DDPM's linear schedule ends at 0.02 * 1000 / T = {beta_end:g} >= 1 for num_train_timesteps="
                    f"{num_train_timesteps}; use num_train_timesteps > 20, pass beta_start/beta_end, or beta_schedule='squaredcos_cap_v2'."
                )
        if beta_start is None:
            beta_start = IMPROVED_DDPM_LINEAR_BETA_START * scale
        betas = betas_for_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        if len(betas) != num_train_timesteps:
            raise ValueError(f"trained_betas has {len(betas)} entries but num_train_timesteps is {num_train_timesteps}.")
        self.train_diffusion = DiscreteGaussianDiffusion(betas)
        self.betas = torch.from_numpy(betas)
        self.alphas_cumprod = torch.from_numpy(self.train_diffusion.alphas_cumprod)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._use_timesteps(list(range(num_train_timesteps)))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _use_timesteps(self, kept: list[int], device: str | torch.device | None = None) -> None:
        self.diffusion = self.train_diffusion.respace(kept)
        self.timesteps = torch.from_numpy(self.diffusion.timesteps[::-1].copy()).to(device)

    def set_timesteps(
        self,
        num_inference_steps: int | str | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the timesteps to sample with and recompute the diffusion tables for them.

        Args:
            num_inference_steps: an int K (K timesteps from 0 to T-1 at the rounded running sum of the stride
                (T-1)/(K-1), as Improved DDPM's ``space_timesteps``), or a spacing string: ``"ddimK"`` (integer
                stride) or section counts such as ``"10,15,20"``.
            device: where ``self.timesteps`` lives.
            timesteps: explicit training timesteps instead (any order; sorted and de-duplicated).
        """
        device = check_device(device)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of num_inference_steps (an int or spacing string) and timesteps.")
        num_train_timesteps = self.config.num_train_timesteps
        if timesteps is not None:
            kept = sorted({int(t) for t in timesteps})
            if len(kept) == 0 or kept[0] < 0 or kept[-1] >= num_train_timesteps:
                raise ValueError(
                    f"timesteps must be a non-empty set of integers in 0 .. {num_train_timesteps - 1}, got {list(timesteps)}."
                )
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer, str)):
                raise ValueError(
                    f"num_inference_steps must be an int or a spacing string ('ddim25', '10,15,20'), got {num_inference_steps!r}."
                )
            if isinstance(num_inference_steps, (int, np.integer)) and not 1 <= num_inference_steps <= num_train_timesteps:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} is not allowed: it must lie in 1 .. num_train_timesteps={num_train_timesteps}."
                )
            kept = space_timesteps(num_train_timesteps, num_inference_steps)
        self._use_timesteps(kept, device)
        self.num_inference_steps = len(kept)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: DDPM models take ``x_t`` as it is."""
        check_float_tensor("sample", sample)
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step ``x_t -> x_{t-1}`` (``x_{t-1} = mean + exp(0.5 log var) z``; no noise at the last step).

        Args:
            model_output: ``2C`` channels (prediction, then ``v``) for a ``C``-channel ``sample``; ``C`` channels only
                with a fixed variance type.
            timestep: the training timestep the model was called with, one of ``self.timesteps``: a Python int
                (checked on the host, ``ValueError`` if it is not one of them), or a tensor, a scalar or one per
                batch element, as a loop over ``self.timesteps`` gives it. A tensor is looked up on its device
                without a check, so that a step never waits for the device (check other input once with
                ``scheduler.diffusion.index_of``).
            sample: ``x_t``.
            generator: for the noise ``z`` (diffusers' ``randn_tensor``).
            return_dict: return a ``DDPMSchedulerOutput`` rather than a tuple.

        Returns:
            ``prev_sample`` (``x_{t-1}``) and ``pred_original_sample`` (the x_0 prediction).
        """
        check_float_tensor("model_output", model_output)
        check_float_tensor("sample", sample)
        check_generator(generator, sample.shape[0])
        check_timestep_type("timestep", timestep)
        if isinstance(timestep, torch.Tensor):
            index: torch.Tensor | int = self.diffusion.device_index(timestep.to(sample.device))
        else:
            if not (math.isfinite(timestep) and int(timestep) == timestep):
                raise ValueError(f"timestep must be one of the schedule's integer timesteps, got {timestep!r}.")
            index = self.diffusion.host_index(timestep)
        # Half-precision inputs are stepped in float32: the coefficients span several orders of magnitude.
        compute_dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x_t = sample.to(compute_dtype)
        reverse = self.diffusion.p_mean_variance(
            model_output.to(compute_dtype),
            x_t,
            index,
            self.config.variance_type,
            self.config.prediction_type,
            self.config.clip_sample_range if self.config.clip_sample else None,
        )
        prev_sample = reverse.mean
        if isinstance(index, torch.Tensor) or index != 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=compute_dtype)
            noise_scale = torch.exp(0.5 * reverse.log_variance)
            if isinstance(index, torch.Tensor):
                # No noise where the index is 0, decided on the device (the noise is drawn in any case).
                is_not_last = (index != 0).to(compute_dtype)
                if is_not_last.ndim == 1:
                    is_not_last = is_not_last.reshape(-1, *([1] * (sample.ndim - 1)))
                noise_scale = noise_scale * is_not_last
            prev_sample = prev_sample + noise_scale * noise
        prev_sample = prev_sample.to(sample.dtype)
        pred_original_sample = reverse.pred_original_sample.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`` on the training table (t in 0 .. T-1).

        Checks the timesteps (``ValueError`` for one outside 0 .. T-1), which reads them on the host; a training
        loop that draws them itself calls ``train_diffusion.q_sample(x_0, train_diffusion.device_index(t), noise)``.
        """
        check_float_tensor("original_samples", original_samples)
        check_float_tensor("noise", noise)
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} differs from original_samples shape {tuple(original_samples.shape)}."
            )
        check_timestep_type("timesteps", timesteps)
        values = torch.as_tensor(timesteps)
        if values.numel() not in (1, original_samples.shape[0]):
            raise ValueError(
                f"timesteps must hold one training timestep or one per sample ({original_samples.shape[0]}), "
                f"got {values.numel()}."
            )
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            raise ValueError(f"timesteps must be integers in 0 .. {self.config.num_train_timesteps - 1}, got {values.tolist()}.")
        index = self.train_diffusion.index_of(values)
        return self.train_diffusion.q_sample(original_samples, index, noise)
