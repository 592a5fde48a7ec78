"""Scheduler overhead: the package's schedulers vs diffusers' HeunDiscrete / EulerDiscrete (issue #6, part 2) and, for
the multistep schedulers, DPMSolverMultistep (issue #10).

What is measured: the time the scheduler itself adds to a sampling loop, with a trivial model
(``model(x, t) = 0.5 x``) so that nothing else is timed. For each scheduler, float32 samples of shape
(batch, 4, H, W) (Stable Diffusion latents; batch 1 and 64), N = 18 steps:

- ``step``: the mean wall time of one ``step()`` call within a loop (on CUDA this is the host-side cost:
  kernels are launched asynchronously, which is what "overhead" means there);
- ``loop``: ``set_timesteps`` + the whole loop (``scale_model_input`` -> model -> ``step`` for every call),
  followed by a device synchronisation;
- ``set_timesteps``: on its own.

All schedulers are measured in the same run, interleaved (each repetition times every scheduler once, in a
rotating order), after warm-up, with the garbage collector paused; the table reports medians over the
repetitions and the RATIOS package / diffusers for the like-for-like pairs (Heun vs ``HeunDiscreteScheduler``,
Euler vs ``EulerDiscreteScheduler``, the multistep solvers vs ``DPMSolverMultistepScheduler`` with Karras sigmas and
solver order 2 or 3: second-order rows against 2M, third- and fourth-order rows against 3M; every multistep run has
18 model calls). Absolute times depend on the machine and its load; only the ratios
within one run are meaningful.

Churn: the ``(churn)`` rows churn every step (S_churn 40, S_noise 1.003, no S_tmin/S_tmax window), so every step
draws one Gaussian sample of the batch's size; diffusers' ``HeunDiscreteScheduler`` has no churn and draws nothing,
so at a large batch those rows measure the price of the random numbers, not of the scheduler's bookkeeping.

Host synchronisation (any device): every scheduler's loop is run once under :func:`benchmarks.host_syncs.count_host_syncs`
(``bool`` / ``item`` / ``float`` / ``tolist`` / ``cpu`` / ``nonzero`` ... on tensors, counted per model call), and the
package's loops once more after ``set_begin_index(0)`` (how pipelines start them, which skips the one-time timestep
lookup of the first call): there no call may synchronise. With ``--device cuda`` that loop also runs under
``torch.cuda.set_sync_debug_mode("error")``, which also sees synchronisations inside kernels.

``--profile`` (and any full run where a ratio exceeds 1) writes a cProfile of the package's loops at batch 1
to ``scheduler_overhead_profile.txt``.

Run: ``python -m benchmarks.scheduler_overhead [--quick] [--device cpu|cuda] [--output-dir DIR] [--profile]``.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
from diffusers.utils import logging as diffusers_logging

from benchmarks.host_syncs import count_host_syncs
from benchmarks.reporting import (
    restores_torch_threads,
    write_record,
    common_arguments,
    machine_description,
    markdown_table,
    pyplot,
    resolve_device,
    save_figure,
)
from benchmarks.scheduler_adapters import SD_TABLE_CONFIG
from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
)

NUM_STEPS = 18  # EDM's default: 35 model calls with Heun, 18 with Euler and the multistep solvers
DPM_2M, DPM_3M = "DPMSolverMultistepScheduler (2M, karras)", "DPMSolverMultistepScheduler (3M, karras)"


@dataclass(frozen=True)
class TimedScheduler:
    """A scheduler under test and the diffusers scheduler it is compared with (None for the baselines)."""

    name: str
    make: Callable[[], Any]
    baseline: str | None


SCHEDULERS: tuple[TimedScheduler, ...] = (
    TimedScheduler("HeunDiscreteScheduler", lambda: HeunDiscreteScheduler(**SD_TABLE_CONFIG), None),
    TimedScheduler("EulerDiscreteScheduler", lambda: EulerDiscreteScheduler(**SD_TABLE_CONFIG), None),
    TimedScheduler("EDMHeunScheduler", lambda: EDMHeunScheduler(), "HeunDiscreteScheduler"),
    TimedScheduler("EDMHeunDiscreteScheduler", lambda: EDMHeunDiscreteScheduler(**SD_TABLE_CONFIG), "HeunDiscreteScheduler"),
    TimedScheduler("EDMHeunScheduler (euler)", lambda: EDMHeunScheduler(solver="euler"), "EulerDiscreteScheduler"),
    TimedScheduler(
        "EDMHeunDiscreteScheduler (euler)", lambda: EDMHeunDiscreteScheduler(**SD_TABLE_CONFIG, solver="euler"), "EulerDiscreteScheduler"
    ),
    # Churn on every step (EDM's ImageNet-64 strength, no S_tmin/S_tmax window): each step draws one Gaussian
    # sample of the batch's size, which diffusers' Heun (no churn at all) never does.
    TimedScheduler("EDMHeunScheduler (churn)", lambda: EDMHeunScheduler(s_churn=40, s_noise=1.003), "HeunDiscreteScheduler"),
    TimedScheduler(
        "EDMHeunDiscreteScheduler (churn)",
        lambda: EDMHeunDiscreteScheduler(**SD_TABLE_CONFIG, s_churn=40, s_noise=1.003),
        "HeunDiscreteScheduler",
    ),
    # Multistep: one model call per step; diffusers' DPM-Solver++ with Karras sigmas is the baseline.
    TimedScheduler(DPM_2M, lambda: DPMSolverMultistepScheduler(**SD_TABLE_CONFIG, use_karras_sigmas=True, solver_order=2), None),
    TimedScheduler(DPM_3M, lambda: DPMSolverMultistepScheduler(**SD_TABLE_CONFIG, use_karras_sigmas=True, solver_order=3), None),
    TimedScheduler("EDMMultistepScheduler (dpmpp 2)", lambda: EDMMultistepScheduler(solver="dpmpp", solver_order=2), DPM_2M),
    TimedScheduler(
        "EDMMultistepDiscreteScheduler (dpmpp 2)",
        lambda: EDMMultistepDiscreteScheduler(**SD_TABLE_CONFIG, solver="dpmpp", solver_order=2),
        DPM_2M,
    ),
    TimedScheduler("EDMMultistepScheduler (ipndm 4)", lambda: EDMMultistepScheduler(solver="ipndm"), DPM_3M),
    TimedScheduler(
        "EDMMultistepDiscreteScheduler (ipndm 4)", lambda: EDMMultistepDiscreteScheduler(**SD_TABLE_CONFIG, solver="ipndm"), DPM_3M
    ),
    TimedScheduler(
        "EDMMultistepDiscreteScheduler (unipc 3)", lambda: EDMMultistepDiscreteScheduler(**SD_TABLE_CONFIG, solver="unipc"), DPM_3M
    ),
)


@dataclass(frozen=True)
class OverheadSettings:
    """Sizes of one run (full or ``--quick``)."""

    latent_size: int
    batches: tuple[int, ...]
    repetitions: dict[int, int]  # per batch size
    warmup: int


FULL = OverheadSettings(latent_size=64, batches=(1, 64), repetitions={1: 60, 64: 12}, warmup=2)
QUICK = OverheadSettings(latent_size=8, batches=(1, 64), repetitions={1: 5, 64: 5}, warmup=1)


def trivial_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A model that costs one elementwise multiply: whatever else the loop spends is the scheduler's."""
    return sample * 0.5


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one_loop(scheduler: Any, sample: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Time ``set_timesteps`` and a full sampling loop once; return seconds (set_timesteps, loop, per step call)."""
    synchronize(device)
    start = time.perf_counter()
    scheduler.set_timesteps(NUM_STEPS, device=device)
    after_set = time.perf_counter()
    x = sample * scheduler.init_noise_sigma
    step_seconds = 0.0
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        output = trivial_model(model_input, t)
        before_step = time.perf_counter()
        x = scheduler.step(output, t, x).prev_sample
        step_seconds += time.perf_counter() - before_step
    synchronize(device)
    end = time.perf_counter()
    calls = len(scheduler.timesteps)
    return {"set_timesteps": after_set - start, "loop": end - start, "step": step_seconds / calls, "calls": calls}


def measure_overhead(settings: OverheadSettings, device: torch.device) -> list[dict[str, Any]]:
    """Median timings of every scheduler at every batch size, measured interleaved."""
    results = []
    # A full collection costs ~0.2 s with torch and diffusers loaded: collect once, then freeze the survivors so
    # that pausing the collector around each timed loop (below) never leaves a large backlog.
    gc.collect()
    gc.freeze()
    for batch in settings.batches:
        generator = torch.Generator(device=device).manual_seed(0)
        shape = (batch, 4, settings.latent_size, settings.latent_size)
        sample = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        schedulers = {entry.name: entry.make() for entry in SCHEDULERS}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in schedulers}
        names = list(schedulers)
        for repetition in range(settings.warmup + settings.repetitions[batch]):
            # Rotate the order so that no scheduler always runs right after the same neighbour.
            order = names[repetition % len(names):] + names[: repetition % len(names)]
            for name in order:
                gc.disable()  # a collection in the middle of one loop would be charged to that scheduler
                try:
                    timing = time_one_loop(schedulers[name], sample, device)
                finally:
                    gc.enable()
                if repetition >= settings.warmup:
                    samples[name].append(timing)
        for entry in SCHEDULERS:
            runs = samples[entry.name]
            results.append(
                {
                    "scheduler": entry.name,
                    "baseline": entry.baseline,
                    "batch": batch,
                    "calls": int(runs[0]["calls"]),
                    "repetitions": len(runs),
                    **{key: statistics.median(run[key] for run in runs) for key in ("set_timesteps", "loop", "step")},
                }
            )
    gc.unfreeze()
    for row in results:  # ratios against the diffusers scheduler of the same batch
        if row["baseline"] is None:
            continue
        base = next(r for r in results if r["scheduler"] == row["baseline"] and r["batch"] == row["batch"])
        for key in ("step", "loop", "set_timesteps"):
            row[f"{key}_ratio"] = row[key] / base[key]
    return results


def overhead_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of medians (microseconds) and ratios package / diffusers."""
    headers = ["scheduler", "batch", "calls", "step() us", "loop ms", "set_timesteps us", "step ratio", "loop ratio", "vs"]
    rows = []
    for row in results:
        rows.append(
            [
                row["scheduler"],
                row["batch"],
                row["calls"],
                f"{row['step'] * 1e6:.1f}",
                f"{row['loop'] * 1e3:.2f}",
                f"{row['set_timesteps'] * 1e6:.0f}",
                f"{row['step_ratio']:.2f}" if "step_ratio" in row else "1 (baseline)",
                f"{row['loop_ratio']:.2f}" if "loop_ratio" in row else "1 (baseline)",
                row["baseline"] or "",
            ]
        )
    return markdown_table(headers, rows)


def plot_overhead(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Bar plot of the step and loop ratios (package / diffusers) per batch size, with the 1.0 line."""
    plt = pyplot()
    if plt is None:
        return None
    compared = [r for r in results if r["baseline"] is not None]
    batches = sorted({r["batch"] for r in compared})
    names = list(dict.fromkeys(r["scheduler"] for r in compared))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    width = 0.8 / len(batches)
    for axis, key, title in zip(axes, ("step_ratio", "loop_ratio"), ("per step() call", "whole loop (set_timesteps + 35/18 calls)")):
        for index, batch in enumerate(batches):
            values = [next(r[key] for r in compared if r["scheduler"] == n and r["batch"] == batch) for n in names]
            positions = [i + (index - (len(batches) - 1) / 2) * width for i in range(len(names))]
            bars = axis.bar(positions, values, width=width, label=f"batch {batch}")
            for bar, value in zip(bars, values):
                axis.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        axis.axhline(1.0, color="black", linewidth=1, linestyle="--")
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels([n.replace("Scheduler", "").replace(" (", "\n(") for n in names], fontsize=8)
        axis.set_title(title, fontsize=10)
    axes[0].set_ylabel("time ratio package / diffusers (lower is faster)")
    axes[0].legend(fontsize=8)
    figure.suptitle(
        "Scheduler overhead vs HeunDiscrete (Heun rows), EulerDiscrete (Euler rows) and DPMSolverMultistep (multistep rows), "
        "float32, trivial model",
        fontsize=9,
    )
    return save_figure(figure, path)


def run_loop(scheduler: Any, sample: torch.Tensor, device: torch.device, begin_index: bool) -> list[int]:
    """One sampling loop with the trivial model; returns the host synchronisations counted in each model call."""
    scheduler.set_timesteps(NUM_STEPS, device=device)
    if begin_index:
        scheduler.set_begin_index(0)  # how diffusers' pipelines start: no timestep lookup on the first call
    x = sample * scheduler.init_noise_sigma
    per_call = []
    for t in scheduler.timesteps:
        with count_host_syncs() as syncs:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(trivial_model(model_input, t), t, x).prev_sample
        per_call.append(syncs.count)
    return per_call


def check_host_syncs(device: torch.device, latent_size: int) -> list[dict[str, Any]]:
    """Host synchronisations per model call of each scheduler's loop, on any device (:mod:`benchmarks.host_syncs`).

    Every scheduler runs a loop as a user's hand-written loop would (no begin index); the package's schedulers run
    once more after ``set_begin_index(0)``, as pipelines start them, where no call may synchronise. On CUDA that
    strict loop also runs under ``torch.cuda.set_sync_debug_mode("error")``, which sees synchronisations inside
    kernels too. Returns one record per scheduler.
    """
    records = []
    sample = torch.randn((1, 4, latent_size, latent_size), device=device)
    for entry in SCHEDULERS:
        per_call = run_loop(entry.make(), sample, device, begin_index=False)
        record = {"scheduler": entry.name, "syncs_first_call": per_call[0], "syncs_later_calls": sum(per_call[1:])}
        if entry.baseline is not None:  # the package's schedulers: the loop as pipelines run it
            record["syncs_with_begin_index"] = sum(run_loop(entry.make(), sample, device, begin_index=True))
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
                try:
                    run_loop(entry.make(), sample, device, begin_index=True)
                    record["cuda_error_mode_passed"] = True
                except RuntimeError as error:
                    record["cuda_error_mode_passed"] = False
                    record["cuda_error"] = str(error).splitlines()[0]
                finally:
                    torch.cuda.set_sync_debug_mode(0)
        records.append(record)
    return records


def profile_package_loops(device: torch.device, latent_size: int, path: Path, loops: int = 200) -> Path:
    """cProfile of the package's and the baselines' loops at batch 1 (where the overhead is pure Python/host work)."""
    sample = torch.randn((1, 4, latent_size, latent_size), device=device)
    report = io.StringIO()
    for entry in SCHEDULERS:
        scheduler = entry.make()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(loops):
            time_one_loop(scheduler, sample, device)
        profiler.disable()
        report.write(f"\n===== {entry.name}: {loops} loops of {NUM_STEPS} steps, batch 1 =====\n")
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(18)
    path.write_text(report.getvalue())
    return path


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``scheduler_overhead.{md,json,png}``; return the results."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of the loops at batch 1")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    if device.type == "cpu":
        # One intra-op thread: on a small shared CPU, two threads per op fight other processes for the cores and
        # make the large-batch timings far noisier; the package and diffusers get the same setting.
        torch.set_num_threads(1)  # restored on return: main() may run inside a larger process (the tests)
    diffusers_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    results = measure_overhead(settings, device)
    table = overhead_table(results)
    print(f"\nScheduler overhead, {NUM_STEPS} steps, float32 latents 4x{settings.latent_size}x{settings.latent_size}, "
          f"trivial model, medians of interleaved repetitions on {device}\n")
    print(table)
    ratios = [r[k] for r in results for k in ("step_ratio", "loop_ratio") if k in r]
    worst = max(ratios)
    print(f"\nworst ratio package / diffusers: {worst:.2f} ({'no slower' if worst <= 1.0 else 'SLOWER than diffusers'})")

    syncs = check_host_syncs(device, settings.latent_size)
    sync_columns = ["scheduler", "first call", "later calls", "all calls, begin index set"]
    sync_rows = [[s["scheduler"], s["syncs_first_call"], s["syncs_later_calls"], s.get("syncs_with_begin_index", "")] for s in syncs]
    if device.type == "cuda":
        sync_columns.append("CUDA error mode")
        for row, record in zip(sync_rows, syncs):
            row.append(record.get("cuda_error_mode_passed", ""))
    sync_md = markdown_table(sync_columns, sync_rows)
    print("\nHost synchronisations per loop (Python-level sync points: bool / item / float / tolist / cpu / nonzero ...)\n")
    print(sync_md)

    profile_path = None
    if args.profile or (not args.quick and worst > 1.0):
        profile_path = profile_package_loops(device, settings.latent_size, output_dir / "scheduler_overhead_profile.txt")
        print(f"wrote cProfile to {profile_path}")

    machine = machine_description(device)
    png = plot_overhead(results, output_dir / "scheduler_overhead.png")
    markdown_path = output_dir / "scheduler_overhead.md"
    markdown_path.write_text(
        f"# Scheduler overhead ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device})\n\n"
        f"{table}\n\nHost synchronisations per loop:\n\n{sync_md}\n"
    )
    result = {
        "settings": {**settings.__dict__, "num_steps": NUM_STEPS},
        "machine": machine,
        "quick": args.quick,
        "results": results,
        "worst_ratio": worst,
        "host_syncs": syncs,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "profile": str(profile_path) if profile_path else None},
    }
    write_record(output_dir / "scheduler_overhead.json", result)
    return result


if __name__ == "__main__":
    main()
