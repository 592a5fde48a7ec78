"""The training script: EDM / VP / VE / iDDPM denoisers or a learned-variance DDPM, with Accelerate.

Run it as ``diffusers-edm-train ...`` (one process) or ``accelerate launch training/train_edm.py ...`` (several
processes or machines; DDP, and FSDP/DeepSpeed configs through ``accelerate config``). ``--help`` lists the options.
With no data argument it trains on the embedded scikit-learn digits, so it runs without any network.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from PIL import Image
from tqdm.auto import tqdm

from ..losses import DENOISING_LOSSES, hybrid_loss
from ..models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from ..models.backbones import backbone_caller, disable_internal_label_dropout, drop_class_labels
from ..models.latent_codec import LatentCodec
from ..pipelines import EDMPipeline, LearnedVariancePipeline
from ..schedulers import EDMHeunScheduler, LearnedVarianceDDPMScheduler
from .arguments import parse_args, save_args
from .checkpoints import (
    check_checkpoint_matches,
    checkpoint_step,
    load_checkpoint,
    remove_incomplete_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from .data import ImageDataset, image_channels, inspect_labels, load_image_dataset
from .ema import EDMEMAModel
from .model_card import write_model_card
from .model_presets import make_backbone
from .timestep_samplers import LossSecondMomentTimestepSampler, create_timestep_sampler

logger = logging.getLogger(__name__)

PRECOND_CLASSES = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}


@dataclass
class TrainingProgress:
    """The step counter, saved with every checkpoint (``checkpoints.save_checkpoint``)."""

    global_step: int = 0

    def state_dict(self) -> dict:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])


@dataclass
class TrainingResult:
    """What :func:`train` returns: the trained model (raw weights, unwrapped), its EMA and the final pipeline dir."""

    model: torch.nn.Module
    ema: EDMEMAModel
    global_step: int
    output_dir: Path
    sample_grid: Path | None = None
    losses: list[float] = field(default_factory=list)


def make_dataloader(dataset: ImageDataset, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """Shuffled, fixed-size batches (``drop_last``: every process and step sees a full batch)."""
    if len(dataset) < args.train_batch_size:
        raise ValueError(f"The data set has {len(dataset)} images, fewer than --train_batch_size={args.train_batch_size}.")
    # Its own generator: a DataLoader without one draws its workers' base seed from the global torch RNG each time an
    # iterator starts, and the extra iterator of a resumed run would shift every later draw.
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


def edm_learning_rate_ramp(lr_rampup_kimg: float, global_batch: int) -> Callable[[int], float]:
    """EDM's learning-rate ramp as a ``LambdaLR`` factor of the optimizer step ``k`` (0-based).

    ``min(n / max(lr_rampup_kimg * 1000, 1e-8), 1)`` with ``n = k * global_batch``, the images seen *before* step
    ``k`` (EDM sets the rate before it advances its image counter, so the first step has rate 0).

    diffusers' ``get_constant_schedule_with_warmup(optimizer, num_warmup_steps)`` has this shape but counts whole
    optimizer steps (``k / num_warmup_steps``): it matches only when ``lr_rampup_kimg * 1000`` is a positive
    multiple of the global batch. EDM's own setting (10 kimg at batch 512) is 19.53 steps, and with no ramp
    (``lr_rampup_kimg = 0``) diffusers' first step has the full rate where EDM's has 0; so the ramp stays in images.
    """
    rampup_nimg = max(lr_rampup_kimg * 1000, 1e-8)

    def factor(step: int) -> float:
        return min(step * global_batch / rampup_nimg, 1.0)

    return factor


def reduce_loss(per_example_mean: torch.Tensor, elements_per_example: int, reduction: str) -> torch.Tensor:
    """The batch loss from each example's loss averaged over its elements (pixels or latents).

    ``"mean"``: the mean over the batch, i.e. over every element (Improved DDPM's ``mean_flat(...).mean()``).
    ``"sum"``: ``elements_per_example`` times that, i.e. each example's loss summed over its elements and averaged
    over the batch (EDM's ``loss.sum() / batch``); its gradient is ``elements_per_example`` times the mean's.
    """
    batch_mean = per_example_mean.mean()
    return batch_mean * elements_per_example if reduction == "sum" else batch_mean


def image_grid(images: np.ndarray, rows: int, min_cell: int = 64, gap: int = 2) -> Image.Image:
    """Tile ``(N, H, W, C)`` images in [0, 1] into one PIL image with ``rows`` rows, ``gap`` white pixels between cells.

    Small images are enlarged by an integer factor (nearest neighbour, pixels stay visible) to at least ``min_cell``.
    (diffusers' ``make_image_grid`` needs a full grid, resizes with interpolation, which blurs 16 px digits, and
    puts cells edge to edge, where neighbouring digits touch.) Empty cells of an incomplete last row stay white.
    """
    count, height, width, channels = images.shape
    cols = math.ceil(count / rows)
    factor = max(1, math.ceil(min_cell / min(height, width)))
    cell_height, cell_width = height * factor, width * factor
    grid = np.ones((rows * cell_height + (rows - 1) * gap, cols * cell_width + (cols - 1) * gap, channels), dtype=np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        top, left = row * (cell_height + gap), col * (cell_width + gap)
        grid[top : top + cell_height, left : left + cell_width] = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    grid = (grid * 255).round().astype(np.uint8)
    return Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")


class Trainer:
    """One training run: data, model, loss, optimizer, EMA, checkpoints, validation and export."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output_dir = Path(args.output_dir)
        # Accelerate uses its multi-CPU (gloo) backend only when asked for the CPU: do so for a multi-process launch
        # on a machine without CUDA, so `accelerate launch --multi_gpu` / torchrun work on CPU-only machines too.
        multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=multi_process_cpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            dynamo_backend="inductor" if args.compile else None,
        )
        set_seed(args.seed)
        self.progress = TrainingProgress()

    def unwrapped_model(self) -> torch.nn.Module:
        """The model without DDP / mixed-precision / ``torch.compile`` wrappers (the module that is saved)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        args, accelerator = self.args, self.accelerator
        dataset = load_image_dataset(args.dataset_name, args.train_data_dir, args.dataset_config_name, cache_dir=args.cache_dir)
        self.num_classes = 0
        if args.label_column is not None:
            self.num_classes = inspect_labels(dataset, args.label_column, args.num_classes)
        channels = image_channels(dataset, args.image_column, args.num_channels)
        self.image_channels = channels

        self.vae = None
        self.codec = None
        sample_size = args.resolution
        if args.vae is not None:
            self.vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder).eval().requires_grad_(False)
            self.codec = LatentCodec(self.vae)
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            if args.resolution % factor != 0:
                raise ValueError(f"--resolution {args.resolution} is not divisible by the VAE's downsampling factor {factor}.")
            if self.vae.config.in_channels != channels:
                raise ValueError(f"The VAE takes {self.vae.config.in_channels}-channel images; the data has {channels}.")
            sample_size, channels = args.resolution // factor, self.vae.config.latent_channels
        overrides = json.loads(Path(args.backbone_config).read_text()) if args.backbone_config else None
        backbone = make_backbone(
            args.backbone, args.model_size, sample_size, channels, args.loss == "hybrid", self.num_classes, overrides
        )
        null_label = self.num_classes if self.num_classes > 0 else None
        if args.loss == "hybrid":
            disable_internal_label_dropout(backbone)
            self.model = backbone
            self.scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
            # On the training device: drawing timesteps and recording losses then never wait for the device.
            self.timestep_sampler = create_timestep_sampler(args.timestep_sampler, args.num_train_timesteps).to(accelerator.device)
            self.loss_fn = None
        else:
            precond_config = dict(num_classes=self.num_classes, null_class_label=null_label, label_dropout=args.label_dropout)
            if args.precond == "edm":
                precond_config["sigma_data"] = args.sigma_data
            self.model = PRECOND_CLASSES[args.precond].from_backbone(backbone, **precond_config)
            loss_config = dict(P_mean=args.P_mean, P_std=args.P_std, sigma_data=args.sigma_data) if args.precond == "edm" else {}
            self.loss_fn = DENOISING_LOSSES[args.precond](**loss_config)
            self.timestep_sampler = None

        self.train_dataset = ImageDataset(
            dataset, args.image_column, args.resolution, self.image_channels, args.center_crop, args.label_column, args.seed
        )
        dataloader = make_dataloader(self.train_dataset, args)
        self.global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

        resume_path = resolve_resume_path(self.output_dir, args.resume_from_checkpoint)
        if resume_path is not None:
            check_checkpoint_matches(resume_path, self.model)

        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon, weight_decay=args.weight_decay,
        )
        # Stepped by hand once per optimizer step (a prepared scheduler would step once per process).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, edm_learning_rate_ramp(args.lr_rampup_kimg, self.global_batch))
        self.model, self.optimizer, self.dataloader = accelerator.prepare(self.model, optimizer, dataloader)
        # The hybrid loss calls the backbone directly: its argument names are those of the class inside the DDP /
        # compile wrappers, decided once here (the wrapped model is what is called, for DDP's gradient hooks).
        self.call_backbone = backbone_caller(self.model) if args.loss == "hybrid" else None
        # After prepare: the EMA tracks the parameters the optimizer updates (FSDP/DeepSpeed may replace them).
        # The list is taken once: unwrapping the model on every step would sit in the hot loop for nothing.
        self.ema_parameters = list(self.unwrapped_model().parameters())
        self.ema = EDMEMAModel(
            self.ema_parameters, batch_size=self.global_batch,
            ema_halflife_kimg=args.ema_halflife_kimg,
            ema_rampup_ratio=args.ema_rampup_ratio if args.ema_rampup_ratio > 0 else None,
            foreach=True,  # one fused update instead of a Python loop over every tensor (~3.5x faster)
        )
        if self.vae is not None:
            self.vae.to(accelerator.device)
        # Saved as safetensors + JSON by save_checkpoint, not registered with Accelerate (which pickles them).
        self.checkpointed = {"ema": self.ema, "lr_scheduler": self.lr_scheduler, "progress": self.progress}
        if self.timestep_sampler is not None:
            self.checkpointed["timestep_sampler"] = self.timestep_sampler

        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_incomplete_checkpoints(self.output_dir)
            save_args(args, self.output_dir)
        accelerator.wait_for_everyone()
        if resume_path is not None:
            load_checkpoint(accelerator, resume_path, self.checkpointed)
            if self.progress.global_step != checkpoint_step(resume_path):
                raise ValueError(f"Checkpoint {str(resume_path)!r} records step {self.progress.global_step}, not its name's.")
            logger.info("Resumed from %s at step %d", resume_path, self.progress.global_step)
        if args.report_to:
            tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("diffusers-edm", config=tracked)

    # ---------------------------------------------------------------------------------------------- one step
    def _batch_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batch["images"]
        if self.args.random_flip:
            # Drawn from the checkpointed torch RNG in step order, so a resumed run flips the same images.
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.codec is not None:
            images = self.codec.encode(images)
        labels = batch.get("labels")
        return images, labels

    def _loss(self, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The batch loss, reduced as ``--loss_reduction`` says, and device-tensor statistics for the logs."""
        elements = images[0].numel()
        if self.loss_fn is not None:
            conditioning = {"class_labels": labels} if labels is not None else {}
            output = self.loss_fn(self.model, images, **conditioning)
            log_sigma = output.sigma.log()
            loss = reduce_loss(output.loss.flatten(1).mean(1), elements, self.args.loss_reduction)
            return loss, {"log_sigma_mean": log_sigma.mean().detach(), "log_sigma_std": log_sigma.std().detach()}
        timesteps, weights = self.timestep_sampler.sample(images.shape[0], images.device)
        noise = torch.randn_like(images)
        diffusion = self.scheduler.train_diffusion
        noisy = diffusion.q_sample(images, diffusion.device_index(timesteps), noise)
        if labels is not None and self.args.label_dropout > 0:
            labels = drop_class_labels(labels, self.args.label_dropout, self.num_classes)
        model_output = self.call_backbone(self.model, noisy, timesteps, labels, None)
        output = hybrid_loss(model_output.float(), images, noisy, noise, timesteps, diffusion)
        if isinstance(self.timestep_sampler, LossSecondMomentTimestepSampler):
            # Every process has a full batch (drop_last) of timesteps drawn from the table: no size exchange, no check.
            self.timestep_sampler.update_with_local_losses(
                timesteps, output.vlb.detach(), self.accelerator, equal_batch_sizes=True, validate=False
            )
        loss = reduce_loss(output.loss * weights, elements, self.args.loss_reduction)
        return loss, {"mse": output.mse.mean().detach(), "vlb": output.vlb.mean().detach()}

    def _train_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """One micro-batch: loss and backward; when it completes an optimizer step (``accelerator.sync_gradients``),
        also NaN/inf gradient replacement, clipping, the optimizer step, the learning-rate ramp and the EMA update.

        Everything stays on the device: nothing here waits for it (the logs read the returned tensors later).
        """
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            images, labels = self._batch_inputs(batch)
            loss, stats = self._loss(images, labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                for param in self.model.parameters():
                    if param.grad is not None:
                        # EDM replaces NaN/inf gradients rather than skipping the step.
                        torch.nan_to_num(param.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=param.grad)
                if self.args.max_grad_norm is not None:
                    stats["grad_norm"] = accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            self.lr_scheduler.step()
            self.ema.step(self.ema_parameters)
        return loss.detach(), stats

    # ---------------------------------------------------------------------------------------------- loop
    def train(self) -> TrainingResult:
        args, accelerator = self.args, self.accelerator
        steps_per_epoch = len(self.dataloader) // args.gradient_accumulation_steps
        if steps_per_epoch < 1:
            raise ValueError("One epoch holds fewer batches than --gradient_accumulation_steps; lower it or the batch size.")
        progress_bar = tqdm(
            total=args.max_train_steps, initial=self.progress.global_step, desc="training",
            disable=not accelerator.is_local_main_process,
        )
        losses: list[float] = []
        started = time.perf_counter()
        while self.progress.global_step < args.max_train_steps:
            epoch, position = divmod(self.progress.global_step, steps_per_epoch)
            self.dataloader.set_epoch(epoch)
            self.train_dataset.set_epoch(epoch)
            batches = self.dataloader
            if position:
                batches = accelerator.skip_first_batches(self.dataloader, position * args.gradient_accumulation_steps)
            for batch in batches:
                loss, stats = self._train_step(batch)
                if not accelerator.sync_gradients:
                    continue
                self.progress.global_step += 1
                step = self.progress.global_step
                progress_bar.update(1)
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    mean_loss = accelerator.gather(loss.reshape(1)).mean().item()
                    losses.append(mean_loss)
                    logs = {"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0], "ema_decay": self.ema.cur_decay_value,
                            "images_per_second": step * self.global_batch / (time.perf_counter() - started)}
                    logs.update({key: float(value) for key, value in stats.items()})
                    progress_bar.set_postfix(loss=f"{mean_loss:.4f}")
                    accelerator.log(logs, step=step)
                if step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, self.output_dir, step, args.checkpoints_total_limit, self.checkpointed)
                if step % args.validation_steps == 0 and step != args.max_train_steps:
                    self._validate(step)
                if step >= args.max_train_steps:
                    break
        progress_bar.close()
        accelerator.wait_for_everyone()
        grid_path = self._export()
        accelerator.end_training()
        return TrainingResult(
            model=self.unwrapped_model(), ema=self.ema, global_step=self.progress.global_step,
            output_dir=self.output_dir, sample_grid=grid_path, losses=losses,
        )

    # ---------------------------------------------------------------------------------------------- sampling
    def _pipeline(self, model: torch.nn.Module):
        if self.args.loss == "hybrid":
            null_label = self.num_classes if self.num_classes > 0 else None
            return LearnedVariancePipeline(unet=model, scheduler=self.scheduler, vae=self.vae, null_class_label=null_label)
        sigma_min = max(EDMHeunScheduler().config.sigma_min, model.sigma_min)
        sigma_max = min(EDMHeunScheduler().config.sigma_max, model.sigma_max)
        scheduler = EDMHeunScheduler(sigma_min=sigma_min, sigma_max=sigma_max)
        return EDMPipeline(denoiser=model, scheduler=scheduler, vae=self.vae)

    def _sample_grid(self, model: torch.nn.Module, count: int) -> Image.Image:
        """Samples with a fixed generator (never the training RNG, so sampling does not change the run)."""
        pipeline = self._pipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        kwargs = dict(generator=torch.Generator(device="cpu").manual_seed(self.args.seed), output_type="np")
        if self.num_classes > 0:
            kwargs.update(class_labels=[i % self.num_classes for i in range(count)], guidance_scale=self.args.guidance_scale)
        # ancestral sampling of a learned-variance model: 100 respaced steps (Improved DDPM), at most T
        steps = self.args.sample_steps if self.args.loss != "hybrid" else min(100, self.args.num_train_timesteps)
        images = pipeline(batch_size=count, num_inference_steps=steps, **kwargs).images
        # labels cycle through the classes, so K columns make one column per class
        columns = self.num_classes if 0 < self.num_classes <= count else math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        return image_grid(images, rows=rows)

    def _with_ema_weights(self, function):
        model = self.unwrapped_model()
        was_training = model.training
        self.ema.store(model.parameters())
        self.ema.copy_to(model.parameters())
        model.eval()
        try:
            return function(model)
        finally:
            self.ema.restore(model.parameters())
            model.train(was_training)

    def _validate(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        grid = self._with_ema_weights(lambda model: self._sample_grid(model, self.args.num_validation_images))
        path = self.output_dir / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"samples": np.asarray(grid)[None, ..., None] if grid.mode == "L" else np.asarray(grid)[None]},
                                   step=step, dataformats="NHWC")
        self.accelerator.wait_for_everyone()

    def _export(self) -> Path | None:
        """Save the final pipeline (EMA weights) with ``save_pretrained``, a sample grid and the model card."""
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return None

        def save(model: torch.nn.Module) -> Path:
            pipeline = self._pipeline(model)
            pipeline.save_pretrained(self.output_dir)
            grid = self._sample_grid(model, max(self.args.num_validation_images, 1))
            grid_path = self.output_dir / "samples.png"
            grid.save(grid_path)
            return grid_path

        grid_path = self._with_ema_weights(save)
        write_model_card(self.args, self.output_dir, grid_path, self.progress.global_step)
        if self.args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(self.args.hub_model_id, private=self.args.hub_private_repo, token=self.args.hub_token, exist_ok=True).repo_id
            upload_folder(
                repo_id=repo_id, folder_path=str(self.output_dir), token=self.args.hub_token,
                commit_message=f"diffusers-edm training, step {self.progress.global_step}",
                ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*", "samples/*"],
            )
        self.accelerator.wait_for_everyone()
        return grid_path


def train(args: argparse.Namespace) -> TrainingResult:
    trainer = Trainer(args)
    trainer.setup()
    return trainer.train()


def main(argv: list[str] | None = None) -> TrainingResult:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args = parse_args(argv)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    started = time.perf_counter()
    result = train(args)
    if result.sample_grid is not None:
        minutes = (time.perf_counter() - started) / 60
        print(f"Trained {result.global_step} steps in {minutes:.1f} min. Pipeline: {result.output_dir}")
        print(f"Sample grid: {result.sample_grid}")
    return result


def cli() -> None:
    """Console entry point (``diffusers-edm-train``)."""
    main()
