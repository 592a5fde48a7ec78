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
- the package's ``EDMMultistepScheduler`` with ``solver="ipndm_v"`` (order 4) and with ``solver="auto"`` (its
  default: the solver, order and AFS chosen for the budget from the exact-ODE benchmark, checked here on a real model);
- the package's ``EDMHeunScheduler`` (deterministic Heun, EDM grid) with the largest N whose 2N - 1 calls fit;
- diffusers' ``EDMDPMSolverMultistepScheduler`` (DPM-Solver++, orders 2 and 3, Karras sigmas) and
  ``EDMEulerScheduler``.

A budget counts model evaluations: calls of the denoiser's ``forward``, counted by a hook on the pipeline's
denoiser (classifier-free guidance doubles the batch of a call, not the number of calls); every run checks that
the count is what the sampler promises.

Accuracy: the Frechet distance scores samples, not solvers (a solver's error can move samples towards the data or
away from it), so every run is also compared with the ODE's own solution: the same model, guidance, labels and
initial noise solved by ``EDMHeunScheduler`` on a fine grid (40 steps, 79 calls). Reported per run: the RMS
difference from it (pixels in [-1, 1]), the median per-sample difference, and the fraction of samples that the
classifier reads as another digit than the reference's (trajectories that changed mode; RMS alone is dominated by
them). An independent solver at a high budget (iPNDM-4, 30 calls) measured against the reference bounds the
reference's own error.

Noise: the distance of a few hundred samples varies from draw to draw; the script reports, as ``sample_quality``
does, the distance of as many real digits over random class-balanced draws (mean, std: "the spread between
draws"), calls a difference above the noise when it exceeds twice that std, and adds a paired bootstrap of each
budget's winner against its runner-up (the samplers share their seeds, so their difference is less noisy than
either distance). Errors against the reference are compared by the paired standard error of the per-sample
squared differences.

The model: ``--model-dir DIR`` loads a trained pipeline (``EDMPipeline.from_pretrained``). Without it the script
uses ``runs/digits`` (the main job's output directory), training it there first with exactly README command 1's
arguments when it holds no pipeline yet. ``--quick`` trains a tiny model for a few steps in a temporary directory
instead (same arguments at 8x8 and 4 steps), so the test suite never trains the real one.

Outputs (``benchmarks/results/``): ``low_budget_quality.md`` (tables sampler x calls: distance / accuracy, and error
vs the reference / class changes; the verdict of each budget), ``low_budget_quality.json``, ``low_budget_quality.png``
(distance, accuracy and error vs calls per sampler) and one grid per budget, ``low_budget_grid_<calls>_calls.png``
(one row per sampler, the same labels and seeds in every row; the reference and real digits in the last rows).

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
from PIL import Image, ImageDraw

from benchmarks.digit_classifier import FeatureFrechet, features_and_predictions, fit_digit_scorer
from benchmarks.distribution_distances import moment_frechet_distance
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
from benchmarks.sample_quality import accelerate_device, class_labels, in_batches, pipeline_images, real_frechet_spread, timed
from diffusers_edm import EDMHeunScheduler, EDMMultistepScheduler
from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training import train as package_training
from diffusers_edm.training.image_grid import image_grid

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
    rows.append(Sampler("EDMMultistepScheduler", "ipndm_v-4", "package",
                        functools.partial(EDMMultistepScheduler, solver="ipndm_v", solver_order=4)))
    # The package's default: the solver, order and AFS that `solver="auto"` picks for the budget.
    rows.append(Sampler("EDMMultistepScheduler", "auto", "package", functools.partial(EDMMultistepScheduler, solver="auto")))
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
    reference_steps: int  # Heun steps N of the reference solution (2N - 1 calls)
    check_calls: int  # calls of the iPNDM-4 run that checks the reference has converged
    bootstrap_draws: int
    grid_columns: int
    training_overrides: tuple[str, ...] = ()


# Full: 18 samplers x 38 calls (5 + 8 + 10 + 15), the 79-call reference and its 30-call check, of the 1.1M-parameter
# UNet on 2 x 256 images (guidance) at 16x16: ~2.6 s per call, ~30 minutes on the shared 2-core CPU (one thread).
FULL = LowBudgetSettings(budgets=(5, 8, 10, 15), num_samples=256, sample_batch=256, classifier_epochs=15, samplers=None,
                         reference_steps=40, check_calls=30, bootstrap_draws=200, grid_columns=20)
# Quick: the reference is Heun at 4 steps, the very run of the Heun row at 8 calls (7): the test sees a zero error.
QUICK = LowBudgetSettings(budgets=(5, 8), num_samples=20, sample_batch=10, classifier_epochs=1,
                          samplers=("EDMMultistepScheduler ipndm-4 AFS", "EDMHeunScheduler Heun"), reference_steps=4,
                          check_calls=10, bootstrap_draws=20, grid_columns=10, training_overrides=QUICK_TRAINING_OVERRIDES)


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
    predictions: torch.Tensor | None = None
    errors: torch.Tensor | None = None  # per-sample RMS difference from the reference solution


def reference_samplers(settings: LowBudgetSettings) -> tuple[Sampler, Sampler]:
    """The reference solution of the probability-flow ODE (Heun, fine grid) and the independent run that checks it."""
    calls = 2 * settings.reference_steps - 1
    reference = Sampler("EDMHeunScheduler", f"Heun, {calls} calls (ODE reference)", "reference", EDMHeunScheduler, heun=True)
    check = Sampler("EDMMultistepScheduler", f"ipndm-4, {settings.check_calls} calls (reference check)", "reference",
                    functools.partial(EDMMultistepScheduler, solver="ipndm", solver_order=4))
    return reference, check


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


# ------------------------------------------------------------------------------------------------ scores
def score_run(run: Run, classifier: torch.nn.Module, frechet: FeatureFrechet, reference: Run | None) -> None:
    """Frechet distance and accuracy (the quality harness), and the per-sample error against the reference run."""
    run.scores = frechet.score(run.images, class_labels(len(run.images)))
    run.features, run.predictions = features_and_predictions(classifier, run.images)
    if reference is None:
        return
    run.errors = (run.images - reference.images).flatten(1).square().mean(1).sqrt()
    run.scores["rms_error"] = float(run.errors.square().mean().sqrt())
    run.scores["median_error"] = float(run.errors.median())
    # Samples the classifier reads as another digit than the reference solution: a trajectory that changed mode.
    run.scores["class_changed"] = float((run.predictions != reference.predictions).double().mean())


def paired_bootstrap(first: torch.Tensor, second: torch.Tensor, frechet: FeatureFrechet, draws: int) -> float:
    """Std of ``distance(first) - distance(second)`` over bootstrap draws that resample the same indices for both.

    The two runs share labels and initial noise, so resampling pairs keeps that correlation: this std is the noise
    of the comparison, smaller than the draw-to-draw spread of either distance alone.
    """
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    count = len(first)

    def distance(features: torch.Tensor) -> float:
        return moment_frechet_distance(features, frechet.mean, frechet.covariance)

    differences = []
    for _ in range(draws):
        index = torch.randint(count, (count,), generator=generator)
        differences.append(distance(first[index]) - distance(second[index]))
    return float(torch.tensor(differences, dtype=torch.float64).std())


def same_samples(first: Run, second: Run, tolerance: float = 1e-4) -> bool:
    """Whether two runs produced the same images (the same algorithm on the same grid, e.g. two DPM-Solver++ codes)."""
    return bool((first.images - second.images).abs().max() <= tolerance)


def budget_verdicts(runs: list[Run], spread_std: float, frechet: FeatureFrechet, draws: int) -> list[dict[str, Any]]:
    """Per budget, by the Frechet distance and by the error against the ODE reference: the winner, the samplers that
    gave the same samples (ties), the best distinct runner-up, the best of the other family, and whether each gap is
    above the noise (Frechet: twice the real-digit draw std, and twice the paired bootstrap std; error: twice the
    paired standard error of the mean squared per-sample error)."""
    verdicts = []
    for budget in dict.fromkeys(r.budget for r in runs):
        at_budget = [r for r in runs if r.budget == budget]
        record: dict[str, Any] = {"budget": budget}
        for metric in ("frechet", "rms_error"):
            if metric not in at_budget[0].scores:
                continue
            ranked = sorted(at_budget, key=lambda r: r.scores[metric])
            best = ranked[0]
            ties = [r for r in ranked[1:] if same_samples(best, r)]
            distinct = [r for r in ranked[1:] if r not in ties]
            rivals = {"runner_up": distinct[0] if distinct else None,
                      "best_other_family": next((r for r in ranked if r.sampler.family != best.sampler.family), None)}
            entry: dict[str, Any] = {"best": best.sampler.key, "value": best.scores[metric], "accuracy": best.scores["accuracy"],
                                     "ties": [r.sampler.key for r in ties], "ranking": [r.sampler.key for r in ranked]}
            for name, rival in rivals.items():
                if rival is None:
                    entry[name] = None
                    continue
                gap = rival.scores[metric] - best.scores[metric]
                comparison: dict[str, Any] = {"sampler": rival.sampler.key, "value": rival.scores[metric], "gap": gap,
                                              "same_samples": same_samples(best, rival)}
                if metric == "frechet":
                    noise = paired_bootstrap(best.features, rival.features, frechet, draws)
                    comparison.update(resolved_by_draw_spread=gap > 2 * spread_std, paired_bootstrap_std=noise,
                                      resolved=gap > 2 * noise)
                else:
                    differences = rival.errors.square() - best.errors.square()
                    noise = float(differences.std() / len(differences) ** 0.5)
                    comparison.update(paired_standard_error=noise, resolved=float(differences.mean()) > 2 * noise,
                                      ratio=best.scores[metric] / rival.scores[metric] if rival.scores[metric] > 0 else None)
                entry[name] = comparison
            record[metric] = entry
        verdicts.append(record)
    return verdicts


# ------------------------------------------------------------------------------------------------ report
def metric_table(runs: list[Run], samplers: list[Sampler], budgets: Sequence[int],
                 cell: Callable[[Run], str], best_key: str, extra_rows: Sequence[Sequence[Any]]) -> str:
    """Markdown: one row per sampler, one column per budget; the budget's best ``best_key`` in bold; calls in brackets
    where they differ from the budget."""
    best = {b: min(r.scores[best_key] for r in runs if r.budget == b) for b in budgets}
    body: list[list[Any]] = []
    for sampler in samplers:
        row: list[Any] = [sampler.scheduler, sampler.options]
        for budget in budgets:
            run = next(r for r in runs if r.sampler is sampler and r.budget == budget)
            text = cell(run)
            head, _, tail = text.partition(" / ")
            text = f"**{head}** / {tail}" if run.scores[best_key] == best[budget] else text
            row.append(text + (f" ({run.calls})" if run.calls != budget else ""))
        body.append(row)
    body += [list(row) for row in extra_rows]
    return markdown_table(["scheduler", "options", *[f"{b} calls" for b in budgets]], body)


def verdict_lines(verdicts: list[dict[str, Any]], spread_std: float) -> list[str]:
    """Plain sentences per budget: who won by each measure, by how much, and whether that is above the noise."""
    lines = []
    for v in verdicts:
        for metric, what in (("frechet", "Frechet distance"), ("rms_error", "error vs the ODE reference")):
            entry = v.get(metric)
            if entry is None:
                continue
            text = f"{v['budget']} calls, {what}: best {entry['best']} ({entry['value']:.4g}, accuracy {entry['accuracy'] * 100:.1f}%)"
            if entry["ties"]:
                text += f", the same samples as {', '.join(entry['ties'])}"
            for name, label in (("runner_up", "runner-up"), ("best_other_family", "best of the other family")):
                rival = entry[name]
                if rival is None or (name == "best_other_family" and (rival["same_samples"] or (
                        entry["runner_up"] is not None and entry["runner_up"]["sampler"] == rival["sampler"]))):
                    continue
                text += f"; {label} {rival['sampler']} {rival['value']:.4g} (gap {rival['gap']:.3g}"
                if metric == "frechet":
                    text += (f"; 2 x draw std {2 * spread_std:.2f}: {'above' if rival['resolved_by_draw_spread'] else 'within'}"
                             f"; paired bootstrap std {rival['paired_bootstrap_std']:.2f}: "
                             f"{'resolved' if rival['resolved'] else 'not resolved'})")
                else:
                    text += f"; ratio {rival['ratio']:.2f}; {'resolved' if rival['resolved'] else 'not resolved'} by the paired error)"
            lines.append(text)
    return lines


# One colour per scheduler and order (the lower order lighter); AFS rows dashed.
COLOURS = {"Heun": "black", "DPM-Solver++ 2M": "tab:orange", "DPM-Solver++ 3M": "tab:red", "Euler": "tab:gray",
           "ipndm-3": "#7fb2e5", "ipndm-4": "tab:blue", "dpmpp-2": "#8fd18f", "dpmpp-3": "tab:green",
           "unipc-2": "#c9a3e0", "unipc-3": "tab:purple", "ipndm_v-4": "navy", "auto": "gold"}


def plot_runs(runs: list[Run], samplers: list[Sampler], floor: dict[str, Any], reference: Run, path: Path,
              title: str) -> Path | None:
    """Frechet distance (log), accuracy and error vs the reference (log) against model calls, one line per sampler."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = (("frechet", 1, "Frechet distance in classifier features (lower is better)"),
              ("accuracy", 100, "classifier accuracy on samples, %"),
              ("rms_error", 1, "RMS error vs the ODE reference, pixels in [-1, 1]"))
    for sampler in samplers:
        rows = sorted((r for r in runs if r.sampler is sampler), key=lambda r: r.calls)
        afs = sampler.options.endswith(" AFS")
        colour = COLOURS.get(sampler.options.removesuffix(" AFS"), "tab:brown")
        label = sampler.options if sampler.scheduler == "EDMMultistepScheduler" else sampler.key
        for axis, (key, scale, _) in zip(axes, panels):
            axis.plot([r.calls for r in rows], [r.scores[key] * scale for r in rows], "o--" if afs else "o-", color=colour,
                      label=label, markersize=4, linewidth=1.2, alpha=0.9)
    spread = floor["spread"]
    axes[0].axhspan(spread["mean"] - spread["std"], spread["mean"] + spread["std"], color="black", alpha=0.12,
                    label="real digits, mean +/- std over draws")
    axes[0].axhline(reference.scores["frechet"], color="black", linestyle="--", linewidth=1, label=reference.sampler.options)
    axes[1].axhline(floor["accuracy"] * 100, color="black", linestyle=":", linewidth=1, label="real digits")
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    for axis, (_, _, label) in zip(axes, panels):
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
    grid = image_grid(pixels, rows=len(rows), min_cell=min_cell)
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
    """Load (or train) the digits model, sample every sampler at every budget, score; write the tables, plot, grids."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help=f"a trained EDMPipeline (default: {DEFAULT_MODEL_DIR}, trained there with README command 1 "
                             "if it holds none; --quick: a tiny model trained for 4 steps in a temporary directory)")
    args = parser.parse_args(argv)
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
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

    scorer = fit_digit_scorer(resolution, settings.classifier_epochs, device)
    split, classifier, classifier_accuracy, frechet = scorer.split, scorer.classifier, scorer.heldout_accuracy, scorer.frechet
    # Real digits in the samples' label order (0..9 cycling): the accuracy floor and the grids' last row.
    real_index = scorer.real_in_label_order(settings.num_samples)
    floor = frechet.score(split.train_images[real_index], split.train_labels[real_index])
    floor["spread"] = real_frechet_spread(frechet, split.train_images, split.train_labels, settings.num_samples)
    spread = floor["spread"]
    print(f"feature classifier: held-out accuracy {classifier_accuracy * 100:.1f}%; model {model_dir} ({resolution}x{resolution})")

    # The reference: the same ODE (same model, guidance, labels and initial noise) solved on a fine grid, and an
    # independent solver at a high budget, whose difference from it bounds the reference's own error.
    reference_sampler, check_sampler = reference_samplers(settings)
    reference = sample_run(pipeline, reference_sampler, 2 * settings.reference_steps - 1, settings, device)
    score_run(reference, classifier, frechet, None)
    check = sample_run(pipeline, check_sampler, settings.check_calls, settings, device)
    score_run(check, classifier, frechet, reference)

    samplers = [s for s in all_samplers() if settings.samplers is None or s.key in settings.samplers]
    runs = []
    for budget in settings.budgets:
        for sampler in samplers:
            run = sample_run(pipeline, sampler, budget, settings, device)
            score_run(run, classifier, frechet, reference)
            runs.append(run)

    verdicts = budget_verdicts(runs, spread["std"], frechet, settings.bootstrap_draws)
    grids = {}
    for budget in settings.budgets:
        rows = [(f"{r.sampler.key}" + (f" ({r.calls})" if r.calls != budget else ""), r.images)
                for r in runs if r.budget == budget]
        rows += [(reference.sampler.key, reference.images), ("real digits", split.train_images[real_index])]
        grids[str(budget)] = str(budget_grid(rows, output_dir / f"low_budget_grid_{budget:02d}_calls.png", settings.grid_columns))

    budgets = settings.budgets
    quality_table = metric_table(
        runs, samplers, budgets, lambda r: f"{r.scores['frechet']:.2f} / {r.scores['accuracy'] * 100:.1f}%", "frechet",
        [[reference.sampler.scheduler, reference.sampler.options,
          *[f"{reference.scores['frechet']:.2f} / {reference.scores['accuracy'] * 100:.1f}%"] * len(budgets)],
         ["real digits", f"{spread['draws']} draws",
          *[f"{spread['mean']:.2f} +/- {spread['std']:.2f} / {floor['accuracy'] * 100:.1f}%"] * len(budgets)]],
    )
    error_table = metric_table(
        runs, samplers, budgets, lambda r: f"{r.scores['rms_error']:.4f} / {r.scores['class_changed'] * 100:.1f}%",
        "rms_error",
        [[check.sampler.scheduler, check.sampler.options,
          *[f"{check.scores['rms_error']:.4f} / {check.scores['class_changed'] * 100:.1f}%"] * len(budgets)]],
    )
    lines = verdict_lines(verdicts, spread["std"])
    total_minutes = (time.perf_counter() - started) / 60
    header = (f"Low-budget samplers on {model_dir} ({resolution}x{resolution}, guidance {GUIDANCE_SCALE:g}), "
              f"{settings.num_samples} samples per sampler and budget, on {device} ({total_minutes:.1f} min)")
    quality_note = (f"Cells: Frechet distance to the held-out digits / classifier accuracy (calls in brackets where they "
                    f"differ from the budget; bold: the budget's best distance). Feature classifier held-out accuracy: "
                    f"{classifier_accuracy * 100:.1f}%. Frechet distance of {settings.num_samples} real digits over "
                    f"{spread['draws']} class-balanced draws: {spread['mean']:.2f} +/- {spread['std']:.2f} "
                    f"({spread['min']:.2f}-{spread['max']:.2f}).")
    error_note = (f"Cells: RMS difference from the ODE reference ({reference.sampler.key}; pixels in [-1, 1], over "
                  "samples and pixels) / samples the classifier reads as another digit than the reference's; bold: the "
                  "budget's smallest error. The last row bounds the reference's own error.")
    print(f"\n{header}\n\n{quality_table}\n\n{quality_note}\n\n{error_table}\n\n{error_note}\n\n" + "\n".join(lines))

    machine = machine_description(device)
    png = plot_runs(runs, samplers, floor, reference, output_dir / "low_budget_quality.png",
                    f"EDM digits model ({resolution}x{resolution}), guidance {GUIDANCE_SCALE:g}, "
                    f"{settings.num_samples} samples per point, same labels and seeds for every sampler")
    markdown_path = output_dir / "low_budget_quality.md"
    markdown_path.write_text(
        f"# Low-budget samplers ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{total_minutes:.1f} min)\n\n{header}.\n\n## Sample quality\n\n{quality_table}\n\n{quality_note}\n\n"
        f"## Error against the ODE reference\n\n{error_table}\n\n{error_note}\n\n## Verdicts\n\n"
        + "\n".join(f"- {line}" for line in lines) + "\n"
    )

    def record(run: Run) -> dict[str, Any]:
        return {"sampler": run.sampler.key, "scheduler": run.sampler.scheduler, "options": run.sampler.options,
                "family": run.sampler.family, "budget": run.budget, "calls": run.calls, "seconds": run.seconds, **run.scores}

    result = {
        "settings": {**settings.__dict__, "guidance_scale": GUIDANCE_SCALE, "resolution": resolution},
        "machine": machine,
        "quick": args.quick,
        "model": model_record,
        "classifier_accuracy": classifier_accuracy,
        "floor": floor,
        "reference": record(reference),
        "reference_check": record(check),
        "rows": [record(r) for r in runs],
        "verdicts": verdicts,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grids": grids},
    }
    write_record(output_dir / "low_budget_quality.json", result)
    return result


if __name__ == "__main__":
    main()
