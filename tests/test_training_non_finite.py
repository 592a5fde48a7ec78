"""A run whose loss or weights become NaN/inf stops with an error naming the step, keeps its last good checkpoint and
exports / pushes nothing (issue 15, defect 3). Checks run at logging, checkpointing, snapshot, validation and export
steps only (no host synchronisation per step), so the error names the first such step at or after the bad one."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from diffusers_edm.training import train as train_module
from diffusers_edm.training.recipes.denoising import DenoisingRecipe
from diffusers_edm.training.train import main
from tiny_training import reset_accelerate_state, tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# Checks at steps 2 (checkpoint) and 4 (logging and checkpoint); the fault is injected at step 3.
RUN = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--logging_steps", "4", "--validation_steps", "1000",
       "--push_to_hub", "--hub_model_id", "someone/never-pushed"]
BAD_STEP, DETECTED_AT = 3, 4


@pytest.fixture
def hub_calls(monkeypatch):
    import huggingface_hub

    calls = []

    class Repo:
        repo_id = "someone/never-pushed"

    def create_repo(*args, **kwargs):
        calls.append("create_repo")
        return Repo()

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda *a, **k: calls.append("upload_folder"))
    return calls


def assert_stopped_without_output(out, hub_calls, message: str, what: str) -> None:
    assert f"Training stopped at step {DETECTED_AT}: {what} became NaN or infinite after step 2" in message
    assert "checkpoint-2" in message  # the last good checkpoint is named
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model_index.json").exists() and not (out / "denoiser").exists()
    assert hub_calls == []
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_non_finite_loss_stops_the_run_and_the_last_good_checkpoint_resumes(tmp_path, tiny_config, monkeypatch, hub_calls):
    original = DenoisingRecipe.loss
    calls = {"n": 0}

    def loss_turning_nan(self, model, images, labels):
        calls["n"] += 1
        loss, stats = original(self, model, images, labels)
        return (loss * math.nan, stats) if calls["n"] >= BAD_STEP else (loss, stats)

    monkeypatch.setattr(DenoisingRecipe, "loss", loss_turning_nan)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, *RUN))
    assert_stopped_without_output(out, hub_calls, str(caught.value), "the loss")

    # The kept checkpoint is loadable: with the fault gone, the run resumes from it and finishes.
    monkeypatch.setattr(DenoisingRecipe, "loss", original)
    reset_accelerate_state()
    result = main(tiny_args(out, tiny_config, *RUN, "--resume_from_checkpoint", "latest"))
    assert result.global_step == 6 and (out / "model_index.json").is_file()
    assert hub_calls == ["create_repo", "upload_folder"]  # a finite run does push
    assert all(math.isfinite(loss) for loss in result.losses)


def test_non_finite_ema_weights_stop_the_run_before_any_export(tmp_path, tiny_config, monkeypatch, hub_calls):
    original = train_module.Trainer._train_step
    calls = {"n": 0}

    def step_then_spoil_the_ema(self, batch):
        result = original(self, batch)
        calls["n"] += 1
        if calls["n"] == BAD_STEP:
            with torch.no_grad():
                self.ema.shadow_params[0].view(-1)[0] = math.inf  # the loss stays finite: only the weights tell
        return result

    monkeypatch.setattr(train_module.Trainer, "_train_step", step_then_spoil_the_ema)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, *RUN))
    assert_stopped_without_output(out, hub_calls, str(caught.value), "the weights")
