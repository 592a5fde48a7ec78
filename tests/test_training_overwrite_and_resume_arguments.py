"""``--overwrite`` leaves only the new run; a checkpoint records the arguments that determine the result, and a resume
with other values is refused, naming each one with both values (issue 15, defect 1)."""

from __future__ import annotations

import json

import pytest

from diffusers_edm.training.train import main
from tiny_training import reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def checkpoint_names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("checkpoint-", ".checkpoint-")))


def test_overwrite_removes_the_old_run_and_latest_cannot_resume_it(tmp_path, tiny_config):
    out = tmp_path / "run"
    # Run A: checkpoints 2 and 4, EMA snapshots, a validation grid at step 3.
    main(tiny_args(out, tiny_config, "--seed", "1", "--ema_type", "power"))
    assert checkpoint_names(out) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "ema_snapshots").is_dir() and (out / "samples").is_dir()
    (out / "notes.txt").write_text("the user's, not the run's")
    (out / "my_data").mkdir()
    (out / "my_data" / "keep.txt").write_text("keep")

    # Run B in the same folder: --overwrite, another seed, no checkpoint, no validation grid, no snapshots.
    reset_accelerate_state()
    run_b = ["--overwrite", "--seed", "2", "--checkpointing_steps", "1000", "--validation_steps", "1000"]
    main(tiny_args(out, tiny_config, *run_b))
    assert checkpoint_names(out) == []  # A's checkpoint-2 and checkpoint-4 are gone
    assert not (out / "ema_snapshots").exists() and not (out / "samples").exists()
    assert json.loads((out / "training_args.json").read_text())["seed"] == 2
    assert (out / "model_index.json").is_file()  # B's export
    # what is not the run's stays
    assert (out / "notes.txt").read_text() == "the user's, not the run's"
    assert (out / "my_data" / "keep.txt").read_text() == "keep"

    # "latest" with B's arguments finds no checkpoint of B: refused, rather than loading A's checkpoint-4.
    reset_accelerate_state()
    resume_b = [a for a in run_b if a != "--overwrite"] + ["--resume_from_checkpoint", "latest"]
    with pytest.raises(SystemExit, match="holds another run and no checkpoint to resume"):
        main(tiny_args(out, tiny_config, *resume_b))


def test_overwrite_together_with_a_resume_of_the_same_folder_is_refused(tmp_path, tiny_config):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="pass only one of them"):
        main(tiny_args(out, tiny_config, "--overwrite", "--resume_from_checkpoint", "latest"))


def test_overwrite_of_a_folder_without_a_run_deletes_nothing(tmp_path, tiny_config):
    out = tmp_path / "run"
    out.mkdir()
    (out / "README.md").write_text("a user's folder, no training_args.json")
    (out / "logs").mkdir()
    (out / "logs" / "mine.txt").write_text("mine")
    main(tiny_args(out, tiny_config, "--overwrite", "--max_train_steps", "1", "--validation_steps", "1000",
                   "--checkpointing_steps", "1000", "--report_to", "none"))
    assert (out / "logs" / "mine.txt").read_text() == "mine"


def test_resume_with_other_result_arguments_names_each_with_both_values(tmp_path, tiny_config):
    out = tmp_path / "run"
    main(tiny_args(out, tiny_config, "--seed", "1", "--validation_steps", "1000"))
    reset_accelerate_state()
    with pytest.raises(ValueError) as caught:
        main(tiny_args(out, tiny_config, "--seed", "2", "--learning_rate", "0.002", "--random_flip",
                       "--max_train_steps", "6", "--validation_steps", "1000", "--resume_from_checkpoint", "latest"))
    message = str(caught.value)
    assert "checkpoint-4" in message
    assert "--seed: 1 in the checkpoint, 2 now" in message
    assert "--learning_rate: 0.001 in the checkpoint, 0.002 now" in message
    assert "--random_flip: False in the checkpoint, True now" in message
    assert "max_train_steps" not in message and "validation_steps" not in message  # free to change
    # refused before anything was written
    assert json.loads((out / "training_args.json").read_text())["seed"] == 1
    assert checkpoint_names(out) == ["checkpoint-2", "checkpoint-4"]


def test_resume_may_change_length_and_intervals(tmp_path, tiny_config):
    out = tmp_path / "run"
    main(tiny_args(out, tiny_config, "--validation_steps", "1000"))
    reset_accelerate_state()
    result = main(tiny_args(out, tiny_config, "--max_train_steps", "6", "--checkpointing_steps", "3",
                            "--logging_steps", "2", "--validation_steps", "1000", "--num_validation_images", "2",
                            "--sample_steps", "2", "--resume_from_checkpoint", "latest"))
    assert result.global_step == 6
    recorded = json.loads((out / "checkpoint-6" / "run_arguments.json").read_text())
    # the record holds the values of this run, independently of this package's list: a few spot checks
    assert recorded["seed"] == 0 and recorded["resolution"] == 8 and recorded["train_batch_size"] == 8
    assert recorded["num_processes"] == 1 and recorded["backbone_config"]["block_out_channels"] == [8, 16]
    assert "max_train_steps" not in recorded and "output_dir" not in recorded
