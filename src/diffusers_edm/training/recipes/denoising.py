"""The denoising recipe: an EDM / VP / VE / iDDPM-preconditioned denoiser trained with its own loss (Karras et al.
2022, Table 1 and eq. 8), ``loss = lambda(sigma) |D(y + sigma n; sigma) - y|^2`` (``--precond``, ``--loss precond``)."""

from __future__ import annotations

import argparse

import torch

from ...losses import DENOISING_LOSSES
from ...models import EDMPrecond, IDDPMPrecond, PreconditionedDenoiser, VEPrecond, VPPrecond
from ...pipelines import EDMPipeline
from ...schedulers import EDMHeunScheduler
from ..model_presets import make_backbone
from .base import backbone_overrides, reduce_loss
from .sampling import SamplingRecipe

PRECOND_CLASSES = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}


class DenoisingRecipe(SamplingRecipe):
    """A preconditioned denoiser (``--precond``, default edm) over a UNet2DModel or DiT backbone.

    Loss: the family's ``lambda(sigma) |D - y|^2`` per element, reduced as ``--loss_reduction`` says (default EDM's
    sum over each image's elements, averaged over the batch). Validation: a sample grid of an ``EDMPipeline`` with
    ``EDMHeunScheduler`` over the denoiser's noise range. Export: that pipeline.
    """

    selected_by = "--task denoiser"

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        args.precond = args.precond or "edm"
        if args.loss_reduction is None:
            args.loss_reduction = "sum"

    def build_denoiser(self, precond: str) -> PreconditionedDenoiser:
        """The ``precond`` wrapper (``PRECOND_CLASSES``) over a fresh backbone of the run's preset and data shape."""
        args, data = self.args, self.data
        backbone = make_backbone(
            args.backbone, args.model_size, data.sample_size, data.channels, False, data.num_classes, backbone_overrides(args)
        )
        null_label = data.num_classes if data.num_classes > 0 else None
        precond_config = dict(num_classes=data.num_classes, null_class_label=null_label, label_dropout=args.label_dropout)
        if precond == "edm":
            precond_config["sigma_data"] = args.sigma_data
        return PRECOND_CLASSES[precond].from_backbone(backbone, **precond_config)

    def build_model(self) -> torch.nn.Module:
        args = self.args
        model = self.build_denoiser(args.precond)
        loss_config = dict(P_mean=args.P_mean, P_std=args.P_std, sigma_data=args.sigma_data) if args.precond == "edm" else {}
        self.loss_fn = DENOISING_LOSSES[args.precond](**loss_config)
        return model

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        return self.denoising_loss(model, images, {"class_labels": labels} if labels is not None else {})

    def denoising_loss(self, model: torch.nn.Module, images: torch.Tensor, conditioning: dict) -> tuple[torch.Tensor, dict]:
        """The family's loss of ``model(..., **conditioning)`` reduced per ``--loss_reduction``, and log statistics."""
        output = self.loss_fn(model, images, **conditioning)
        log_sigma = output.sigma.log()
        loss = reduce_loss(output.loss.flatten(1).mean(1), images[0].numel(), self.args.loss_reduction)
        return loss, {"log_sigma_mean": log_sigma.mean().detach(), "log_sigma_std": log_sigma.std().detach()}

    def pipeline(self, model: torch.nn.Module) -> EDMPipeline:
        sigma_min = max(EDMHeunScheduler().config.sigma_min, model.sigma_min)
        sigma_max = min(EDMHeunScheduler().config.sigma_max, model.sigma_max)
        scheduler = EDMHeunScheduler(sigma_min=sigma_min, sigma_max=sigma_max)
        return EDMPipeline(denoiser=model, scheduler=scheduler, vae=self.data.vae)

    def sample_steps(self) -> int:
        return self.args.sample_steps
