"""Training checkpoints: Accelerate's ``save_state`` written atomically, found again, pruned and checked.

A checkpoint is written to ``.checkpoint-N.incomplete`` and renamed to ``checkpoint-N`` only once every process
has finished writing, so a run killed while saving never leaves a directory that looks complete but is not.
Incomplete directories left by a killed run are ignored and removed at the next start.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_PREFIX = ".checkpoint-"
INCOMPLETE_SUFFIX = ".incomplete"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest (lowest step) first."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint directory (expected a name like 'checkpoint-500').")
    return int(match.group(1))


def resolve_resume_path(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to resume from: the newest complete one for ``"latest"`` (None if there is none)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    checkpoint_step(path)
    return path


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> None:
    for path in Path(output_dir).glob(f"{INCOMPLETE_PREFIX}*{INCOMPLETE_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` into a temporary directory, then rename it to ``checkpoint-{step}`` and prune.

    Every process must call this (Accelerate saves each process's RNG state).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"{INCOMPLETE_PREFIX}{step}{INCOMPLETE_SUFFIX}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint_matches(path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Compare the checkpoint's saved model weights with ``model``; ``ValueError`` naming the first mismatch.

    Runs before any training work, so a checkpoint from another model configuration is refused up front.
    """
    path = Path(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"Checkpoint {str(path)!r} has no model.safetensors: it is not a checkpoint of this script.")
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]} "
            "(was it written with other --backbone / --model_size / --precond settings?)."
        )
    for name, shape in expected.items():
        if saved[name] != shape:
            raise ValueError(
                f"Checkpoint {str(path)!r} does not match the model: {name} has shape {saved[name]} there, {shape} here."
            )
