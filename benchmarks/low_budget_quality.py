"""Low-budget samplers on a trained model (issue #10): sample quality at 5, 8, 10 and 15 model calls.

The exact-ODE benchmark (:mod:`benchmarks.sampler_accuracy`) measures how far each sampler lands from the true
solution; this one asks what a user sees: the main job's class-conditional EDM digits model (README command 1,
guidance scale 2) sampled with every low-budget sampler at the same budgets, with the same labels and the same
initial noise, and scored with the quality benchmark's harness (:mod:`benchmarks.sample_quality`): the Frechet
distance in a digit classifier's feature space to the held-out real digits, and the classifier's accuracy on
the samples (does a requested "3" look like a 3?).

Samplers, all through ``EDMPipeline`` on EDM's noise range [0.002, 80] with rho = 7:

- the package's ``EDMMultistepScheduler``: iPNDM orders 3 and 4, DPM-Solver++ orders 2 and 3, UniPC (bh2) orders 2
  and 3, each with and without the analytical first step (AFS: the first step takes the data-free denoiser
  ``c_skip(sigma_max) x`` instead of a model call, so the budget's calls all go to later levels);
- the package's ``EDMHeunScheduler`` (deterministic Heun, EDM grid) with the largest N whose 2N - 1 calls fit;
- diffusers' ``EDMDPMSolverMultistepScheduler`` (DPM-Solver++, orders 2 and 3, Karras sigmas) and
  ``EDMEulerScheduler``.

A budget counts model evaluations: calls of the denoiser's ``forward``, counted by a hook on the pipeline's
denoiser (classifier-free guidance doubles the batch of a call, not the number of calls); every run checks that
the count is what the sampler promises.

Noise: the distance of a few hundred samples varies from draw to draw; the script reports, as ``sample_quality``
does, the distance of as many real digits over random class-balanced draws (mean, std: "the spread between
draws"), calls a difference resolved when it exceeds twice that std, and adds a paired bootstrap of each budget's
winner against its runner-up (the samplers share their seeds, so their difference is less noisy than either).

The model: ``--model-dir DIR`` loads a trained pipeline (``EDMPipeline.from_pretrained``). Without it the script
uses ``runs/digits`` (the main job's output directory), training it there first with exactly README command 1's
arguments when it holds no pipeline yet. ``--quick`` trains a tiny model for a few steps in a temporary directory
instead (same arguments at 8x8 and 4 steps), so the test suite never trains the real one.

Outputs (``benchmarks/results/``): ``low_budget_quality.md`` (table: sampler x calls, distance / accuracy),
``low_budget_quality.json``, ``low_budget_quality.png`` (distance and accuracy vs calls per sampler) and one grid
per budget, ``low_budget_grid_<calls>_calls.png`` (one row per sampler, the same labels and seeds in every row,
real digits in the last row).

Run: ``python -m benchmarks.low_budget_quality [--quick] [--model-dir DIR] [--device cpu|cuda] [--output-dir DIR]``.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, SchedulerMixin
from diffusers.utils import logging as diffusers_logging
from PIL import Image, ImageDraw

from benchmarks.digit_classifier import FeatureFrechet, features_and_predictions, train_classifier
from benchmarks.digits_split import NUM_CLASSES, load_digits_split
from benchmarks.distribution_distances import moment_frechet_distance
from benchmarks.reporting import (
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    resolve_device,
    restores_torch_threads,
    save_figure,
    write_record,
)
from benchmarks.sample_quality import accelerate_device, class_labels, in_batches, pipeline_images, real_frechet_spread, timed
from diffusers_edm import EDMHeunScheduler, EDMMultistepScheduler
from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training import train as package_training

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "runs" / "digits"
# README command 1 (the main job's digits model), after its `--output_dir runs/digits`.
MAIN_MODEL_ARGUMENTS = (
    "--overwrite", "--label_column", "label", "--label_dropout", "0.1", "--guidance_scale", "2",
    "--max_train_steps", "1200", "--num_validation_images", "40", "--validation_steps", "600", "--checkpointing_steps", "600",
)
GUIDANCE_SCALE = 2.0  # the main job's (README command 1 samples its validation grids with it)
NEVER = str(10**9)
# --quick: the same command shrunk to seconds (later flags win in argparse); nothing of it is the real model.
QUICK_TRAINING_OVERRIDES = (
    "--resolution", "8", "--train_batch_size", "8", "--max_train_steps", "4", "--checkpointing_steps", NEVER,
    "--validation_steps", NEVER, "--num_validation_images", "10", "--sample_steps", "3", "--report_to", "none",
)
BOOTSTRAP_SEED = 2
MULTISTEP_SOLVERS = (("ipndm", (3, 4)), ("dpmpp", (2, 3)), ("unipc", (2, 3)))


@dataclass(frozen=True)
class Sampler:
    """One row of the benchmark: a scheduler and its options, built fresh for every budget."""

    scheduler: str  # class name, the table's first column
    options: str  # what distinguishes the row, the table's second column
    family: str  # "package" or "diffusers"
    make: Callable[[], SchedulerMixin]
    heun: bool = False  # 2N - 1 model calls for N steps; otherwise one call per step

    @property
    def key(self) -> str:
        return f"{self.scheduler} {self.options}".strip()

    def inference_steps(self, budget: int) -> int:
        """``num_inference_steps`` for at most ``budget`` model calls (Heun: the largest N with 2N - 1 <= budget)."""
        return (budget + 1) // 2 if self.heun else budget

    def calls(self, budget: int) -> int:
        """Model calls of a run at ``budget`` (what the call counter must see)."""
        steps = self.inference_steps(budget)
        return 2 * steps - 1 if self.heun else steps


def all_samplers() -> list[Sampler]:
    """Every sampler of the full run, the package's first (the order of the table, plot and grid rows)."""
    rows = []
    for solver, orders in MULTISTEP_SOLVERS:
        for order in orders:
            for afs in (False, True):
                make = functools.partial(EDMMultistepScheduler, solver=solver, solver_order=order, analytical_first_step=afs)
                rows.append(Sampler("EDMMultistepScheduler", f"{solver}-{order}" + (" AFS" if afs else ""), "package", make))
    rows.append(Sampler("EDMHeunScheduler", "Heun", "package", EDMHeunScheduler, heun=True))
    for order in (2, 3):
        rows.append(Sampler("EDMDPMSolverMultistepScheduler", f"DPM-Solver++ {order}M", "diffusers",
                            functools.partial(EDMDPMSolverMultistepScheduler, solver_order=order)))
    rows.append(Sampler("EDMEulerScheduler", "Euler", "diffusers", EDMEulerScheduler))
    return rows


@dataclass(frozen=True)
class LowBudgetSettings:
    """Sizes of one run (full or ``--quick``); the full run's values are documented in benchmarks/README.md."""

    budgets: tuple[int, ...]
    num_samples: int
    sample_batch: int
    classifier_epochs: int
    samplers: tuple[str, ...] | None  # keys of the samplers to run; None: all
    bootstrap_draws: int
    grid_columns: int
    training_overrides: tuple[str, ...] = ()


# Full: 16 samplers x 38 calls (5 + 8 + 10 + 15) of the 1.1M-parameter UNet on 2 x 256 images (guidance) at 16x16:
# ~20 minutes on the shared 2-core CPU (one thread), about 2.5 s per call.
FULL = LowBudgetSettings(budgets=(5, 8, 10, 15), num_samples=256, sample_batch=256, classifier_epochs=15, samplers=None,
                         bootstrap_draws=200, grid_columns=20)
QUICK = LowBudgetSettings(budgets=(5, 8), num_samples=20, sample_batch=10, classifier_epochs=1,
                          samplers=("EDMMultistepScheduler ipndm-4 AFS", "EDMHeunScheduler Heun"),
                          bootstrap_draws=20, grid_columns=10, training_overrides=QUICK_TRAINING_OVERRIDES)


@dataclass
class Run:
    """One sampler at one budget: its samples (in [-1, 1]), its measured model calls and what they scored."""

    sampler: Sampler
    budget: int
    calls: int
    images: torch.Tensor
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)
    features: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------ the model
def training_arguments(output_dir: Path, overrides: Sequence[str] = ()) -> list[str]:
    """README command 1 with ``--output_dir output_dir`` (``overrides`` appended: argparse keeps the last value)."""
    return ["--output_dir", str(output_dir), *MAIN_MODEL_ARGUMENTS, *overrides]


def ensure_model(model_dir: Path, overrides: Sequence[str], device: torch.device) -> bool:
    """Train README command 1 into ``model_dir`` unless it already holds a pipeline; return whether it trained."""
    if (model_dir / "model_index.json").exists():
        return False
    if model_dir.exists() and any(model_dir.iterdir()):
        # --overwrite would wipe it: an unfinished (or running) training run is not ours to replace
        raise SystemExit(f"{model_dir} holds an unfinished training run (no model_index.json); finish it "
                         "(--resume_from_checkpoint latest) or remove it, or pass --model-dir.")
    print(f"no pipeline in {model_dir}: training it with README command 1 ...", flush=True)
    with accelerate_device(device):
        package_training.main(training_arguments(model_dir, overrides))
    return True


def load_pipeline(model_dir: Path, device: torch.device) -> EDMPipeline:
    """The trained pipeline, on ``device``, without progress bars."""
    if not (model_dir / "model_index.json").exists():
        raise SystemExit(f"--model-dir {model_dir} holds no pipeline (no model_index.json); train one with README command 1.")
    pipeline = EDMPipeline.from_pretrained(model_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class CallCounter:
    """Counts calls of a module's ``forward`` (a forward pre-hook): the model evaluations of a sampling run."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()


# ------------------------------------------------------------------------------------------------ sampling
def sample_run(pipeline: EDMPipeline, sampler: Sampler, budget: int, settings: LowBudgetSettings,
               device: torch.device) -> Run:
    """``num_samples`` guided samples of ``sampler`` at ``budget`` calls (labels cycling 0..9, the benchmark's seed)."""
    pipeline.scheduler = sampler.make()
    steps = sampler.inference_steps(budget)
    guided = functools.partial(pipeline, guidance_scale=GUIDANCE_SCALE)
    counter = CallCounter(pipeline.denoiser)
    try:
        images, seconds = timed(
            lambda: in_batches(settings.num_samples, settings.sample_batch,
                               lambda labels, generator: pipeline_images(guided, labels, generator, steps), device),
            f"{sampler.key} at {budget} calls",
        )
    finally:
        counter.remove()
    batches = -(-settings.num_samples // settings.sample_batch)
    calls = counter.count // batches
    if calls * batches != counter.count or calls != sampler.calls(budget):
        raise RuntimeError(f"{sampler.key} at budget {budget}: {counter.count} model calls over {batches} batches, "
                           f"expected {sampler.calls(budget)} per batch.")
    return Run(sampler, budget, calls, images, seconds)


# ------------------------------------------------------------------------------------------------ noise
def paired_bootstrap(first: torch.Tensor, second: torch.Tensor, frechet: FeatureFrechet, draws: int) -> dict[str, float]:
    """Bootstrap of ``distance(first) - distance(second)`` resampling the same sample indices for both.

    The two runs share labels and initial noise, so resampling pairs keeps that correlation: the std of the
    difference is the noise of this comparison, smaller than the spread of either distance alone.
    """
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    count = len(first)

    def distance(features: torch.Tensor) -> float:
        return moment_frechet_distance(features, frechet.mean, frechet.covariance)

    observed = distance(first) - distance(second)
    differences = []
    for _ in range(draws):
        index = torch.randint(count, (count,), generator=generator)
        differences.append(distance(first[index]) - distance(second[index]))
    values = torch.tensor(differences, dtype=torch.float64)
    return {"difference": observed, "std": float(values.std()), "fraction_reversed": float((values * observed > 0).logical_not().double().mean())}


def budget_verdicts(runs: list[Run], spread_std: float, frechet: FeatureFrechet, draws: int) -> list[dict[str, Any]]:
    """Per budget: the winner, its runner-up, the best of each family, and whether the gaps exceed the noise."""
    verdicts = []
    for budget in dict.fromkeys(r.budget for r in runs):
        ranked = sorted((r for r in runs if r.budget == budget), key=lambda r: r.scores["frechet"])
        best = ranked[0]
        record: dict[str, Any] = {"budget": budget, "ranking": [r.sampler.key for r in ranked],
                                  "best": best.sampler.key, "best_frechet": best.scores["frechet"],
                                  "best_accuracy": best.scores["accuracy"]}
        comparisons = {"runner_up": ranked[1] if len(ranked) > 1 else None}
        for family in ("package", "diffusers"):
            members = [r for r in ranked if r.sampler.family == family]
            record[f"best_{family}"] = members[0].sampler.key if members else None
            record[f"best_{family}_frechet"] = members[0].scores["frechet"] if members else None
        other = next((r for r in ranked if r.sampler.family != best.sampler.family), None)
        comparisons["best_other_family"] = other
        for name, rival in comparisons.items():
            if rival is None:
                record[name] = None
                continue
            gap = rival.scores["frechet"] - best.scores["frechet"]
            bootstrap = paired_bootstrap(best.features, rival.features, frechet, draws)
            record[name] = {
                "sampler": rival.sampler.key, "frechet": rival.scores["frechet"], "gap": gap,
                "resolved_by_draw_spread": gap > 2 * spread_std, "paired_bootstrap_std": bootstrap["std"],
                "resolved_by_paired_bootstrap": gap > 2 * bootstrap["std"],
                "bootstrap_fraction_reversed": bootstrap["fraction_reversed"],
            }
        verdicts.append(record)
    return verdicts


# ------------------------------------------------------------------------------------------------ report
def results_table(runs: list[Run], samplers: list[Sampler], budgets: Sequence[int], floor: dict[str, Any]) -> str:
    """Markdown: one row per sampler, one column per budget, cells ``distance / accuracy`` (best distance in bold)."""
    best = {b: min(r.scores["frechet"] for r in runs if r.budget == b) for b in budgets}
    body = []
    for sampler in samplers:
        row: list[Any] = [sampler.scheduler, sampler.options]
        for budget in budgets:
            run = next(r for r in runs if r.sampler is sampler and r.budget == budget)
            distance = f"{run.scores['frechet']:.2f}"
            cell = f"**{distance}**" if run.scores["frechet"] == best[budget] else distance
            cell += f" / {run.scores['accuracy'] * 100:.1f}%"
            if run.calls != budget:
                cell += f" ({run.calls})"
            row.append(cell)
        body.append(row)
    spread = floor["spread"]
    body.append(["real digits", f"{spread['draws']} draws", *[f"{spread['mean']:.2f} +/- {spread['std']:.2f} / "
                                                              f"{floor['accuracy'] * 100:.1f}%"] * len(budgets)])
    return markdown_table(["scheduler", "options", *[f"{b} calls" for b in budgets]], body)


def verdict_lines(verdicts: list[dict[str, Any]], spread_std: float) -> list[str]:
    """One plain sentence per budget: who won, by how much, and whether that is above the noise."""
    lines = []
    for v in verdicts:
        text = f"{v['budget']} calls: best {v['best']} ({v['best_frechet']:.2f}, {v['best_accuracy'] * 100:.1f}%)"
        for name, label in (("runner_up", "runner-up"), ("best_other_family", "best of the other family")):
            rival = v[name]
            if rival is None or (name == "best_other_family" and v["runner_up"]["sampler"] == rival["sampler"]):
                continue
            resolved = ("resolved" if rival["resolved_by_draw_spread"] else "within the draw spread") + (
                ", resolved by the paired bootstrap" if rival["resolved_by_paired_bootstrap"] else ", not resolved by the paired bootstrap")
            text += (f"; {label} {rival['sampler']} {rival['frechet']:.2f} (gap {rival['gap']:.2f} vs 2 x draw std "
                     f"{2 * spread_std:.2f}, paired bootstrap std {rival['paired_bootstrap_std']:.2f}: {resolved})")
        lines.append(text)
    return lines


# One colour per scheduler and order (the lower order lighter); AFS rows dashed.
COLOURS = {"Heun": "black", "DPM-Solver++ 2M": "tab:orange", "DPM-Solver++ 3M": "tab:red", "Euler": "tab:gray",
           "ipndm-3": "#7fb2e5", "ipndm-4": "tab:blue", "dpmpp-2": "#8fd18f", "dpmpp-3": "tab:green",
           "unipc-2": "#c9a3e0", "unipc-3": "tab:purple"}


def plot_runs(runs: list[Run], samplers: list[Sampler], floor: dict[str, Any], path: Path, title: str) -> Path | None:
    """Frechet distance (log) and accuracy vs model calls, one line per sampler, with the real-digit band."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for sampler in samplers:
        rows = sorted((r for r in runs if r.sampler is sampler), key=lambda r: r.calls)
        afs = sampler.options.endswith(" AFS")
        colour = COLOURS.get(sampler.options.removesuffix(" AFS"), "tab:brown")
        label = sampler.options if sampler.scheduler == "EDMMultistepScheduler" else sampler.key
        for axis, key, scale in zip(axes, ("frechet", "accuracy"), (1, 100)):
            axis.plot([r.calls for r in rows], [r.scores[key] * scale for r in rows], "o--" if afs else "o-", color=colour,
                      label=label, markersize=4, linewidth=1.2, alpha=0.9)
    spread = floor["spread"]
    axes[0].axhspan(spread["mean"] - spread["std"], spread["mean"] + spread["std"], color="black", alpha=0.12,
                    label="real digits, mean +/- std over draws")
    axes[1].axhline(floor["accuracy"] * 100, color="black", linestyle=":", linewidth=1, label="real digits")
    axes[0].set_yscale("log")
    for axis, label in zip(axes, ("Frechet distance in classifier features (lower is better)", "classifier accuracy on samples, %")):
        axis.set_xlabel("model calls per sample")
        axis.set_ylabel(label)
        axis.set_xticks(sorted({r.budget for r in runs}))
    axes[0].legend(fontsize=6, ncol=2)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def budget_grid(rows: list[tuple[str, torch.Tensor]], path: Path, columns: int, min_cell: int = 32) -> Path:
    """One row per (name, images): the first ``columns`` images in [-1, 1] of each, the name written on the left."""
    chosen = torch.cat([images[:columns] for _, images in rows])
    pixels = ((chosen.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    grid = package_training.image_grid(pixels, rows=len(rows), min_cell=min_cell)
    draw = ImageDraw.Draw(grid)  # only to measure the names in PIL's default font
    margin = 8 + int(max(draw.textlength(name) for name, _ in rows))
    canvas = Image.new("L", (grid.width + margin, grid.height), color=255)
    canvas.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = (grid.height + 2) / len(rows)  # image_grid puts a 2 px gap between rows
    for index, (name, _) in enumerate(rows):
        draw.text((4, index * row_height + row_height / 2 - 5), name, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


# ------------------------------------------------------------------------------------------------ run
@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load (or train) the digits model, sample every sampler at every budget, score; write the table, plot, grids."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help=f"a trained EDMPipeline (default: {DEFAULT_MODEL_DIR}, trained there with README command 1 "
                             "if it holds none; --quick: a tiny model trained for 4 steps in a temporary directory)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    if device.type == "cpu":
        torch.set_num_threads(1)  # restored by main(): two oneDNN threads on a loaded 2-core CPU stall badly
    diffusers_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="low_budget_quality_") as temporary:
        if args.model_dir is not None:
            model_dir, trained = Path(args.model_dir), False
        else:
            model_dir = Path(temporary) / "digits" if args.quick else DEFAULT_MODEL_DIR
            trained = ensure_model(model_dir, settings.training_overrides, device)
        pipeline = load_pipeline(model_dir, device)
        training_record = model_dir / "training_args.json"
        model_record = {"dir": str(model_dir), "trained_by_this_run": trained,
                        "training_args": training_record.read_text() if training_record.exists() else None}
    resolution = pipeline.denoiser.sample_size[0]

    split = load_digits_split(resolution)
    classifier = train_classifier(split.train_images, split.train_labels, resolution, settings.classifier_epochs, device)
    _, heldout_predictions = features_and_predictions(classifier, split.heldout_images)
    classifier_accuracy = float((heldout_predictions == split.heldout_labels).float().mean())
    frechet = FeatureFrechet(classifier, split.heldout_images)
    # Real digits in the samples' label order (0..9 cycling): the accuracy floor and the grids' last row.
    per_class = [torch.nonzero(split.train_labels == c).flatten() for c in range(NUM_CLASSES)]
    real_index = torch.stack([per_class[i % NUM_CLASSES][i // NUM_CLASSES] for i in range(settings.num_samples)])
    floor = frechet.score(split.train_images[real_index], split.train_labels[real_index])
    floor["spread"] = real_frechet_spread(frechet, split.train_images, split.train_labels, settings.num_samples)
    print(f"feature classifier: held-out accuracy {classifier_accuracy * 100:.1f}%; model {model_dir} ({resolution}x{resolution})")

    samplers = [s for s in all_samplers() if settings.samplers is None or s.key in settings.samplers]
    runs = []
    for budget in settings.budgets:
        for sampler in samplers:
            run = sample_run(pipeline, sampler, budget, settings, device)
            run.scores = frechet.score(run.images, class_labels(len(run.images)))
            run.features = features_and_predictions(classifier, run.images)[0]
            runs.append(run)

    spread = floor["spread"]
    verdicts = budget_verdicts(runs, spread["std"], frechet, settings.bootstrap_draws)
    grids = {}
    for budget in settings.budgets:
        rows = [(f"{r.sampler.key}" + (f" ({r.calls})" if r.calls != budget else ""), r.images)
                for r in runs if r.budget == budget]
        rows.append(("real digits", split.train_images[real_index]))
        grids[str(budget)] = str(budget_grid(rows, output_dir / f"low_budget_grid_{budget:02d}_calls.png", settings.grid_columns))

    table = results_table(runs, samplers, settings.budgets, floor)
    lines = verdict_lines(verdicts, spread["std"])
    total_minutes = (time.perf_counter() - started) / 60
    header = (f"Low-budget samplers on {model_dir} ({resolution}x{resolution}, guidance {GUIDANCE_SCALE:g}), "
              f"{settings.num_samples} samples per sampler and budget, on {device} ({total_minutes:.1f} min)")
    noise = (f"Feature classifier held-out accuracy: {classifier_accuracy * 100:.1f}%. Frechet distance of "
             f"{settings.num_samples} real digits over {spread['draws']} class-balanced draws: {spread['mean']:.2f} +/- "
             f"{spread['std']:.2f} ({spread['min']:.2f}-{spread['max']:.2f}). Cells: distance / accuracy (calls where "
             "they differ from the budget); bold: the budget's best distance.")
    print(f"\n{header}\n\n{table}\n\n{noise}\n" + "\n".join(lines))

    machine = machine_description(device)
    png = plot_runs(runs, samplers, floor, output_dir / "low_budget_quality.png",
                    f"EDM digits model ({resolution}x{resolution}), guidance {GUIDANCE_SCALE:g}, "
                    f"{settings.num_samples} samples per point, same seeds for every sampler")
    markdown_path = output_dir / "low_budget_quality.md"
    markdown_path.write_text(
        f"# Low-budget samplers ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{total_minutes:.1f} min)\n\n{header}.\n\n{table}\n\n{noise}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    )
    result = {
        "settings": {**settings.__dict__, "guidance_scale": GUIDANCE_SCALE, "resolution": resolution},
        "machine": machine,
        "quick": args.quick,
        "model": model_record,
        "classifier_accuracy": classifier_accuracy,
        "floor": floor,
        "rows": [{"sampler": r.sampler.key, "scheduler": r.sampler.scheduler, "options": r.sampler.options,
                  "family": r.sampler.family, "budget": r.budget, "calls": r.calls, "seconds": r.seconds, **r.scores}
                 for r in runs],
        "verdicts": verdicts,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grids": grids},
    }
    write_record(output_dir / "low_budget_quality.json", result)
    return result


if __name__ == "__main__":
    main()
