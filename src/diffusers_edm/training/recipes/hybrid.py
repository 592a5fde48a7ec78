"""The learned-variance recipe (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", section
3.1): a discrete-time UNet / DiT with 2C output channels (eps and the variance interpolation v) trained with the
hybrid loss ``L_simple + lambda L_vlb``, lambda = 0.001 (``--loss hybrid``)."""

from __future__ import annotations

import argparse

import torch

from ...losses import hybrid_loss
from ...models.backbones import backbone_caller, disable_internal_label_dropout, drop_class_labels
from ...pipelines import LearnedVariancePipeline
from ...schedulers import LearnedVarianceDDPMScheduler
from ..model_presets import make_backbone
from ..timestep_samplers import LossSecondMomentTimestepSampler, create_timestep_sampler
from .base import backbone_overrides, reduce_loss
from .sampling import SamplingRecipe


class HybridRecipe(SamplingRecipe):
    """A learned-variance DDPM: ``t`` from ``--timestep_sampler`` (uniform, or Improved DDPM's loss-second-moment
    importance sampling, whose loss history is checkpointed), the hybrid loss weighted by the sampler's importance
    weights and reduced as ``--loss_reduction`` says (default: the mean, as Improved DDPM). Validation: ancestral
    sampling with a ``LearnedVariancePipeline``, 100 respaced steps (at most T). Export: that pipeline.
    """

    selected_by = "--loss hybrid"

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.precond is not None:
            raise ValueError(
                f"--loss hybrid trains a learned-variance DDPM (a discrete-time model, no preconditioning wrapper); "
                f"drop --precond {args.precond}."
            )
        if args.loss_reduction is None:
            args.loss_reduction = "mean"

    def build_model(self) -> torch.nn.Module:
        args, data = self.args, self.data
        backbone = make_backbone(
            args.backbone, args.model_size, data.sample_size, data.channels, True, data.num_classes, backbone_overrides(args)
        )
        disable_internal_label_dropout(backbone)
        self.scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
        # On the training device: drawing timesteps and recording losses then never wait for the device.
        self.timestep_sampler = create_timestep_sampler(args.timestep_sampler, args.num_train_timesteps).to(self.accelerator.device)
        return backbone

    def prepare(self, model: torch.nn.Module) -> None:
        # The hybrid loss calls the backbone directly: its argument names are those of the class inside the DDP /
        # compile wrappers, decided once here (the wrapped model is what is called, for DDP's gradient hooks).
        self.call_backbone = backbone_caller(model)

    def states(self) -> dict:
        return {"timestep_sampler": self.timestep_sampler}

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        timesteps, weights = self.timestep_sampler.sample(images.shape[0], images.device)
        noise = torch.randn_like(images, memory_format=torch.contiguous_format)  # the same draws for NHWC batches
        diffusion = self.scheduler.train_diffusion
        noisy = diffusion.q_sample(images, diffusion.device_index(timesteps), noise)
        if labels is not None and self.args.label_dropout > 0:
            labels = drop_class_labels(labels, self.args.label_dropout, self.data.num_classes)
        model_output = self.call_backbone(model, noisy, timesteps, labels, None)
        output = hybrid_loss(model_output.float(), images, noisy, noise, timesteps, diffusion)
        if isinstance(self.timestep_sampler, LossSecondMomentTimestepSampler):
            # Every process has a full batch (drop_last) of timesteps drawn from the table: no size exchange, no check.
            self.timestep_sampler.update_with_local_losses(
                timesteps, output.vlb.detach(), self.accelerator, equal_batch_sizes=True, validate=False
            )
        loss = reduce_loss(output.loss * weights, images[0].numel(), self.args.loss_reduction)
        return loss, {"mse": output.mse.mean().detach(), "vlb": output.vlb.mean().detach()}

    def pipeline(self, model: torch.nn.Module) -> LearnedVariancePipeline:
        null_label = self.data.num_classes if self.data.num_classes > 0 else None
        return LearnedVariancePipeline(unet=model, scheduler=self.scheduler, vae=self.data.vae, null_class_label=null_label)

    def sample_steps(self) -> int:
        # ancestral sampling of a learned-variance model: 100 respaced steps (Improved DDPM), at most T
        return min(100, self.args.num_train_timesteps)
