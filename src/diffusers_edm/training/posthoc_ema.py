"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", section 3
and Appendix C): choose the EMA length after training.

During training (``--ema_type power``) :class:`EMASnapshotWriter` stores, every ``--ema_snapshot_kimg`` thousand
images, the weights of each tracked power-function EMA (:class:`~diffusers_edm.training.ema.PowerFunctionEMA`) as
``RUN/ema_snapshots/ema-<std>-<images>.safetensors``. A snapshot ``i`` is the average of the training trajectory
with the profile ``tau^gamma_i`` on ``[0, t_i]`` (``t_i`` its images seen), normalised to unit mass.

After training, the EMA of any other profile ``(gamma_o, t_o)`` is approximated by a combination
``theta_o = sum_i X_i theta_i`` of the snapshots whose profile is closest in L2 to the wanted one (Algorithm 3):
with the inner product of two profiles (eq. 151)

    ``<a, b> = (g_a + 1)(g_b + 1) (t_a / t_b)^e / ((g_a + g_b + 1) max(t_a, t_b))``, ``e = g_b if t_a < t_b else -g_a``,

solve ``A X = B`` with ``A_ij = <in_i, in_j>`` and ``B_i = <in_i, out>`` (by least squares), normalise ``X`` to sum 1
and combine the parameters; buffers come from the last snapshot.

What the snapshots support: the reconstructed profile ``sum_i X_i p_i`` differs from the wanted one ``p_o`` by
``||sum_i X_i p_i - p_o|| / ||p_o||`` (exactly computable from the same inner products). A std is refused when that
relative profile error exceeds ``max_profile_error`` (default 0.1). In practice: stds between the tracked ones are
reconstructed almost exactly; shorter ones need snapshots dense enough to resolve their short profile (few
snapshots: only a little below the smallest tracked std), longer ones need the early part of the run covered (up
to about 0.2 with EDM2's 0.05 / 0.10 and a few dozen snapshots). The error message names the range that is
supported by the snapshots at hand.

:func:`reconstruct_pipelines` (and the CLI ``diffusers-edm-posthoc-ema``) writes one complete pipeline per std,
through the training recipe's own export (``model_index.json``, ``denoiser/``, ``scheduler/``, ``samples.png``) and
model card, with a section stating the reconstructed std and the snapshots used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .ema import MAX_SIGMA_REL, PowerFunctionEMA, gamma_to_sigma_rel, sigma_rel_to_gamma
from ..option_types import parse_or_raise, real

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = "ema_snapshots"
SNAPSHOT_PATTERN = re.compile(r"^ema-(\d+\.\d{3})-(\d{9,})\.safetensors$")
TEMPORARY_SUFFIX = ".incomplete"
#: The safetensors metadata key of a snapshot; its value is a JSON object (see :class:`EMASnapshotWriter`).
SNAPSHOT_FORMAT = "diffusers_edm_ema_snapshot"
DEFAULT_MAX_PROFILE_ERROR = 0.1
#: Keys of the recipe data stored with every snapshot: what the reconstruction needs to rebuild the model.
RECIPE_DATA_KEYS = ("num_classes", "image_channels", "sample_size", "channels")


def snapshot_name(std: float, n_img: int) -> str:
    """``ema-<std, 3 decimals>-<images seen, 9 digits>.safetensors``, e.g. ``ema-0.050-000012800.safetensors``."""
    return f"ema-{std:.3f}-{n_img:09d}.safetensors"


@dataclass(frozen=True)
class EMASnapshot:
    """One stored snapshot: the EMA of relative std ``std`` (exponent ``gamma``) after ``n_img`` training images."""

    path: Path
    std: float
    gamma: float
    n_img: int
    batch_size: int
    step: int
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


def list_snapshots(run_dir: str | os.PathLike) -> list[EMASnapshot]:
    """The snapshots in ``run_dir/ema_snapshots`` (or in ``run_dir`` itself if it is that folder), by images then std.

    Their std, gamma and images seen are read from each file's metadata; ``ValueError`` names a file without it.
    """
    run_dir = Path(run_dir)
    directory = run_dir / SNAPSHOT_DIR if (run_dir / SNAPSHOT_DIR).is_dir() else run_dir
    if not directory.is_dir():
        return []
    snapshots = []
    for path in sorted(p for p in directory.iterdir() if SNAPSHOT_PATTERN.match(p.name)):
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {})[SNAPSHOT_FORMAT])
            snapshots.append(EMASnapshot(
                path=path, std=float(metadata["std"]), gamma=float(metadata["gamma"]), n_img=int(metadata["n_img"]),
                batch_size=int(metadata["batch_size"]), step=int(metadata["step"]), metadata=metadata,
            ))
        except Exception as error:  # safetensors raises its own type for a malformed header
            raise ValueError(f"{str(path)!r} is not an EMA snapshot of this package ({error!r}).") from error
    return sorted(snapshots, key=lambda s: (s.n_img, s.std))


# ---------------------------------------------------------------------------------------------- writing (training)
class EMASnapshotWriter:
    """Writes every tracked EMA as a snapshot each time the images seen reach a multiple of ``every_nimg``.

    A snapshot is the model's ``state_dict`` with the EMA's parameters (buffers as the model has them), saved with
    safetensors with one metadata entry ``diffusers_edm_ema_snapshot``, a JSON object of ``std``, ``gamma``, ``n_img``,
    ``batch_size``, ``step``, what rebuilds the model (the recipe data and the ``--backbone_config`` keys) and the
    names of the averaged ``parameters``. It is written to a hidden temporary file and renamed, so no half-written snapshot ever has a
    snapshot's name. :meth:`discard_after` removes snapshots newer than the point a run resumes from (and
    temporaries), so a resumed run rewrites them from its restored state: identically, since training resumes
    exactly, and nothing from the interrupted or an overwritten run survives.

    Args:
        directory: ``RUN/ema_snapshots``.
        ema: the power-function EMAs of the run.
        model: the module whose parameters the EMA tracks (unwrapped).
        every_nimg: snapshot interval in images (>= 1).
        metadata: extra metadata stored in every snapshot (the recipe data), JSON values.
        enabled: False on all but the main process (which alone writes).
        parameters: the parameters of ``model`` the EMA tracks, in ``ema``'s order (default: all of them); the others
            are stored as the model has them, as its buffers are.
    """

    def __init__(self, directory: Path, ema: PowerFunctionEMA, model: torch.nn.Module, every_nimg: int,
                 metadata: dict[str, Any], enabled: bool = True, parameters: Sequence[torch.Tensor] | None = None):
        if every_nimg < 1:
            raise ValueError(f"The snapshot interval must be >= 1 image, got {every_nimg}.")
        self.directory = Path(directory)
        self.ema, self.model, self.every_nimg = ema, model, int(every_nimg)
        self.metadata, self.enabled = dict(metadata), enabled
        if parameters is None:
            self.parameter_names = [name for name, _ in model.named_parameters()]
        else:
            names = {id(parameter): name for name, parameter in model.named_parameters()}
            self.parameter_names = [names[id(parameter)] for parameter in parameters]

    @classmethod
    def for_run(cls, args: argparse.Namespace, output_dir: Path, ema: Any, model: torch.nn.Module, batch_size: int,
                recipe_data: Any, enabled: bool,
                parameters: Sequence[torch.Tensor] | None = None) -> "EMASnapshotWriter | None":
        """The writer of a training run, or None when its EMA is not a power-function one (``--ema_type edm``).

        The interval is ``--ema_snapshot_kimg`` thousand images, rounded to whole images; without it, every
        ``--checkpointing_steps`` optimizer steps.
        """
        if not isinstance(ema, PowerFunctionEMA):
            return None
        if args.ema_snapshot_kimg is not None:
            every_nimg = round(args.ema_snapshot_kimg * 1000)
        else:
            every_nimg = args.checkpointing_steps * batch_size
        metadata: dict[str, Any] = {key: int(getattr(recipe_data, key)) for key in RECIPE_DATA_KEYS}
        # The --backbone_config file's keys travel with the snapshots: the reconstruction must not depend on that file
        # still being where (or what) it was.
        metadata["backbone_config"] = json.loads(Path(args.backbone_config).read_text()) if args.backbone_config else None
        return cls(Path(output_dir) / SNAPSHOT_DIR, ema, model, every_nimg, metadata, enabled, parameters)

    def discard_after(self, n_img: int) -> list[Path]:
        """Remove the snapshots of more than ``n_img`` images and any temporary file; return what was removed."""
        if not self.enabled or not self.directory.is_dir():
            return []
        removed = []
        for path in self.directory.iterdir():
            match = SNAPSHOT_PATTERN.match(path.name)
            if (match and int(match.group(2)) > n_img) or path.name.endswith(TEMPORARY_SUFFIX):
                path.unlink()
                removed.append(path)
        if removed:
            logger.info("Removed %d EMA snapshot file(s) newer than %d images from %s", len(removed), n_img, self.directory)
        return removed

    def is_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) takes the images seen to or past a multiple of the interval."""
        batch = self.ema.batch_size
        return (step * batch) // self.every_nimg > ((step - 1) * batch) // self.every_nimg

    def after_step(self, step: int) -> list[Path]:
        """Write the snapshots of step ``step`` if it is due (main process); return the files written."""
        if not self.enabled or not self.is_due(step):
            return []
        return self.write(step)

    def write(self, step: int) -> list[Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        n_img = step * self.ema.batch_size
        state = self.model.state_dict()
        parameters = set(self.parameter_names)
        buffers = {name: tensor for name, tensor in state.items() if name not in parameters}
        written = []
        for std, gamma, average in zip(self.ema.stds, self.ema.gammas, self.ema.averages):
            tensors = {name: shadow.detach().to("cpu", copy=True).contiguous()
                       for name, shadow in zip(self.parameter_names, average.shadow_params)}
            tensors.update({name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in buffers.items()})
            metadata = {
                "std": std, "gamma": gamma, "n_img": n_img, "batch_size": self.ema.batch_size, "step": step,
                **self.metadata, "parameters": self.parameter_names,
            }
            final = self.directory / snapshot_name(std, n_img)
            temporary = self.directory / f".{final.name}{TEMPORARY_SUFFIX}"
            # One metadata entry: safetensors writes several in an arbitrary order, and snapshots must be reproducible
            # byte for byte.
            save_file(tensors, str(temporary), metadata={SNAPSHOT_FORMAT: json.dumps(metadata, sort_keys=True)})
            os.replace(temporary, final)
            written.append(final)
        return written


# ---------------------------------------------------------------------------------------------- the solve
def power_function_inner_product(gamma_a: Any, t_a: Any, gamma_b: Any, t_b: Any) -> np.ndarray:
    """``<a, b> = (g_a + 1)(g_b + 1) (t_a / t_b)^e / ((g_a + g_b + 1) max(t_a, t_b))``, ``e = g_b`` if
    ``t_a < t_b`` else ``-g_a``: the L2 inner product of the unit-mass profiles ``(g + 1) tau^g / t^(g + 1)`` on
    ``[0, t]`` (Karras et al. 2024, eq. 151). Broadcasts over numpy arrays, in float64."""
    gamma_a, t_a, gamma_b, t_b = (np.asarray(v, dtype=np.float64) for v in (gamma_a, t_a, gamma_b, t_b))
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** exponent / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_posthoc_coefficients(in_gammas: Sequence[float], in_times: Sequence[float], out_gammas: Sequence[float],
                               out_time: float) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot coefficients of each wanted profile (Karras et al. 2024, Algorithm 3) and its profile error.

    Solves ``A X = B`` by least squares with ``A_ij = <in_i, in_j>``, ``B_ij = <in_i, out_j>``, normalises each
    column of ``X`` to sum 1, and returns ``X`` (``[inputs, outputs]``) with the relative L2 error of each
    reconstructed profile, ``sqrt(x^T A x - 2 x^T b + <out, out>) / sqrt(<out, out>)`` for the normalised ``x``.
    """
    in_gammas, in_times = np.asarray(in_gammas, np.float64), np.asarray(in_times, np.float64)
    out_gammas = np.asarray(out_gammas, np.float64)
    A = power_function_inner_product(in_gammas[:, None], in_times[:, None], in_gammas[None, :], in_times[None, :])
    B = power_function_inner_product(in_gammas[:, None], in_times[:, None], out_gammas[None, :], out_time)
    X = np.linalg.lstsq(A, B, rcond=None)[0]
    X = X / X.sum(axis=0, keepdims=True)
    norm = power_function_inner_product(out_gammas, out_time, out_gammas, out_time)
    squared = np.einsum("io,ij,jo->o", X, A, X) - 2 * np.einsum("io,io->o", X, B) + norm
    return X, np.sqrt(np.maximum(squared, 0.0) / norm)


@dataclass
class Reconstruction:
    """One planned reconstruction: the EMA of ``std`` at ``n_img`` images as ``sum_i coefficients[i] snapshots[i]``."""

    std: float
    gamma: float
    n_img: int
    step: int
    snapshots: list[EMASnapshot]
    coefficients: np.ndarray
    profile_error: float


def _supported_range(snapshots: Sequence[EMASnapshot], n_img: int, max_profile_error: float) -> str:
    grid = np.linspace(0.005, MAX_SIGMA_REL - 0.005, 113)
    gammas = [sigma_rel_to_gamma(float(std)) for std in grid]
    _, errors = solve_posthoc_coefficients([s.gamma for s in snapshots], [s.n_img for s in snapshots], gammas, n_img)
    supported = grid[errors <= max_profile_error]
    if len(supported) == 0:
        return "none of the stds in [0.005, 0.284]"
    return f"about {supported.min():.3f} to {supported.max():.3f}"


def plan_reconstruction(snapshots: Sequence[EMASnapshot], stds: Sequence[float], at_kimg: float | None = None,
                        max_profile_error: float = DEFAULT_MAX_PROFILE_ERROR) -> list[Reconstruction]:
    """Coefficients of each std in ``stds`` at the last snapshot time at or before ``at_kimg`` (default: the last).

    Uses every snapshot (all tracked stds) up to that time. ``ValueError``: no snapshots, ``at_kimg`` before the first
    snapshot, a std outside ``(0, sqrt(1/12))``, or one whose reconstructed profile misses the wanted one by more
    than ``max_profile_error`` (relative L2; the message names the range these snapshots support).
    """
    if not snapshots:
        raise ValueError("No EMA snapshots to reconstruct from: train with --ema_type power (snapshots are written to "
                         f"RUN/{SNAPSHOT_DIR} every --ema_snapshot_kimg).")
    if not stds:
        raise ValueError("Give at least one std to reconstruct.")
    if not (math.isfinite(max_profile_error) and max_profile_error > 0):
        raise ValueError(f"max_profile_error must be finite and > 0, got {max_profile_error}.")
    first = min(s.n_img for s in snapshots)
    if at_kimg is None:
        limit = max(s.n_img for s in snapshots)
    else:
        if not (math.isfinite(at_kimg) and at_kimg >= 0):
            raise ValueError(f"at_kimg must be finite and >= 0, got {at_kimg}.")
        limit = at_kimg * 1000
        if limit < first:
            raise ValueError(f"at_kimg={at_kimg:g} ({limit:g} images) is before the first snapshot ({first} images, "
                             f"{first / 1000:g} kimg); nothing to reconstruct from.")
    used = [s for s in snapshots if s.n_img <= limit]
    n_img = max(s.n_img for s in used)
    step = max(s.step for s in used if s.n_img == n_img)
    gammas = []
    for std in stds:
        try:
            gammas.append(sigma_rel_to_gamma(float(std)))
        except ValueError as error:
            raise ValueError(f"std {std}: {error}") from None
    X, errors = solve_posthoc_coefficients([s.gamma for s in used], [s.n_img for s in used], gammas, n_img)
    for std, error in zip(stds, errors):
        if not error <= max_profile_error:
            raise ValueError(
                f"std {std} cannot be reconstructed from the {len(used)} snapshots up to {n_img} images (stds "
                f"{sorted({s.std for s in used})}): its averaging profile would be off by {error:.3f} (relative L2), more "
                f"than max_profile_error={max_profile_error:g}. These snapshots support stds of "
                f"{_supported_range(used, n_img, max_profile_error)}; denser snapshots (--ema_snapshot_kimg) widen it."
            )
    return [Reconstruction(std=float(std), gamma=gamma, n_img=n_img, step=step, snapshots=list(used),
                           coefficients=X[:, j], profile_error=float(errors[j]))
            for j, (std, gamma) in enumerate(zip(stds, gammas))]


def reconstruct_weights(plans: Sequence[Reconstruction]) -> list[dict[str, torch.Tensor]]:
    """The weights of each plan: ``sum_i X_i theta_i`` over the parameters (accumulated in float64, returned in the
    snapshots' dtype), buffers from the last snapshot. Reads each snapshot once for all plans."""
    if not plans:
        return []
    snapshots = plans[0].snapshots
    if any(plan.snapshots != snapshots for plan in plans):
        raise ValueError("All plans must use the same snapshots (plan them with one plan_reconstruction call).")
    parameter_names: set[str] | None = None
    sums: list[dict[str, torch.Tensor]] = [{} for _ in plans]
    dtypes: dict[str, torch.dtype] = {}
    last: dict[str, torch.Tensor] = {}
    for index, snapshot in enumerate(snapshots):
        tensors = load_file(str(snapshot.path))
        names = set(snapshot.metadata["parameters"])
        if parameter_names is None:
            parameter_names, all_names = names, set(tensors)
        elif names != parameter_names or set(tensors) != all_names:
            raise ValueError(f"{snapshot.path.name} holds other tensors than {snapshots[0].path.name}; the snapshots "
                             "come from different models.")
        for plan, total in zip(plans, sums):
            for name in parameter_names:
                tensor = tensors[name]
                dtypes[name] = tensor.dtype
                contribution = tensor.to(torch.float64) * float(plan.coefficients[index])
                total[name] = contribution if name not in total else total[name] + contribution
        last = tensors
    results = []
    for total in sums:
        weights = dict(last)  # buffers from the last snapshot
        weights.update({name: value.to(dtypes[name]) for name, value in total.items()})
        results.append(weights)
    return results


# ---------------------------------------------------------------------------------------------- pipelines
POSTHOC_CARD_SECTION = """
## Post-hoc EMA

These weights are the power-function EMA of relative std **{std:.3f}** (exponent gamma = {gamma:.3f}) at {n_img}
training images (optimizer step {step}), reconstructed after training from {count} stored EMA snapshots by least
squares (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", Algorithm 3). The
reconstructed averaging profile differs from the exact one by {error:.4f} (relative L2).

| snapshot | std | images | coefficient |
|---|---|---|---|
{rows}
"""


def _training_arguments(run_dir: Path) -> argparse.Namespace:
    path = run_dir / "training_args.json"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no training_args.json: not a run directory of diffusers-edm-train.")
    values = json.loads(path.read_text())
    return argparse.Namespace(**{**values, "hub_model_id": None, "push_to_hub": False})


def _build_model(recipe: Any, backbone_config: dict[str, Any] | None) -> torch.nn.Module:
    """``recipe.build_model()`` with the ``--backbone_config`` keys stored in the snapshots (the run's file may be gone);
    the arguments keep the run's own path, for the model card."""
    if backbone_config is None:
        return recipe.build_model()
    original = recipe.args.backbone_config
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "backbone_config.json"
        path.write_text(json.dumps(backbone_config))
        recipe.args.backbone_config = str(path)
        try:
            return recipe.build_model()
        finally:
            recipe.args.backbone_config = original


def reconstruct_pipelines(run_dir: str | os.PathLike, stds: Sequence[float], output_dir: str | os.PathLike,
                          at_kimg: float | None = None,
                          max_profile_error: float = DEFAULT_MAX_PROFILE_ERROR) -> list[Path]:
    """Reconstruct the EMA of each std in ``stds`` from ``run_dir``'s snapshots and write one complete pipeline each,
    ``output_dir/std-<std>`` (the training export's layout and model card, plus a post-hoc EMA section).

    The model is rebuilt by the run's training recipe from ``run_dir/training_args.json`` and the recipe data stored
    in the snapshots, the weights loaded, and the recipe's export writes the pipeline. See :func:`plan_reconstruction`
    for ``at_kimg``, ``max_profile_error`` and the errors. Returns the pipeline directories.
    """
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

    from ..models.latent_codec import LatentCodec
    from .recipes import RecipeData, select_recipe

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    plans = plan_reconstruction(list_snapshots(run_dir), stds, at_kimg, max_profile_error)
    names = [f"std-{plan.std:.3f}" for plan in plans]
    if len(set(names)) != len(names):
        raise ValueError(f"The stds {list(stds)} give the same folder names {names}; give stds that differ at 3 decimals.")
    args = _training_arguments(run_dir)
    metadata = plans[0].snapshots[-1].metadata
    vae = codec = None
    if args.vae is not None:
        vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder).eval().requires_grad_(False)
        codec = LatentCodec(vae)
    data = RecipeData(**{key: int(metadata[key]) for key in RECIPE_DATA_KEYS}, vae=vae, codec=codec)
    recipe = select_recipe(args)(args, data, Accelerator())
    written = []
    for plan, weights, name in zip(plans, reconstruct_weights(plans), names):
        model = _build_model(recipe, metadata.get("backbone_config"))
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise ValueError(f"The snapshots do not fit the model of {run_dir / 'training_args.json'}: {error}") from error
        model.eval().requires_grad_(False)
        target = output_dir / name
        target.mkdir(parents=True, exist_ok=True)
        exported = recipe.export(model, target, plan.step)
        card = recipe.write_model_card(target, exported, plan.step)
        rows = "\n".join(f"| {s.path.name} | {s.std:.3f} | {s.n_img} | {x:+.6f} |" for s, x in zip(plan.snapshots, plan.coefficients))
        section = POSTHOC_CARD_SECTION.format(std=plan.std, gamma=plan.gamma, n_img=plan.n_img, step=plan.step,
                                              count=len(plan.snapshots), error=plan.profile_error, rows=rows)
        card.write_text(card.read_text() + section)
        (target / "posthoc_ema.json").write_text(json.dumps({
            "std": plan.std, "gamma": plan.gamma, "n_img": plan.n_img, "step": plan.step,
            "profile_error": plan.profile_error,
            "snapshots": [{"file": s.path.name, "std": s.std, "n_img": s.n_img, "coefficient": float(x)}
                          for s, x in zip(plan.snapshots, plan.coefficients)],
        }, indent=1))
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-edm-posthoc-ema",
        description="Post-hoc EMA (Karras et al. 2024): reconstruct the EMA of any relative std from the snapshots a "
        "--ema_type power training run stored, and write one pipeline per std into OUTPUT_DIR/std-<std>.",
        exit_on_error=False,
    )
    parser.add_argument("--run_dir", required=True, help="The training run's --output_dir (holds ema_snapshots/).")
    parser.add_argument("--std", type=real(0, MAX_SIGMA_REL, exclusive_minimum=True, exclusive_maximum=True), nargs="+", required=True,
                        help=f"Relative EMA std(s) to reconstruct, each in (0, {MAX_SIGMA_REL:.4f}); e.g. 0.07, or 0.05 0.1 0.15.")
    parser.add_argument("--at_kimg", type=real(0), default=None,
                        help="Reconstruct at the last snapshot at or before this many thousand images (default: the last "
                        "snapshot); only snapshots up to then are used.")
    parser.add_argument("--output_dir", required=True, help="Where the pipelines go (one subfolder std-<std> each).")
    parser.add_argument("--max_profile_error", type=real(0, exclusive_minimum=True), default=DEFAULT_MAX_PROFILE_ERROR,
                        help="Refuse a std whose reconstructed averaging profile misses the wanted one by more than this "
                        "(relative L2).")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args = parse_or_raise(build_parser(), argv)
        written = reconstruct_pipelines(args.run_dir, args.std, args.output_dir, args.at_kimg, args.max_profile_error)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    for path in written:
        info = json.loads((path / "posthoc_ema.json").read_text())
        print(f"std {info['std']:.3f} at {info['n_img']} images from {len(info['snapshots'])} snapshots "
              f"(profile error {info['profile_error']:.4f}): {path}")
    return written


def cli() -> None:
    """Console entry point (``diffusers-edm-posthoc-ema``)."""
    main()


__all__ = [
    "EMASnapshot",
    "EMASnapshotWriter",
    "Reconstruction",
    "gamma_to_sigma_rel",
    "list_snapshots",
    "plan_reconstruction",
    "power_function_inner_product",
    "reconstruct_pipelines",
    "reconstruct_weights",
    "sigma_rel_to_gamma",
    "solve_posthoc_coefficients",
]


if __name__ == "__main__":
    cli()
