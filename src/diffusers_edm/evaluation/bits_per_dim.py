"""Bits per dimension of a learned-variance diffusion model on a set of images (Improved DDPM's likelihood metric)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..gaussian_diffusion import space_timesteps
from ..losses.vlb import prior_bits, vlb_term_bits
from ..schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler


@dataclass
class BitsPerDimOutput:
    """``bits_per_dim``: the mean over images; ``per_image`` (N,) = ``prior`` (N,) + ``vlb_terms.sum(1)`` (N, K, index order)."""

    bits_per_dim: float
    per_image: torch.Tensor
    prior: torch.Tensor
    vlb_terms: torch.Tensor


def _output_tensor(output: Any) -> torch.Tensor:
    # diffusers models return a BaseOutput with `.sample` (or a tuple with return_dict=False); plain callables a tensor.
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


@torch.no_grad()
def bits_per_dim(
    model: Callable[..., Any],
    images: torch.Tensor,
    scheduler: LearnedVarianceDDPMScheduler,
    batch_size: int = 64,
    respacing: int | str | None = None,
    clip_denoised: bool = True,
    class_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = True,
) -> BitsPerDimOutput:
    """The variational bound ``L_prior + sum_t L_t`` in bits per dimension of each image, and its mean.

    For every batch and every timestep t of the (optionally respaced) diffusion, from the last to the first,
    ``x_t = q_sample(x_0, t, noise)`` is fed to ``model(x_t, t_batch[, class_labels=...])`` and
    :func:`~diffusers_edm.losses.vlb.vlb_term_bits` gives ``L_t`` (the decoder NLL at the first step);
    :func:`~diffusers_edm.losses.vlb.prior_bits` gives ``KL(q(x_T | x_0) || N(0, I))``. Terms are per-dimension
    averages, so their sum is the bound in bits/dim. A respaced diffusion still gives a valid (looser) bound.

    Args:
        model: a diffusers model (``UNet2DModel``, ``DiTTransformer2DModel``) or callable ``(x_t, t, **kw)`` returning
            the ``2C``-channel output (a ``.sample`` attribute, a tuple or a tensor).
        images: ``(N, C, H, W)`` data in [-1, 1] (8-bit values scaled, for the discretized decoder).
        scheduler: gives the training betas, ``variance_type`` and ``prediction_type``.
        batch_size: images per model call.
        respacing: None for all T timesteps, else an int or spacing string as in ``scheduler.set_timesteps``.
        clip_denoised: clamp the x_0 prediction to [-1, 1].
        class_labels: ``(N,)`` labels passed to the model as ``class_labels`` (class-conditional models).
        generator: for the noise of ``q_sample``.
        show_progress: show a tqdm bar over batches x timesteps.
    """
    if not torch.is_tensor(images) or images.ndim < 2 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor of shape (N, C, ...), got {type(images).__name__}.")
    low, high = float(images.min()), float(images.max())
    if low < -1.0 or high > 1.0:
        raise ValueError(f"images must lie in [-1, 1] (8-bit data scaled by x / 127.5 - 1); got values in [{low:.4g}, {high:.4g}].")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if class_labels is not None and len(class_labels) != len(images):
        raise ValueError(f"class_labels must hold one label per image: got {len(class_labels)} for {len(images)} images.")

    diffusion = scheduler.train_diffusion
    if respacing is not None:
        diffusion = diffusion.respace(space_timesteps(scheduler.config.num_train_timesteps, respacing))
    parameter = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    device = parameter.device if parameter is not None else images.device
    model_dtype = parameter.dtype if parameter is not None else images.dtype

    num_batches = math.ceil(len(images) / batch_size)
    progress = tqdm(total=num_batches * diffusion.num_timesteps, desc="bits/dim", disable=not show_progress)
    priors, terms = [], []
    for start in range(0, len(images), batch_size):
        x_start = images[start : start + batch_size].to(device)
        model_kwargs = {} if class_labels is None else {"class_labels": class_labels[start : start + batch_size].to(device)}
        batch_terms = torch.zeros(len(x_start), diffusion.num_timesteps, dtype=x_start.dtype, device=device)
        for index in reversed(range(diffusion.num_timesteps)):
            timestep = int(diffusion.timesteps[index])
            t_batch = torch.full((len(x_start),), timestep, dtype=torch.int64, device=device)
            noise = randn_tensor(x_start.shape, generator=generator, device=device, dtype=x_start.dtype)
            x_t = diffusion.q_sample(x_start, torch.full((len(x_start),), index, dtype=torch.int64), noise)
            model_output = _output_tensor(model(x_t.to(model_dtype), t_batch, **model_kwargs)).to(x_start.dtype)
            batch_terms[:, index] = vlb_term_bits(
                diffusion,
                model_output,
                x_start,
                x_t,
                t_batch,
                scheduler.config.variance_type,
                scheduler.config.prediction_type,
                clip_denoised,
            )
            progress.update(1)
        priors.append(prior_bits(diffusion, x_start).cpu())
        terms.append(batch_terms.cpu())
    progress.close()
    prior = torch.cat(priors)
    vlb_terms = torch.cat(terms)
    per_image = prior + vlb_terms.sum(dim=1)
    return BitsPerDimOutput(bits_per_dim=float(per_image.mean()), per_image=per_image, prior=prior, vlb_terms=vlb_terms)
