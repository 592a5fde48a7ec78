"""Training checkpoints: no code runs on resume, incomplete checkpoints are refused, and a resume never replaces
another run's output by accident."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_edm.training.checkpoints import (
    apply_training_state,
    load_checkpoint,
    read_training_state,
    save_checkpoint,
    save_training_state,
)
from diffusers_edm.training.ema import EDMEMAModel
from diffusers_edm.training.timestep_samplers import LossSecondMomentTimestepSampler
from diffusers_edm.training.train import TrainingProgress, main
from tiny_training import TINY_UNET, reset_accelerate_state
from tiny_training import tiny_args as training_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def tiny_args(output_dir: Path, config: Path, *extra: str) -> list[str]:
    """Two steps, a checkpoint at step 2, no validation grids."""
    return training_args(output_dir, config, "--max_train_steps", "2", "--validation_steps", "1000",
                         "--num_validation_images", "2", "--sample_steps", "2", *extra)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished 2-step run with checkpoint-2 (built once; tests copy it)."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "tiny_unet.json"
    config.write_text(json.dumps(TINY_UNET))
    reset_accelerate_state()
    main(tiny_args(root / "run", config))
    reset_accelerate_state()
    return root / "run", config


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, Path]:
    run, config = finished_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", config


def resume(run: Path, config: Path, *extra: str):
    return main(tiny_args(run, config, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *extra))


def rewrite_manifest(directory: Path) -> None:
    """What someone who edits a checkpoint can do: list the files as they now are (names, sizes, sha256)."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    (directory / "manifest.json").write_text(json.dumps({"files": files}))


# ------------------------------------------------------------------------------------------------ no code on resume
class CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: a stand-in for ``os.system`` that leaves a marker file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_payload_runs_code_when_unpickled_unsafely(tmp_path):
    """The marker payload is real: a plain (not weights-only) load creates the marker."""
    marker = tmp_path / "marker"
    torch.save({"state": CreatesFileWhenUnpickled(marker)}, tmp_path / "payload.pkl")
    assert not marker.exists()
    torch.load(tmp_path / "payload.pkl", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "custom_checkpoint_0.pkl",  # where Accelerate's register_for_checkpointing kept the EMA (read with weights_only=False)
        "custom_checkpoint_1.pkl",
        "training_state.json",
        "training_state.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "model.safetensors",
    ],
)
def test_a_pickle_that_runs_code_in_a_checkpoint_is_refused_without_running(run_copy, tmp_path, name):
    run, config = run_copy
    checkpoint = run / "checkpoint-2"
    marker = tmp_path / "marker"
    if name.endswith((".bin", ".pkl")):
        torch.save({"state": CreatesFileWhenUnpickled(marker)}, checkpoint / name)
    else:
        (checkpoint / name).write_bytes(pickle.dumps({"state": CreatesFileWhenUnpickled(marker)}))
    rewrite_manifest(checkpoint)  # the manifest guards against damage, not against an attacker
    with pytest.raises(ValueError, match=re.escape(name)):
        resume(run, config)
    assert not marker.exists()


def test_checkpoint_files_hold_no_pickle_but_accelerates_weights_only_parts(finished_run):
    run, _ = finished_run
    names = {p.name for p in (run / "checkpoint-2").iterdir()}
    assert names == {
        "manifest.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl",
        "training_state.json", "training_state.safetensors", "run_arguments.json",
    }


class JsonAndTensors:
    """A stand-in for a checkpointed object whose ``state_dict`` is arbitrary JSON values and tensors."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def assert_same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


tensors = st.builds(
    lambda shape, dtype, seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype),
    st.lists(st.integers(1, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
    st.integers(0, 1000),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.floats() | st.text(max_size=5) | tensors,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None)
@given(state=st.dictionaries(st.text(min_size=1, max_size=5), json_values, max_size=4))
def test_any_state_of_json_values_and_tensors_round_trips_through_safetensors_and_json(tmp_path_factory, state):
    directory = tmp_path_factory.mktemp("state")
    save_training_state({"thing": JsonAndTensors(state)}, directory)
    assert_same(read_training_state(directory, ["thing"])["thing"], state)


def test_loaded_tensors_go_to_the_device_where_the_live_object_keeps_them(tmp_path):
    """Safetensors loads onto the CPU; an EMA kept on the accelerator must get its shadow parameters back there."""
    save_training_state({"thing": JsonAndTensors({"w": torch.ones(2), "extra": torch.zeros(1)})}, tmp_path)
    live = JsonAndTensors({"w": torch.empty(2, device="meta")})
    apply_training_state({"thing": live}, read_training_state(tmp_path, ["thing"]))
    assert live.state["w"].device.type == "meta" and live.state["extra"].device.type == "cpu"


@pytest.mark.parametrize("value", [object(), {1: "int key"}, {3, 4}])
def test_a_state_that_only_pickle_could_store_is_an_error(tmp_path, value):
    with pytest.raises(TypeError, match="thing.bad"):
        save_training_state({"thing": JsonAndTensors({"bad": value})}, tmp_path)


def test_the_package_states_come_back_exactly_through_save_and_load_checkpoint(tmp_path):
    """EMA (diffusers EMAModel state), LambdaLR, step counter and loss-second-moment sampler, saved and restored."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)

    def make_states():
        ema = EDMEMAModel(model.parameters(), batch_size=8, ema_halflife_kimg=0.01, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / 10, 1.0))
        return {"ema": ema, "lr_scheduler": scheduler, "progress": TrainingProgress(),
                "timestep_sampler": LossSecondMomentTimestepSampler(5, history_per_term=2)}

    states = make_states()
    for step in range(3):
        optimizer.step()
        states["lr_scheduler"].step()
        with torch.no_grad():
            model.weight.add_(0.1)
        states["ema"].step(model.parameters())
        states["progress"].global_step += 1
        states["timestep_sampler"].update_with_all_losses(torch.tensor([step, step + 1]), torch.tensor([0.5, 1.5 + step]))
    expected = {name: obj.state_dict() for name, obj in states.items()}
    expected = {name: {k: (v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v] if k == "shadow_params" else v)
                       for k, v in state.items()} for name, state in expected.items()}
    save_checkpoint(accelerator, tmp_path, 3, None, states)

    restored = make_states()
    load_checkpoint(accelerator, tmp_path / "checkpoint-3", restored)
    for name, obj in restored.items():
        assert_same(obj.state_dict(), expected[name])
    assert restored["lr_scheduler"].get_last_lr() == states["lr_scheduler"].get_last_lr()


def test_rotation_keeps_the_newest_checkpoints_and_no_temporary_directory(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    progress = TrainingProgress()
    for step in range(1, 5):
        progress.global_step = step
        save_checkpoint(accelerator, tmp_path, step, 2, {"progress": progress})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text()) == {"progress": {"global_step": 4}}
    del model


# ------------------------------------------------------------------------------------------------ incomplete checkpoints
@pytest.mark.parametrize(
    "damage,name,message",
    [
        ("delete", "random_states_0.pkl", "random_states_0.pkl is missing"),
        ("delete", "optimizer.bin", "optimizer.bin is missing"),
        ("delete", "training_state.safetensors", "training_state.safetensors is missing"),
        ("truncate", "random_states_0.pkl", "random_states_0.pkl has .* bytes"),
        ("truncate", "optimizer.bin", "optimizer.bin has .* bytes"),
        ("truncate", "model.safetensors", "model.safetensors has .* bytes"),
        ("flip", "model.safetensors", "model.safetensors does not match its sha256"),
        ("delete", "manifest.json", "no manifest.json"),
    ],
)
def test_a_checkpoint_with_a_missing_or_damaged_part_is_refused_naming_it(run_copy, damage, name, message):
    run, config = run_copy
    file = run / "checkpoint-2" / name
    data = file.read_bytes()
    if damage == "delete":
        file.unlink()
    elif damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:  # same size, one byte changed near the end (tensor data, not the header)
        file.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    with pytest.raises(ValueError, match=message):
        resume(run, config)


def test_an_intact_checkpoint_resumes(run_copy):
    run, config = run_copy
    assert resume(run, config).global_step == 4


# ------------------------------------------------------------------------------------------------ --resume_from_checkpoint latest
def test_latest_without_a_checkpoint_does_not_replace_a_finished_run(tmp_path):
    config = tmp_path / "tiny_unet.json"
    config.write_text(json.dumps(TINY_UNET))
    run = tmp_path / "run"
    main(tiny_args(run, config, "--checkpointing_steps", "1000"))  # finished, no checkpoint
    exported = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    reset_accelerate_state()
    with pytest.raises(SystemExit, match="holds another run and no checkpoint to resume"):
        resume(run, config)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == exported


def test_resuming_another_runs_checkpoint_into_a_finished_run_needs_overwrite(finished_run, run_copy, tmp_path):
    source, _ = finished_run
    run, config = run_copy
    with pytest.raises(SystemExit, match="is not one of its checkpoints"):
        main(tiny_args(run, config, "--max_train_steps", "4", "--resume_from_checkpoint", str(source / "checkpoint-2")))


def test_latest_without_a_checkpoint_says_it_trains_from_scratch(tmp_path, caplog):
    config = tmp_path / "tiny_unet.json"
    config.write_text(json.dumps(TINY_UNET))
    with caplog.at_level(logging.WARNING, logger="diffusers_edm"):
        result = resume(tmp_path / "new", config)
    assert result.global_step == 4
    assert any(r.levelno == logging.WARNING and "no checkpoint" in r.getMessage() and "from scratch" in r.getMessage()
               for r in caplog.records)
