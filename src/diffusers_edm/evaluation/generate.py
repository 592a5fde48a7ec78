"""``diffusers-edm-generate``: one image per seed, split over the processes of ``accelerate launch``.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models") measure sample quality as FID
over 50,000 generated images, each drawn from its own seed, so that a set of seeds names one set of images (the best
of three such sets is reported). This module keeps that contract:

- **Seed-exact.** Each image gets its own CPU ``torch.Generator`` seeded with its seed, and the pipelines draw every
  random number of a sample from it: the initial noise and each step's noise (EDM's churn in ``EDMHeunScheduler``,
  diffusers' SDE solvers, the learned-variance ancestral steps) go through diffusers' ``randn_tensor``, which with a
  list of generators draws sample ``i`` from generator ``i``. The image of seed ``k`` is therefore the same whatever
  batch it is in and whichever process draws it, up to the model's float reductions: on CPU a convolution's may
  differ with the batch size in the last bits (about 1e-5 after a tiny model's sampling), which can flip a rounded
  8-bit value only when it lies that close to a rounding edge (the tests' PNGs agree byte for byte). The generators
  live on the CPU, so the noise is also the same on every device.
- **Class labels** per seed: ``fixed:K``, ``cyclic`` (``seed % num_classes``) or ``random``
  (``numpy.random.default_rng(seed).integers(num_classes)``: a PCG64 stream, independent of the Mersenne-Twister
  noise torch draws from the same seed, and of the batching). ``random`` is the default for a class-conditional
  model (as in EDM's generator), an unconditional one takes no label option.
- **Layout** as EDM's: ``OUTDIR/{seed - seed % 1000:06d}/{seed:06d}.png`` (RGB, or L for one channel), each written
  to a temporary name and renamed, so a killed run leaves no truncated PNG; a rerun skips the seeds whose PNG exists.
  With ``--npz FILE`` the PNGs go to ``FILE.parts/`` (resumable the same way) and the main process assembles them
  into ``FILE`` (``images``: uint8 NHWC in seed order, ``seeds``) at the end, then removes the parts.
- **Processes.** The seeds still to draw are split ``seeds[rank::world]`` over the processes of Accelerate's
  ``PartialState``, each on its own device; the main process shows the progress bar and prints a summary.

Usage::

    diffusers-edm-generate --pipeline runs/digits --seeds 0-999 --batch 64 --outdir runs/digits-samples
    accelerate launch --multi_gpu --num_processes 2 -m diffusers_edm.evaluation.generate --pipeline runs/digits \\
        --seeds 0-49999 --outdir runs/digits-50k
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils import logging as diffusers_logging
from tqdm.auto import tqdm

from ..guidance.classifier import MAX_CLASSIFIER_SCALE
from ..option_types import integer, parse_or_raise, real
from ..pipelines import EDMPipeline, LearnedVariancePipeline
from ..pipelines.pipeline_edm import takes_raw_network_output, takes_sigma_timesteps
from ..process_state import process_state
from ..schedulers.compatibles import PackageCompatiblesMixin
from ..schedulers import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    LearnedVarianceDDPMScheduler,
)
from ..value_checks import check_integer

MAX_SEED = 2**32 - 1  # as the training seed: numpy's and EDM's seed range
MAX_SEEDS = 10_000_000  # per run; EDM's protocol draws 50,000
SEEDS_ALLOWED = f"comma-separated seeds and inclusive ranges a-b, 0 <= a <= b <= {MAX_SEED}, e.g. 0-49999 or 0,5,10-19"
LABEL_MODES = ("fixed:K", "cyclic", "random")
#: the scheduler options of the command line and the scheduler config keys they set
SCHEDULER_OPTIONS = {"s_churn": "s_churn", "s_min": "s_tmin", "s_max": "s_tmax", "s_noise": "s_noise", "solver": "solver"}
#: the pipeline call options of the command line (passed only to a pipeline whose ``__call__`` takes them)
CALL_OPTIONS = ("num_inference_steps", "guidance_scale", "classifier_scale", "guidance_interval")
#: the call arguments this module sets itself
RESERVED_CALL_ARGUMENTS = ("batch_size", "generator", "output_type", "class_labels", "return_dict")
PARTS_SUFFIX = ".parts"
#: offered whatever the pipeline's scheduler (diffusers' schedulers list only diffusers' ones as compatible)
PACKAGE_SCHEDULERS = (
    EDMHeunScheduler, EDMMultistepScheduler, EDMHeunDiscreteScheduler, EDMMultistepDiscreteScheduler,
    LearnedVarianceDDPMScheduler,
)


# ------------------------------------------------------------------------------------------------ seeds
def parse_seeds(text: str) -> list[int]:
    """EDM's seed syntax: comma-separated seeds and inclusive ranges ``a-b`` (``0-49999``, ``0,5,10-19``), as a sorted
    list without repeats; a ``ValueError`` naming the text and the bad part otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"seeds must be {SEEDS_ALLOWED}; got {text!r}.")
    intervals = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]{1,10})\s*(?:-\s*([0-9]{1,10})\s*)?", part)
        low = int(match[1]) if match else 0
        high = int(match[2]) if match and match[2] is not None else low
        if match is None or not low <= high <= MAX_SEED:
            raise ValueError(f"seeds must be {SEEDS_ALLOWED}; got {text!r} (bad part {part!r}).")
        intervals.append((low, high))
    merged: list[list[int]] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    count = sum(high - low + 1 for low, high in merged)
    if count > MAX_SEEDS:
        raise ValueError(f"seeds {text!r} select {count} seeds; at most {MAX_SEEDS} per run.")
    return list(itertools.chain.from_iterable(range(low, high + 1) for low, high in merged))


def check_seeds(seeds: str | Iterable[int]) -> list[int]:
    """Seeds given as EDM's syntax (:func:`parse_seeds`) or as integers, as a sorted list without repeats."""
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    checked = sorted({check_integer("seed", seed, minimum=0, maximum=MAX_SEED) for seed in seeds})
    if not checked:
        raise ValueError("seeds must name at least one seed, got none.")
    if len(checked) > MAX_SEEDS:
        raise ValueError(f"seeds select {len(checked)} seeds; at most {MAX_SEEDS} per run.")
    return checked


def image_path(folder: str | Path, seed: int) -> Path:
    """EDM's layout: ``folder/{seed - seed % 1000:06d}/{seed:06d}.png``."""
    return Path(folder) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


# ------------------------------------------------------------------------------------------------ class labels
@dataclass(frozen=True)
class LabelRule:
    """The class label of each seed: ``fixed`` (``label`` for every seed), ``cyclic`` (``seed % num_classes``) or
    ``random`` (``numpy.random.default_rng(seed).integers(num_classes)``). Each depends on the seed alone."""

    mode: str
    label: int | None = None

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        """``fixed:K`` (K an integer >= 0), ``cyclic`` or ``random``; a ``ValueError`` naming the text otherwise."""
        match = re.fullmatch(r"fixed:([0-9]{1,10})|cyclic|random", text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"class_labels must be one of {LABEL_MODES} (K a class id >= 0), got {text!r}.")
        if match[1] is not None:
            return cls("fixed", int(match[1]))
        return cls(match[0])

    def __str__(self) -> str:
        return f"fixed:{self.label}" if self.mode == "fixed" else self.mode

    def labels(self, seeds: Sequence[int], num_classes: int) -> list[int]:
        """The label of each seed, for a model of ``num_classes`` classes (a ``ValueError`` for a fixed label out of
        range)."""
        if self.mode == "fixed":
            check_integer(f"K of class_labels {self}", self.label, minimum=0, maximum=num_classes - 1)
            return [self.label] * len(seeds)
        if self.mode == "cyclic":
            return [seed % num_classes for seed in seeds]
        return [int(np.random.default_rng(seed).integers(num_classes)) for seed in seeds]


def label_classes(pipeline: DiffusionPipeline, classifier_scale: float | None = None) -> int:
    """The number of classes the pipeline's labels index: the class-conditional model's real classes (its null label
    excluded); for an unconditional model steered by its classifier (``classifier_scale`` ``None`` or > 0), the
    classifier's; else 0 (the pipeline takes no labels)."""
    if isinstance(pipeline, EDMPipeline):
        num_classes = int(pipeline.denoiser.config.num_classes)
    elif isinstance(pipeline, LearnedVariancePipeline):
        num_classes = pipeline._num_classes()
    else:
        return 0
    steered = pipeline.classifier is not None and (classifier_scale is None or classifier_scale > 0)
    if num_classes == 0 and steered:
        num_classes = int(pipeline.classifier.config.num_classes)
    return num_classes


# ------------------------------------------------------------------------------------------------ sampler
def samples_with(pipeline: DiffusionPipeline, scheduler: SchedulerMixin) -> bool:
    """Whether the pipeline can sample with the scheduler (the check its ``__init__`` makes)."""
    if isinstance(pipeline, EDMPipeline):
        return takes_sigma_timesteps(scheduler) or takes_raw_network_output(scheduler)
    if isinstance(pipeline, LearnedVariancePipeline):
        return isinstance(scheduler, LearnedVarianceDDPMScheduler)
    return True


def scheduler_candidates(pipeline: DiffusionPipeline) -> dict[str, type[SchedulerMixin]]:
    """The schedulers offered, by class name: ``pipeline.scheduler.compatibles`` (its own class first), the package's
    schedulers and theirs (diffusers' schedulers do not list the package's, nor does ``EDMDPMSolverMultistepScheduler``
    list ``EDMEulerScheduler``). :func:`configure_scheduler` accepts those the pipeline samples with."""
    classes = [*pipeline.scheduler.compatibles]
    for package_scheduler in PACKAGE_SCHEDULERS:
        classes += package_scheduler._get_compatibles()
    candidates: dict[str, type[SchedulerMixin]] = {}
    for cls in classes:
        candidates.setdefault(cls.__name__, cls)
    return candidates


def configure_scheduler(
    pipeline: DiffusionPipeline, scheduler: str | None = None, options: Mapping[str, Any] | None = None
) -> SchedulerMixin:
    """Set the pipeline's scheduler to the class named ``scheduler`` (default: the pipeline's own), built with
    ``from_config(pipeline.scheduler.config, ...)`` and the given ``options`` (keys of :data:`SCHEDULER_OPTIONS`:
    ``s_churn``, ``s_min``, ``s_max``, ``s_noise``, ``solver``). The class must be one of
    ``pipeline.scheduler.compatibles`` or of the package's schedulers that the pipeline samples with, and have each
    option; a ``ValueError`` naming
    the option and the schedulers that have it otherwise. Returns the new scheduler."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(SCHEDULER_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown scheduler options {unknown}; expected some of {sorted(SCHEDULER_OPTIONS)}.")
    compatibles = scheduler_candidates(pipeline)
    name = type(pipeline.scheduler).__name__ if scheduler is None else scheduler
    if name not in compatibles or not _usable(compatibles[name], pipeline):
        usable = [other for other, cls in compatibles.items() if _usable(cls, pipeline)]
        raise ValueError(f"scheduler must be one of {usable} for this {type(pipeline).__name__}, got {name!r}.")
    cls = compatibles[name]
    parameters = inspect.signature(cls.__init__).parameters
    config = {}
    for option, value in options.items():
        key = SCHEDULER_OPTIONS[option]
        if key not in parameters:
            having = [
                other for other, c in compatibles.items()
                if key in inspect.signature(c.__init__).parameters and _usable(c, pipeline)
            ]
            raise ValueError(
                f"--{option} sets the scheduler's {key}, which {name} does not have; schedulers of this pipeline with "
                f"it: {having or 'none'}."
            )
        choices = getattr(cls, "solver_choices", ())
        if key == "solver" and choices and value not in choices:
            # a package scheduler reads another one's solver as its own default: refuse it here instead
            raise ValueError(f"--solver must be one of {list(choices)} for {name}, got {value!r}.")
        config[key] = value
    new = cls.from_config(pipeline.scheduler.config, **config)
    pipeline.scheduler = new
    return new


def _usable(cls: type[SchedulerMixin], pipeline: DiffusionPipeline) -> bool:
    """Whether ``cls.from_config(pipeline.scheduler.config)`` builds (a discrete scheduler refuses an EDM noise range)
    and the pipeline samples with it."""
    if isinstance(pipeline, LearnedVariancePipeline) and not issubclass(cls, LearnedVarianceDDPMScheduler):
        return False
    if isinstance(pipeline, EDMPipeline) and not (
        issubclass(cls, PackageCompatiblesMixin) or any("precondition_outputs" in vars(base) for base in cls.__mro__)
    ):
        return False  # neither a package scheduler nor one of diffusers' EDM ones: not worth building
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # a probe: no warnings about config keys the class ignores
    try:
        scheduler = cls.from_config(pipeline.scheduler.config)
    except (ImportError, TypeError, ValueError):  # ImportError: an optional dependency (torchsde) is missing
        return False
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return samples_with(pipeline, scheduler)


# ------------------------------------------------------------------------------------------------ output
def write_png(image: PIL.Image.Image, path: Path) -> None:
    """Save ``image`` as ``path`` through a temporary file in the same folder and a rename (atomic), so ``path`` exists
    only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as file:
        try:
            image.save(file, format="PNG")
        except BaseException:
            file.close()
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def remove_partial_files(folder: Path) -> None:
    """Remove the temporary files of writes a killed run left in the seed folders of ``folder``."""
    for partial in folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9]/.*.png.*.tmp"):
        partial.unlink(missing_ok=True)


def assemble_npz(folder: Path, seeds: Sequence[int], destination: Path) -> tuple[int, ...]:
    """Write ``destination`` (``images``: uint8 ``(N, H, W, C)`` in seed order, ``seeds``) from the PNGs of ``seeds``
    in ``folder``, through a temporary file and a rename; returns the images' shape."""
    arrays = []
    for seed in seeds:
        with PIL.Image.open(image_path(folder, seed)) as image:
            array = np.asarray(image)
        arrays.append(array[..., None] if array.ndim == 2 else array)
    images = np.stack(arrays)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp", delete=False) as file:
        np.savez(file, images=images, seeds=np.asarray(seeds, dtype=np.int64))
    os.replace(file.name, destination)
    return images.shape


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class GenerationSummary:
    """What :func:`generate_images` did: ``generated`` of ``num_seeds`` images drawn (the others existed), written to
    ``output`` (the PNG folder or the ``.npz`` file), by ``num_processes`` processes in ``seconds``."""

    num_seeds: int
    generated: int
    output: Path
    num_processes: int
    seconds: float

    @property
    def skipped(self) -> int:
        return self.num_seeds - self.generated

    def __str__(self) -> str:
        return (
            f"Generated {self.generated} of {self.num_seeds} images ({self.skipped} already there) in {self.seconds:.1f} s "
            f"with {self.num_processes} process(es): {self.output}"
        )


def generate_images(
    pipeline: DiffusionPipeline,
    seeds: str | Iterable[int],
    outdir: str | Path | None = None,
    *,
    npz: str | Path | None = None,
    batch_size: int = 64,
    class_labels: str | LabelRule | None = None,
    show_progress: bool = True,
    **call_arguments: Any,
) -> GenerationSummary:
    """Draw one image per seed with ``pipeline``, split over the processes of Accelerate's ``PartialState``, and write
    them as PNGs in EDM's layout under ``outdir`` or as one ``.npz`` file (see the module docstring); seeds whose
    image exists are skipped.

    Args:
        pipeline: a pipeline whose ``__call__`` takes ``batch_size``, ``generator`` (one per image) and
            ``output_type="pil"`` (``EDMPipeline``, ``LearnedVariancePipeline``); it is moved to the process's device.
        seeds: EDM's syntax (``"0-49999"``) or integers in ``[0, 2**32 - 1]``.
        outdir: the PNG folder; exactly one of ``outdir`` and ``npz``.
        npz: the ``.npz`` file to write (refused if it exists); its PNGs are kept in ``npz + ".parts"`` until then.
        batch_size: images per pipeline call on each process.
        class_labels: ``"fixed:K"``, ``"cyclic"`` or ``"random"`` (:class:`LabelRule`); default ``"random"`` for a
            model that takes labels, none for one that does not (which refuses the option).
        show_progress: a progress bar on the main process.
        call_arguments: further arguments of the pipeline call (``num_inference_steps``, ``guidance_scale``, ...);
            each must be a parameter of the pipeline's ``__call__``.
    """
    started = time.perf_counter()
    seeds = check_seeds(seeds)
    batch_size = check_integer("batch_size", batch_size, minimum=1)
    if (outdir is None) == (npz is None):
        raise ValueError(f"Give exactly one of outdir and npz, got outdir={outdir!r} and npz={npz!r}.")
    parameters = inspect.signature(pipeline.__call__).parameters
    missing = [name for name in ("batch_size", "generator", "output_type") if name not in parameters]
    if missing:
        raise ValueError(f"The {type(pipeline).__name__} cannot generate per seed: its __call__ lacks {missing}.")
    for name in call_arguments:
        if name in RESERVED_CALL_ARGUMENTS:
            raise ValueError(f"{name} is set per batch by generate_images; remove it from the call arguments.")
        if name not in parameters:
            raise ValueError(f"--{name} is not an option of {type(pipeline).__name__} (its __call__ has no {name}).")
    num_classes = label_classes(pipeline, call_arguments.get("classifier_scale"))
    rule = LabelRule.parse(class_labels) if isinstance(class_labels, str) else class_labels
    if rule is not None and num_classes == 0:
        raise ValueError(
            f"--class_labels {rule} needs a class-conditional model (or a classifier to steer it); this "
            f"{type(pipeline).__name__} is unconditional."
        )
    if rule is None and num_classes > 0:
        rule = LabelRule("random")
    if rule is not None:
        rule.labels(seeds[:1], num_classes)  # a fixed label out of range fails here, before any work

    state = process_state()
    if npz is not None:
        destination = Path(npz)
        if destination.exists():
            raise ValueError(f"npz {str(destination)!r} exists; remove it or name another file (it is not overwritten).")
        folder = Path(str(destination) + PARTS_SUFFIX)
    else:
        folder = destination = Path(outdir)
    todo = [seed for seed in seeds if not image_path(folder, seed).is_file()]
    if state.is_main_process:
        remove_partial_files(folder)
    state.wait_for_everyone()  # every process has listed the seeds to draw before any is written

    pipeline.to(state.device)
    pipeline.set_progress_bar_config(disable=True)
    mine = todo[state.process_index :: state.num_processes]
    progress = tqdm(
        total=len(mine), unit="img", disable=not (show_progress and state.is_main_process),
        desc=f"seeds (process 0 of {state.num_processes})",
    )
    for start in range(0, len(mine), batch_size):
        batch = mine[start : start + batch_size]
        call = dict(call_arguments)
        if rule is not None:
            call["class_labels"] = rule.labels(batch, num_classes)
        generators = [torch.Generator().manual_seed(seed) for seed in batch]
        images = pipeline(batch_size=len(batch), generator=generators, output_type="pil", **call).images
        for seed, image in zip(batch, images):
            write_png(image, image_path(folder, seed))
        progress.update(len(batch))
    progress.close()
    state.wait_for_everyone()

    if npz is not None and state.is_main_process:
        assemble_npz(folder, seeds, destination)
        for seed in seeds:
            image_path(folder, seed).unlink()
        for subfolder in sorted({image_path(folder, seed).parent for seed in seeds}):
            subfolder.rmdir()
        folder.rmdir()
    state.wait_for_everyone()
    summary = GenerationSummary(len(seeds), len(todo), destination, state.num_processes, time.perf_counter() - started)
    if state.is_main_process:
        print(summary, flush=True)
    return summary


# ------------------------------------------------------------------------------------------------ command line
def seed_list(text: str) -> list[int]:
    """``type=`` of ``--seeds`` (:func:`parse_seeds`)."""
    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("seeds ")) from None


def label_rule(text: str) -> LabelRule:
    """``type=`` of ``--class_labels`` (:meth:`LabelRule.parse`)."""
    try:
        return LabelRule.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("class_labels ")) from None


def inference_steps(text: str) -> int | str:
    """``type=`` of ``--num_inference_steps``: an integer >= 1, or a respacing of ``LearnedVariancePipeline``
    (``ddim25``, ``10,15,20``), which its scheduler checks against the model's steps."""
    stripped = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", stripped):
        return integer(1)(stripped)
    if re.fullmatch(r"ddim[0-9]{1,9}|[0-9]{1,9}(,[0-9]{1,9})*", stripped):
        return stripped
    raise argparse.ArgumentTypeError(
        f"must be an integer >= 1, or a respacing such as ddim25 or 10,15,20 (LearnedVariancePipeline), got {text!r}."
    )


seed_list.__name__, label_rule.__name__, inference_steps.__name__ = "seeds", "class labels", "steps"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-edm-generate", exit_on_error=False,
        description="One image per seed (seed-exact whatever the batch size or number of processes), as PNGs in EDM's "
        "layout or one .npz; run under `accelerate launch` to split the seeds over processes.",
    )
    parser.add_argument("--pipeline", required=True, help="a saved pipeline folder or Hub id (DiffusionPipeline.from_pretrained)")
    parser.add_argument("--seeds", required=True, type=seed_list, help="e.g. 0-49999 or 0,5,10-19 (inclusive ranges)")
    parser.add_argument("--batch", type=integer(1), default=64, help="images per pipeline call on each process (default 64)")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("--outdir", help="PNG folder: OUTDIR/{seed - seed %% 1000:06d}/{seed:06d}.png; existing images are skipped")
    output.add_argument("--npz", help="one .npz file (images uint8 NHWC in seed order, seeds); its PNGs are kept in NPZ.parts until it is written")
    sampler = parser.add_argument_group("sampler")
    sampler.add_argument("--scheduler", help="a scheduler class compatible with the pipeline's (default: its own), built with from_config")
    sampler.add_argument("--num_inference_steps", type=inference_steps, help="sampler steps (default: the pipeline's)")
    sampler.add_argument("--s_churn", type=real(0), help="EDM's S_churn (schedulers with s_churn)")
    sampler.add_argument("--s_min", type=real(0), help="EDM's S_tmin (scheduler config s_tmin)")
    sampler.add_argument("--s_max", type=real(0), help="EDM's S_tmax (scheduler config s_tmax)")
    sampler.add_argument("--s_noise", type=real(0), help="EDM's S_noise")
    sampler.add_argument("--solver", help="the scheduler's solver (EDMHeunScheduler: heun, euler; EDMMultistepScheduler: auto, ipndm, ...)")
    guidance = parser.add_argument_group("guidance (passed to pipelines that take it)")
    guidance.add_argument("--guidance_scale", type=real(), help="classifier-free guidance or autoguidance weight (1: off)")
    guidance.add_argument("--classifier_scale", type=real(0, MAX_CLASSIFIER_SCALE), help="classifier guidance scale (0: off)")
    guidance.add_argument("--guidance_interval", type=real(0), nargs=2, metavar=("LO", "HI"), help="guide only at LO < sigma <= HI")
    parser.add_argument(
        "--class_labels", type=label_rule,
        help="fixed:K, cyclic (seed %% classes) or random (per seed; the default for class-conditional models)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, every value checked (a ``ValueError`` naming the option for a bad one)."""
    args = parse_or_raise(build_parser(), argv)
    if args.guidance_interval is not None and not args.guidance_interval[0] < args.guidance_interval[1]:
        raise ValueError(f"--guidance_interval must be LO HI with LO < HI, got {args.guidance_interval}.")
    if args.s_min is not None and args.s_max is not None and not args.s_min <= args.s_max:
        raise ValueError(f"--s_min must be <= --s_max, got {args.s_min} and {args.s_max}.")
    return args


def main(argv: list[str] | None = None) -> GenerationSummary:
    args = parse_args(argv)
    pipeline = DiffusionPipeline.from_pretrained(args.pipeline)
    options = {option: getattr(args, option) for option in SCHEDULER_OPTIONS if getattr(args, option) is not None}
    if args.scheduler is not None or options:
        configure_scheduler(pipeline, args.scheduler, options)
    call = {name: getattr(args, name) for name in CALL_OPTIONS if getattr(args, name) is not None}
    if "guidance_interval" in call:
        call["guidance_interval"] = tuple(call["guidance_interval"])
    return generate_images(
        pipeline, args.seeds, args.outdir, npz=args.npz, batch_size=args.batch, class_labels=args.class_labels, **call
    )


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
