"""Text-to-image on the embedded digits (issue #16): prompt adherence and Frechet distance of a ``UNet2DConditionModel``
and a ``PixArtTransformer2DModel`` text model trained at equal compute, at classifier-free guidance scales 1, 2, 4.

Both models are trained by the package's own text recipe, ``diffusers_edm.training.train`` (``--caption_column text``
on the embedded digits: eight phrasings per digit, one drawn per image and step, 10% replaced by the empty prompt; the
local 2-layer CLIP text encoder built from the captions, the same for both as it is drawn from ``--seed``), with the
same data, batch, steps, seed, learning rate and EMA: the same images seen. Only ``--backbone`` differs:

- **unet**: ``--backbone unet --model_size tiny`` (``UNet2DConditionModel``, cross-attention in its 8x8 / 4x4 levels);
- **pixart**: ``--backbone dit --model_size tiny`` (``PixArtTransformer2DModel``, 4 blocks of width 128, patch 2, on
  the 16x16 pixels: 64 tokens). Both backbones see the same pixels, with no autoencoder of unequal quality in
  between (a VAE trained here would dominate the result).

Equal compute: the two presets cost nearly the same per image; the run counts each denoiser's forward FLOPs at one
image (``torch.utils.flop_counter``, with the real prompt length) and reports them with the measured training wall
time, so the match is stated, not assumed.

Sampling: every arm (backbone x ``w``) generates, for each prompt "a handwritten 0" ... "a handwritten 9", one image
per seed ``SEED + j`` (``j < per_prompt``; one generator per image, so column j of a grid starts from the same noise for every prompt and in
every arm), with the pipeline's ``EDMHeunScheduler`` at ``heun_steps`` (2N - 1 calls of the
guided denoiser). The same seeds in every arm.

Scoring (the quality benchmark's :func:`benchmarks.digit_classifier.fit_digit_scorer`, a CNN trained on the real
training digits): **adherence** = that classifier's accuracy of predicting the prompt's digit (binomial standard error
``sqrt(p (1 - p) / n)``), and the **Frechet distance** in its features to the held-out real digits, with the spread of
the same distance over class-balanced draws of as many real digits (a gap above twice that std is called resolved).
Guidance's effect on adherence is judged per backbone by the paired standard error of the per-image difference of hits
(same prompts and seeds); backbones at the same ``w`` by the unpaired one.

Outputs (``benchmarks/results/``): ``text_to_image_quality.md`` (table, verdicts), ``.json``, ``.png`` (adherence and
distance against ``w``) and ``text_to_image_quality_grid_<backbone>_w<w>.png`` (rows = prompts, columns = seeds).

Run: ``python -m benchmarks.text_to_image_quality [--quick] [--work-dir DIR] [--device cpu|cuda] [--output-dir DIR]``.
``--quick`` trains both for a few steps at 8x8 and samples two images per prompt at 3 Heun steps (seconds).

``--pipeline PATH`` (repeatable) trains nothing: it scores already trained ``EDMTextToImagePipeline`` directories with
the same arms (prompts, seeds, ``w``, sampler, scorer; the scorer is fitted at the pipeline's resolution, as it is at
the trained models' resolution) and writes ``text_to_image_quality_pretrained.{md,json,png}`` and
``text_to_image_quality_pretrained_grid_<name>_w<w>.png`` (``<name>``: the directory's name).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.digit_classifier import features_and_predictions, fit_digit_scorer
from benchmarks.low_budget_quality import NEVER, budget_grid
from benchmarks.reporting import (
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    restores_torch_threads,
    save_figure,
    start_run,
    write_record,
)
from benchmarks.sample_quality import accelerate_device, real_frechet_spread
from diffusers_edm.pipelines import EDMTextToImagePipeline
from diffusers_edm.training import train as package_training
from diffusers_edm.training.arguments import parse_args

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "text_to_image_benchmark"
SEED = 1000  # of the sampling noise: column j of every grid is seed SEED + j
PROMPTS = tuple(f"a handwritten {digit}" for digit in range(10))
BACKBONES = {"unet": "UNet2DConditionModel", "pixart": "PixArtTransformer2DModel"}
# README command 1b (the main text job), without its validation grids and checkpoints; the steps come from the settings.
TEXT_ARGUMENTS = (
    "--overwrite", "--caption_column", "text", "--proportion_empty_prompts", "0.1", "--cache_text_embeddings",
    "--guidance_scale", "2", "--model_size", "tiny", "--checkpointing_steps", NEVER, "--validation_steps", NEVER,
    "--num_validation_images", "10", "--report_to", "none", "--seed", "0",
)


@dataclass(frozen=True)
class TextSettings:
    """Sizes of one run (full or ``--quick``); the full run's values are documented in benchmarks/README.md."""

    train_steps: int
    train_batch: int
    per_prompt: int  # images per prompt and arm (seeds SEED .. SEED + per_prompt - 1)
    heun_steps: int
    guidance_scales: tuple[float, ...]
    classifier_epochs: int
    grid_columns: int
    overrides: tuple[str, ...] = ()


# Full: at the digits' native 8x8 (the embedded digits are scikit-learn's 8x8 images; README command 1b upscales them
# to 16x16, which costs ~4x per step and adds no information), 300 steps of batch 64 per backbone (19.2k images seen),
# 20 images per prompt per arm (200 per arm, 6 arms), Heun 10 steps: 16 minutes on the shared 2-core CPU (2026-11-30).
FULL = TextSettings(train_steps=300, train_batch=64, per_prompt=20, heun_steps=10, guidance_scales=(1.0, 2.0, 4.0),
                    classifier_epochs=10, grid_columns=10, overrides=("--resolution", "8"))
QUICK = TextSettings(train_steps=3, train_batch=8, per_prompt=2, heun_steps=3, guidance_scales=(1.0, 2.0),
                     classifier_epochs=1, grid_columns=2, overrides=("--resolution", "8", "--sample_steps", "3"))


# ------------------------------------------------------------------------------------------------ training
def training_arguments(backbone: str, output_dir: Path, settings: TextSettings) -> list[str]:
    """The package's text-to-image command for one backbone (``unet`` or ``pixart``, the latter ``--backbone dit``)."""
    return ["--output_dir", str(output_dir), *TEXT_ARGUMENTS, "--backbone", "dit" if backbone == "pixart" else "unet",
            "--max_train_steps",
            str(settings.train_steps), "--train_batch_size", str(settings.train_batch), *settings.overrides]


def train_backbone(backbone: str, output_dir: Path, settings: TextSettings, device: torch.device) -> dict[str, Any]:
    """Train one backbone with ``diffusers_edm.training.train.train(args)``; return its directory, seconds and losses."""
    args = parse_args(training_arguments(backbone, output_dir, settings))
    started = time.perf_counter()
    with accelerate_device(device):
        result = package_training.train(args)
    seconds = time.perf_counter() - started
    if result.global_step != settings.train_steps:
        raise RuntimeError(f"{backbone}: the training stopped at step {result.global_step}, not {settings.train_steps}.")
    return {"dir": str(result.output_dir), "seconds": seconds, "losses": list(result.losses),
            "images_seen": settings.train_steps * settings.train_batch}


def forward_flops(pipeline: EDMTextToImagePipeline) -> tuple[int, int]:
    """The denoiser's forward FLOPs for one image and one prompt (the real prompt length), and its parameter count."""
    embeds = pipeline.prompt_encoder.encode([PROMPTS[0]], pipeline.device).embeds
    denoiser = pipeline.denoiser
    sample = torch.zeros(1, denoiser.image_channels, *denoiser.sample_size, device=pipeline.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        denoiser(sample, torch.ones(1, device=pipeline.device), encoder_hidden_states=embeds)
    return counter.get_total_flops(), sum(p.numel() for p in denoiser.parameters())


# ------------------------------------------------------------------------------------------------ sampling
@dataclass
class ArmRun:
    """One backbone at one guidance scale: images (in [-1, 1], ordered seed-major: image ``j * 10 + d`` is prompt d at
    seed ``SEED + j``), the prompts' digits, the seconds it took and its scores."""

    backbone: str
    scale: float
    images: torch.Tensor
    labels: torch.Tensor
    seconds: float
    scores: dict[str, Any] = field(default_factory=dict)
    hits: torch.Tensor | None = None

    @property
    def key(self) -> str:
        return f"{self.backbone} w={self.scale:g}"


def sample_arm(pipeline: EDMTextToImagePipeline, backbone: str, scale: float, settings: TextSettings) -> ArmRun:
    """``per_prompt`` images for each prompt in one pipeline call: image ``j * 10 + d`` is prompt d from its own
    generator seeded ``SEED + j`` (so column j starts from the same noise for every prompt and in every arm)."""
    started = time.perf_counter()
    seeds = [SEED + j for j in range(settings.per_prompt) for _ in PROMPTS]
    images = pipeline(prompt=list(PROMPTS) * settings.per_prompt, guidance_scale=scale,
                      num_inference_steps=settings.heun_steps, output_type="pt",
                      generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]).images
    labels = torch.arange(len(PROMPTS)).repeat(settings.per_prompt)
    return ArmRun(backbone, scale, images.cpu() * 2 - 1, labels, time.perf_counter() - started)


def score_arm(run: ArmRun, scorer: Any) -> None:
    """Adherence (accuracy, its binomial standard error, per digit) and the Frechet distance to the real digits."""
    _, predictions = features_and_predictions(scorer.classifier, run.images)
    run.hits = (predictions == run.labels).float()
    accuracy = float(run.hits.mean())
    per_digit = [float(run.hits[run.labels == d].mean()) for d in range(len(PROMPTS))]
    run.scores = {"accuracy": accuracy, "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(run.hits)),
                  "frechet": scorer.frechet.score(run.images)["frechet"], "per_digit_accuracy": per_digit,
                  "images": len(run.hits)}


# ------------------------------------------------------------------------------------------------ verdicts
def verdict_lines(runs: list[ArmRun], spread_std: float) -> tuple[list[str], list[dict[str, Any]]]:
    """Does guidance raise adherence (per backbone, highest w vs w = 1, paired)? Which backbone is better at each w?"""
    by_key = {(r.backbone, r.scale): r for r in runs}
    scales = sorted({r.scale for r in runs})
    backbones = list(dict.fromkeys(r.backbone for r in runs))
    lines, records = [], []
    for backbone in backbones:
        base = by_key[(backbone, scales[0])]
        for scale in scales[1:]:
            guided = by_key[(backbone, scale)]
            difference = guided.hits - base.hits
            gain, se = float(difference.mean()), float(difference.std() / math.sqrt(len(difference)))
            resolved = abs(gain) > 2 * se
            records.append({"question": "guidance raises adherence", "backbone": backbone, "w": scale, "gain": gain,
                            "paired_se": se, "resolved": resolved})
            lines.append(f"{backbone}, w={scale:g} vs w={scales[0]:g}: adherence {gain * 100:+.1f} points "
                         f"(paired SE {se * 100:.1f}) -> " + (("raises" if gain > 0 else "lowers") if resolved else
                                                              "not resolved (within 2 SE)")
                         + f"; Frechet {base.scores['frechet']:.2f} -> {guided.scores['frechet']:.2f}")
    for scale in scales if set(BACKBONES) <= set(backbones) else ():
        unet, pixart = by_key[("unet", scale)], by_key[("pixart", scale)]
        gap = unet.scores["accuracy"] - pixart.scores["accuracy"]
        se = math.sqrt(unet.scores["accuracy_se"] ** 2 + pixart.scores["accuracy_se"] ** 2)
        frechet_gap = unet.scores["frechet"] - pixart.scores["frechet"]
        accuracy_winner = ("unet" if gap > 0 else "pixart") if abs(gap) > 2 * se else "tie"
        frechet_winner = ("pixart" if frechet_gap > 0 else "unet") if abs(frechet_gap) > 2 * spread_std else "tie"
        records.append({"question": "better backbone at equal compute", "w": scale, "accuracy_gap_unet_minus_pixart": gap,
                        "accuracy_gap_se": se, "frechet_gap_unet_minus_pixart": frechet_gap,
                        "accuracy_winner": accuracy_winner, "frechet_winner": frechet_winner})
        lines.append(f"w={scale:g}: adherence unet - pixart {gap * 100:+.1f} points (SE {se * 100:.1f}) -> {accuracy_winner}; "
                     f"Frechet unet - pixart {frechet_gap:+.2f} (real-draw std {spread_std:.2f}) -> {frechet_winner}")
    return lines, records


# ------------------------------------------------------------------------------------------------ report
def results_table(runs: list[ArmRun], spread: dict[str, float], floor: dict[str, float]) -> str:
    rows = [[r.backbone, f"{r.scale:g}", f"{r.scores['accuracy'] * 100:.1f} +/- {r.scores['accuracy_se'] * 100:.1f}",
             f"{r.scores['frechet']:.2f}", f"{r.seconds:.1f}",
             " ".join(f"{a * 100:.0f}" for a in r.scores["per_digit_accuracy"])] for r in runs]
    rows.append(["real digits", "-", f"{floor['accuracy'] * 100:.1f}", f"{spread['mean']:.2f} +/- {spread['std']:.2f}",
                 "-", "-"])
    return markdown_table(["backbone", "w", "adherence % (+/- SE)", "Frechet", "sampling s", "adherence % per digit 0-9"],
                          rows)


def plot_runs(runs: list[ArmRun], spread: dict[str, float], floor: dict[str, float], path: Path, title: str) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    backbones = list(dict.fromkeys(r.backbone for r in runs))
    for backbone, colour in zip(backbones, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
        points = sorted((r.scale, r) for r in runs if r.backbone == backbone)
        scales = [s for s, _ in points]
        axes[0].errorbar(scales, [r.scores["accuracy"] * 100 for _, r in points],
                         yerr=[2 * r.scores["accuracy_se"] * 100 for _, r in points], fmt="o-", color=colour, capsize=3,
                         label=f"{backbone} ({BACKBONES[backbone]})" if backbone in BACKBONES else backbone)
        axes[1].plot(scales, [r.scores["frechet"] for _, r in points], "o-", color=colour, label=backbone)
    axes[0].axhline(floor["accuracy"] * 100, color="black", linestyle=":", linewidth=1, label="real digits")
    axes[0].axhline(10, color="grey", linestyle="--", linewidth=1, label="chance")
    axes[1].axhspan(spread["mean"] - spread["std"], spread["mean"] + spread["std"], color="black", alpha=0.12,
                    label="real digits, mean +/- std")
    axes[0].set_ylabel("prompt adherence: classifier accuracy, % (bars: 2 SE)")
    axes[1].set_ylabel("Frechet distance in classifier features (lower is better)")
    for axis in axes:
        axis.set_xlabel("classifier-free guidance scale w")
        axis.set_xticks(sorted({r.scale for r in runs}))
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ run
def score_runs(runs: list[ArmRun], settings: TextSettings, device: torch.device) -> dict[str, Any]:
    """Fit the digit scorer at the samples' resolution, score every arm; the real-digit floor and distance spread."""
    resolutions = {r.images.shape[-1] for r in runs}
    if len(resolutions) != 1:
        raise ValueError(f"every arm must be sampled at one resolution (one scorer), got {sorted(resolutions)}.")
    resolution = resolutions.pop()
    scorer = fit_digit_scorer(resolution, settings.classifier_epochs, device)
    count = len(PROMPTS) * settings.per_prompt
    real_index = scorer.real_in_label_order(count)
    floor = scorer.frechet.score(scorer.split.train_images[real_index], scorer.split.train_labels[real_index])
    spread = real_frechet_spread(scorer.frechet, scorer.split.train_images, scorer.split.train_labels, count)
    for run in runs:
        score_arm(run, scorer)
    return {"resolution": resolution, "scorer": scorer, "count": count, "floor": floor, "spread": spread}


def write_grids(runs: list[ArmRun], output_dir: Path, prefix: str, columns: int) -> dict[str, str]:
    """One grid per arm (rows: prompts, columns: seeds), ``<prefix>_grid_<backbone>_w<w>.png``."""
    grids = {}
    for run in runs:
        by_prompt = [(PROMPTS[d], run.images[run.labels == d]) for d in range(len(PROMPTS))]
        grids[run.key] = str(budget_grid(by_prompt, output_dir / f"{prefix}_grid_{run.backbone}_w{run.scale:g}.png", columns))
    return grids


def sampling_header(settings: TextSettings, scored: dict[str, Any], device: torch.device, minutes: float) -> str:
    resolution, count = scored["resolution"], scored["count"]
    return (f"Text-to-image on the embedded digits ({resolution}x{resolution}, pixels), prompts \"a handwritten 0\" ... "
            f"\"a handwritten 9\", {settings.per_prompt} seeds per prompt ({count} images per arm, the same seeds in "
            f"every arm), EDMHeunScheduler {settings.heun_steps} steps ({2 * settings.heun_steps - 1} guided calls), "
            f"on {device} ({minutes:.1f} min)")


def scoring_note(scored: dict[str, Any]) -> str:
    spread = scored["spread"]
    return (f"Adherence: the scoring classifier's accuracy of reading the prompt's digit (held-out accuracy on real "
            f"digits {scored['scorer'].heldout_accuracy * 100:.1f}%), +/- its binomial standard error sqrt(p(1-p)/n). "
            f"Frechet: in that classifier's 64-d features, to the held-out real digits; the 'real digits' row is "
            f"{scored['count']} real training digits, mean +/- std over {spread['draws']} class-balanced draws (the noise "
            f"of a distance).")


def score_pretrained(paths: Sequence[Path], settings: TextSettings, device: torch.device, output_dir: Path,
                     quick: bool) -> dict[str, Any]:
    """``--pipeline``: sample and score already trained text pipelines with the benchmark's arms; train nothing."""
    started = time.perf_counter()
    runs: list[ArmRun] = []
    models: dict[str, Any] = {}
    for path in paths:
        name = Path(path).resolve().name
        if name in models:
            raise ValueError(f"--pipeline {path}: two pipelines named {name!r}; give directories with distinct names.")
        pipeline = EDMTextToImagePipeline.from_pretrained(path).to(device)
        pipeline.set_progress_bar_config(disable=True)
        flops, parameters = forward_flops(pipeline)
        models[name] = {"dir": str(path), "denoiser": type(pipeline.denoiser.backbone).__name__,
                        "forward_flops_per_image": flops, "parameters": parameters}
        for scale in settings.guidance_scales:
            runs.append(sample_arm(pipeline, name, scale, settings))
            print(f"  sampled {runs[-1].key} in {runs[-1].seconds:.1f} s", flush=True)
    scored = score_runs(runs, settings, device)
    lines, records = verdict_lines(runs, scored["spread"]["std"])
    grids = write_grids(runs, output_dir, "text_to_image_quality_pretrained", settings.grid_columns)
    total_minutes = (time.perf_counter() - started) / 60
    header = sampling_header(settings, scored, device, total_minutes)
    models_line = "Pipelines (already trained; nothing trained here): " + "; ".join(
        f"{name} = {model['dir']} ({model['denoiser']}, {model['parameters'] / 1e6:.2f} M parameters, forward "
        f"{model['forward_flops_per_image'] / 1e6:.1f} M FLOPs per image)" for name, model in models.items()) + "."
    table = results_table(runs, scored["spread"], scored["floor"])
    note = scoring_note(scored)
    print(f"\n{header}\n\n{models_line}\n\n{table}\n\n{note}\n\n" + "\n".join(lines))
    machine = machine_description(device)
    png = plot_runs(runs, scored["spread"], scored["floor"], output_dir / "text_to_image_quality_pretrained.png",
                    f"Text-to-image digits, already trained pipelines, {scored['count']} images per point")
    markdown_path = output_dir / "text_to_image_quality_pretrained.md"
    markdown_path.write_text(
        f"# Text-to-image quality of already trained pipelines ({'quick' if quick else 'full'} arms, "
        f"{machine['date']}, device {device}, {total_minutes:.1f} min)\n\n{header}.\n\n{models_line}\n\n{table}\n\n"
        f"{note}\n\n## Verdicts\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    )
    result = {
        "settings": {**settings.__dict__, "prompts": PROMPTS, "seed": SEED, "resolution": scored["resolution"]},
        "machine": machine,
        "quick": quick,
        "models": models,
        "classifier_accuracy": scored["scorer"].heldout_accuracy,
        "floor": {**scored["floor"], "spread": scored["spread"]},
        "rows": [{"arm": r.key, "backbone": r.backbone, "w": r.scale, "seconds": r.seconds, **r.scores} for r in runs],
        "verdicts": records,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grids": grids},
    }
    write_record(output_dir / "text_to_image_quality_pretrained.json", result)
    return result


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train both backbones at equal compute, sample every (backbone, w) arm, score; write table, verdicts, plot, grids."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"where the two models are trained (default {DEFAULT_WORK_DIR}; --quick: a temporary directory)")
    parser.add_argument("--pipeline", type=Path, action="append", default=None, metavar="PATH",
                        help="score this already trained EDMTextToImagePipeline directory instead of training "
                             "(repeatable); writes text_to_image_quality_pretrained.*")
    args = parser.parse_args(argv)
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
    if args.pipeline:
        return score_pretrained(args.pipeline, settings, device, output_dir, args.quick)
    started = time.perf_counter()

    runs: list[ArmRun] = []
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="text_to_image_quality_") as temporary:
        work_dir = args.work_dir if args.work_dir is not None else Path(temporary) if args.quick else DEFAULT_WORK_DIR
        for backbone in BACKBONES:
            print(f"training {backbone} ({settings.train_steps} steps of batch {settings.train_batch}) ...", flush=True)
            models[backbone] = train_backbone(backbone, Path(work_dir) / backbone, settings, device)
            pipeline = EDMTextToImagePipeline.from_pretrained(models[backbone]["dir"]).to(device)
            pipeline.set_progress_bar_config(disable=True)
            flops, parameters = forward_flops(pipeline)
            models[backbone].update(denoiser=type(pipeline.denoiser.backbone).__name__, forward_flops_per_image=flops, parameters=parameters,
                                    training_flops=3 * flops * models[backbone]["images_seen"])
            for scale in settings.guidance_scales:
                runs.append(sample_arm(pipeline, backbone, scale, settings))
                print(f"  sampled {runs[-1].key} in {runs[-1].seconds:.1f} s", flush=True)
    scored = score_runs(runs, settings, device)
    resolution, scorer, count = scored["resolution"], scored["scorer"], scored["count"]
    floor, spread = scored["floor"], scored["spread"]
    lines, records = verdict_lines(runs, spread["std"])
    grids = write_grids(runs, output_dir, "text_to_image_quality", settings.grid_columns)

    total_minutes = (time.perf_counter() - started) / 60
    unet, pixart = models["unet"], models["pixart"]
    compute = (f"Equal training compute: {settings.train_steps} steps x batch {settings.train_batch} = "
               f"{unet['images_seen']} images seen by each; forward FLOPs per image (one prompt, counted by "
               f"torch.utils.flop_counter): unet {unet['forward_flops_per_image'] / 1e6:.1f} M, pixart "
               f"{pixart['forward_flops_per_image'] / 1e6:.1f} M (ratio pixart/unet "
               f"{pixart['forward_flops_per_image'] / unet['forward_flops_per_image']:.2f}); parameters unet "
               f"{unet['parameters'] / 1e6:.2f} M, pixart {pixart['parameters'] / 1e6:.2f} M; training wall time unet "
               f"{unet['seconds'] / 60:.1f} min, pixart {pixart['seconds'] / 60:.1f} min (shared CPU: a rough figure); "
               f"final logged loss unet {unet['losses'][-1] if unet['losses'] else float('nan'):.4f}, pixart "
               f"{pixart['losses'][-1] if pixart['losses'] else float('nan'):.4f}.")
    header = sampling_header(settings, scored, device, total_minutes)
    note = scoring_note(scored)
    table = results_table(runs, spread, floor)
    print(f"\n{header}\n\n{compute}\n\n{table}\n\n{note}\n\n" + "\n".join(lines))

    machine = machine_description(device)
    png = plot_runs(runs, spread, floor, output_dir / "text_to_image_quality.png",
                    f"Text-to-image digits: UNet vs PixArt at equal compute ({unet['images_seen']} images seen), "
                    f"{count} images per point")
    markdown_path = output_dir / "text_to_image_quality.md"
    markdown_path.write_text(
        f"# Text-to-image quality ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{total_minutes:.1f} min)\n\n{header}.\n\n{compute}\n\n{table}\n\n{note}\n\n## Verdicts\n\n"
        + "\n".join(f"- {line}" for line in lines) + "\n"
    )
    result = {
        "settings": {**settings.__dict__, "prompts": PROMPTS, "seed": SEED, "resolution": resolution,
                     "training_arguments": TEXT_ARGUMENTS},
        "machine": machine,
        "quick": args.quick,
        "models": models,
        "classifier_accuracy": scorer.heldout_accuracy,
        "floor": {**floor, "spread": spread},
        "rows": [{"arm": r.key, "backbone": r.backbone, "w": r.scale, "seconds": r.seconds, **r.scores} for r in runs],
        "verdicts": records,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grids": grids},
    }
    write_record(output_dir / "text_to_image_quality.json", result)
    return result


if __name__ == "__main__":
    main()
