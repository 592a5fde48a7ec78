"""Guidance on the trained digits model (issue #11): classifier-free guidance, classifier guidance and autoguidance,
each with and without a guidance interval, at the same sampler and budget.

The main job's class-conditional EDM digits model (README command 1) is sampled with every guidance method of
``EDMPipeline`` and scored with the quality benchmark's harness (:mod:`benchmarks.sample_quality`): the Frechet
distance in a digit classifier's feature space to the held-out real digits, and that classifier's accuracy on the
samples (does a requested "3" look like a 3?). The scoring classifier is the benchmark's own CNN, trained on the real
training digits; it is not the noise-conditional classifier that guides.

Models, all on the embedded digits at 16x16:

- **main**: README command 1 (``runs/digits`` by default, ``--model-dir`` for another), trained with its arguments
  when absent (:func:`benchmarks.low_budget_quality.ensure_model`);
- **weak** (the guiding model of autoguidance, Karras et al. 2024): the same command with ``--model_size xs`` (a
  quarter of tiny's channels) and a quarter of the training, ``--max_train_steps 300`` (~2 minutes here);
- **classifier** (classifier guidance, Dhariwal & Nichol 2021): ``diffusers-edm-train --task classifier`` on the
  same data, the encoder half of the tiny UNet, 600 steps (EDM's noise distribution, ~5 minutes here).

The weak model and the classifier are trained into ``--work-dir`` (default ``runs/guidance_benchmark``) and reused
from there by later runs.

Arms: every arm samples the same labels (cycling 0..9) from the same initial noise with the same sampler, the
package's ``EDMHeunScheduler`` (deterministic Heun, EDM's grid, 18 steps = 35 evaluations of the guided denoiser):

- unguided conditional (``w = 1``);
- classifier-free guidance (CFG) at ``w`` in {1.5, 2, 3};
- classifier guidance of the conditional model at ``s`` in {0.5, 1, 2};
- autoguidance with the weak model at ``w`` in {1.5, 2, 3};
- each of those also with a guidance interval: guidance only at the calls with ``0.28 < sigma <= 5.42``, the interval
  Kynkaenniemi et al. 2024 chose for EDM2 (the same ``sigma_data = 0.5`` as here; at 16x16 it also holds the levels
  where the class is decided: the guiding classifier is ~50% right at sigma in [2, 5) and ~99% below 0.2);
- classifier guidance of an *unconditional* model at ``s`` in {1, 2, 4} (ADM's conditional sampling of an
  unconditional model): the main model with the null label, i.e. CFG's unconditional branch, steered by the classifier;
  and that unconditional model without guidance (its accuracy is chance: the reference for those rows).

Cost: hooks on the three networks count their calls and the rows of each call. CFG evaluates the denoiser on a doubled
batch at a guided call, autoguidance adds a call of the weak model, classifier guidance a forward and backward pass of
the classifier; outside the interval a call is the plain conditional model. Every run checks that the counts are
exactly that, with the interval read from the noise levels the hooks saw. The wall time of each arm is reported too.

Noise: as in :mod:`benchmarks.low_budget_quality`, the distance of as many real digits over random class-balanced
draws gives the spread between draws (a gap above twice its std is called above the noise), and a paired bootstrap
(the arms share labels and noise) gives the noise of each comparison with the winner; accuracies are compared by the
paired standard error of the per-sample difference of hits.

Outputs (``benchmarks/results/``): ``guidance_quality.md`` (table, verdicts), ``guidance_quality.json``,
``guidance_quality.png`` (distance and accuracy against the guidance scale per method) and ``guidance_quality_grid.png``
(one row per arm, the same labels and seeds in every row, real digits last).

Run: ``python -m benchmarks.guidance_quality [--quick] [--model-dir DIR] [--work-dir DIR] [--device cpu|cuda]
[--output-dir DIR]``. ``--quick`` trains tiny models for a few steps at 8x8 in a temporary directory and samples six
arms at 5 calls (seconds; the test suite runs it).
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.digit_classifier import FeatureFrechet, features_and_predictions, fit_digit_scorer
from benchmarks.low_budget_quality import (
    NEVER,
    QUICK_TRAINING_OVERRIDES,
    CallCounter,
    budget_grid,
    ensure_model,
    load_pipeline,
    paired_bootstrap,
    same_samples,
)
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
from diffusers_edm import EDMHeunScheduler, NoiseConditionalClassifier
from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training import train as package_training

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "guidance_benchmark"
# The weak model: README command 1 with a quarter of the width and a quarter of the steps (later flags win).
WEAK_MODEL_OVERRIDES = (
    "--model_size", "xs", "--max_train_steps", "300", "--checkpointing_steps", NEVER, "--validation_steps", NEVER,
    "--report_to", "none",
)
# The guiding classifier: the encoder half of the tiny UNet, EDM's noise distribution (P_mean -1.2, P_std 1.2).
CLASSIFIER_ARGUMENTS = (
    "--overwrite", "--task", "classifier", "--label_column", "label", "--model_size", "tiny", "--max_train_steps", "600",
    "--checkpointing_steps", NEVER, "--validation_steps", NEVER, "--report_to", "none",
)
QUICK_WEAK_OVERRIDES = (*QUICK_TRAINING_OVERRIDES, "--model_size", "xs", "--max_train_steps", "2")
QUICK_CLASSIFIER_OVERRIDES = (
    "--resolution", "8", "--train_batch_size", "8", "--model_size", "xs", "--max_train_steps", "4",
    "--validation_noise_draws", "1",
)
# Kynkaenniemi et al. 2024's interval for EDM2 (sigma_data 0.5): guidance acts where 0.28 < sigma <= 5.42.
GUIDANCE_INTERVAL = (0.28, 5.42)

# Methods, in the order of the table, plot and grid.
UNGUIDED = "unguided"
CFG = "classifier-free"
AUTOGUIDANCE = "autoguidance"
CLASSIFIER = "classifier"
UNCONDITIONAL = "unconditional"  # the main model with the null label
UNCONDITIONAL_CLASSIFIER = "classifier, unconditional model"


@dataclass(frozen=True)
class Arm:
    """One row of the benchmark: a guidance method at one scale, with or without the interval."""

    method: str
    scale: float  # w (CFG, autoguidance; 1: off) or s (classifier guidance; 0: off)
    interval: bool = False

    @property
    def key(self) -> str:
        if self.method in (UNGUIDED, UNCONDITIONAL):
            return self.method
        symbol = "s" if self.method in (CLASSIFIER, UNCONDITIONAL_CLASSIFIER) else "w"
        return f"{self.method} {symbol}={self.scale:g}" + (", interval" if self.interval else "")

    @property
    def guided(self) -> bool:
        return self.method not in (UNGUIDED, UNCONDITIONAL)

    @property
    def conditional(self) -> bool:
        """Whether the denoiser sees the requested labels (otherwise the null label: the unconditional model)."""
        return self.method not in (UNCONDITIONAL, UNCONDITIONAL_CLASSIFIER)

    @property
    def uses_classifier(self) -> bool:
        return self.method in (CLASSIFIER, UNCONDITIONAL_CLASSIFIER)

    def call_arguments(self) -> dict[str, Any]:
        """The pipeline's guidance arguments for this arm."""
        arguments: dict[str, Any] = {"guidance_interval": GUIDANCE_INTERVAL if self.interval else None}
        if self.method in (CFG, AUTOGUIDANCE):
            arguments["guidance_scale"] = self.scale
        if self.uses_classifier:
            arguments["classifier_scale"] = self.scale
        return arguments


@dataclass(frozen=True)
class GuidanceSettings:
    """Sizes of one run (full or ``--quick``); the full run's values are documented in benchmarks/README.md."""

    heun_steps: int  # EDMHeunScheduler steps N: 2N - 1 evaluations of the guided denoiser
    num_samples: int
    sample_batch: int
    classifier_epochs: int  # of the scoring CNN
    cfg_scales: tuple[float, ...]
    autoguidance_scales: tuple[float, ...]
    classifier_scales: tuple[float, ...]
    unconditional_classifier_scales: tuple[float, ...]
    with_intervals: bool  # every guided arm of the conditional model also with the interval
    bootstrap_draws: int
    grid_columns: int
    arms: tuple[str, ...] | None = None  # keys of the arms to run; None: all
    main_overrides: tuple[str, ...] = ()
    weak_overrides: tuple[str, ...] = WEAK_MODEL_OVERRIDES
    classifier_overrides: tuple[str, ...] = ()


# Full: 23 arms x 35 calls of the 1.1M-parameter UNet on 256 samples at 16x16 (CFG: 512 rows), plus the weak model's
# and the classifier's calls: ~25-40 minutes on the shared 2-core CPU (one thread).
FULL = GuidanceSettings(heun_steps=18, num_samples=256, sample_batch=256, classifier_epochs=15, cfg_scales=(1.5, 2.0, 3.0),
                        autoguidance_scales=(1.5, 2.0, 3.0), classifier_scales=(0.5, 1.0, 2.0),
                        unconditional_classifier_scales=(1.0, 2.0, 4.0), with_intervals=True, bootstrap_draws=200,
                        grid_columns=20)
# Quick: Heun at 3 steps (5 calls at sigma 80, 2.51, 2.51, 0.002, 0.002: two inside the interval).
QUICK = GuidanceSettings(heun_steps=3, num_samples=20, sample_batch=10, classifier_epochs=1, cfg_scales=(2.0,),
                         autoguidance_scales=(2.0,), classifier_scales=(1.0,), unconditional_classifier_scales=(2.0,),
                         with_intervals=True, bootstrap_draws=20, grid_columns=10,
                         arms=(UNGUIDED, f"{CFG} w=2", f"{CFG} w=2, interval", f"{AUTOGUIDANCE} w=2", f"{CLASSIFIER} s=1",
                               f"{UNCONDITIONAL_CLASSIFIER} s=2, interval"),
                         main_overrides=QUICK_TRAINING_OVERRIDES, weak_overrides=QUICK_WEAK_OVERRIDES,
                         classifier_overrides=QUICK_CLASSIFIER_OVERRIDES)


def all_arms(settings: GuidanceSettings) -> list[Arm]:
    """Every arm of a run, in the order of the table (``settings.arms`` selects by key)."""
    arms = [Arm(UNGUIDED, 1.0)]
    for method, scales in ((CFG, settings.cfg_scales), (AUTOGUIDANCE, settings.autoguidance_scales),
                           (CLASSIFIER, settings.classifier_scales)):
        for interval in (False, True) if settings.with_intervals else (False,):
            arms += [Arm(method, scale, interval) for scale in scales]
    arms.append(Arm(UNCONDITIONAL, 1.0))
    for interval in (False, True):
        arms += [Arm(UNCONDITIONAL_CLASSIFIER, scale, interval) for scale in settings.unconditional_classifier_scales]
    return [arm for arm in arms if settings.arms is None or arm.key in settings.arms]


# ------------------------------------------------------------------------------------------------ the models
def classifier_arguments(output_dir: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The training command of the guiding classifier with ``--output_dir output_dir`` (``overrides`` appended)."""
    return ["--output_dir", str(output_dir), *CLASSIFIER_ARGUMENTS, *overrides]


def ensure_classifier(classifier_dir: Path, overrides: Sequence[str], device: torch.device) -> bool:
    """Train the guiding classifier into ``classifier_dir`` unless it already holds one; return whether it trained."""
    if (classifier_dir / "config.json").exists():
        return False
    if classifier_dir.exists() and any(classifier_dir.iterdir()):
        raise SystemExit(f"{classifier_dir} holds an unfinished training run (no config.json); finish it "
                         "(--resume_from_checkpoint latest) or remove it, or pass another --work-dir.")
    print(f"no classifier in {classifier_dir}: training it with `diffusers-edm-train --task classifier` ...", flush=True)
    with accelerate_device(device):
        package_training.main(classifier_arguments(classifier_dir, overrides))
    return True


def training_record(directory: Path, trained: bool) -> dict[str, Any]:
    """Where a model came from: its directory, whether this run trained it, its recorded training arguments."""
    arguments = directory / "training_args.json"
    accuracy = directory / "accuracy.json"
    return {"dir": str(directory), "trained_by_this_run": trained,
            "training_args": arguments.read_text() if arguments.exists() else None,
            "accuracy": accuracy.read_text() if accuracy.exists() else None}


# ------------------------------------------------------------------------------------------------ sampling
class CallRecorder(CallCounter):
    """A :class:`~benchmarks.low_budget_quality.CallCounter` that also keeps each call's rows and noise level (the
    first row's, as a tensor: read after the run, so the loop is not synchronised)."""

    def __init__(self, module: torch.nn.Module):
        self.rows: list[int] = []
        self.sigmas: list[torch.Tensor] = []
        super().__init__(module)

    def _hook(self, module: torch.nn.Module, inputs: Any) -> None:
        super()._hook(module, inputs)
        sample, sigma = inputs[0], inputs[1]
        self.rows.append(int(sample.shape[0]))
        self.sigmas.append(torch.as_tensor(sigma).detach().reshape(-1)[:1].clone())

    def sigma_values(self) -> list[float]:
        return [float(s) for s in self.sigmas]


def null_labels(denoiser: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make ``denoiser`` see its null label (classifier-free guidance's unconditional branch) whatever the pipeline
    passes, so a pipeline with a classifier steers the unconditional model to the requested classes."""
    null = denoiser.config.null_class_label

    def hook(module: torch.nn.Module, inputs: tuple) -> tuple:
        sample, sigma, labels, *rest = inputs
        return (sample, sigma, torch.full_like(labels, null), *rest)

    return denoiser.register_forward_pre_hook(hook)


@dataclass
class ArmRun:
    """One arm's samples (in [-1, 1]), its counted network calls, wall time and scores."""

    arm: Arm
    images: torch.Tensor
    seconds: float
    calls: dict[str, float]  # guided and denoiser calls per trajectory, evaluations of each network per sample
    scores: dict[str, float] = field(default_factory=dict)
    features: torch.Tensor | None = None
    hits: torch.Tensor | None = None  # per sample: whether the scoring classifier reads the requested digit


def check_calls(arm: Arm, main: CallRecorder, weak: CallRecorder | None, classifier: CallRecorder | None,
                batch_sizes: Sequence[int], steps: int) -> dict[str, float]:
    """Check the counted calls against the arm (``RuntimeError`` otherwise); return the calls per trajectory and the
    network evaluations per sample.

    Per batch of B samples Heun makes 2N - 1 calls of the guided denoiser. A call is guided when the arm guides and
    its noise level lies in the interval; there CFG evaluates 2B rows in one call, autoguidance makes one call of the
    weak model and classifier guidance one of the classifier (B rows each); elsewhere the denoiser sees B rows only.
    """
    calls_per_batch = 2 * steps - 1
    expected_batches = [size for size in batch_sizes for _ in range(calls_per_batch)]
    sigmas = main.sigma_values()
    low, high = GUIDANCE_INTERVAL
    guided = [arm.guided and (not arm.interval or low < sigma <= high) for sigma in sigmas]
    problems = []
    if len(main.rows) != len(expected_batches):
        problems.append(f"{len(main.rows)} denoiser calls, expected {len(expected_batches)}")
    else:
        doubled = arm.method == CFG
        expected_rows = [size * (2 if doubled and g else 1) for size, g in zip(expected_batches, guided)]
        if main.rows != expected_rows:
            problems.append(f"denoiser rows {main.rows}, expected {expected_rows}")
        guided_sigmas = [s for s, g in zip(sigmas, guided) if g]
        for name, recorder, used in (("weak model", weak, arm.method == AUTOGUIDANCE),
                                     ("classifier", classifier, arm.uses_classifier)):
            if recorder is None:
                continue
            wanted = guided_sigmas if used else []
            if recorder.sigma_values() != wanted:
                problems.append(f"{name} called at sigma {recorder.sigma_values()}, expected {wanted}")
    if problems:
        raise RuntimeError(f"{arm.key}: " + "; ".join(problems) + ".")
    samples = sum(batch_sizes)
    return {
        "guided_calls": sum(guided) // len(batch_sizes),  # per trajectory: calls where guidance acts
        "denoiser_calls": len(main.rows) // len(batch_sizes),
        # network evaluations per sample (rows / samples): CFG counts 2 at a guided call
        "denoiser_evaluations": sum(main.rows) / samples,
        "weak_evaluations": sum(weak.rows) / samples if weak else 0.0,
        "classifier_evaluations": sum(classifier.rows) / samples if classifier else 0.0,
    }


def sample_arm(pipelines: dict[str, EDMPipeline], arm: Arm, settings: GuidanceSettings, device: torch.device) -> ArmRun:
    """``num_samples`` samples of one arm (labels cycling 0..9, the benchmark's seed), counting every network's calls."""
    pipeline = pipelines[AUTOGUIDANCE if arm.method == AUTOGUIDANCE else CLASSIFIER if arm.uses_classifier else UNGUIDED]
    recorders = {"main": CallRecorder(pipeline.denoiser),
                 "weak": CallRecorder(pipelines[AUTOGUIDANCE].guidance_denoiser),
                 "classifier": CallRecorder(pipelines[CLASSIFIER].classifier)}
    handles = [] if arm.conditional else [null_labels(pipeline.denoiser)]
    guided = functools.partial(pipeline, **arm.call_arguments())
    try:
        images, seconds = timed(
            lambda: in_batches(settings.num_samples, settings.sample_batch,
                               lambda labels, generator: pipeline_images(guided, labels, generator, settings.heun_steps),
                               device),
            arm.key,
        )
    finally:
        for recorder in recorders.values():
            recorder.remove()
        for handle in handles:
            handle.remove()
    batch_sizes = [min(settings.sample_batch, settings.num_samples - start)
                   for start in range(0, settings.num_samples, settings.sample_batch)]
    calls = check_calls(arm, recorders["main"], recorders["weak"], recorders["classifier"], batch_sizes,
                        settings.heun_steps)
    return ArmRun(arm, images, seconds, calls)


# ------------------------------------------------------------------------------------------------ scores
def score_arm(run: ArmRun, classifier: torch.nn.Module, frechet: FeatureFrechet) -> None:
    """Frechet distance and accuracy (the quality harness); the features and per-sample hits for the paired tests."""
    labels = class_labels(len(run.images))
    run.scores = frechet.score(run.images, labels)
    run.features, predictions = features_and_predictions(classifier, run.images)
    run.hits = (predictions == labels).double()


def compare_frechet(best: ArmRun, rival: ArmRun, spread_std: float, frechet: FeatureFrechet, draws: int) -> dict[str, Any]:
    """``rival``'s distance minus ``best``'s, against twice the real-digit draw std and twice the paired bootstrap std."""
    gap = rival.scores["frechet"] - best.scores["frechet"]
    noise = paired_bootstrap(best.features, rival.features, frechet, draws)
    return {"arm": rival.arm.key, "value": rival.scores["frechet"], "accuracy": rival.scores["accuracy"], "gap": gap,
            "same_samples": same_samples(best, rival), "resolved_by_draw_spread": gap > 2 * spread_std,
            "paired_bootstrap_std": noise, "resolved": gap > 2 * noise}


def compare_accuracy(best: ArmRun, rival: ArmRun) -> dict[str, Any]:
    """``best``'s accuracy minus ``rival``'s, against twice the paired standard error of the per-sample hit difference."""
    differences = best.hits - rival.hits
    noise = float(differences.std() / len(differences) ** 0.5)
    gap = float(differences.mean())
    return {"arm": rival.arm.key, "value": rival.scores["accuracy"], "frechet": rival.scores["frechet"], "gap": gap,
            "paired_standard_error": noise, "resolved": gap > 2 * noise}


def verdicts(runs: list[ArmRun], spread_std: float, frechet: FeatureFrechet, draws: int) -> dict[str, Any]:
    """Who wins by the Frechet distance and by the accuracy, against whom, and whether each gap is above the noise;
    the best accuracy at a distance not resolved from the best one (the trade-off); and for every guided arm whether
    its interval helps."""
    by_key = {run.arm.key: run for run in runs}
    unguided = by_key.get(UNGUIDED)
    result: dict[str, Any] = {}

    ranked = sorted(runs, key=lambda r: r.scores["frechet"])
    best = ranked[0]
    against_best = {r.arm.key: compare_frechet(best, r, spread_std, frechet, draws) for r in ranked[1:]}
    distinct = [r for r in ranked[1:] if not against_best[r.arm.key]["same_samples"]]
    per_method: dict[str, ArmRun] = {}
    for run in ranked:
        per_method.setdefault(run.arm.method, run)
    result["frechet"] = {
        "best": best.arm.key, "value": best.scores["frechet"], "accuracy": best.scores["accuracy"],
        "ranking": [r.arm.key for r in ranked],
        "runner_up": against_best[distinct[0].arm.key] if distinct else None,
        "unguided": against_best.get(UNGUIDED),
        "best_per_method": {method: against_best.get(run.arm.key) for method, run in per_method.items()},
    }
    # Accuracy: every arm at the best accuracy (ordered by distance), then the best arm below it.
    ranked = sorted(runs, key=lambda r: (-r.scores["accuracy"], r.scores["frechet"]))
    best = ranked[0]
    ties = [r for r in ranked[1:] if r.scores["accuracy"] == best.scores["accuracy"]]
    below = [r for r in ranked[1:] if r.scores["accuracy"] < best.scores["accuracy"]]
    result["accuracy"] = {
        "best": best.arm.key, "value": best.scores["accuracy"], "frechet": best.scores["frechet"],
        "ties": [r.arm.key for r in ties], "ranking": [r.arm.key for r in ranked],
        "runner_up": compare_accuracy(best, below[0]) if below else None,
        "unguided": compare_accuracy(best, unguided) if unguided and unguided is not best else None,
    }
    # The trade-off: the most accurate arm whose distance is not resolved from the best distance (paired bootstrap).
    within = [r for r in ranked if r.arm.key == result["frechet"]["best"] or not against_best[r.arm.key]["resolved"]]
    choice = within[0]
    result["trade_off"] = {
        "arm": choice.arm.key, "accuracy": choice.scores["accuracy"], "frechet": choice.scores["frechet"],
        "candidates": [r.arm.key for r in within],
        "frechet_vs_best": against_best.get(choice.arm.key),
        "accuracy_vs_unguided": compare_accuracy(choice, unguided) if unguided and unguided is not choice else None,
    }
    intervals = []
    for run in runs:
        if not run.arm.guided or run.arm.interval:
            continue
        other = by_key.get(Arm(run.arm.method, run.arm.scale, True).key)
        if other is None:
            continue
        better, worse = sorted((run, other), key=lambda r: r.scores["frechet"])
        comparison = compare_frechet(better, worse, spread_std, frechet, draws)
        with_interval, without = other, run
        intervals.append({
            "arm": run.arm.key, "frechet_without": without.scores["frechet"], "frechet_with": with_interval.scores["frechet"],
            "accuracy_without": without.scores["accuracy"], "accuracy_with": with_interval.scores["accuracy"],
            "interval_better": better is with_interval, "gap": comparison["gap"],
            "paired_bootstrap_std": comparison["paired_bootstrap_std"], "resolved": comparison["resolved"],
            "resolved_by_draw_spread": comparison["resolved_by_draw_spread"],
            "accuracy_gap": with_interval.scores["accuracy"] - without.scores["accuracy"],
            "accuracy_paired_standard_error": compare_accuracy(with_interval, without)["paired_standard_error"],
            "guided_calls_without": without.calls["guided_calls"], "guided_calls_with": with_interval.calls["guided_calls"],
            "seconds_without": without.seconds, "seconds_with": with_interval.seconds,
        })
    result["interval"] = intervals
    return result


def verdict_lines(result: dict[str, Any], spread_std: float) -> list[str]:
    """Plain sentences: the winners, their margins and whether each margin is above the noise."""
    lines = []

    def frechet_gap(entry: dict[str, Any]) -> str:
        return (f"{entry['arm']} {entry['value']:.2f} (gap {entry['gap']:.2f}; 2 x draw std {2 * spread_std:.2f}: "
                f"{'above' if entry['resolved_by_draw_spread'] else 'within'}; paired bootstrap std "
                f"{entry['paired_bootstrap_std']:.2f}: {'resolved' if entry['resolved'] else 'not resolved'})")

    frechet = result["frechet"]
    text = f"Frechet distance: best {frechet['best']} ({frechet['value']:.2f}, accuracy {frechet['accuracy'] * 100:.1f}%)"
    if frechet["runner_up"]:
        text += f"; runner-up {frechet_gap(frechet['runner_up'])}"
    if frechet["unguided"] and frechet["unguided"]["arm"] != (frechet["runner_up"] or {}).get("arm"):
        text += f"; {frechet_gap(frechet['unguided'])}"
    lines.append(text + ".")
    others = [entry for method, entry in frechet["best_per_method"].items()
              if entry is not None and method not in (UNGUIDED, UNCONDITIONAL)]
    if others:
        lines.append("Best of each other method, by the distance: " + "; ".join(frechet_gap(e) for e in others) + ".")

    def accuracy_gap(entry: dict[str, Any]) -> str:
        return (f"{entry['arm']} {entry['value'] * 100:.1f}% (gap {entry['gap'] * 100:.1f} points; paired standard error "
                f"{entry['paired_standard_error'] * 100:.1f}: {'resolved' if entry['resolved'] else 'not resolved'})")

    accuracy = result["accuracy"]
    text = f"Accuracy: best {accuracy['best']} ({accuracy['value'] * 100:.1f}%, distance {accuracy['frechet']:.2f})"
    if accuracy["ties"]:
        text += f", the same accuracy: {', '.join(f'`{k}`' for k in accuracy['ties'])}"
    if accuracy["runner_up"]:
        text += f"; next below: {accuracy_gap(accuracy['runner_up'])}"
    if accuracy["unguided"] and accuracy["unguided"]["arm"] != (accuracy["runner_up"] or {}).get("arm"):
        text += f"; {accuracy_gap(accuracy['unguided'])}"
    lines.append(text + ".")
    trade = result["trade_off"]
    text = (f"Trade-off: the most accurate arm whose distance is not resolved from the best distance (paired bootstrap) "
            f"is {trade['arm']} ({trade['frechet']:.2f}, {trade['accuracy'] * 100:.1f}%)")
    if trade["accuracy_vs_unguided"]:
        text += f"; against {accuracy_gap(trade['accuracy_vs_unguided'])}"
    lines.append(text + f"; the arms within the noise of the best distance: {', '.join(f'`{k}`' for k in trade['candidates'])}.")
    for entry in result["interval"]:
        lines.append(
            f"Interval, {entry['arm']}: distance {entry['frechet_without']:.2f} without, {entry['frechet_with']:.2f} with "
            f"({'better' if entry['interval_better'] else 'worse'} with it by {entry['gap']:.2f}; paired bootstrap std "
            f"{entry['paired_bootstrap_std']:.2f}: {'resolved' if entry['resolved'] else 'not resolved'}); accuracy "
            f"{entry['accuracy_without'] * 100:.1f}% -> {entry['accuracy_with'] * 100:.1f}%; guided calls "
            f"{entry['guided_calls_without']} -> {entry['guided_calls_with']}, {entry['seconds_without']:.0f} s -> "
            f"{entry['seconds_with']:.0f} s."
        )
    return lines


# ------------------------------------------------------------------------------------------------ report
def results_table(runs: list[ArmRun], spread: dict[str, float], floor: dict[str, Any]) -> str:
    """Markdown: one row per arm (bold: the best distance and the best accuracy), then the real digits."""
    best_frechet = min(r.scores["frechet"] for r in runs)
    best_accuracy = max(r.scores["accuracy"] for r in runs)
    body: list[list[Any]] = []
    for run in runs:
        frechet, accuracy, calls = run.scores["frechet"], run.scores["accuracy"], run.calls
        body.append([
            run.arm.key,
            f"**{frechet:.2f}**" if frechet == best_frechet else f"{frechet:.2f}",
            f"**{accuracy * 100:.1f}%**" if accuracy == best_accuracy else f"{accuracy * 100:.1f}%",
            calls["guided_calls"], f"{calls['denoiser_evaluations']:g}", f"{calls['weak_evaluations']:g}",
            f"{calls['classifier_evaluations']:g}", f"{run.seconds:.0f}",
        ])
    body.append(["real digits", f"{spread['mean']:.2f} +/- {spread['std']:.2f}", f"{floor['accuracy'] * 100:.1f}%",
                 "", "", "", "", ""])
    return markdown_table(["arm", "Frechet distance", "accuracy", "guided calls", "denoiser evals", "weak-model evals",
                           "classifier evals (+ backward)", "wall s"], body)


def plot_runs(runs: list[ArmRun], spread: dict[str, float], floor: dict[str, Any], path: Path, title: str) -> Path | None:
    """Frechet distance and accuracy against the guidance scale, one line per method and interval setting; each
    line starts at its method's unguided point (w = 1, or s = 0)."""
    plt = pyplot()
    if plt is None:
        return None
    by_key = {run.arm.key: run for run in runs}
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    colours = {CFG: "tab:blue", AUTOGUIDANCE: "tab:green", CLASSIFIER: "tab:red", UNCONDITIONAL_CLASSIFIER: "tab:purple"}
    for method, colour in colours.items():
        origin = by_key.get(UNCONDITIONAL if method == UNCONDITIONAL_CLASSIFIER else UNGUIDED)
        origin_scale = 0.0 if method in (CLASSIFIER, UNCONDITIONAL_CLASSIFIER) else 1.0
        for interval in (False, True):
            rows = sorted((r for r in runs if r.arm.method == method and r.arm.interval == interval), key=lambda r: r.arm.scale)
            if not rows:
                continue
            points = ([(origin_scale, origin)] if origin else []) + [(r.arm.scale, r) for r in rows]
            symbol = "s" if method in (CLASSIFIER, UNCONDITIONAL_CLASSIFIER) else "w"
            label = f"{method} ({symbol})" + (f", interval {GUIDANCE_INTERVAL}" if interval else "")
            for axis, key, scale in ((axes[0], "frechet", 1), (axes[1], "accuracy", 100)):
                axis.plot([x for x, _ in points], [r.scores[key] * scale for _, r in points], "o--" if interval else "o-",
                          color=colour, label=label, markersize=4, linewidth=1.2, alpha=0.9)
    axes[0].axhspan(spread["mean"] - spread["std"], spread["mean"] + spread["std"], color="black", alpha=0.12,
                    label="real digits, mean +/- std over draws")
    axes[1].axhline(floor["accuracy"] * 100, color="black", linestyle=":", linewidth=1, label="real digits")
    axes[0].set_ylabel("Frechet distance in classifier features (lower is better)")
    axes[1].set_ylabel("classifier accuracy on samples, %")
    for axis in axes:
        axis.set_xlabel("guidance scale: w (CFG, autoguidance; 1 = off) or s (classifier; 0 = off)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ run
@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load (or train) the three models, sample every arm, score; write the table, verdicts, plot and grid."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="the main model, a trained EDMPipeline (default: runs/digits, trained there with README "
                             "command 1 if it holds none; --quick: a tiny model trained in a temporary directory)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"where the weak model and the classifier are trained, and reused from (default: "
                             f"{DEFAULT_WORK_DIR}; --quick: a temporary directory)")
    args = parser.parse_args(argv)
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="guidance_quality_") as temporary:
        if args.model_dir is not None:
            model_dir, main_trained = Path(args.model_dir), False
        else:
            model_dir = Path(temporary) / "digits" if args.quick else REPO_ROOT / "runs" / "digits"
            main_trained = ensure_model(model_dir, settings.main_overrides, device)
        work_dir = args.work_dir if args.work_dir is not None else Path(temporary) if args.quick else DEFAULT_WORK_DIR
        weak_dir, classifier_dir = Path(work_dir) / "weak", Path(work_dir) / "classifier"
        training_started = time.perf_counter()
        weak_trained = ensure_model(weak_dir, settings.weak_overrides, device)
        classifier_trained = ensure_classifier(classifier_dir, settings.classifier_overrides, device)
        training_minutes = (time.perf_counter() - training_started) / 60
        pipeline = load_pipeline(model_dir, device)
        weak = load_pipeline(weak_dir, device).denoiser
        guiding_classifier = NoiseConditionalClassifier.from_pretrained(classifier_dir).to(device).eval()
        models = {"main": training_record(model_dir, main_trained), "weak": training_record(weak_dir, weak_trained),
                  "classifier": training_record(classifier_dir, classifier_trained),
                  "training_minutes_this_run": training_minutes}
    denoiser = pipeline.denoiser
    resolution = denoiser.sample_size[0]
    scheduler = EDMHeunScheduler()
    pipelines = {
        UNGUIDED: EDMPipeline(denoiser, scheduler),
        AUTOGUIDANCE: EDMPipeline(denoiser, scheduler, guidance_denoiser=weak),
        CLASSIFIER: EDMPipeline(denoiser, scheduler, classifier=guiding_classifier),
    }
    for each in pipelines.values():
        each.set_progress_bar_config(disable=True)

    digit_scorer = fit_digit_scorer(resolution, settings.classifier_epochs, device)
    split, scorer, scorer_accuracy, frechet = (digit_scorer.split, digit_scorer.classifier, digit_scorer.heldout_accuracy,
                                               digit_scorer.frechet)
    real_index = digit_scorer.real_in_label_order(settings.num_samples)
    floor = frechet.score(split.train_images[real_index], split.train_labels[real_index])
    spread = real_frechet_spread(frechet, split.train_images, split.train_labels, settings.num_samples)
    floor["spread"] = spread
    print(f"scoring classifier: held-out accuracy {scorer_accuracy * 100:.1f}%; model {model_dir} ({resolution}x{resolution})")

    arms = all_arms(settings)
    runs = []
    for arm in arms:
        run = sample_arm(pipelines, arm, settings, device)
        score_arm(run, scorer, frechet)
        runs.append(run)

    result_verdicts = verdicts(runs, spread["std"], frechet, settings.bootstrap_draws)
    lines = verdict_lines(result_verdicts, spread["std"])
    grid_rows = [(run.arm.key, run.images) for run in runs] + [("real digits", split.train_images[real_index])]
    grid = budget_grid(grid_rows, output_dir / "guidance_quality_grid.png", settings.grid_columns)

    calls = 2 * settings.heun_steps - 1
    table = results_table(runs, spread, floor)
    total_minutes = (time.perf_counter() - started) / 60
    header = (f"Guidance on {model_dir} ({resolution}x{resolution}), EDMHeunScheduler {settings.heun_steps} steps "
              f"({calls} calls of the guided denoiser) for every arm, {settings.num_samples} samples per arm (batches "
              f"of {settings.sample_batch}), the same labels and initial noise, on {device} ({total_minutes:.1f} min)")
    note = (f"Every arm makes {calls} calls of the guided denoiser per sample; guided calls: those where guidance acts "
            f"(inside the interval {GUIDANCE_INTERVAL} where one is set). Evals: network evaluations per sample, counted "
            f"by hooks: the main denoiser (CFG evaluates it twice at a guided call, in one doubled batch), the weak "
            f"model, the guiding classifier (each with a backward pass for its gradient). Bold: the best distance and "
            f"the best accuracy. Scoring classifier held-out accuracy {scorer_accuracy * 100:.1f}%; Frechet distance of "
            f"{settings.num_samples} real digits over {spread['draws']} class-balanced draws: {spread['mean']:.2f} +/- "
            f"{spread['std']:.2f} ({spread['min']:.2f}-{spread['max']:.2f}).")
    print(f"\n{header}\n\n{table}\n\n{note}\n\n" + "\n".join(lines))

    machine = machine_description(device)
    png = plot_runs(runs, spread, floor, output_dir / "guidance_quality.png",
                    f"Guidance on the EDM digits model ({resolution}x{resolution}), Heun {calls} calls, "
                    f"{settings.num_samples} samples per point, same labels and seeds for every arm")
    markdown_path = output_dir / "guidance_quality.md"
    markdown_path.write_text(
        f"# Guidance ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{total_minutes:.1f} min)\n\n{header}.\n\n{table}\n\n{note}\n\n## Verdicts\n\n"
        + "\n".join(f"- {line}" for line in lines) + "\n"
    )

    def record(run: ArmRun) -> dict[str, Any]:
        return {"arm": run.arm.key, "method": run.arm.method, "scale": run.arm.scale, "interval": run.arm.interval,
                "seconds": run.seconds, **run.calls, **run.scores}

    result = {
        "settings": {**settings.__dict__, "guidance_interval": GUIDANCE_INTERVAL, "resolution": resolution,
                     "scheduler": "EDMHeunScheduler", "guided_denoiser_calls": calls},
        "machine": machine,
        "quick": args.quick,
        "models": models,
        "classifier_accuracy": scorer_accuracy,
        "floor": floor,
        "rows": [record(run) for run in runs],
        "verdicts": result_verdicts,
        "minutes": total_minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "grid": str(grid)},
    }
    write_record(output_dir / "guidance_quality.json", result)
    return result


if __name__ == "__main__":
    main()
