"""Post-hoc EMA and EDM2's loss on the embedded digits (issue #12): Frechet distance vs the reconstructed EMA length.

EDM2 (Karras et al. 2024, section 3 and Figure 5) shows that the quality of a trained model depends strongly on the
EMA length and that the best length can be found after training. This replicates the sweep at small scale:

(a) ``power``: one training run with ``--ema_type power`` (EDM2's two power-function EMAs, sigma_rel 0.05 and 0.10)
    storing snapshots every ``snapshot_kimg``; afterwards ``reconstruct_pipelines`` writes one pipeline per std of
    ``stds`` (0.02 to 0.20), each scored.
(b) ``edm ema``: the same run (same data, seed, steps, batch, optimizer, EDM loss) with EDM's fixed EMA (half-life
    ramp 0.05 of the images seen, which is roughly a relative std of 0.05 / ln 2 = 0.072).
(c) ``edm2 loss``: the same as (b) with ``--precond edm2`` (EDM2's learned-uncertainty loss, P_mean -0.4,
    P_std 1.0): EDM2's loss vs EDM's at equal steps, both with EDM's EMA.

Scoring as :mod:`benchmarks.sample_quality`: class-conditional samples (labels cycling 0..9, one seed for all),
``EDMHeunScheduler`` with ``heun_steps`` steps, Frechet distance in the features of the digit classifier
(:class:`benchmarks.digit_classifier.FeatureFrechet`) to the held-out real digits, and the classifier's accuracy. The
floor is the distance of as many real training digits (mean and std over class-balanced draws): differences smaller
than about twice that std are not resolved.

Outputs: ``posthoc_ema.md`` (tables), ``posthoc_ema.json``, ``posthoc_ema.png`` (Frechet distance vs std with (b)
and (c) as horizontal lines).

Run: ``python -m benchmarks.posthoc_ema [--quick] [--device cpu|cuda] [--output-dir DIR] [--work-dir DIR]``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.digit_classifier import FeatureFrechet, fit_digit_scorer
from benchmarks.digits_split import write_image_folder
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
from benchmarks.sample_quality import (
    QualitySettings,
    class_labels,
    in_batches,
    pipeline_images,
    real_frechet_spread,
    train_with_package,
)
from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training.posthoc_ema import reconstruct_pipelines


@dataclass(frozen=True)
class PosthocSettings:
    """Sizes of one run (full or ``--quick``)."""

    training: QualitySettings
    snapshot_kimg: float
    stds: tuple[float, ...]
    heun_steps: int = 18  # 35 model evaluations


# Full: ~25 minutes on a loaded 2-core CPU: 3 runs x 300 steps x batch 32 at 16x16, then 10 x 128 samples at 35 NFE.
FULL = PosthocSettings(
    training=QualitySettings(resolution=16, batch=32, train_steps=300, lr_rampup_kimg=2.0, num_samples=128,
                             sample_batch=128, classifier_epochs=15),
    snapshot_kimg=0.192,  # every 6 steps: 50 snapshots per std
    stds=(0.02, 0.03, 0.05, 0.07, 0.10, 0.15, 0.20),
)
# Quick: every code path in seconds (8x8, 8 steps, a snapshot every 2 steps).
QUICK = PosthocSettings(
    training=QualitySettings(resolution=8, batch=16, train_steps=8, lr_rampup_kimg=0.032, num_samples=20,
                             sample_batch=20, classifier_epochs=1),
    snapshot_kimg=0.032,
    stds=(0.06, 0.08, 0.25),  # 0.25 is beyond what 4 snapshots per std support: recorded as refused
    heun_steps=3,
)


def score_pipeline(pipeline_dir: Path, settings: PosthocSettings, frechet: FeatureFrechet,
                   device: torch.device) -> dict[str, float]:
    """Frechet distance and accuracy of ``num_samples`` class-conditional samples of the pipeline in ``pipeline_dir``."""
    pipeline = EDMPipeline.from_pretrained(pipeline_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    count, batch = settings.training.num_samples, settings.training.sample_batch
    images = in_batches(count, batch, lambda labels, generator: pipeline_images(pipeline, labels, generator, settings.heun_steps),
                        device)
    return frechet.score(images, class_labels(count))


def plot_sweep(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]], floor: float, path: Path,
               title: str) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 4))
    scored = [r for r in rows if "frechet" in r]
    axis.plot([r["std"] for r in scored], [r["frechet"] for r in scored], "o-", color="tab:blue",
              label="power EMA, post-hoc reconstruction (EDM loss)")
    for (name, scores), color in zip(baselines.items(), ("tab:red", "tab:green")):
        axis.axhline(scores["frechet"], color=color, linestyle="--", linewidth=1, label=name)
    axis.axhline(floor, color="black", linestyle=":", linewidth=1, label="real digits (floor)")
    axis.set_xlabel("relative EMA std (sigma_rel)")
    axis.set_ylabel("Frechet distance in classifier features (lower is better)")
    axis.legend(fontsize=7)
    axis.set_title(title, fontsize=9)
    return save_figure(figure, path)


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, reconstruct, sample, score; print the tables; write ``posthoc_ema.{md,json,png}``; return the results."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the image folder, runs and pipelines here")
    args = parser.parse_args(argv)
    device, output_dir = start_run(args)
    settings = QUICK if args.quick else FULL
    training = settings.training
    started = time.perf_counter()

    scorer = fit_digit_scorer(training.resolution, training.classifier_epochs, device)
    split, classifier_accuracy, frechet = scorer.split, scorer.heldout_accuracy, scorer.frechet
    # The floor and the noise of the distance: as many real training digits as samples, class-balanced random draws.
    floor = real_frechet_spread(frechet, split.train_images, split.train_labels, training.num_samples)

    rows: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="posthoc_ema_") as temporary:
        work_dir = Path(args.work_dir) if args.work_dir is not None else Path(temporary)
        data_dir = write_image_folder(split, work_dir / "digits_train")
        power_dir, timings["power EMA run"], _ = train_with_package(
            ["--precond", "edm", "--ema_type", "power", "--ema_snapshot_kimg", str(settings.snapshot_kimg)],
            training, data_dir, work_dir / "power", device)
        runs = {"EDM EMA (half-life ramp 0.05), EDM loss": ["--precond", "edm"],
                "EDM EMA (half-life ramp 0.05), EDM2 loss": ["--precond", "edm2"]}
        for name, arguments in runs.items():
            run_dir, timings[name], _ = train_with_package(arguments, training, data_dir, work_dir / name.split(", ")[1].replace(" ", "_"), device)
            baselines[name] = score_pipeline(run_dir, settings, frechet, device)
            print(f"{name}: Frechet {baselines[name]['frechet']:.2f}", flush=True)
        baselines["power EMA run, exported (first std, 0.05)"] = score_pipeline(power_dir, settings, frechet, device)
        reconstruction_started = time.perf_counter()
        for std in settings.stds:
            row: dict[str, Any] = {"std": std}
            try:
                (pipeline_dir,) = reconstruct_pipelines(power_dir, [std], work_dir / "reconstructed")
            except ValueError as error:
                row["refused"] = str(error)
                print(f"std {std}: refused ({error})", flush=True)
                rows.append(row)
                continue
            info = json.loads((pipeline_dir / "posthoc_ema.json").read_text())
            row.update(info | {"snapshots": len(info["snapshots"])})
            row.update(score_pipeline(pipeline_dir, settings, frechet, device))
            print(f"std {std}: Frechet {row['frechet']:.2f} (profile error {row['profile_error']:.4f})", flush=True)
            rows.append(row)
        timings["reconstruction + scoring"] = time.perf_counter() - reconstruction_started

    minutes = (time.perf_counter() - started) / 60
    sweep = markdown_table(
        ["std (sigma_rel)", "gamma", "snapshots used", "profile error", "Frechet distance", "accuracy on samples"],
        [[f"{r['std']:.2f}", f"{r['gamma']:.2f}", r["snapshots"], f"{r['profile_error']:.4f}", f"{r['frechet']:.2f}",
          f"{r['accuracy'] * 100:.1f}%"] if "frechet" in r else [f"{r['std']:.2f}", "", "", "refused", "", ""] for r in rows])
    reference = markdown_table(["run", "Frechet distance", "accuracy on samples"],
                               [[name, f"{s['frechet']:.2f}", f"{s['accuracy'] * 100:.1f}%"] for name, s in baselines.items()]
                               + [[f"real digits (floor: {floor['draws']} class-balanced draws, mean +/- std)",
                                   f"{floor['mean']:.2f} +/- {floor['std']:.2f}", ""]])
    scored = [r for r in rows if "frechet" in r]
    best = min(scored, key=lambda r: r["frechet"]) if scored else None
    title = (f"Digits {training.resolution}x{training.resolution}, tiny UNet, {training.train_steps} steps x batch "
             f"{training.batch}, {training.num_samples} samples, Heun {2 * settings.heun_steps - 1} NFE")
    png = plot_sweep(rows, {k: v for k, v in baselines.items() if "exported" not in k}, floor["mean"],
                     output_dir / "posthoc_ema.png", title)
    summary = (f"best reconstructed std {best['std']:.2f}: Frechet {best['frechet']:.2f}" if best else "no std reconstructed")
    print(f"\n{title} ({minutes:.1f} min)\n\n{sweep}\n\n{reference}\n\n{summary}")
    markdown_path = output_dir / "posthoc_ema.md"
    markdown_path.write_text(
        f"# Post-hoc EMA ({'quick' if args.quick else 'full'} run, {machine_description(device)['date']}, device {device}, "
        f"{minutes:.1f} min)\n\n{title}. Feature classifier held-out accuracy {classifier_accuracy * 100:.1f}%.\n\n"
        f"{sweep}\n\n{reference}\n\n{summary}.\n\nTraining seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n"
    )
    result = {
        "settings": {"training": training.__dict__, "snapshot_kimg": settings.snapshot_kimg, "stds": settings.stds,
                     "heun_steps": settings.heun_steps},
        "machine": machine_description(device),
        "quick": args.quick,
        "classifier_accuracy": classifier_accuracy,
        "floor": floor,
        "sweep": rows,
        "baselines": baselines,
        "best": best and {"std": best["std"], "frechet": best["frechet"]},
        "timings": timings,
        "minutes": minutes,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None},
    }
    write_record(output_dir / "posthoc_ema.json", result)
    return result


if __name__ == "__main__":
    main()
