"""Training checkpoints: Accelerate's ``save_state`` plus the package's own states, written atomically, verified on resume.

A checkpoint directory ``checkpoint-N`` holds

- what ``accelerator.save_state`` writes: ``model.safetensors``, ``optimizer.bin``, ``random_states_<rank>.pkl``
  (and ``scaler.pt`` under fp16);
- ``training_state.safetensors`` + ``training_state.json``: the package's own states (EMA, learning-rate schedule,
  step counter, timestep sampler), split into tensors and plain JSON, so that reading them cannot run code;
- ``run_arguments.json``: the arguments that determine the result (``arguments.RESULT_ARGUMENTS``); a resume
  with other values is refused, naming each one;
- ``manifest.json``, written last: the name, size and sha256 of every other file.

It is written to ``.checkpoint-N.incomplete`` and renamed to ``checkpoint-N`` only once every process has finished
writing, so a run killed while saving never leaves a directory that looks complete but is not; leftovers are removed
at the next start. A resume refuses a checkpoint whose manifest is missing or does not match its files. A write that
fails (``OSError``: a full disk, a quota, a lost mount) on any process removes the incomplete directory and stops the
run on every process with :class:`OutputWriteError`, naming the path and the cause; the previous checkpoints are not
touched (the oldest is rotated out only after the new one is complete).

The export (the pipeline or classifier, its sample grid and model card; :func:`write_export`) is staged the same way:
written to ``.export.incomplete`` inside the output directory, then each of its entries renamed into place, the
replaced entries kept in ``.export.previous`` until the model card (which names the final folder) is written too. A
failure puts the previous export back as it was, so a failed export never replaces a good one.

Why not Accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=...)``: with it
``save_state`` ignores its ``output_dir`` and writes straight into ``project_dir/checkpoints/checkpoint_<i>``, so
there is no temporary directory to rename; its ``total_limit`` deletes the oldest checkpoint *before* the new one
is written (a kill in between leaves fewer than the limit) and counts every entry of that folder; and
``load_state()`` picks the highest-numbered folder whether or not it is complete. The rotation below is the
remaining three lines.

Trust boundary of a resume: the package's states are read with safetensors and ``json`` only. Accelerate's parts
are read by Accelerate: the model with safetensors, ``optimizer.bin``, ``random_states_<rank>.pkl`` and
``scaler.pt`` with ``torch.load(weights_only=True)`` (torch's restricted unpickler: tensors, plain containers and
the numpy array / dtype types Accelerate allow-lists; no other callable). Each of those pickles is also scanned
first (``torch.serialization.get_unsafe_globals_in_checkpoint``) and refused if it names anything else. Not
covered: FSDP sharded and DeepSpeed checkpoints, which Accelerate hands to torch.distributed.checkpoint / DeepSpeed
(their metadata is unpickled without that restriction).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import FSDP_MODEL_NAME
from packaging import version
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .sharding import DEEPSPEED_MODEL_DIR, deepspeed_checkpoint_shapes, rank_state_stem

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_PREFIX = ".checkpoint-"
INCOMPLETE_SUFFIX = ".incomplete"
MANIFEST_NAME = "manifest.json"
STATE_TENSORS_NAME = "training_state.safetensors"
STATE_JSON_NAME = "training_state.json"
# Under FSDP, save_state writes the model as a torch.distributed.checkpoint folder (shards + .metadata) instead,
# its tensors named "model.<name>".
SHARDED_MODEL_DIR = f"{FSDP_MODEL_NAME}_0"  # Accelerate's folder of the first (only) FSDP model
SHARDED_MODEL_METADATA = f"{SHARDED_MODEL_DIR}/.metadata"
RUN_ARGUMENTS_NAME = "run_arguments.json"
EXPORT_STAGING_NAME = ".export.incomplete"
EXPORT_PREVIOUS_NAME = ".export.previous"
# What --overwrite removes from --output_dir when it holds a run of this script (a training_args.json): these entries,
# the folders of the exported pipeline's components (the keys of its model_index.json), checkpoint-N and
# .checkpoint-N.incomplete. Anything else in the folder is not this script's and is left alone.
RUN_ENTRIES = (
    "training_args.json", "model_index.json", "README.md", "samples.png", "samples", "logs", "ema_snapshots",
    "accuracy.json", "accuracy", "config.json", "diffusion_pytorch_model.safetensors", EXPORT_STAGING_NAME,
    EXPORT_PREVIOUS_NAME, "edm", "pytorch_lora_weights.safetensors",  # a fine-tuning run's EDM pipeline, LoRA weights
)
# torch < 2.6 lets a crafted file run code even under weights_only=True (CVE-2025-32434).
MIN_TORCH_FOR_RESUME = "2.6"
_TENSOR_KEY, _TUPLE_KEY = "__tensor__", "__tuple__"


class OutputWriteError(OSError):
    """Writing a checkpoint or the export failed part way (e.g. ``ENOSPC``, the disk is full); what it had written
    was removed and what was there before is intact. ``errno`` is the cause's."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


# ---------------------------------------------------------------------------------------------- finding checkpoints
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
    """The checkpoint to resume from: the newest complete one for ``"latest"`` (None, with a warning, if none)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning(
                "--resume_from_checkpoint latest: no checkpoint in %s, so this run trains from scratch.", output_dir
            )
            return None
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    checkpoint_step(path)
    return path


def remove_previous_run(output_dir: str | os.PathLike) -> list[Path]:
    """``--overwrite``: delete the run ``output_dir`` holds (its :data:`RUN_ENTRIES`, pipeline component folders and
    checkpoints) and return what was deleted; nothing when it holds no ``training_args.json`` of this script."""
    directory = Path(output_dir)
    if not (directory / "training_args.json").is_file():
        return []
    names = set(RUN_ENTRIES)
    try:
        index = json.loads((directory / "model_index.json").read_text())
        names |= {key for key in index if not key.startswith("_")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass  # no (readable) pipeline: nothing exported
    removed = []
    for path in sorted(directory.iterdir()):
        incomplete = path.name.startswith(INCOMPLETE_PREFIX) and path.name.endswith(INCOMPLETE_SUFFIX)
        if path.name in names or CHECKPOINT_PATTERN.match(path.name) or incomplete:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    if removed:
        logger.info("--overwrite: removed the previous run's %s from %s", [p.name for p in removed], directory)
    return removed


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> None:
    for path in Path(output_dir).glob(f"{INCOMPLETE_PREFIX}*{INCOMPLETE_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- own states, no pickle
def split_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a ``state_dict`` into its tensors (keyed by their path) and a JSON-serialisable skeleton.

    Tensors are replaced by ``{"__tensor__": path}`` and tuples by ``{"__tuple__": [...]}``; anything that is not a
    tensor, ``None``, bool, int, float, str, list, tuple or str-keyed dict is a ``TypeError`` naming its path (it
    could only be stored by pickling).
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().contiguous()
            return {_TENSOR_KEY: path}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            items = [walk(item, f"{path}.{index}") for index, item in enumerate(value)]
            return {_TUPLE_KEY: items} if isinstance(value, tuple) else items
        if isinstance(value, Mapping):
            for key in value:
                if not isinstance(key, str):
                    raise TypeError(f"State entry {path!r} has a non-string key {key!r}; it cannot be stored as JSON.")
            return {key: walk(item, f"{path}.{key}" if path else key) for key, item in value.items()}
        raise TypeError(f"State entry {path!r} is a {type(value).__name__}; only tensors and JSON values are stored.")

    return tensors, walk(state, prefix)


def join_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    if isinstance(skeleton, list):
        return [join_state(item, tensors) for item in skeleton]
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_KEY}:
            return tensors[skeleton[_TENSOR_KEY]]
        if set(skeleton) == {_TUPLE_KEY}:
            return tuple(join_state(item, tensors) for item in skeleton[_TUPLE_KEY])
        return {key: join_state(item, tensors) for key, item in skeleton.items()}
    return skeleton


def save_training_state(states: Mapping[str, Stateful], directory: str | os.PathLike, stem: str = "training_state") -> None:
    """Write every ``states[name].state_dict()`` into ``<stem>.safetensors`` and ``<stem>.json``."""
    directory = Path(directory)
    tensors, skeleton = split_state({name: obj.state_dict() for name, obj in states.items()})
    save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(skeleton, indent=1))


def read_training_state(directory: str | os.PathLike, names: list[str], stem: str = "training_state") -> dict[str, Any]:
    """Read :func:`save_training_state`'s files (CPU tensors); ``ValueError`` naming a bad file or a state mismatch."""
    directory = Path(directory)
    json_path, tensor_path = directory / f"{stem}.json", directory / f"{stem}.safetensors"
    try:
        skeleton = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {str(json_path)!r} (not the JSON this script writes): {error}") from error
    try:
        tensors = load_file(str(tensor_path))
    except Exception as error:  # safetensors raises its own error type for a malformed header
        raise ValueError(f"Cannot read {str(tensor_path)!r} (not a safetensors file): {error}") from error
    if not isinstance(skeleton, dict) or sorted(skeleton) != sorted(names):
        found = sorted(skeleton) if isinstance(skeleton, dict) else type(skeleton).__name__
        raise ValueError(f"{str(json_path)!r} holds the states {found}, this run checkpoints {sorted(names)}.")
    try:
        return join_state(skeleton, tensors)
    except KeyError as error:
        raise ValueError(f"{str(json_path)!r} refers to tensor {error} that {str(tensor_path)!r} lacks.") from error


def apply_training_state(states: Mapping[str, Stateful], state: Mapping[str, Any]) -> None:
    """``load_state_dict`` each state; each tensor goes to the device where the live object keeps it."""
    for name, obj in states.items():
        live, _ = split_state(obj.state_dict(), name)
        loaded, skeleton = split_state(state[name], name)
        moved = {key: tensor.to(live[key].device) if key in live else tensor for key, tensor in loaded.items()}
        obj.load_state_dict(join_state(skeleton, moved))


# ---------------------------------------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(directory: str | os.PathLike) -> None:
    """``manifest.json``: size and sha256 of every file in ``directory``; written after all of them."""
    directory = Path(directory)
    entries = {name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)} for name in _files(directory)}
    (directory / MANIFEST_NAME).write_text(json.dumps({"files": entries}, indent=1))


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Refuse a checkpoint that is not exactly what was written: ``ValueError`` naming the missing or changed file.

    A part missing or truncated (a full disk, a copy that stopped, a file deleted) would otherwise resume with
    Accelerate's INFO line and train on from a state that is not the saved one.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ValueError(
            f"Checkpoint {str(path)!r} has no {MANIFEST_NAME}: it is incomplete, or was written by an older "
            "diffusers-edm whose checkpoints cannot be resumed safely (their custom_checkpoint_N.pkl pickles can run code)."
        )
    try:
        listed = json.loads(manifest_path.read_text())["files"]
        sizes = {name: int(entry["size"]) for name, entry in listed.items()}
        hashes = {name: str(entry["sha256"]) for name, entry in listed.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"Checkpoint {str(path)!r}: {MANIFEST_NAME} is unreadable ({error!r}).") from error
    model_file = SHARDED_MODEL_METADATA if SHARDED_MODEL_METADATA in sizes else "model.safetensors"
    # Under DeepSpeed: the first process's model states (mp_rank_00_model_states.pt, at ZeRO-3 zero_pp_rank_0_...).
    deepspeed_models = sorted(name for name in sizes if re.fullmatch(rf"{DEEPSPEED_MODEL_DIR}/(zero_pp_rank_0_)?mp_rank_00_model_states\.pt", name))
    model_file = deepspeed_models[0] if deepspeed_models else model_file
    for required in (model_file, STATE_TENSORS_NAME, STATE_JSON_NAME):
        if required not in sizes:
            raise ValueError(
                f"Checkpoint {str(path)!r}: {MANIFEST_NAME} does not list {required}; not a checkpoint of this script."
            )
    for name in sorted(sizes):
        file = path / name
        if not file.is_file():
            raise ValueError(f"Checkpoint {str(path)!r} is incomplete: {name} is missing.")
        size = file.stat().st_size
        if size != sizes[name]:
            raise ValueError(
                f"Checkpoint {str(path)!r} is incomplete: {name} has {size} bytes, "
                f"{MANIFEST_NAME} records {sizes[name]} (truncated?)."
            )
        if _sha256(file) != hashes[name]:
            raise ValueError(f"Checkpoint {str(path)!r}: {name} does not match its sha256 in {MANIFEST_NAME} (corrupt or changed).")
    unlisted = sorted(set(_files(path)) - set(sizes))
    if unlisted:
        raise ValueError(f"Checkpoint {str(path)!r} holds {unlisted}, which {MANIFEST_NAME} does not list; refusing to load it.")


def check_run_arguments(path: str | os.PathLike, arguments: Mapping[str, Any]) -> None:
    """``ValueError`` naming every argument whose value in ``arguments`` differs from the checkpoint's record (both
    values), or saying that the checkpoint has no record."""
    path = Path(path)
    record = path / RUN_ARGUMENTS_NAME
    if not record.is_file():
        raise ValueError(
            f"Checkpoint {str(path)!r} has no {RUN_ARGUMENTS_NAME}: it does not record the arguments it was trained "
            "with (written by an older diffusers-edm), so a resume cannot be checked to continue the same run."
        )
    try:
        recorded = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Checkpoint {str(path)!r}: {RUN_ARGUMENTS_NAME} is unreadable ({error}).") from error
    if not isinstance(recorded, dict):
        raise ValueError(f"Checkpoint {str(path)!r}: {RUN_ARGUMENTS_NAME} is not a JSON object.")
    missing = object()
    differing = [
        f"--{name}: {recorded.get(name, '(not recorded)')!r} in the checkpoint, {value!r} now"
        for name, value in arguments.items()
        if recorded.get(name, missing) != value
    ]
    if differing:
        raise ValueError(
            f"Checkpoint {str(path)!r} was trained with other arguments than this run; resuming would mix two runs. "
            f"Differing: {'; '.join(differing)}. Resume with the checkpoint's values, or start a new run (another "
            "--output_dir, or --overwrite)."
        )


def check_checkpoint_matches(
    path: str | os.PathLike, model: torch.nn.Module, arguments: Mapping[str, Any] | None = None
) -> None:
    """Verify the checkpoint's files (:func:`verify_checkpoint`), compare its model weights' names and shapes with
    ``model``, then its recorded run arguments with ``arguments`` when given (:func:`check_run_arguments`);
    ``ValueError`` naming the first mismatch.

    Runs before any training work, so an incomplete checkpoint or one from another model configuration is refused
    up front.
    """
    path = Path(path)
    sharded = (path / SHARDED_MODEL_METADATA).is_file()
    deepspeed = (path / DEEPSPEED_MODEL_DIR).is_dir()
    if not (sharded or deepspeed or (path / "model.safetensors").is_file()):
        raise ValueError(f"Checkpoint {str(path)!r} has no model.safetensors: it is not a checkpoint of this script.")
    verify_checkpoint(path)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    try:
        if sharded:  # the full shapes, from the sharded checkpoint's metadata
            from torch.distributed.checkpoint import FileSystemReader

            metadata = FileSystemReader(str(path / SHARDED_MODEL_DIR)).read_metadata().state_dict_metadata
            saved = {name.removeprefix("model."): tuple(entry.size) for name, entry in metadata.items() if hasattr(entry, "size")}
        elif deepspeed:
            saved = deepspeed_checkpoint_shapes(path) or {}
        else:
            with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
                saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # safetensors / torch.distributed.checkpoint raise their own types for a bad file
        what = (
            f"{SHARDED_MODEL_DIR} is not a readable sharded checkpoint" if sharded
            else f"{DEEPSPEED_MODEL_DIR} is not a readable DeepSpeed checkpoint" if deepspeed
            else "model.safetensors is not a safetensors file"
        )
        raise ValueError(f"Checkpoint {str(path)!r}: {what} ({error}).") from error
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
    if arguments is not None:
        check_run_arguments(path, arguments)


# ---------------------------------------------------------------------------------------------- save / load
def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None,
    states: Mapping[str, Stateful], arguments: Mapping[str, Any] | None = None,
    rank_states: Mapping[str, Stateful] | None = None,
) -> Path:
    """``accelerator.save_state``, ``states`` and the run's ``arguments`` (``run_arguments.json``, when given) into a
    temporary directory, manifest it, rename it to ``checkpoint-{step}`` and keep the newest ``total_limit``
    checkpoints. ``rank_states`` (each process's own part of a sharded state, e.g. the EMA's shards) are written by
    every process into ``training_state_rank<k>.*``.

    Every process must call this (Accelerate saves each process's RNG state).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"{INCOMPLETE_PREFIX}{step}{INCOMPLETE_SUFFIX}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    what = f"checkpoint {str(final)!r}"

    def kept() -> str:
        checkpoints = list_checkpoints(output_dir)
        return f"the newest complete checkpoint, {str(checkpoints[-1])!r}, is untouched" if checkpoints else "there is no earlier checkpoint"

    failure = None
    try:
        accelerator.save_state(str(temporary))
        if rank_states:
            save_training_state(rank_states, temporary, rank_state_stem(accelerator.process_index))
        if accelerator.is_main_process:
            save_training_state(states, temporary)
            if arguments is not None:
                (temporary / RUN_ARGUMENTS_NAME).write_text(json.dumps(dict(arguments), indent=1, sort_keys=True))
    except OSError as error:
        failure = error
    _stop_if_any_write_failed(accelerator, failure, what, temporary, kept)  # also the barrier: all have written
    if accelerator.is_main_process:
        try:
            write_manifest(temporary)
        except OSError as error:
            failure = error
    _stop_if_any_write_failed(accelerator, failure, what, temporary, kept)
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _failed_on_any_process(accelerator: Accelerator, failed: bool) -> bool:
    """Whether ``failed`` is true on any process. With several processes a collective, so also a barrier; called at
    checkpoint and export time only."""
    if accelerator.num_processes == 1:
        return failed
    flags = accelerator.gather(torch.tensor([int(failed)], device=accelerator.device))
    return bool(flags.max().item())


def _describe_os_error(error: OSError) -> str:
    """``ENOSPC (No space left on device) writing '/path/file'``: the symbolic code, its text and the file."""
    code = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    reason = error.strerror or str(error)
    where = f" writing {str(error.filename)!r}" if error.filename else ""
    return f"{code} ({reason}){where}" if code else f"{reason}{where}"


def _stop_if_any_write_failed(
    accelerator: Accelerator, failure: OSError | None, what: str, partial: Path, kept: Callable[[], str]
) -> None:
    """Every process calls this after writing its part of ``what``: if a write failed on any process, remove the
    ``partial`` directory (main process) and raise :class:`OutputWriteError` on every process, naming ``what``, the
    cause and what is ``kept``; otherwise return (all processes have written their part)."""
    if not _failed_on_any_process(accelerator, failure is not None):
        return
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    cause = _describe_os_error(failure) if failure is not None else "a write failed on another process (see its log)"
    message = f"Could not write {what}: {cause}. Removed the partial {str(partial)!r}; {kept()}."
    if failure is not None and failure.errno is not None:
        raise OutputWriteError(failure.errno, message) from failure
    raise OutputWriteError(message) from failure


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(staging: Path, output_dir: Path, write_in_place: Callable[[], Any], written_in_place: tuple[str, ...]) -> None:
    """Rename every entry of ``staging`` into ``output_dir``, then call ``write_in_place`` (which writes the files
    ``written_in_place`` there). The entries this replaces wait in ``.export.previous`` and are put back if anything
    fails, so ``output_dir`` then holds the previous export as it was."""
    previous = output_dir / EXPORT_PREVIOUS_NAME
    _remove(previous)
    previous.mkdir()
    staged = sorted(entry.name for entry in staging.iterdir())
    moved_aside: list[str] = []
    placed: list[str] = []
    try:
        for name in [*staged, *(name for name in written_in_place if name not in staged)]:
            target = output_dir / name
            if target.exists() or target.is_symlink():
                os.replace(target, previous / name)
                moved_aside.append(name)
            placed.append(name)
            if name in staged:
                os.replace(staging / name, target)
        write_in_place()
    except BaseException:
        for name in placed:
            _remove(output_dir / name)
        for name in moved_aside:
            os.replace(previous / name, output_dir / name)
        shutil.rmtree(previous, ignore_errors=True)
        raise
    shutil.rmtree(previous)
    staging.rmdir()


_Exported = TypeVar("_Exported")


def write_export(
    accelerator: Accelerator, output_dir: str | os.PathLike, export: Callable[[Path], _Exported],
    write_card: Callable[[_Exported], Any], card_name: str = "README.md",
) -> _Exported:
    """Write the export whole or not at all; every process calls this.

    ``export(folder)`` (on every process: a recipe's export may run collectives; the main process writes) writes into
    ``output_dir/.export.incomplete``; the main process renames its entries into ``output_dir`` and calls
    ``write_card(result)``, which writes ``card_name`` in ``output_dir`` (the card names the final folder). On an
    ``OSError`` on any process the staged files are removed, the previous export is put back as it was, and every
    process raises :class:`OutputWriteError` naming the folder and the cause.
    """
    output_dir = Path(output_dir)
    staging = output_dir / EXPORT_STAGING_NAME
    if accelerator.is_main_process:
        _remove(staging)
    failure, result = None, None
    try:
        result = export(staging)
        if accelerator.is_main_process:
            _publish(staging, output_dir, lambda: write_card(result), (card_name,))
    except OSError as error:
        failure = error
    _stop_if_any_write_failed(
        accelerator, failure, f"the export into {str(output_dir)!r}", staging,
        lambda: "the previous export there, if any, is as it was",
    )
    return result


def recover_interrupted_export(output_dir: str | os.PathLike) -> None:
    """At start: remove a staged export left by a killed run, and put back the entries a run killed while renaming
    its export into place had moved aside (``.export.previous``)."""
    output_dir = Path(output_dir)
    _remove(output_dir / EXPORT_STAGING_NAME)
    previous = output_dir / EXPORT_PREVIOUS_NAME
    if previous.is_dir():
        restored = sorted(entry.name for entry in previous.iterdir())
        for name in restored:
            _remove(output_dir / name)
            os.replace(previous / name, output_dir / name)
        previous.rmdir()
        logger.warning("A previous run was stopped while replacing its export; put back its earlier %s.", restored)


def _refuse_code_in_pickles(path: Path) -> None:
    """Statically list the globals each pickled file of Accelerate's would import; refuse any not allow-listed."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS  # the allow-list Accelerate's own load() applies

    with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
        for file in sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pkl")):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
            except Exception as error:  # not a torch.save zip file
                raise ValueError(f"Checkpoint {str(path)!r}: {file.name} is not a torch.save file ({error}).") from error
            if unsafe:
                raise ValueError(
                    f"Checkpoint {str(path)!r}: {file.name} would import {sorted(unsafe)} when unpickled (it may run "
                    "code); refusing to load it."
                )


def load_checkpoint(
    accelerator: Accelerator, path: str | os.PathLike, states: Mapping[str, Stateful],
    rank_states: Mapping[str, Stateful] | None = None,
) -> None:
    """Restore ``accelerator.load_state(path)`` (weights-only) and ``states``; call :func:`check_checkpoint_matches` first.

    Refuses, with a ``ValueError`` naming the file, this process's RNG state missing or unreadable (Accelerate would
    only log it and resume inexactly) and any pickle that names something other than tensors and plain data.
    """
    path = Path(path)
    if version.parse(torch.__version__).release < version.parse(MIN_TORCH_FOR_RESUME).release:
        raise ValueError(
            f"Resuming needs torch >= {MIN_TORCH_FOR_RESUME} (safe weights-only loading); this is {torch.__version__}."
        )
    _refuse_code_in_pickles(path)
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        raise ValueError(
            f"Checkpoint {str(path)!r} has no {rng_file.name}: was it written by fewer processes than this run's "
            f"{accelerator.num_processes}? A resume without it would not be exact."
        )
    try:
        rng_state = accelerate_load(rng_file, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or refused file
        raise ValueError(f"Checkpoint {str(path)!r}: {rng_file.name} is not a readable RNG state ({error!r}).") from error
    if not (isinstance(rng_state, dict) and {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(rng_state)):
        raise ValueError(f"Checkpoint {str(path)!r}: {rng_file.name} does not hold Accelerate's RNG states.")
    state = read_training_state(path, list(states))
    rank_state = read_training_state(path, list(rank_states), rank_state_stem(accelerator.process_index)) if rank_states else {}
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        raise ValueError(f"Checkpoint {str(path)!r}: weights-only loading refused a file: {error}") from error
    apply_training_state(states, state)
    if rank_states:
        apply_training_state(rank_states, rank_state)
