"""The EDM2-loss recipe (``--precond edm2``): an EDM-preconditioned denoiser (Karras et al. 2022, Table 1) trained with
EDM2's learned-uncertainty loss (Karras et al. 2024, eq. 21), ``lambda(sigma) / exp(u(sigma)) |D - y|^2 + u(sigma)``
(:class:`~diffusers_edm.losses.EDM2Loss`), ``ln sigma ~ N(-0.4, 1.0^2)`` unless ``--P_mean`` / ``--P_std`` say
otherwise.

What is trained is :class:`DenoiserWithUncertainty`: the denoiser and the uncertainty head ``u`` (a linear layer on
Fourier features of ``c_noise``) as one module, so the optimizer, data-parallel wrappers, the EMA and the
checkpoints (``model.safetensors``) all hold ``u`` and a resume restores it. The export keeps the denoiser only: the
pipeline is the same ``EDMPipeline`` as ``--precond edm``'s, and ``u`` (which sampling never uses) is not in it.

Logged: ``u_mean`` (the batch's mean ``u``) with the loss, and the curve ``u(sigma)`` at fixed noise levels
(``uncertainty/sigma_<s>`` scalars) at every validation and at the export, which also returns it in the metrics.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import BaseOutput

from ...losses import EDM2Loss, FourierUncertainty
from ...models import EDMPrecond
from ...pipelines import EDMPipeline
from .base import Export, reduce_loss
from .denoising import DenoisingRecipe

#: Width of the Fourier features of the uncertainty head (EDM2's ``logvar_channels``).
UNCERTAINTY_CHANNELS = 128
#: The noise levels at which the curve u(sigma) is logged.
UNCERTAINTY_SIGMAS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 80.0)


@dataclass
class DenoiserWithUncertaintyOutput(BaseOutput):
    """``sample``: ``D(x; sigma)``; ``uncertainty``: ``u(sigma)``, one value per sample."""

    sample: torch.Tensor
    uncertainty: torch.Tensor


class DenoiserWithUncertainty(torch.nn.Module):
    """An EDM denoiser and EDM2's uncertainty head ``u(c_noise(sigma))``, trained together, exported apart."""

    def __init__(self, denoiser: EDMPrecond, uncertainty: FourierUncertainty):
        super().__init__()
        self.denoiser = denoiser
        self.uncertainty = uncertainty

    def forward(self, sample: torch.Tensor, sigma: torch.Tensor, **conditioning) -> DenoiserWithUncertaintyOutput:
        denoised = self.denoiser(sample, sigma, **conditioning).sample
        c_noise = self.denoiser.preconditioning(sigma).c_noise
        return DenoiserWithUncertaintyOutput(sample=denoised, uncertainty=self.uncertainty(c_noise))

    def uncertainty_curve(self, sigmas: tuple[float, ...] = UNCERTAINTY_SIGMAS) -> dict[float, float]:
        """``u(sigma)`` at ``sigmas`` (read back to the host: for logs, not the training step)."""
        device = self.uncertainty.linear.weight.device
        with torch.no_grad():
            sigma = torch.tensor(sigmas, dtype=torch.float32, device=device)
            values = self.uncertainty(self.denoiser.preconditioning(sigma).c_noise).cpu().tolist()
        return dict(zip(sigmas, values))


class EDM2Recipe(DenoisingRecipe):
    """``--precond edm2``: see the module docstring. Loss reduction as ``--precond edm`` (default ``sum``)."""

    selected_by = "--precond edm2"
    ln_sigma_distribution = (-0.4, 1.0)

    def build_model(self) -> torch.nn.Module:
        args = self.args
        denoiser = self.build_denoiser("edm")
        self.loss_fn = EDM2Loss(P_mean=args.P_mean, P_std=args.P_std, sigma_data=args.sigma_data)
        return DenoiserWithUncertainty(denoiser, FourierUncertainty(UNCERTAINTY_CHANNELS, seed=args.seed))

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        conditioning = {"class_labels": labels} if labels is not None else {}
        output = self.loss_fn(model, images, **conditioning)
        log_sigma = output.sigma.log()
        loss = reduce_loss(output.loss.flatten(1).mean(1), images[0].numel(), self.args.loss_reduction)
        stats = {"log_sigma_mean": log_sigma.mean().detach(), "log_sigma_std": log_sigma.std().detach(),
                 "u_mean": output.uncertainty.mean().detach()}
        return loss, stats

    def pipeline(self, model: torch.nn.Module) -> EDMPipeline:
        return super().pipeline(model.denoiser)

    def log_uncertainty(self, model: DenoiserWithUncertainty, step: int) -> dict[float, float]:
        curve = model.uncertainty_curve()
        if self.accelerator.is_main_process and self.accelerator.trackers:
            self.accelerator.log({f"uncertainty/sigma_{sigma:g}": value for sigma, value in curve.items()}, step=step)
        return curve

    def validate(self, model: torch.nn.Module, step: int, output_dir: Path) -> None:
        super().validate(model, step, output_dir)
        self.log_uncertainty(model, step)

    def export(self, model: torch.nn.Module, output_dir: Path, step: int) -> Export:
        exported = super().export(model, output_dir, step)
        curve = self.log_uncertainty(model, step)
        exported.metrics["uncertainty"] = {f"{sigma:g}": value for sigma, value in curve.items()}
        return exported

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.loss_reduction is None:
            args.loss_reduction = "sum"
