"""A full disk (issue 15): a checkpoint save or an export that fails part way with ``ENOSPC`` leaves the previous
checkpoint / export byte-identical and loadable, removes what it had written, and stops the run with an error naming
the path and the cause. The fault is simulated by a writer that writes part of its file, then raises."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from diffusers_edm.training import checkpoints
from diffusers_edm.training.checkpoints import recover_interrupted_export, remove_previous_run, verify_checkpoint
from diffusers_edm.training.recipes import sampling
from diffusers_edm.training.train import main
from tiny_training import reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

RUN = ["--checkpointing_steps", "2", "--validation_steps", "1000", "--logging_steps", "2"]


def disk_full(path) -> OSError:
    """Write the first bytes of ``path``, as a write that runs out of space does, and return the error it meets."""
    Path(path).write_bytes(b"\x00" * 64)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def files_under(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def hidden_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("writer", ["package_safetensors", "accelerate_torch_save"])
def test_a_checkpoint_that_runs_out_of_space_keeps_the_previous_one(tmp_path, tiny_config, monkeypatch, writer):
    out = tmp_path / "run"
    before_failure: dict[str, bytes] = {}

    def failing_on_checkpoint_4(original):
        def write(obj, path, *args, **kwargs):
            if ".checkpoint-4." not in str(path):
                return original(obj, path, *args, **kwargs)
            before_failure.update(files_under(out / "checkpoint-2"))
            raise disk_full(path)

        return write

    if writer == "package_safetensors":  # training_state.safetensors (EMA, schedule, step)
        monkeypatch.setattr(checkpoints, "save_file", failing_on_checkpoint_4(checkpoints.save_file))
    else:  # Accelerate's optimizer.bin / random states
        monkeypatch.setattr(torch, "save", failing_on_checkpoint_4(torch.save))

    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, *RUN, "--max_train_steps", "4"))
    message = str(caught.value)
    assert "ENOSPC" in message and "No space left on device" in message, message
    assert str(out / "checkpoint-4") in message and "checkpoint-2" in message, message
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2"]  # the partial folder is gone
    assert hidden_entries(out) == [] and not (out / "model_index.json").exists()
    assert before_failure and files_under(out / "checkpoint-2") == before_failure
    verify_checkpoint(out / "checkpoint-2")

    monkeypatch.undo()
    reset_accelerate_state()
    result = main(tiny_args(out, tiny_config, *RUN, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert result.global_step == 4 and (out / "model_index.json").is_file()


# ------------------------------------------------------------------------------------------------ export
def export_files(out: Path) -> dict[str, bytes]:
    """The exported pipeline, its sample grid and card (not the checkpoints, logs or validation grids)."""
    skipped = ("checkpoint-", "logs/", "samples/", "training_args.json")
    return {name: data for name, data in files_under(out).items() if not name.startswith(skipped)}


@pytest.mark.parametrize("failing", ["pipeline_weights", "model_card"])
def test_an_export_that_runs_out_of_space_keeps_the_previous_export(tmp_path, tiny_config, monkeypatch, failing):
    out = tmp_path / "run"
    main(tiny_args(out, tiny_config, *RUN, "--max_train_steps", "2"))
    good = export_files(out)
    assert "model_index.json" in good and "README.md" in good and "samples.png" in good

    if failing == "pipeline_weights":  # diffusers' save_pretrained of the denoiser
        original = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if Path(filename).name == "diffusion_pytorch_model.safetensors":
                raise disk_full(filename)
            return original(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    else:  # the card is written last, after the new pipeline is in place

        def write_model_card(args, output_dir, grid_path, steps):
            raise disk_full(Path(output_dir) / "README.md")

        monkeypatch.setattr(sampling, "write_model_card", write_model_card)

    reset_accelerate_state()
    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, *RUN, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    message = str(caught.value)
    assert "ENOSPC" in message and str(out) in message, message
    assert export_files(out) == good  # byte for byte, the previous export
    assert hidden_entries(out) == []  # no staged or set-aside folder remains
    verify_checkpoint(out / "checkpoint-4")  # training itself finished and was checkpointed

    monkeypatch.undo()
    reset_accelerate_state()
    main(tiny_args(out, tiny_config, *RUN, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    renewed = export_files(out)
    assert renewed.keys() == good.keys() and hidden_entries(out) == []
    name = "denoiser/diffusion_pytorch_model.safetensors"
    assert renewed[name] != good[name]  # a successful export does replace the previous one


def test_an_export_killed_while_renamed_into_place_is_put_back_at_the_next_start(tmp_path):
    """A run killed between moving the previous export aside and finishing the new one: the next start restores the
    previous entries over the half-placed ones and drops the staged rest."""
    out = tmp_path / "run"
    (out / ".export.previous" / "denoiser").mkdir(parents=True)
    (out / ".export.previous" / "denoiser" / "weights").write_bytes(b"previous")
    (out / ".export.previous" / "model_index.json").write_text("previous index")
    (out / "denoiser").mkdir()
    (out / "denoiser" / "weights").write_bytes(b"new, placed")
    (out / ".export.incomplete" / "scheduler").mkdir(parents=True)
    (out / "scheduler").mkdir()
    (out / "scheduler" / "config").write_text("not moved aside: unchanged")
    recover_interrupted_export(out)
    assert files_under(out) == {
        "denoiser/weights": b"previous", "model_index.json": b"previous index", "scheduler/config": b"not moved aside: unchanged",
    }
    assert hidden_entries(out) == []


def test_overwrite_removes_a_staged_or_set_aside_export(tmp_path):
    out = tmp_path / "run"
    for name in (".export.previous", ".export.incomplete"):
        (out / name / "denoiser").mkdir(parents=True)
    (out / "training_args.json").write_text("{}")
    remove_previous_run(out)
    assert list(out.iterdir()) == []
