"""Sample quality at small scale: EDM vs the standard diffusers recipe vs learned-variance DDPM (issue #6, part 4).

The EDM paper's claim, replicated on the embedded digits: EDM's preconditioning, loss and Heun sampler at 35
model evaluations produce samples at least as good as a DDPM sampled with 1000 steps.

Three recipes, each trained from the same initial conditions on the same data: the same class-conditional "tiny"
``UNet2DModel`` (the learned-variance one has 2 output channels instead of 1), the same batch, the same number of
optimizer steps, the same optimizer (AdamW, lr 1e-3 with the package's linear ramp, default betas), the same EMA
(``EDMEMAModel``, half-life ramp 0.05 of the images seen), and the same data pipeline (the training digits as an
image folder, read by the package's ``ImageDataset``). Only the diffusion formulation differs:

(a) ``edm``: ``EDMPrecond`` + ``EDMLoss``, trained by ``diffusers_edm.training.train.main`` (``--precond edm``);
    sampled with ``EDMHeunScheduler`` (deterministic Heun, EDM grid) at 9, 17 and 35 model evaluations.
(b) ``diffusers``: the recipe of diffusers' ``train_unconditional.py`` (plus class labels): eps-prediction
    ``UNet2DModel``, ``DDPMScheduler`` (linear betas 1e-4..0.02, 1000 steps), plain MSE on the noise, trained by the
    minimal loop below; sampled with ``DDPMScheduler`` at 1000 steps and ``DPMSolverMultistepScheduler`` (its
    defaults: DPM-Solver++ order 2) at 20.
(c) ``learned variance``: Improved DDPM's hybrid loss (cosine schedule, 1000 steps, learned-range variance),
    trained by the package's script (``--loss hybrid``); sampled ancestrally with ``LearnedVarianceDDPMScheduler``
    at 50 and 100 respaced steps.

The optimizer and EMA are shared rather than taken from each recipe's original (diffusers' example uses lr 1e-4 with
500 warm-up steps, which at this budget would compare learning rates, not recipes).

Scoring: a small CNN classifier trained on the real training digits (:mod:`benchmarks.digit_classifier`, its
held-out accuracy is reported); for each sampler, ``num_samples`` class-conditional samples (labels cycling
0..9, the same initial-noise seed for every sampler) are compared with the held-out real digits by the Frechet
distance in its 64-d feature space, and the classifier's accuracy on them says whether a requested "3" looks like
a 3. The row "real digits" is the same distance for as many real training digits: the floor at this sample count.

Class-conditional rather than unconditional: the per-class accuracy is the one check of the samples that the
Frechet distance cannot give (an unconditional model could score well with the wrong digit mix), and all three
recipes support labels the same way (a class-embedding table with a null row).

Outputs: the table (printed, ``sample_quality.md``), ``sample_quality.json``, one PNG grid per recipe and sampler
(``sample_quality_grid_*.png``, one column per class) and ``sample_quality.png`` (distance and accuracy vs NFE).

Run: ``python -m benchmarks.sample_quality [--quick] [--device cpu|cuda] [--output-dir DIR] [--work-dir DIR]``.
The work directory (default: a temporary one) receives the image folder and the two package training runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from benchmarks.digit_classifier import FeatureFrechet, fit_digit_scorer
from benchmarks.digits_split import NUM_CLASSES, write_image_folder
from benchmarks.reporting import (
    restores_torch_threads,
    write_record,
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    save_figure,
    start_run,
)
from diffusers_edm.pipelines import EDMPipeline, LearnedVariancePipeline
from diffusers_edm.training import train as package_training
from diffusers_edm.training.image_grid import image_grid
from diffusers_edm.training.data import ImageDataset, load_image_dataset
from diffusers_edm.training.ema import EDMEMAModel
from diffusers_edm.training.model_presets import make_backbone

SEED = 0
SAMPLE_SEED = 1


@dataclass(frozen=True)
class QualitySettings:
    """Sizes of one run (full or ``--quick``); the full run's values are documented in benchmarks/README.md."""

    resolution: int
    batch: int
    train_steps: int
    lr_rampup_kimg: float
    num_samples: int
    sample_batch: int
    classifier_epochs: int
    edm_steps: tuple[int, ...] = (5, 9, 18)  # Heun: 2N - 1 = 9, 17, 35 model evaluations
    ddpm_steps: int = 1000
    dpm_solver_steps: int = 20
    respaced_steps: tuple[int, ...] = (50, 100)


# Full: ~15 minutes on a shared 2-core CPU (one thread): 3 x 500 steps of ~0.35 s, then 128 samples x 1231 model
# evaluations (DDPM's 1000 dominate) at ~2 ms per image and evaluation.
FULL = QualitySettings(resolution=16, batch=64, train_steps=500, lr_rampup_kimg=5.0, num_samples=128, sample_batch=128,
                       classifier_epochs=15)
# Quick: every code path in seconds (8x8 digits, 4 steps); DDPM gets 50 steps instead of 1000 (the test's time budget).
QUICK = QualitySettings(resolution=8, batch=16, train_steps=4, lr_rampup_kimg=0.032, num_samples=20, sample_batch=20,
                        classifier_epochs=1, ddpm_steps=50, respaced_steps=(10, 20))


@dataclass
class SamplerResult:
    """One recipe + sampler: its samples (in [-1, 1]) and what they scored."""

    recipe: str
    sampler: str
    nfe: int
    images: torch.Tensor
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ training
def _package_arguments(settings: QualitySettings, data_dir: Path, output_dir: Path) -> list[str]:
    """The training script's command line shared by recipes (a) and (c): same data, batch, steps, optimizer, EMA."""
    never = str(10**9)  # no intermediate checkpoints or validation grids: they would only cost time
    return [
        "--train_data_dir", str(data_dir), "--label_column", "label", "--resolution", str(settings.resolution),
        "--train_batch_size", str(settings.batch), "--max_train_steps", str(settings.train_steps),
        "--lr_rampup_kimg", str(settings.lr_rampup_kimg), "--seed", str(SEED), "--report_to", "none",
        "--checkpointing_steps", never, "--validation_steps", never, "--num_validation_images", "10",
        "--logging_steps", str(max(settings.train_steps // 10, 1)), "--output_dir", str(output_dir), "--overwrite",
    ]


@contextlib.contextmanager
def accelerate_device(device: torch.device) -> Iterator[None]:
    """Make the training script's ``Accelerator`` use ``device``: Accelerate picks CUDA whenever it exists, so a
    ``--device cpu`` run on a GPU machine asks for the CPU through ``ACCELERATE_USE_CPU``.

    Accelerate keeps its device choice in a process-wide singleton; it is reset on entry (so the choice is honoured
    even if an earlier ``Accelerator`` chose otherwise) and on exit (so nothing leaks into the caller, e.g. a test
    session).
    """
    from accelerate.state import AcceleratorState, PartialState

    previous = os.environ.get("ACCELERATE_USE_CPU")
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        if previous is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = previous


def train_with_package(recipe_arguments: list[str], settings: QualitySettings, data_dir: Path, output_dir: Path,
                       device: torch.device) -> tuple[Path, float, list[float]]:
    """Train through ``diffusers_edm.training.train.main`` in this process; return (pipeline dir, seconds, logged losses)."""
    started = time.perf_counter()
    with accelerate_device(device):
        result = package_training.main(_package_arguments(settings, data_dir, output_dir) + recipe_arguments)
    if result.global_step != settings.train_steps:
        raise RuntimeError(f"The training script stopped at step {result.global_step}, not {settings.train_steps}.")
    return Path(result.output_dir), time.perf_counter() - started, result.losses


def train_diffusers_recipe(settings: QualitySettings, data_dir: Path, device: torch.device) -> tuple[torch.nn.Module, DDPMScheduler, float, list[float]]:
    """Recipe (b), written like diffusers' ``train_unconditional.py``: eps-prediction, linear betas, plain MSE.

    Same backbone, data pipeline, batch, steps, optimizer, learning-rate ramp and EMA as the package's runs (see the
    module docstring); returns the EMA model, its scheduler, the training seconds and the loss every 10% of the run.
    """
    started = time.perf_counter()
    torch.manual_seed(SEED)
    model = make_backbone("unet", "tiny", settings.resolution, 1, False, NUM_CLASSES).to(device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    dataset = ImageDataset(load_image_dataset(train_data_dir=str(data_dir)), "image", settings.resolution, 1, True, "label", SEED)
    loader_args = argparse.Namespace(train_batch_size=settings.batch, dataloader_num_workers=0, seed=SEED, caption_column=None)
    dataloader = package_training.make_dataloader(dataset, loader_args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, package_training.edm_learning_rate_ramp(settings.lr_rampup_kimg, settings.batch)
    )
    ema = EDMEMAModel(model.parameters(), batch_size=settings.batch)
    losses: list[float] = []
    step, log_every = 0, max(settings.train_steps // 10, 1)
    model.train()
    while step < settings.train_steps:
        for batch in dataloader:
            clean_images = batch["images"].to(device)
            class_labels = batch["labels"].to(device)
            noise = torch.randn(clean_images.shape, device=device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],), device=device).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            model_output = model(noisy_images, timesteps, class_labels=class_labels, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(model_output.float(), noise.float())
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            step += 1
            if step % log_every == 0:
                losses.append(float(loss.detach()))
            if step >= settings.train_steps:
                break
    ema.copy_to(model.parameters())
    return model.eval(), noise_scheduler, time.perf_counter() - started, losses


# ------------------------------------------------------------------------------------------------ sampling
def class_labels(count: int) -> torch.Tensor:
    """Labels cycling 0..9: every class equally often, and a 10-column grid shows one class per column."""
    return torch.arange(count) % NUM_CLASSES


def in_batches(count: int, batch: int, sample: Callable[[torch.Tensor, torch.Generator], torch.Tensor], device: torch.device) -> torch.Tensor:
    """``sample(labels, generator)`` over consecutive label chunks; one seeded generator for the whole set."""
    generator = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
    labels = class_labels(count)
    return torch.cat([sample(labels[start : start + batch], generator).cpu() for start in range(0, count, batch)])


@torch.no_grad()
def sample_diffusers(model: torch.nn.Module, scheduler: SchedulerMixin, steps: int, labels: torch.Tensor,
                     generator: torch.Generator, resolution: int, device: torch.device) -> torch.Tensor:
    """The standard diffusers sampling loop for an eps-prediction UNet (as ``DDPMPipeline``, plus class labels)."""
    scheduler.set_timesteps(steps, device=device)
    labels = labels.to(device)
    sample = torch.randn((len(labels), 1, resolution, resolution), generator=generator, device=device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        eps = model(model_input, t.reshape(1).expand(len(labels)).to(device), class_labels=labels, return_dict=False)[0]
        sample = scheduler.step(eps, t, sample, generator=generator, return_dict=False)[0]
    return sample.clamp(-1, 1)


def pipeline_images(pipeline: Any, labels: torch.Tensor, generator: torch.Generator, steps: int) -> torch.Tensor:
    """Images in [-1, 1] from one of the package's pipelines (which return [0, 1] with ``output_type="pt"``)."""
    images = pipeline(batch_size=len(labels), class_labels=labels.tolist(), num_inference_steps=steps, generator=generator,
                      output_type="pt").images
    return images * 2 - 1


def timed(function: Callable[[], torch.Tensor], what: str) -> tuple[torch.Tensor, float]:
    """``function()`` and its wall time in seconds, with a progress line (the full run is long and otherwise silent)."""
    started = time.perf_counter()
    value = function()
    elapsed = time.perf_counter() - started
    print(f"sampled {what} in {elapsed:.1f} s", flush=True)
    return value, elapsed


# ------------------------------------------------------------------------------------------------ report
def save_grid(images: torch.Tensor, path: Path, count: int = 50, min_cell: int = 48) -> Path:
    """The first ``count`` images as a PNG, one class per column (labels cycle 0..9), each cell at least ``min_cell`` px."""
    chosen = ((images[:count].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    # 16x16 digits are unreadable at their own size: image_grid enlarges the cells with visible pixels
    grid = image_grid(chosen, rows=math.ceil(len(chosen) / NUM_CLASSES), min_cell=min_cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


def slug(text: str) -> str:
    """A file-name-safe version of a row name."""
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_").replace("__", "_")


def quality_table(rows: list[SamplerResult], floor: dict[str, float]) -> str:
    """Markdown table: recipe, sampler, NFE, Frechet distance, classifier accuracy on samples, sampling seconds."""
    headers = ["recipe", "sampler", "NFE", "Frechet distance (features)", "classifier accuracy on samples", "sampling s"]
    body = [[r.recipe, r.sampler, r.nfe, f"{r.scores['frechet']:.2f}", f"{r.scores['accuracy'] * 100:.1f}%", f"{r.seconds:.1f}"]
            for r in rows]
    body.append(["real digits (train split)", "", "", f"{floor['frechet']:.2f}", f"{floor['accuracy'] * 100:.1f}%", ""])
    return markdown_table(headers, body)


SHORT_SAMPLER_NAMES = {"DDPMScheduler": "DDPM", "DPMSolverMultistepScheduler": "DPM-Solver++"}


def plot_quality(rows: list[SamplerResult], floor: dict[str, float], path: Path, title: str) -> Path | None:
    """Frechet distance and sample accuracy vs NFE (log x), one marker series per recipe, with the real-data floor."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"edm": ("tab:blue", "o-"), "diffusers": ("tab:red", "s"), "learned variance": ("tab:green", "^-")}
    for recipe in dict.fromkeys(r.recipe for r in rows):
        recipe_rows = [r for r in rows if r.recipe == recipe]
        color, marker = next((style for key, style in styles.items() if recipe.startswith(key)), ("black", "x"))
        for axis, key in zip(axes, ("frechet", "accuracy")):
            values = [r.scores[key] * (100 if key == "accuracy" else 1) for r in recipe_rows]
            axis.plot([r.nfe for r in recipe_rows], values, marker, color=color, label=recipe)
            for r, value in zip(recipe_rows, values):  # the two diffusers samplers are single points: name them
                short = SHORT_SAMPLER_NAMES.get(r.sampler.split(",")[0])
                if short:
                    axis.annotate(short, (r.nfe, value), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes[0].axhline(floor["frechet"], color="black", linestyle="--", linewidth=1, label="real digits (floor)")
    axes[1].axhline(floor["accuracy"] * 100, color="black", linestyle="--", linewidth=1, label="real digits")
    for axis, label in zip(axes, ("Frechet distance in classifier features (lower is better)", "classifier accuracy on samples, %")):
        axis.set_xscale("log")
        axis.set_xlabel("model evaluations per sample (NFE)")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ run
def evaluate_recipes(settings: QualitySettings, data_dir: Path, work_dir: Path,
                     device: torch.device) -> tuple[list[SamplerResult], dict[str, dict[str, Any]]]:
    """Train the three recipes and sample each with its samplers; return the sampler rows and per-recipe training info."""
    rows: list[SamplerResult] = []
    training: dict[str, dict[str, Any]] = {}
    count, batch, resolution = settings.num_samples, settings.sample_batch, settings.resolution

    # (a) EDM through the package's training script.
    edm_dir, seconds, losses = train_with_package(["--precond", "edm"], settings, data_dir, work_dir / "edm", device)
    training["edm"] = {"seconds": seconds, "losses": losses}
    pipeline = EDMPipeline.from_pretrained(edm_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    for steps in settings.edm_steps:
        images, elapsed = timed(lambda: in_batches(count, batch, lambda lab, gen: pipeline_images(pipeline, lab, gen, steps), device),
                                f"edm / EDMHeunScheduler {steps} steps")
        rows.append(SamplerResult("edm (EDMPrecond + EDMLoss)", f"EDMHeunScheduler, {steps} steps", 2 * steps - 1, images, elapsed))
    del pipeline

    # (b) the standard diffusers recipe, trained by the minimal loop.
    print(f"training the diffusers recipe ({settings.train_steps} steps) ...", flush=True)
    model, ddpm, seconds, losses = train_diffusers_recipe(settings, data_dir, device)
    print(f"trained the diffusers recipe in {seconds / 60:.1f} min", flush=True)
    training["diffusers"] = {"seconds": seconds, "losses": losses}
    samplers: list[tuple[str, SchedulerMixin, int]] = [
        ("DDPMScheduler", ddpm, settings.ddpm_steps),
        ("DPMSolverMultistepScheduler", DPMSolverMultistepScheduler.from_config(ddpm.config), settings.dpm_solver_steps),
    ]
    for name, scheduler, steps in samplers:
        images, elapsed = timed(lambda: in_batches(
            count, batch, lambda lab, gen: sample_diffusers(model, scheduler, steps, lab, gen, resolution, device), device),
            f"diffusers / {name} {steps} steps")
        rows.append(SamplerResult("diffusers (eps, DDPMScheduler linear)", f"{name}, {steps} steps", steps, images, elapsed))

    # (c) learned-variance DDPM with the hybrid loss, through the package's training script.
    hybrid_dir, seconds, losses = train_with_package(
        ["--loss", "hybrid", "--timestep_sampler", "uniform"], settings, data_dir, work_dir / "hybrid", device
    )
    training["learned variance"] = {"seconds": seconds, "losses": losses}
    pipeline = LearnedVariancePipeline.from_pretrained(hybrid_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    for steps in settings.respaced_steps:
        images, elapsed = timed(lambda: in_batches(count, batch, lambda lab, gen: pipeline_images(pipeline, lab, gen, steps), device),
                                f"learned variance / {steps} respaced steps")
        rows.append(SamplerResult("learned variance (hybrid loss, cosine)", f"LearnedVarianceDDPMScheduler, {steps} respaced",
                                  steps, images, elapsed))
    return rows, training


def real_frechet_spread(frechet: FeatureFrechet, images: torch.Tensor, labels: torch.Tensor, count: int,
                        draws: int = 10) -> dict[str, float]:
    """How much the Frechet distance of ``count`` real digits moves between random class-balanced draws.

    At a few hundred samples the distance is dominated by its finite-sample bias and varies from draw to draw;
    differences between recipes smaller than this spread are not resolved by the run.
    """
    generator = torch.Generator().manual_seed(SEED)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(NUM_CLASSES)]
    values = []
    for _ in range(draws):
        shuffled = [members[torch.randperm(len(members), generator=generator)] for members in per_class]
        index = torch.stack([shuffled[i % NUM_CLASSES][i // NUM_CLASSES] for i in range(count)])
        values.append(frechet.score(images[index])["frechet"])
    spread = torch.tensor(values)
    return {"mean": float(spread.mean()), "std": float(spread.std()), "min": float(spread.min()), "max": float(spread.max()),
            "draws": draws}


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, sample, score; print the table; write ``sample_quality.{md,json,png}`` and the grids; return the results."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the image folder and training runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()

    scorer = fit_digit_scorer(settings.resolution, settings.classifier_epochs, device)
    split, classifier_accuracy, frechet = scorer.split, scorer.heldout_accuracy, scorer.frechet
    # The floor: as many real training digits as samples, in the same class proportions as the samples.
    floor_index = scorer.real_in_label_order(settings.num_samples)
    floor = frechet.score(split.train_images[floor_index], split.train_labels[floor_index])
    floor["spread"] = real_frechet_spread(frechet, split.train_images, split.train_labels, settings.num_samples)
    print(f"feature classifier: held-out accuracy {classifier_accuracy * 100:.1f}% ({len(split.heldout_labels)} real digits)")

    with tempfile.TemporaryDirectory(prefix="sample_quality_") as temporary:
        work_dir = Path(args.work_dir) if args.work_dir is not None else Path(temporary)
        data_dir = write_image_folder(split, work_dir / "digits_train")
        rows, training = evaluate_recipes(settings, data_dir, work_dir, device)

    grids = {}
    for row in rows:
        row.scores = frechet.score(row.images, class_labels(len(row.images)))
        grids[f"{row.recipe} / {row.sampler}"] = str(save_grid(row.images, output_dir / f"sample_quality_grid_{slug(row.recipe.split(' (')[0] + ' ' + row.sampler)}.png"))
    grids["real digits"] = str(save_grid(split.train_images[floor_index], output_dir / "sample_quality_grid_real.png"))
    table = quality_table(rows, floor)
    edm35 = next(r for r in rows if r.recipe.startswith("edm") and r.nfe == 2 * max(settings.edm_steps) - 1)
    ddpm = next(r for r in rows if r.sampler.startswith("DDPMScheduler"))
    claim_holds = edm35.scores["frechet"] <= ddpm.scores["frechet"]
    # A gap smaller than the draw-to-draw spread of the distance of real digits is not resolved by this sample count.
    gap, noise = ddpm.scores["frechet"] - edm35.scores["frechet"], floor["spread"]["std"]
    resolved = abs(gap) > 2 * noise
    claim = (f"EDM at {edm35.nfe} NFE: Frechet {edm35.scores['frechet']:.2f}, accuracy {edm35.scores['accuracy'] * 100:.1f}%; "
             f"DDPM at {ddpm.nfe} steps: Frechet {ddpm.scores['frechet']:.2f}, accuracy {ddpm.scores['accuracy'] * 100:.1f}% -> "
             f"claim {'holds' if claim_holds else 'does NOT hold'} by the Frechet distance (gap {gap:+.2f}; "
             f"{'larger' if resolved else 'smaller'} than twice the real-digit spread {noise:.2f}: "
             f"{'resolved' if resolved else 'NOT resolved at this sample count'})")
    total_minutes = (time.perf_counter() - started) / 60
    print(f"\nSample quality, {settings.train_steps} steps x batch {settings.batch} per recipe, {settings.num_samples} samples per "
          f"sampler, {settings.resolution}x{settings.resolution}, on {device} ({total_minutes:.1f} min)\n")
    print(table)
    spread = floor["spread"]
    print(f"\nfeature classifier held-out accuracy: {classifier_accuracy * 100:.1f}%; Frechet distance of {settings.num_samples} "
          f"real digits over {spread['draws']} draws: {spread['mean']:.2f} +/- {spread['std']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})")
    print(claim)

    machine = machine_description(device)
    title = (f"Digits {settings.resolution}x{settings.resolution}, same tiny UNet, {settings.train_steps} steps x batch "
             f"{settings.batch}, {settings.num_samples} samples per sampler")
    png = plot_quality(rows, floor, output_dir / "sample_quality.png", title)
    training_md = markdown_table(["recipe", "training s", "loss (every 10% of the run)"],
                                 [[name, f"{info['seconds']:.0f}", " ".join(f"{v:.3f}" for v in info["losses"])] for name, info in training.items()])
    markdown_path = output_dir / "sample_quality.md"
    markdown_path.write_text(
        f"# Sample quality ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, {total_minutes:.1f} min)\n\n"
        f"{table}\n\nFeature classifier held-out accuracy: {classifier_accuracy * 100:.1f}%. Frechet distance of "
        f"{settings.num_samples} real digits over {spread['draws']} class-balanced draws: {spread['mean']:.2f} +/- {spread['std']:.2f}.\n\n"
        f"{claim}.\n\n{training_md}\n"
    )
    result = {
        "settings": settings.__dict__,
        "machine": machine,
        "quick": args.quick,
        "classifier_accuracy": classifier_accuracy,
        "floor": floor,
        "rows": [{"recipe": r.recipe, "sampler": r.sampler, "nfe": r.nfe, "seconds": r.seconds, **r.scores} for r in rows],
        "training": training,
        "claim_holds": claim_holds,
        "claim_resolved": resolved,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grids": grids},
    }
    write_record(output_dir / "sample_quality.json", result)
    return result


if __name__ == "__main__":
    main()
