"""Training throughput: the training script's own step vs a bare diffusers-style step, side by side (issue #6, part 3).

What is measured, per image size (16x16 and 32x32, batch 64, float32, the "tiny" class-conditional UNet preset, the
embedded digits):

- ``Trainer step``: ``diffusers_edm.training.train.Trainer._train_step``, the step the training script runs, built by
  the script's own ``Trainer.setup`` (EDM recipe, 10 classes, label dropout 0.1): latent-free ``EDMLoss`` over
  ``EDMPrecond`` with EDM's ``sum / batch`` reduction, ``accelerator.backward``, NaN/inf gradient replacement,
  ``AdamW.step``, ``zero_grad``, the learning-rate ramp and the foreach ``EDMEMAModel.step``.
- ``bare``: the floor any diffusion training step pays, on a copy of the same initial backbone and the same batch:
  draw one sigma per image (EDM's distribution) and the noise, ``UNet2DModel(c_in (x + sigma n), c_noise,
  class_labels)``, MSE against the noise, ``backward``, ``AdamW.step``, ``zero_grad`` and a foreach EMA lerp with a
  fixed decay (no checks, no preconditioned output, no schedule).

Both take the same batch (already on the device: data loading is the same for any loop) and run in the same process,
interleaved (each repetition times a block of steps of every variant, in a rotating order) after warm-up, with one
intra-op thread on the CPU (two threads on a loaded 2-core machine stall unpredictably); the table reports medians of
the time per step as images/second and the overhead ``Trainer / bare - 1`` (target < 5%), from the medians and from
the fastest block of each variant. Other jobs on a shared machine only ever add time, so the fastest of repeated
blocks is the estimate least disturbed by them; the verdict uses it, and both are reported.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over a few steps of each variant (after
``reset_peak_memory_stats``). On the CPU there is no allocator statistic, so each variant runs a few steps in a
fresh process (``spawn``) that reports its peak resident set size during the steps (``VmHWM``, reset just before
them) and how far it rose above the resident size just before the first step: the variant's own working memory
(activations, gradients, optimizer and EMA state). The CPU allocator's caching makes single readings vary by
some tens of MB, so differences smaller than that are not resolved (Linux only: it reads ``/proc/self``).

``--profile`` (and any full run whose overhead is >= 5%) writes a cProfile of both steps to
``training_throughput_profile.txt``.

Run: ``python -m benchmarks.training_throughput [--quick] [--device cpu|cuda] [--output-dir DIR] [--profile]``.
"""

from __future__ import annotations

import copy
import cProfile
import gc
import io
import multiprocessing
import os
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate.state import AcceleratorState, PartialState

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
from diffusers_edm.losses import EDMLoss
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.train import Trainer

VARIANTS = ("bare", "Trainer step")
OVERHEAD_TARGET = 0.05
BARE_EMA_DECAY = 0.999


@dataclass(frozen=True)
class ThroughputSettings:
    """Sizes of one run (full or ``--quick``)."""

    sizes: tuple[int, ...]  # image side in pixels
    batch: int
    repetitions: dict[int, int]  # per size: interleaved repetitions (each times a block of every variant)
    steps_per_block: dict[int, int]  # per size: optimizer steps timed together
    warmup: int  # untimed blocks first
    memory_steps: int  # steps per variant in the peak-memory measurement
    memory_variants: tuple[str, ...]


FULL = ThroughputSettings(
    sizes=(16, 32), batch=64, repetitions={16: 15, 32: 7}, steps_per_block={16: 2, 32: 1}, warmup=2,
    memory_steps=3, memory_variants=VARIANTS,
)
QUICK = ThroughputSettings(
    sizes=(8,), batch=8, repetitions={8: 3}, steps_per_block={8: 1}, warmup=1, memory_steps=2,
    memory_variants=VARIANTS,
)


def build_trainer(size: int, batch: int, device: torch.device, output_dir: Path) -> Trainer:
    """The training script's ``Trainer`` for the EDM recipe on the digits at ``size`` pixels, set up, not run."""
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # Accelerate would pick a GPU where there is one
    AcceleratorState._reset_state(True)  # one Trainer per size in this process, each with a fresh Accelerate state
    PartialState._reset_state()
    args = parse_args([
        "--output_dir", str(output_dir), "--resolution", str(size), "--train_batch_size", str(batch),
        "--label_column", "label", "--label_dropout", "0.1", "--model_size", "tiny", "--report_to", "none",
        "--mixed_precision", "no", "--seed", "0",
    ])
    trainer = Trainer(args)
    trainer.setup()
    return trainer


class BareStep:
    """A plain diffusers-style training step on ``backbone``: the cost floor of any diffusion training step.

    EDM's sigma draw and ``c_in`` / ``c_noise`` inputs (so the same numbers go through the same UNet), MSE against the
    noise, ``backward``, ``AdamW.step``, ``zero_grad``, and a foreach EMA lerp with a fixed decay.
    """

    def __init__(self, backbone: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, learning_rate: float):
        self.model, self.images, self.labels = backbone.train(), images, labels
        self.sigma_distribution = EDMLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.parameters]

    def __call__(self) -> None:
        images = self.images
        sigma = self.sigma_distribution.sample_sigma(images.shape[0], images.device)
        noise = torch.randn_like(images)
        c_in = (sigma.square() + 0.25).rsqrt().reshape(-1, 1, 1, 1)
        noisy = (images + noise * sigma.reshape(-1, 1, 1, 1)) * c_in
        output = self.model(noisy, sigma.log() / 4, class_labels=self.labels, return_dict=False)[0]
        torch.nn.functional.mse_loss(output, noise).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.parameters, 1.0 - BARE_EMA_DECAY)


def build_steps(size: int, batch: int, device: torch.device, work_dir: Path) -> dict[str, Callable[[], None]]:
    """Both variants on the same initial backbone weights and the same batch (the script's first batch)."""
    trainer = build_trainer(size, batch, device, work_dir / f"trainer-{size}")
    batch_data = next(iter(trainer.dataloader))
    backbone = copy.deepcopy(trainer.unwrapped_model().backbone)  # before any step: the same initial weights
    bare = BareStep(backbone, batch_data["images"], batch_data["labels"], trainer.args.learning_rate)
    return {"bare": bare, "Trainer step": lambda: trainer._train_step(batch_data)}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step: Callable[[], None], count: int, device: torch.device) -> float:
    """Seconds per step over ``count`` consecutive steps (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / count


def measure_throughput(settings: ThroughputSettings, device: torch.device, work_dir: Path) -> list[dict[str, Any]]:
    """Median seconds per step and images/second of every variant at every size, measured interleaved."""
    results = []
    for size in settings.sizes:
        steps = build_steps(size, settings.batch, device, work_dir)
        names = list(steps)
        per_step: dict[str, list[float]] = {name: [] for name in names}
        count = settings.steps_per_block[size]
        gc.collect()
        for repetition in range(settings.warmup + settings.repetitions[size]):
            order = names[repetition % len(names):] + names[: repetition % len(names)]
            for name in order:
                gc.disable()  # a collection inside one block would be charged to that variant
                try:
                    seconds = time_block(steps[name], count, device)
                finally:
                    gc.enable()
                if repetition >= settings.warmup:
                    per_step[name].append(seconds)
        bare = statistics.median(per_step["bare"])
        bare_fastest = min(per_step["bare"])
        for name in names:
            median = statistics.median(per_step[name])
            results.append(
                {
                    "size": size,
                    "batch": settings.batch,
                    "variant": name,
                    "seconds_per_step": median,
                    "images_per_second": settings.batch / median,
                    "overhead": median / bare - 1.0,
                    "fastest_overhead": min(per_step[name]) / bare_fastest - 1.0,
                    "spread": [min(per_step[name]), max(per_step[name])],
                    "steps_timed": len(per_step[name]) * count,
                }
            )
    return results


# ------------------------------------------------------------------------------------------------ peak memory
def _proc_status_bytes(field_name: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``; reported in kB) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name} field.")


def _memory_child(variant: str, size: int, batch: int, steps: int, work_dir: str, queue: Any) -> None:
    """Run in a fresh process: build the variant, then report the RSS before and the peak RSS during ``steps`` steps.

    The peak is ``VmHWM`` of ``/proc/self/status``, reset just before the first step by writing 5 to
    ``/proc/self/clear_refs``. (``getrusage``'s ``ru_maxrss`` is useless here: Linux carries it across the
    fork + exec that starts the process, so it reports the parent's size.)
    """
    torch.set_num_threads(1)
    step = build_steps(size, batch, torch.device("cpu"), Path(work_dir))[variant]
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
        handle.write("5")
    for _ in range(steps):
        step()
    queue.put({"rss_before": before, "peak_rss": _proc_status_bytes("VmHWM")})


def measure_memory(settings: ThroughputSettings, device: torch.device, work_dir: Path) -> list[dict[str, Any]]:
    """Peak memory per variant and size: CUDA allocator peak, or on the CPU peak RSS in a fresh process."""
    records = []
    for size in settings.sizes:
        for variant in settings.memory_variants:
            if device.type == "cuda":
                step = build_steps(size, settings.batch, device, work_dir / f"memory-{variant.replace(' ', '-')}")[variant]
                synchronize(device)
                baseline = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                for _ in range(settings.memory_steps):
                    step()
                synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
                records.append({"size": size, "variant": variant, "peak_bytes": peak, "increase_bytes": peak - baseline,
                                "method": "torch.cuda.max_memory_allocated"})
                del step
                gc.collect()
                torch.cuda.empty_cache()
            else:
                context = multiprocessing.get_context("spawn")  # a clean process: no memory left by other variants
                queue = context.Queue()
                child_dir = work_dir / f"memory-{size}-{variant.replace(' ', '-')}"
                process = context.Process(
                    target=_memory_child, args=(variant, size, settings.batch, settings.memory_steps, str(child_dir), queue)
                )
                process.start()
                report = queue.get(timeout=600)
                process.join()
                records.append({"size": size, "variant": variant, "peak_bytes": report["peak_rss"],
                                "increase_bytes": report["peak_rss"] - report["rss_before"], "method": "peak RSS, fresh process"})
    return records


# ------------------------------------------------------------------------------------------------ profile
def profile_steps(settings: ThroughputSettings, device: torch.device, work_dir: Path, path: Path, steps: int = 10) -> Path:
    """cProfile of the Trainer's step and of the bare step at the first size."""
    size = settings.sizes[0]
    step_objects = build_steps(size, settings.batch, device, work_dir / "profile")
    report = io.StringIO()
    for name in ("Trainer step", "bare"):
        step_objects[name]()  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(steps):
            step_objects[name]()
        synchronize(device)
        profiler.disable()
        report.write(f"\n===== {name}: {steps} steps, batch {settings.batch}, {size}x{size} =====\n")
        stats = pstats.Stats(profiler, stream=report)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats("train|preconditioned_denoisers|denoising|ema|training_utils|accelerate", 15)
    path.write_text(report.getvalue())
    return path


# ------------------------------------------------------------------------------------------------ report
def throughput_table(results: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
    """Markdown table: ms/step, images/s, overhead vs bare, and peak memory per variant and size."""
    headers = ["size", "batch", "variant", "ms / step", "images / s", "overhead vs bare", "overhead, fastest blocks",
               "step spread ms", "peak memory MB", "memory increase MB"]
    rows = []
    for row in results:
        mem = next((m for m in memory if m["size"] == row["size"] and m["variant"] == row["variant"]), None)
        rows.append(
            [
                f"{row['size']}x{row['size']}",
                row["batch"],
                row["variant"],
                f"{row['seconds_per_step'] * 1e3:.1f}",
                f"{row['images_per_second']:.0f}",
                "baseline" if row["variant"] == "bare" else f"{row['overhead'] * 100:+.1f}%",
                "baseline" if row["variant"] == "bare" else f"{row['fastest_overhead'] * 100:+.1f}%",
                f"{row['spread'][0] * 1e3:.0f}-{row['spread'][1] * 1e3:.0f}",
                f"{mem['peak_bytes'] / 2**20:.0f}" if mem else "",
                f"{mem['increase_bytes'] / 2**20:.1f}" if mem else "",
            ]
        )
    return markdown_table(headers, rows)


def plot_throughput(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Bar plot of images/second per variant and size, labelled with the overhead vs bare."""
    plt = pyplot()
    if plt is None:
        return None
    sizes = sorted({r["size"] for r in results})
    figure, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        rows = [r for r in results if r["size"] == size]
        bars = axis.bar([r["variant"].replace(" (", "\n(") for r in rows], [r["images_per_second"] for r in rows],
                        color=["0.6", "tab:orange"][: len(rows)])
        for bar, row in zip(bars, rows):
            label = "bare" if row["variant"] == "bare" else f"{row['overhead'] * 100:+.1f}%"
            axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=8)
        axis.set_title(f"{size}x{size}, batch {rows[0]['batch']}", fontsize=10)
        axis.set_ylabel("images / second (higher is faster)")
    figure.suptitle("Training step: the training script's Trainer step vs a bare UNet2DModel step, float32", fontsize=10)
    return save_figure(figure, path)


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write ``training_throughput.{md,json,png}``; return the results."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of the Trainer's and the bare step")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    if device.type == "cpu":
        torch.set_num_threads(1)  # restored by main(); see the module docstring
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    use_cpu = os.environ.get("ACCELERATE_USE_CPU")
    with tempfile.TemporaryDirectory(prefix="training_throughput_") as work:
        work_dir = Path(work)
        results = measure_throughput(settings, device, work_dir)
        memory = measure_memory(settings, device, work_dir)
        table = throughput_table(results, memory)
        print(f"\nTraining step throughput, medians of interleaved repetitions on {device}, float32\n")
        print(table)
        trainer_rows = [r for r in results if r["variant"] == "Trainer step"]
        worst = max(r["fastest_overhead"] for r in trainer_rows)
        worst_median = max(r["overhead"] for r in trainer_rows)
        verdict = "within" if worst < OVERHEAD_TARGET else "ABOVE"
        print(f"\nworst Trainer-step overhead vs bare: {worst * 100:+.1f}% of the fastest blocks ({verdict} the "
              f"{OVERHEAD_TARGET:.0%} target), {worst_median * 100:+.1f}% of the medians")

        profile_path = None
        if args.profile or (not args.quick and worst >= OVERHEAD_TARGET):
            profile_path = profile_steps(settings, device, work_dir, output_dir / "training_throughput_profile.txt")
            print(f"wrote cProfile to {profile_path}")
    # Leave no Accelerate state or device choice behind for the caller (the tests run this in their process).
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    if use_cpu is None:
        os.environ.pop("ACCELERATE_USE_CPU", None)
    else:
        os.environ["ACCELERATE_USE_CPU"] = use_cpu

    machine = machine_description(device)
    png = plot_throughput(results, output_dir / "training_throughput.png")
    markdown_path = output_dir / "training_throughput.md"
    markdown_path.write_text(
        f"# Training throughput ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device})\n\n{table}\n\n"
        f"Worst Trainer-step overhead vs bare: {worst * 100:+.1f}% of the fastest blocks, {worst_median * 100:+.1f}% of the "
        f"medians (target < {OVERHEAD_TARGET:.0%}).\n"
        f"Memory: {memory[0]['method'] if memory else 'not measured'}.\n"
    )
    result = {
        "settings": {k: v for k, v in settings.__dict__.items()},
        "machine": machine,
        "quick": args.quick,
        "results": results,
        "memory": memory,
        "worst_overhead": worst,
        "worst_median_overhead": worst_median,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "profile": str(profile_path) if profile_path else None},
    }
    write_record(output_dir / "training_throughput.json", result)
    return result


if __name__ == "__main__":
    main()
