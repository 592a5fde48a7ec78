"""Training throughput: the training command's own loop vs a bare training loop, interleaved in one run (issue #18).

What is timed, per block of optimizer steps (the README's first command: the embedded digits at 16x16, batch 64, the
"tiny" class-conditional UNet preset, EDM recipe with label dropout 0.1, float32):

- ``command``: the training command's loop itself, ``Trainer.training_steps`` of a ``Trainer`` built by
  ``Trainer.setup`` from the command's own arguments: its data loader (``ImageDataset`` through Accelerate's
  loader), the recipe's loss (``EDMLoss`` over ``EDMPrecond``), ``accelerator.backward``, NaN/inf gradient
  replacement, the optimizer, the learning-rate ramp, the EMA, the progress bar, the logs (every ``--logging_steps``,
  to TensorBoard as the command's default), the finiteness checks and the checkpoint / validation / preemption
  tests. (Checkpoints and validations themselves fall every 600 steps, beyond the steps timed.)
- ``bare loop``: a hand-written loop over a copy of the same initial UNet with the data already in memory (every
  training image decoded once into one tensor, batches drawn by a shuffled permutation): EDM's sigma draw and input
  scaling, ``UNet2DModel`` forward, MSE against the noise, ``backward``, the same optimizer (``AdamW`` with the
  command's settings, foreach / fused alike) and a foreach EMA lerp with a fixed decay.

Both run in the same process, interleaved (bare, command, command, bare, ... : the order alternates per repetition)
after warm-up blocks, with one intra-op thread on the CPU (two threads on a shared 2-core machine stall
unpredictably). The ratio is ``command seconds per step / bare seconds per step`` (= bare steps/s over command
steps/s; target <= 1.05), given from the medians, from each repetition's adjacent pair of blocks (median and
spread: the machine's load drifts, a pair shares it), and from the fastest block of each.

Then, on the same two loops: host synchronisations per step (``benchmarks/host_syncs.py``'s counter; logging steps
apart), peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak RSS of a fresh process, ``VmHWM``), and a
cProfile of both loops broken down by part of the step (data loading, forward + loss, backward, gradient clean-up,
optimizer, EMA, logging and checks, the rest): where the difference goes. cProfile charges a little per Python call,
so it inflates the loop that makes more calls; the timings above are without it.

Run: ``python -m benchmarks.training_throughput [--quick] [--device cpu|cuda] [--resolution 16] [--batch 64]
[--mixed-precision no|bf16] [--repetitions N] [--steps-per-block N] [--output-dir DIR]``.
``benchmarks/gpu_check.sh`` runs it on a GPU at batch 256, 64x64, bf16.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate.state import AcceleratorState, PartialState

from benchmarks.host_syncs import HostSync, count_host_syncs
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
from diffusers_edm.losses import EDMLoss
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.train import Trainer

VARIANTS = ("bare loop", "command")
RATIO_TARGET = 1.05
BARE_EMA_DECAY = 0.999
LOGGING_STEPS = 10  # the command's default --logging_steps


@dataclass(frozen=True)
class ThroughputSettings:
    """Sizes of one run (full or ``--quick``)."""

    resolution: int
    batch: int
    repetitions: int  # interleaved repetitions (each times one block of both loops)
    steps_per_block: int  # optimizer steps timed together (a multiple of --logging_steps: each block logs alike)
    warmup: int  # untimed repetitions first
    profile_steps: int  # steps per loop under cProfile
    memory_steps: int  # steps per loop in the peak-memory measurement
    mixed_precision: str = "no"


FULL = ThroughputSettings(resolution=16, batch=64, repetitions=8, steps_per_block=10, warmup=1, profile_steps=10,
                          memory_steps=3)
QUICK = ThroughputSettings(resolution=8, batch=8, repetitions=2, steps_per_block=2, warmup=1, profile_steps=2,
                           memory_steps=2)


def command_arguments(settings: ThroughputSettings, output_dir: Path, max_train_steps: int) -> list[str]:
    """The README's first training command (the main job) at the benchmark's size, with room for every timed step."""
    return [
        "--output_dir", str(output_dir), "--overwrite", "--label_column", "label", "--label_dropout", "0.1",
        "--guidance_scale", "2", "--max_train_steps", str(max_train_steps), "--num_validation_images", "40",
        "--validation_steps", "600", "--checkpointing_steps", "600",
        "--resolution", str(settings.resolution), "--train_batch_size", str(settings.batch),
        "--mixed_precision", settings.mixed_precision, "--seed", "0", "--logging_steps", str(LOGGING_STEPS),
    ]


def build_trainer(settings: ThroughputSettings, device: torch.device, output_dir: Path, max_train_steps: int) -> Trainer:
    """The training command's ``Trainer``, set up (data, model, optimizer, EMA, trackers), not run."""
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # Accelerate would pick a GPU where there is one
    AcceleratorState._reset_state(True)  # one Trainer at a time in this process, each with a fresh Accelerate state
    PartialState._reset_state()
    trainer = Trainer(parse_args(command_arguments(settings, output_dir, max_train_steps)))
    trainer.setup()
    return trainer


class BareLoop:
    """A hand-written training loop over ``backbone`` with every image already in memory: the cost floor.

    EDM's sigma draw and ``c_in`` / ``c_noise`` inputs (so the same numbers go through the same UNet), MSE against the
    noise, ``backward``, the optimizer, ``zero_grad``, and a foreach EMA lerp with a fixed decay. Each part is its
    own method so that the profile can tell them apart.
    """

    def __init__(self, backbone: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int,
                 optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None):
        self.model, self.images, self.labels, self.batch = backbone.train(), images, labels, batch
        self.sigma_distribution = EDMLoss()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.ema = [p.detach().clone() for p in self.parameters]
        self.autocast_dtype = autocast_dtype
        self.order = torch.empty(0, dtype=torch.long, device=images.device)
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch > len(self.order):
            self.order, self.position = torch.randperm(len(self.images), device=self.images.device), 0
        index = self.order[self.position:self.position + self.batch]
        self.position += self.batch
        return self.images[index], self.labels[index]

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(images.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            sigma = self.sigma_distribution.sample_sigma(images.shape[0], images.device)
            noise = torch.randn_like(images)
            c_in = (sigma.square() + 0.25).rsqrt().reshape(-1, 1, 1, 1)
            noisy = (images + noise * sigma.reshape(-1, 1, 1, 1)) * c_in
            output = self.model(noisy, sigma.log() / 4, class_labels=labels, return_dict=False)[0]
            return torch.nn.functional.mse_loss(output.float(), noise)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def ema_step(self) -> None:
        torch._foreach_lerp_(self.ema, self.parameters, 1.0 - BARE_EMA_DECAY)

    def __call__(self) -> None:
        images, labels = self.next_batch()
        self.backward(self.forward_loss(images, labels))
        self.optimizer_step()
        self.ema_step()


def build_loops(settings: ThroughputSettings, device: torch.device, work_dir: Path, max_steps: int) -> dict[str, Callable[[], Any]]:
    """Both loops from the same initial backbone weights: one step of each per call."""
    trainer = build_trainer(settings, device, work_dir / "command", max_steps)
    dataset = trainer.train_dataset
    items = [dataset[i] for i in range(len(dataset))]  # decoded once: the bare loop's data is in memory
    images = torch.stack([item["images"] for item in items]).to(device)
    labels = torch.tensor([item["labels"] for item in items], device=device)
    backbone = copy.deepcopy(trainer.unwrapped_model().backbone)  # before any step: the same initial weights
    command_optimizer = trainer.optimizer.optimizer  # Accelerate's wrapper holds the torch optimizer
    defaults = command_optimizer.defaults
    optimizer = type(command_optimizer)(
        backbone.parameters(), **{key: defaults[key] for key in ("lr", "betas", "eps", "weight_decay", "foreach", "fused")}
    )
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.mixed_precision)
    bare = BareLoop(backbone, images, labels, settings.batch, optimizer, autocast_dtype)
    steps = trainer.training_steps([])
    command = lambda: next(steps)  # noqa: E731
    command.trainer = trainer  # type: ignore[attr-defined]
    return {"bare loop": bare, "command": command}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step: Callable[[], Any], count: int, device: torch.device) -> float:
    """Seconds per step over ``count`` consecutive steps (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / count


def total_steps(settings: ThroughputSettings) -> int:
    """Command steps the whole run takes (timing, host-sync count, profile), with room to spare."""
    return (settings.warmup + settings.repetitions) * settings.steps_per_block + LOGGING_STEPS + settings.profile_steps + 10


def measure_throughput(settings: ThroughputSettings, device: torch.device, loops: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Seconds per step of every timed block of both loops, interleaved, and the ratios they give."""
    blocks: dict[str, list[float]] = {name: [] for name in VARIANTS}
    count = settings.steps_per_block
    gc.collect()
    for repetition in range(settings.warmup + settings.repetitions):
        order = VARIANTS if repetition % 2 == 0 else VARIANTS[::-1]
        for name in order:
            gc.disable()  # a collection inside one block would be charged to that loop
            try:
                seconds = time_block(loops[name], count, device)
            finally:
                gc.enable()
            if repetition >= settings.warmup:
                blocks[name].append(seconds)
    bare, command = blocks["bare loop"], blocks["command"]
    paired = [c / b for c, b in zip(command, bare)]
    rows = []
    for name in VARIANTS:
        median = statistics.median(blocks[name])
        rows.append({
            "variant": name, "resolution": settings.resolution, "batch": settings.batch,
            "seconds_per_step": median, "steps_per_second": 1.0 / median, "images_per_second": settings.batch / median,
            "block_spread": [min(blocks[name]), max(blocks[name])], "steps_timed": len(blocks[name]) * count,
        })
    return {
        "rows": rows, "blocks": blocks, "paired_ratios": paired,
        "ratio_of_medians": statistics.median(command) / statistics.median(bare),
        "median_paired_ratio": statistics.median(paired),
        "paired_ratio_spread": [min(paired), max(paired)],
        "paired_ratio_quartiles": (statistics.quantiles(paired, n=4) if len(paired) >= 2 else [paired[0]] * 3),
        "fastest_ratio": min(command) / min(bare),
    }


# ------------------------------------------------------------------------------------------------ host syncs
def host_tensor_read(call: HostSync) -> bool:
    """Accelerate's seedable sampler draws each epoch's permutation with a CPU generator and reads it with ``tolist``
    / ``item``: host tensors on any device, so no wait for the GPU (the counter cannot tell them apart by itself)."""
    return "accelerate/data_loader.py" in call.location.replace(os.sep, "/")


def count_syncs_per_step(loops: dict[str, Callable[[], Any]], steps: dict[str, int]) -> dict[str, Any]:
    """Host synchronisations of each of ``steps[name]`` steps of both loops; the command's split into logging steps
    and the others."""
    per_step: dict[str, list[tuple[int, int]]] = {name: [] for name in VARIANTS}
    locations: dict[str, set[str]] = {name: set() for name in VARIANTS}
    sampler_reads = {name: 0 for name in VARIANTS}
    for name in VARIANTS:
        for index in range(steps[name]):
            with count_host_syncs() as syncs:
                result = loops[name]()
            step_number = result if isinstance(result, int) else index + 1
            device_reads = [call for call in syncs.calls if not host_tensor_read(call)]
            per_step[name].append((step_number, len(device_reads)))
            locations[name].update(f"{call.name} at {call.location}" for call in device_reads)
            sampler_reads[name] += len(syncs.calls) - len(device_reads)
    summary = {}
    for name in VARIANTS:
        logging = [count for step, count in per_step[name] if name == "command" and step % LOGGING_STEPS == 0]
        other = [count for step, count in per_step[name] if not (name == "command" and step % LOGGING_STEPS == 0)]
        summary[name] = {
            "steps": len(per_step[name]),
            "max_outside_logging_steps": max(other) if other else 0,
            "mean_outside_logging_steps": statistics.mean(other) if other else 0.0,
            "per_logging_step": statistics.mean(logging) if logging else None,
            "calls": sorted(locations[name]),
            "sampler_host_tensor_reads": sampler_reads[name],
        }
    return summary


# ------------------------------------------------------------------------------------------------ peak memory
def _proc_status_bytes(field_name: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``; reported in kB) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name} field.")


def _memory_child(variant: str, settings: ThroughputSettings, work_dir: str, queue: Any) -> None:
    """Run in a fresh process: build the loops, then report the RSS before and the peak RSS during a few steps of one.

    The peak is ``VmHWM`` of ``/proc/self/status``, reset just before the first step by writing 5 to
    ``/proc/self/clear_refs``. (``getrusage``'s ``ru_maxrss`` carries over the parent's size through fork + exec.)
    """
    torch.set_num_threads(1)
    step = build_loops(settings, torch.device("cpu"), Path(work_dir), settings.memory_steps + 1)[variant]
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
        handle.write("5")
    for _ in range(settings.memory_steps):
        step()
    queue.put({"rss_before": before, "peak_rss": _proc_status_bytes("VmHWM")})


def measure_memory(settings: ThroughputSettings, device: torch.device, work_dir: Path,
                   loops: dict[str, Callable[[], Any]]) -> list[dict[str, Any]]:
    """Peak memory per loop: CUDA allocator peak over a few steps, or on the CPU peak RSS in a fresh process."""
    records = []
    for variant in VARIANTS:
        if device.type == "cuda":
            synchronize(device)
            baseline = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(settings.memory_steps):
                loops[variant]()
            synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            records.append({"variant": variant, "peak_bytes": peak, "increase_bytes": peak - baseline,
                            "method": "torch.cuda.max_memory_allocated"})
            continue
        context = multiprocessing.get_context("spawn")  # a clean process: no memory left by the other loop
        queue = context.Queue()
        child_dir = work_dir / f"memory-{variant.replace(' ', '-')}"
        process = context.Process(target=_memory_child, args=(variant, settings, str(child_dir), queue))
        process.start()
        report = queue.get(timeout=900)
        process.join()
        records.append({"variant": variant, "peak_bytes": report["peak_rss"],
                        "increase_bytes": report["peak_rss"] - report["rss_before"], "method": "peak RSS, fresh process"})
    return records


# ------------------------------------------------------------------------------------------------ profile
#: Parts of a step: (file path fragment, function name) of the calls whose cumulative time is that part, for the
#: command and for the bare loop. No entry is nested inside another entry of the same part.
PROFILE_PARTS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "data loading": {
        "command": [("accelerate/data_loader.py", "__iter__"), ("training/train.py", "_batch_inputs")],
        "bare loop": [("training_throughput.py", "next_batch")],
    },
    "forward + loss": {"command": [("training/train.py", "_loss")], "bare loop": [("training_throughput.py", "forward_loss")]},
    "backward": {"command": [("accelerate/accelerator.py", "backward")], "bare loop": [("training_throughput.py", "backward")]},
    "gradient NaN/inf replacement": {"command": [("~", "<built-in method torch.nan_to_num>"),
                                                 ("training/train.py", "_replace_non_finite_gradients")],
                                     "bare loop": []},
    "optimizer (+ lr ramp)": {
        "command": [("accelerate/optimizer.py", "step"), ("accelerate/optimizer.py", "zero_grad"),
                    ("torch/optim/lr_scheduler.py", "step")],
        "bare loop": [("training_throughput.py", "optimizer_step")],
    },
    "EMA": {"command": [("training/ema.py", "step"), ("diffusers/training_utils.py", "step")],
            "bare loop": [("training_throughput.py", "ema_step")]},
    "logging, checks, progress bar": {
        "command": [("training/train.py", "_check_finite"), ("tqdm/std.py", "update"), ("accelerate/accelerator.py", "log"),
                    ("accelerate/accelerator.py", "gather"), ("training/preemption.py", "requested"),
                    ("~", "<method 'item' of 'torch._C.TensorBase' objects>"),
                    ("tqdm/std.py", "set_postfix"), ("torch/optim/lr_scheduler.py", "get_last_lr")],
        "bare loop": [],
    },
}


def _cumulative(stats: pstats.Stats, entries: list[tuple[str, str]]) -> float:
    total = 0.0
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(fragment in filename.replace(os.sep, "/") and function == name for fragment, name in entries):
            total += cumulative
    return total


def profile_loops(settings: ThroughputSettings, device: torch.device, loops: dict[str, Callable[[], Any]],
                  path: Path) -> dict[str, Any]:
    """cProfile of ``profile_steps`` steps of each loop: seconds per step by part, and the top functions."""
    report = io.StringIO()
    parts: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for name in VARIANTS:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(settings.profile_steps):
            loops[name]()
        synchronize(device)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=report)
        totals[name] = stats.total_tt / settings.profile_steps  # type: ignore[attr-defined]
        parts[name] = {part: _cumulative(stats, entries[name]) / settings.profile_steps for part, entries in PROFILE_PARTS.items()}
        parts[name]["rest of the loop"] = totals[name] - sum(parts[name].values())
        report.write(f"\n===== {name}: {settings.profile_steps} steps, batch {settings.batch}, "
                     f"{settings.resolution}x{settings.resolution} =====\n")
        stats.sort_stats("tottime").print_stats(25)
    breakdown = [{"part": part, **{name: parts[name][part] for name in VARIANTS}} for part in parts["command"]]
    breakdown.append({"part": "total (profiled)", **totals})
    table = markdown_table(
        ["part of the step", "command ms/step", "bare loop ms/step", "difference ms/step"],
        [[row["part"], f"{row['command'] * 1e3:.2f}", f"{row['bare loop'] * 1e3:.2f}",
          f"{(row['command'] - row['bare loop']) * 1e3:+.2f}"] for row in breakdown],
    )
    path.write_text(f"Where the time goes (cProfile, {settings.profile_steps} steps of each loop; cProfile's own "
                    f"per-call cost is included)\n\n{table}\n{report.getvalue()}")
    return {"breakdown": breakdown, "table": table}


# ------------------------------------------------------------------------------------------------ report
def throughput_table(throughput: dict[str, Any], memory: list[dict[str, Any]], syncs: dict[str, Any]) -> str:
    """Markdown table: ms/step, steps/s, images/s, the ratio, block spread, host syncs and peak memory per loop."""
    headers = ["loop", "ms / step", "steps / s", "images / s", "ratio to bare (medians)", "block spread ms",
               "host syncs / step (logging steps)", "peak memory MB", "memory increase MB"]
    rows = []
    bare = throughput["rows"][0]["seconds_per_step"]
    for row in throughput["rows"]:
        mem = next((m for m in memory if m["variant"] == row["variant"]), None)
        sync = syncs[row["variant"]]
        rows.append([
            row["variant"], f"{row['seconds_per_step'] * 1e3:.1f}", f"{row['steps_per_second']:.2f}",
            f"{row['images_per_second']:.0f}",
            "1 (baseline)" if row["variant"] == "bare loop" else f"{row['seconds_per_step'] / bare:.3f}",
            f"{row['block_spread'][0] * 1e3:.1f}-{row['block_spread'][1] * 1e3:.1f}",
            f"{sync['max_outside_logging_steps']}" + (f" ({sync['per_logging_step']:g})" if sync["per_logging_step"] is not None else ""),
            f"{mem['peak_bytes'] / 2**20:.0f}" if mem else "", f"{mem['increase_bytes'] / 2**20:.1f}" if mem else "",
        ])
    return markdown_table(headers, rows)


def ratio_summary(throughput: dict[str, Any]) -> str:
    low, high = throughput["paired_ratio_spread"]
    q1, _, q3 = throughput["paired_ratio_quartiles"]
    return (f"command / bare loop, seconds per step: {throughput['ratio_of_medians']:.3f} (medians), "
            f"{throughput['median_paired_ratio']:.3f} (median of {len(throughput['paired_ratios'])} adjacent block pairs; "
            f"quartiles {q1:.3f}-{q3:.3f}, range {low:.3f}-{high:.3f}), {throughput['fastest_ratio']:.3f} (fastest blocks); "
            f"target <= {RATIO_TARGET}")


def plot_throughput(settings: ThroughputSettings, throughput: dict[str, Any], path: Path) -> Path | None:
    """Steps/s of every timed block of both loops in time order, and the paired ratios."""
    plt = pyplot()
    if plt is None:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, colour in zip(VARIANTS, ("0.5", "tab:orange")):
        left.plot(range(1, len(throughput["blocks"][name]) + 1), [1 / s for s in throughput["blocks"][name]], "o-",
                  color=colour, label=name)
    left.set_xlabel("repetition (interleaved blocks)")
    left.set_ylabel("steps / second (higher is faster)")
    left.legend(fontsize=8)
    right.plot(range(1, len(throughput["paired_ratios"]) + 1), throughput["paired_ratios"], "o-", color="tab:blue")
    right.axhline(RATIO_TARGET, color="tab:red", linestyle="--", label=f"target {RATIO_TARGET}")
    right.axhline(1.0, color="0.6", linewidth=0.8)
    right.set_xlabel("repetition")
    right.set_ylabel("command / bare loop, seconds per step")
    right.legend(fontsize=8)
    figure.suptitle(f"Training command vs bare loop: {settings.resolution}x{settings.resolution}, batch {settings.batch}, "
                    f"{settings.mixed_precision if settings.mixed_precision != 'no' else 'float32'}", fontsize=10)
    return save_figure(figure, path)


@restores_torch_threads
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the tables, write ``training_throughput.{md,json,png}`` and the profile; return the results."""
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, help="image side in pixels (default 16; --quick 8)")
    parser.add_argument("--batch", type=int, help="batch size (default 64; --quick 8)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="the command's --mixed_precision")
    parser.add_argument("--repetitions", type=int, help="interleaved repetitions timed")
    parser.add_argument("--steps-per-block", type=int, help="steps per timed block")
    parser.add_argument("--name", default="training_throughput", help="file name stem of the outputs")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    overrides = {"resolution": args.resolution, "batch": args.batch, "mixed_precision": args.mixed_precision,
                 "repetitions": args.repetitions, "steps_per_block": args.steps_per_block}
    settings = replace(settings, **{key: value for key, value in overrides.items() if value is not None})
    if device.type == "cpu":
        torch.set_num_threads(1)  # restored by main(); see the module docstring
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    use_cpu = os.environ.get("ACCELERATE_USE_CPU")
    try:
        with tempfile.TemporaryDirectory(prefix="training_throughput_") as work:
            work_dir = Path(work)
            loops = build_loops(settings, device, work_dir, total_steps(settings))
            throughput = measure_throughput(settings, device, loops)
            # The command through one logging step (the bare loop has none: a few steps show it).
            syncs = count_syncs_per_step(loops, {"command": 2 if args.quick else LOGGING_STEPS, "bare loop": 2})
            profile_path = output_dir / f"{args.name}_profile.txt"
            profile = profile_loops(settings, device, loops, profile_path)
            trainer = loops["command"].trainer  # type: ignore[attr-defined]
            optimizer_flags = {key: trainer.optimizer.optimizer.defaults.get(key) for key in ("foreach", "fused")}
            trainer.accelerator.end_training()  # closes the trackers' files
            del loops, trainer
            gc.collect()
            if device.type == "cuda":
                loops = build_loops(settings, device, work_dir / "memory", settings.memory_steps + 1)
            memory = measure_memory(settings, device, work_dir, loops if device.type == "cuda" else {})
    finally:
        # Leave no Accelerate state or device choice behind for the caller (the tests run this in their process).
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        if use_cpu is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu

    table = throughput_table(throughput, memory, syncs)
    summary = ratio_summary(throughput)
    precision = settings.mixed_precision if settings.mixed_precision != "no" else "float32"
    print(f"\nTraining command vs bare loop on {device}, {settings.resolution}x{settings.resolution}, batch {settings.batch}, "
          f"{precision}: medians of {settings.repetitions} interleaved blocks of {settings.steps_per_block} steps\n")
    print(table)
    print("\n" + summary)
    print("\nWhere the difference goes (cProfile):\n\n" + profile["table"])
    machine = machine_description(device)
    png = plot_throughput(settings, throughput, output_dir / f"{args.name}.png")
    markdown_path = output_dir / f"{args.name}.md"
    markdown_path.write_text(
        f"# Training throughput ({'quick' if args.quick else 'full'} run, {machine['date']}, device {device}, "
        f"{settings.resolution}x{settings.resolution}, batch {settings.batch}, {precision})\n\n{table}\n\n{summary}.\n\n"
        f"Optimizer: {optimizer_flags}. Host syncs: the most in any step outside logging steps (the mean at logging "
        f"steps, every {LOGGING_STEPS}). Memory: {memory[0]['method'] if memory else 'not measured'}.\n\n"
        f"Where the difference goes (cProfile of {settings.profile_steps} steps of each loop):\n\n{profile['table']}\n"
    )
    result = {
        "settings": dict(settings.__dict__),
        "machine": machine,
        "quick": args.quick,
        "results": throughput["rows"],
        "throughput": throughput,
        "ratio": throughput["median_paired_ratio"],
        "host_syncs": syncs,
        "memory": memory,
        "profile": profile["breakdown"],
        "optimizer": optimizer_flags,
        "files": {"markdown": str(markdown_path), "png": str(png) if png else None, "profile": str(profile_path)},
    }
    write_record(output_dir / f"{args.name}.json", result)
    return result


if __name__ == "__main__":
    main()
