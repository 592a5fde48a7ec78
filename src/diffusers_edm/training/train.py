"""The training script: EDM / VP / VE / iDDPM denoisers, a learned-variance DDPM or a noise-conditional classifier,
with Accelerate.

The loop here is the same for every kind of run; what is trained, its loss, validation and export come from a recipe
(:mod:`diffusers_edm.training.recipes`, one file per recipe).

Run it as ``diffusers-edm-train ...`` (one process) or ``accelerate launch training/train_edm.py ...`` (several
processes or machines; DDP, and FSDP/DeepSpeed configs through ``accelerate config``). ``--help`` lists the options.
With no data argument it trains on the embedded scikit-learn digits, so it runs without any network.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..models.latent_codec import LatentCodec
from ..process_state import multi_process_cpu
from .arguments import parse_args, result_arguments, save_args
from .captions import check_caption_column, collate_with_captions
from .checkpoints import (
    OutputWriteError,
    check_checkpoint_matches,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    recover_interrupted_export,
    remove_incomplete_checkpoints,
    remove_previous_run,
    resolve_resume_path,
    save_checkpoint,
    write_export,
)
from .data import ImageDataset, held_out_split, image_channels, inspect_labels, load_image_dataset
from .ema import EDMEMAModel, PowerFunctionEMA, make_ema
from .posthoc_ema import EMASnapshotWriter
from .preemption import PreemptionWatch, TrainingPreempted
from .streaming import ImageStream
from .recipes import Export, Recipe, RecipeData, select_recipe
from .sharding import check_sharded_run, gathered_model, local_shards, parameters_sharded

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """The loss or the weights became NaN or infinite: the run stops without saving or exporting them."""


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
    """What :func:`train` returns: the trained model (raw weights, unwrapped), its EMA, the output directory and, on
    the main process, what the export wrote (``artefacts``: e.g. ``sample_grid`` or ``accuracy``) and its metrics."""

    model: torch.nn.Module
    ema: EDMEMAModel | PowerFunctionEMA
    global_step: int
    output_dir: Path
    artefacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def sample_grid(self) -> Path | None:
        """The final sample grid of a diffusion model (None for a classifier, and on the other processes)."""
        return self.artefacts.get("sample_grid")


def make_dataloader(dataset: ImageDataset, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """Shuffled, fixed-size batches (``drop_last``: every process and step sees a full batch)."""
    if len(dataset) < args.train_batch_size:
        raise ValueError(f"The data set has {len(dataset)} images, fewer than --train_batch_size={args.train_batch_size}.")
    # Its own generator: a DataLoader without one draws its workers' base seed from the global torch RNG each time an
    # iterator starts, and the extra iterator of a resumed run would shift every later draw.
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
        collate_fn=collate_with_captions if args.caption_column is not None else None,
    )


def adam_implementation(device: torch.device) -> dict[str, bool]:
    """The fastest of torch's AdamW implementations on ``device``: the fused kernels on CUDA, else the multi-tensor
    (``foreach``) one, which torch picks by default on CUDA only. Both compute Loshchilov & Hutter's AdamW update
    (Algorithm 2); ``foreach`` on the CPU gives the very numbers of the per-tensor loop, the fused kernel may differ
    from the others in the last bits."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


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


class Trainer:
    """One training run: data, model, loss, optimizer, EMA, checkpoints, validation and export."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            cpu=multi_process_cpu(),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            dynamo_backend="inductor" if args.compile else None,
        )
        check_sharded_run(args, self.accelerator)
        # FSDP / DeepSpeed ZeRO-3: the EMA and its checkpoints follow the model's shards (see training/sharding.py).
        self.sharded = parameters_sharded(self.accelerator)
        set_seed(args.seed)
        self.progress = TrainingProgress()
        self.preemption = PreemptionWatch(self.accelerator, args.preemption_check_steps)

    def unwrapped_model(self) -> torch.nn.Module:
        """The model without DDP / mixed-precision / ``torch.compile`` wrappers (the module that is saved)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        args, accelerator = self.args, self.accelerator
        if args.streaming:  # read as training goes; labels and channels from the declared features
            self.train_dataset = ImageStream.from_args(args, accelerator)
            self.num_classes, channels = self.train_dataset.num_classes, self.train_dataset.channels
        else:
            dataset = load_image_dataset(args.dataset_name, args.train_data_dir, args.dataset_config_name, cache_dir=args.cache_dir)
            self.num_classes = 0
            if args.label_column is not None:
                self.num_classes = inspect_labels(dataset, args.label_column, args.num_classes)
            channels = image_channels(dataset, args.image_column, args.num_channels)
        self.image_channels = channels
        captions = first_captions = None
        if args.caption_column is not None and not args.streaming:  # a stream's captions are checked per row
            captions, first_captions = check_caption_column(dataset, args.caption_column)

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

        validation_dataset = None
        if args.validation_split is not None:
            dataset, held_out = held_out_split(dataset, args.validation_split, args.seed, args.label_column)
            # Held-out images are always center-cropped: the same pixels at every validation.
            validation_dataset = ImageDataset(
                held_out, args.image_column, args.resolution, self.image_channels, True, args.label_column, args.seed
            )
        data = RecipeData(
            num_classes=self.num_classes, image_channels=self.image_channels, sample_size=sample_size, channels=channels,
            vae=self.vae, codec=self.codec, validation_dataset=validation_dataset,
            captions=captions, first_captions=first_captions,
        )
        self.recipe: Recipe = select_recipe(args)(args, data, accelerator)
        self.model = self.recipe.build_model()
        if args.channels_last:  # NHWC convolutions (the inputs follow in _batch_inputs)
            self.model.to(memory_format=torch.channels_last)

        if args.streaming:
            dataloader = self.train_dataset  # yields batches on the device itself
            self.train_dataset.register_for_checkpointing(accelerator)  # each process's position
        else:
            self.train_dataset = ImageDataset(
                dataset, args.image_column, args.resolution, self.image_channels, args.center_crop, args.label_column, args.seed,
                caption_column=args.caption_column,
            )
            dataloader = make_dataloader(self.train_dataset, args)
        self.global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

        self.run_arguments = result_arguments(args, accelerator.num_processes)
        resume_path = resolve_resume_path(self.output_dir, args.resume_from_checkpoint)
        if resume_path is not None:
            check_checkpoint_matches(resume_path, self.model, self.run_arguments)

        optimizer_class = self.recipe.optimizer_class()
        # torch's AdamW takes the implementation choice; others (bitsandbytes' 8-bit AdamW) have their own kernels.
        implementation = adam_implementation(accelerator.device) if optimizer_class is torch.optim.AdamW else {}
        optimizer = optimizer_class(
            self.recipe.trainable_parameters(self.model), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon, weight_decay=args.weight_decay, **implementation,
        )
        # Stepped by hand once per optimizer step (a prepared scheduler would step once per process).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, edm_learning_rate_ramp(args.lr_rampup_kimg, self.global_batch))
        # An ImageStream is not a DataLoader: prepare returns it as it is (Accelerate would dispatch it from rank 0).
        self.model, self.optimizer, self.dataloader = accelerator.prepare(self.model, optimizer, dataloader)
        self.recipe.train_dataset = self.train_dataset
        if self.vae is not None:  # before the recipe's set-up, which may encode (latent cache, measured sigma_data)
            self.vae.to(accelerator.device)
        self.recipe.prepare(self.model)
        # After prepare: the EMA tracks the parameters the optimizer updates (FSDP/DeepSpeed may replace them), and
        # only those: a frozen weight's average is the weight itself (a LoRA run averages its adapters alone).
        # The list is taken once: unwrapping the model on every step would sit in the hot loop for nothing.
        averaged = list(self.recipe.trainable_parameters(self.unwrapped_model()))
        self.ema_parameters = averaged
        self.trained_parameters = list(self.model.parameters())  # what the step walks, also taken once
        if self.sharded:
            self.ema_parameters = local_shards(self.ema_parameters)
        self.ema = make_ema(args, self.ema_parameters, self.global_batch)
        # --ema_type power: the snapshots of post-hoc EMA (None otherwise).
        self.snapshots = EMASnapshotWriter.for_run(
            args, self.output_dir, self.ema, self.unwrapped_model(), self.global_batch, data,
            accelerator.is_main_process, parameters=averaged,
        )
        # Saved as safetensors + JSON by save_checkpoint, not registered with Accelerate (which pickles them).
        self.checkpointed = {"ema": self.ema, "lr_scheduler": self.lr_scheduler, "progress": self.progress, **self.recipe.states()}
        # Sharded: each process saves its own EMA shards (training_state_rank<k>.*).
        self.rank_checkpointed = {"ema": self.checkpointed.pop("ema")} if self.sharded else {}

        # Whether any loss since the last check was NaN/inf: updated on the device every step, read only at checks.
        self.non_finite_loss = torch.zeros((), dtype=torch.bool, device=accelerator.device)
        self.last_checked_step = 0
        if accelerator.is_main_process:
            if args.overwrite:
                remove_previous_run(self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_incomplete_checkpoints(self.output_dir)
            recover_interrupted_export(self.output_dir)
            save_args(args, self.output_dir)
            if self.snapshots is not None:
                # Snapshots after the resumed step (or all, from scratch) are rewritten by this run: none may be stale.
                resumed_nimg = 0 if resume_path is None else checkpoint_step(resume_path) * self.global_batch
                self.snapshots.discard_after(resumed_nimg)
        accelerator.wait_for_everyone()
        if resume_path is not None:
            load_checkpoint(accelerator, resume_path, self.checkpointed, self.rank_checkpointed)
            if self.progress.global_step != checkpoint_step(resume_path):
                raise ValueError(f"Checkpoint {str(resume_path)!r} records step {self.progress.global_step}, not its name's.")
            logger.info("Resumed from %s at step %d", resume_path, self.progress.global_step)
            self.last_checked_step = self.progress.global_step
        if args.report_to:
            tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("diffusers-edm", config=tracked)

    # ---------------------------------------------------------------------------------------------- one step
    def _batch_inputs(self, batch: dict) -> tuple[torch.Tensor, object]:
        images = batch["images"]
        if self.args.random_flip:
            # Drawn from the checkpointed torch RNG in step order, so a resumed run flips the same images.
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            batch["flipped"] = flip  # for the recipe's view of the crop (SDXL's micro-conditioning)
        if self.codec is not None:
            images = self.recipe.latents(images, batch)
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # Class labels or text embeddings: the recipe decides (after the flips and latents, in this RNG order).
        return images, self.recipe.conditioning(batch)

    def _loss(self, images: torch.Tensor, conditioning: object) -> tuple[torch.Tensor, dict]:
        """The recipe's batch loss and device-tensor statistics for the logs."""
        return self.recipe.loss(self.model, images, conditioning)

    def _train_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """One micro-batch: loss and backward; when it completes an optimizer step (``accelerator.sync_gradients``),
        also NaN/inf gradient replacement, clipping, the optimizer step, the learning-rate ramp and the EMA update.

        Everything stays on the device: nothing here waits for it (the logs read the returned tensors later).
        """
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            images, conditioning = self._batch_inputs(batch)
            loss, stats = self._loss(images, conditioning)
            torch.logical_or(self.non_finite_loss, ~torch.isfinite(loss.detach()), out=self.non_finite_loss)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                for param in self.trained_parameters:
                    if param.grad is not None:
                        # EDM replaces NaN/inf gradients rather than skipping the step.
                        torch.nan_to_num(param.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=param.grad)
                if self.args.max_grad_norm is not None:
                    stats["grad_norm"] = accelerator.clip_grad_norm_(self.trained_parameters, self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            self.lr_scheduler.step()
            self.ema.step(self.ema_parameters)
        return loss.detach(), stats

    # ---------------------------------------------------------------------------------------------- loop
    def train(self) -> TrainingResult:
        losses: list[float] = []
        for _ in self.training_steps(losses):
            pass
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        exported = self._export()
        accelerator.end_training()
        return TrainingResult(
            model=self.unwrapped_model(), ema=self.ema, global_step=self.progress.global_step,
            output_dir=self.output_dir, artefacts=exported.artefacts, metrics=exported.metrics,
            summary=exported.summary, losses=losses,
        )

    def training_steps(self, losses: list[float]) -> Iterator[int]:
        """The training loop up to ``--max_train_steps``: yields the number of each optimizer step once its
        bookkeeping (logs, appended to ``losses``; checks, checkpoints, snapshots, validation) is done.

        :meth:`train` runs it to the end and exports; ``benchmarks/training_throughput.py`` times it in blocks.
        """
        args, accelerator = self.args, self.accelerator
        # A stream is one endless pass (each process counts its own epochs); it resumes from its checkpointed position.
        steps_per_epoch = args.max_train_steps if args.streaming else len(self.dataloader) // args.gradient_accumulation_steps
        if steps_per_epoch < 1:
            raise ValueError("One epoch holds fewer batches than --gradient_accumulation_steps; lower it or the batch size.")
        progress_bar = tqdm(
            total=args.max_train_steps, initial=self.progress.global_step, desc="training",
            disable=not accelerator.is_local_main_process,
        )
        started = time.perf_counter()
        while self.progress.global_step < args.max_train_steps:
            epoch, position = divmod(self.progress.global_step, steps_per_epoch)
            self.dataloader.set_epoch(epoch)
            self.train_dataset.set_epoch(epoch)
            batches = self.dataloader
            if position and not args.streaming:
                batches = accelerator.skip_first_batches(self.dataloader, position * args.gradient_accumulation_steps)
            for batch in batches:
                loss, stats = self._train_step(batch)
                if not accelerator.sync_gradients:
                    continue
                self.progress.global_step += 1
                step = self.progress.global_step
                progress_bar.update(1)
                logging_due = step % args.logging_steps == 0 or step == args.max_train_steps
                if (
                    logging_due or step % args.checkpointing_steps == 0 or step % args.validation_steps == 0
                    or (self.snapshots is not None and self.snapshots.is_due(step))
                ):
                    self._check_finite(step)
                if self.snapshots is not None:
                    self.snapshots.after_step(step)
                if logging_due:
                    mean_loss = accelerator.gather(loss.reshape(1)).mean().item()
                    losses.append(mean_loss)
                    logs = {"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0], "ema_decay": self.ema.cur_decay_value,
                            "images_per_second": step * self.global_batch / (time.perf_counter() - started)}
                    logs.update({key: float(value) for key, value in stats.items()})
                    progress_bar.set_postfix(loss=f"{mean_loss:.4f}")
                    accelerator.log(logs, step=step)
                if step % args.checkpointing_steps == 0:
                    save_checkpoint(
                        accelerator, self.output_dir, step, args.checkpoints_total_limit, self.checkpointed,
                        self.run_arguments, self.rank_checkpointed,
                    )
                if self.preemption.requested(step):
                    self._stop_preempted(step, checkpointed=step % args.checkpointing_steps == 0)
                if step % args.validation_steps == 0 and step != args.max_train_steps:
                    self._validate(step)
                yield step
                if step >= args.max_train_steps:
                    break
        progress_bar.close()

    def _stop_preempted(self, step: int, checkpointed: bool) -> None:
        """After a preemption signal: checkpoint ``step`` (unless done already), as every regular checkpoint, and
        raise :class:`TrainingPreempted`. Every process calls this at the same step (``PreemptionWatch.requested``)."""
        signum = self.preemption.agreed_signal()
        if not checkpointed:
            self._check_finite(step)
            save_checkpoint(
                self.accelerator, self.output_dir, step, self.args.checkpoints_total_limit, self.checkpointed,
                self.run_arguments, self.rank_checkpointed,
            )
        stop = TrainingPreempted(signum, step, self.output_dir / f"checkpoint-{step}")
        logger.warning("%s", stop)
        self.accelerator.end_training()
        raise stop

    # ---------------------------------------------------------------------------------------------- non-finite values
    def _ema_tensors(self) -> list[torch.Tensor]:
        averages = getattr(self.ema, "averages", [self.ema])  # PowerFunctionEMA tracks several
        return [tensor for average in averages for tensor in average.shadow_params]

    def _check_finite(self, step: int) -> None:
        """Stop with :class:`NonFiniteTrainingError` if a loss since the last check, or a weight or EMA weight now,
        is NaN/inf on any process. One host synchronisation; called only before what logs, checkpoints, snapshots,
        validates or exports (not per step), so it names the first such step at or after the one that went wrong."""
        tensors = [*self.ema_parameters, *self._ema_tensors()]  # the weights (sharded: this process's shards)
        weights_finite = torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all()
        flags = torch.stack([self.non_finite_loss, ~weights_finite]).to(torch.int32).reshape(1, 2)
        loss_bad, weights_bad = (bool(flag) for flag in self.accelerator.gather(flags).amax(dim=0).tolist())
        if not (loss_bad or weights_bad):
            self.last_checked_step = step
            return
        what = " and ".join(name for name, bad in (("the loss", loss_bad), ("the weights", weights_bad)) if bad)
        checkpoints = list_checkpoints(self.output_dir)
        good = f"the last good checkpoint is {str(checkpoints[-1])!r}" if checkpoints else "there is no checkpoint yet"
        raise NonFiniteTrainingError(
            f"Training stopped at step {step}: {what} became NaN or infinite after step {self.last_checked_step} (the "
            f"last check that passed; checks run at logging, checkpointing, snapshot, validation and export steps). "
            f"Nothing was checkpointed, exported or pushed from step {step}; {good}."
        )

    # ---------------------------------------------------------------------------------------------- validation, export
    def _with_ema_weights(self, function):
        model = self.unwrapped_model()
        was_training = model.training
        self.ema.store(self.ema_parameters)
        self.ema.copy_to(self.ema_parameters)
        model.eval()
        try:
            # Sharded: the full EMA model, gathered onto the main process (the others keep their shards).
            return function((gathered_model(self.accelerator, self.model) if self.sharded else None) or model)
        finally:
            self.ema.restore(self.ema_parameters)
            model.train(was_training)

    def _validate(self, step: int) -> None:
        """The recipe's validation artefact of the EMA model (every process takes part; the recipe decides who works)."""
        self._with_ema_weights(lambda model: self.recipe.validate(model, step, self.output_dir))
        self.accelerator.wait_for_everyone()

    def _export_into(self, folder: Path, step: int) -> Export:
        """The recipe's export of the EMA model into ``folder``, its paths stated where ``write_export`` moves them."""
        exported = self._with_ema_weights(lambda model: self.recipe.export(model, folder, step))
        exported.artefacts = {name: self.output_dir / path.relative_to(folder) for name, path in exported.artefacts.items()}
        exported.summary = [line.replace(str(folder), str(self.output_dir)) for line in exported.summary]
        return exported

    def _export(self) -> Export:
        """The recipe's export of the EMA model, its model card and, with ``--push_to_hub``, the upload."""
        step = self.progress.global_step
        self._check_finite(step)  # also after a resume at the last step, which runs no training step
        exported = write_export(  # staged and renamed into place: a failed export leaves the previous one intact
            self.accelerator, self.output_dir, lambda folder: self._export_into(folder, step),
            lambda exported: self.recipe.write_model_card(self.output_dir, exported, step),
        )
        if self.accelerator.is_main_process:
            if self.args.push_to_hub:
                from huggingface_hub import create_repo, upload_folder

                args = self.args
                repo_id = create_repo(args.hub_model_id, private=args.hub_private_repo, token=args.hub_token, exist_ok=True).repo_id
                upload_folder(
                    repo_id=repo_id, folder_path=str(self.output_dir), token=args.hub_token,
                    commit_message=f"diffusers-edm training, step {step}",
                    ignore_patterns=["checkpoint-*", ".checkpoint-*", ".export.*", "logs/*", "samples/*", "accuracy/*"],
                )
        self.accelerator.wait_for_everyone()
        return exported


def train(args: argparse.Namespace) -> TrainingResult:
    trainer = Trainer(args)
    with trainer.preemption.signals_caught():
        trainer.setup()
        return trainer.train()


def main(argv: list[str] | None = None) -> TrainingResult:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args = parse_args(argv)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    started = time.perf_counter()
    try:
        result = train(args)
    except (NonFiniteTrainingError, OutputWriteError) as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingPreempted as stop:
        raise SystemExit(stop.exit_status) from None  # logged where it stopped
    if result.summary:  # the main process
        minutes = (time.perf_counter() - started) / 60
        print(f"Trained {result.global_step} steps in {minutes:.1f} min. {result.summary[0]}")
        for line in result.summary[1:]:
            print(line)
    return result


def cli() -> None:
    """Console entry point (``diffusers-edm-train``)."""
    main()
