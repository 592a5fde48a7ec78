"""Sharded training under Accelerate's DeepSpeed integration: ZeRO-2 and ZeRO-3 with 2 processes on CPU (gloo),
against plain DDP; the DeepSpeed settings a launch refuses or fills; the example configs.

The end-to-end test needs ``pip install deepspeed`` (in the ``test`` and ``deepspeed`` extras, so CI runs it) and is
skipped without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from diffusers_edm.training.sharding import check_sharded_run, parameters_sharded
from accelerate_launch import MAX_GRAD_NORM, SHARDED_VS_DDP_ARGUMENTS, launch, weights_move
from tiny_training import tiny_args, write_tiny_config

REPOSITORY = Path(__file__).resolve().parents[1]
DEEPSPEED_CONFIGS = sorted((REPOSITORY / "configs" / "accelerate").glob("deepspeed_*.yaml"))
SCRIPT = Path(__file__).with_name("deepspeed_training_script.py")
WEIGHTS = "denoiser/diffusion_pytorch_model.safetensors"

# A DeepSpeed config as `accelerate config` writes it, for 2 processes on this machine (ZERO_STAGE filled in).
DEEPSPEED_CPU_CONFIG = """\
compute_environment: LOCAL_MACHINE
debug: false
deepspeed_config:
  gradient_accumulation_steps: 1
  gradient_clipping: auto
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
  zero3_save_16bit_model: true
  zero_stage: ZERO_STAGE
distributed_type: DEEPSPEED
downcast_bf16: 'no'
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: false
"""
# SHARDED_VS_DDP_ARGUMENTS: runs that the comparisons can tell apart. That DeepSpeed clips at --max_grad_norm (the
# config says "auto", which Accelerate alone would fill with 1.0: clipping every step) is read from the ds_config its
# checkpoint records.
COMMON = SHARDED_VS_DDP_ARGUMENTS


# ------------------------------------------------------------------------------------------------ settings
def _deepspeed_accelerator(zero_stage: int = 2, mixed_precision: str = "no", accumulation=1, clipping="auto",
                           gather_16bit: bool = True) -> SimpleNamespace:
    config = {
        "gradient_accumulation_steps": accumulation, "gradient_clipping": clipping,
        "zero_optimization": {"stage": zero_stage, "stage3_gather_16bit_weights_on_model_save": gather_16bit},
    }
    plugin = SimpleNamespace(zero_stage=zero_stage, deepspeed_config=config)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision=mixed_precision,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def _args(**changes) -> argparse.Namespace:
    options = {"compile": False, "ema_type": "edm", "task": "denoiser", "gradient_accumulation_steps": 1, "max_grad_norm": None}
    return argparse.Namespace(**{**options, **changes})


@pytest.mark.parametrize(
    ("accelerator_options", "changes", "named"),
    [
        ({"mixed_precision": "bf16"}, {}, "mixed_precision 'bf16'"),
        ({"mixed_precision": "fp16"}, {}, "mixed_precision 'fp16'"),
        ({"accumulation": 1}, {"gradient_accumulation_steps": 4}, "--gradient_accumulation_steps is 4"),
        ({"clipping": 1.0}, {}, "--max_grad_norm is None"),
        ({"clipping": 1.0}, {"max_grad_norm": 0.5}, "gradient_clipping is 1.0"),
        ({"clipping": 0.0}, {"max_grad_norm": 0.5}, "--max_grad_norm is 0.5"),
        ({"zero_stage": 3, "gather_16bit": False}, {}, "zero3_save_16bit_model"),
    ],
)
def test_a_deepspeed_launch_refuses_settings_it_would_train_differently(accelerator_options, changes, named):
    with pytest.raises(ValueError, match=named):
        check_sharded_run(_args(**changes), _deepspeed_accelerator(**accelerator_options))


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
@pytest.mark.parametrize(("max_grad_norm", "clipping"), [(None, 0.0), (0.5, 0.5), (2.0, 2.0)])
def test_gradient_clipping_auto_takes_max_grad_norm(zero_stage, max_grad_norm, clipping):
    accelerator = _deepspeed_accelerator(zero_stage=zero_stage, clipping="auto")
    check_sharded_run(_args(max_grad_norm=max_grad_norm), accelerator)
    assert accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == clipping


@pytest.mark.parametrize(("max_grad_norm", "clipping"), [(None, 0.0), (0.5, 0.5), (None, 0)])
def test_matching_deepspeed_settings_are_accepted(max_grad_norm, clipping):
    for zero_stage in (2, 3):
        accelerator = _deepspeed_accelerator(zero_stage=zero_stage, clipping=clipping, accumulation=2)
        check_sharded_run(_args(max_grad_norm=max_grad_norm, gradient_accumulation_steps=2), accelerator)
        assert accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == clipping  # left as it is


@pytest.mark.parametrize(("zero_stage", "sharded"), [(1, False), (2, False), (3, True)])
def test_only_zero3_shards_the_parameters(zero_stage, sharded):
    # ZeRO-1/2 split the optimizer state only: every process holds the full weights, so the EMA is DDP's
    assert parameters_sharded(_deepspeed_accelerator(zero_stage=zero_stage)) is sharded


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=[path.name for path in DEEPSPEED_CONFIGS])
def test_the_example_deepspeed_configs_pass_the_launch_checks(path):
    # the DeepSpeed config Accelerate builds from the yaml's deepspeed_config (as the launcher passes it on)
    from accelerate.utils import DeepSpeedPlugin

    config = load_config_from_file(str(path))
    fields = config.deepspeed_config
    plugin = DeepSpeedPlugin(
        gradient_accumulation_steps=fields["gradient_accumulation_steps"], gradient_clipping=fields["gradient_clipping"],
        zero_stage=fields["zero_stage"], zero3_save_16bit_model=fields.get("zero3_save_16bit_model", False),
        zero3_init_flag=fields["zero3_init_flag"],
    )
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision=config.mixed_precision,
                                  state=SimpleNamespace(deepspeed_plugin=plugin))
    check_sharded_run(_args(max_grad_norm=1.0), accelerator)
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0


# ------------------------------------------------------------------------------------------------ end to end
# DeepSpeed's CPU accelerator with gloo (the shim of deepspeed_training_script.py)
def _launch(launcher: list[str], arguments: list[str]) -> None:
    launch(SCRIPT, launcher, arguments, DS_ACCELERATOR="cpu")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The reference: the same run under plain DDP (2 processes, gloo)."""
    pytest.importorskip("deepspeed")
    directory = tmp_path_factory.mktemp("ddp")
    config = write_tiny_config(directory)
    ddp = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _launch(ddp, tiny_args(directory / "run", config, *COMMON))
    return directory / "run"


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key in expected:
        # Same arithmetic, other reduction order (all-reduce vs reduce-scatter): equal to float32 rounding.
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} {key}: {m}")


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    assert all(torch.equal(actual[key], expected[key]) for key in expected), what


def _ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if key.startswith("ema.shadow_params.")}


def _deepspeed_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a DeepSpeed checkpoint, put together by DeepSpeed's own offline reader."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return {key: value.clone() for key, value in get_fp32_state_dict_from_zero_checkpoint(str(checkpoint)).items()}


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_training_checkpoints_resumes_and_exports_what_ddp_trains(zero_stage, ddp_run, tmp_path, tiny_config):
    deepspeed_config = tmp_path / f"zero{zero_stage}_cpu.yaml"
    deepspeed_config.write_text(DEEPSPEED_CPU_CONFIG.replace("ZERO_STAGE", str(zero_stage)))
    launcher = ["--config_file", str(deepspeed_config)]
    _launch(launcher, tiny_args(tmp_path / "run", tiny_config, *COMMON))
    # a second run resumes from the first one's step-2 checkpoint and trains steps 3-4 again
    _launch(launcher, tiny_args(tmp_path / "resumed", tiny_config, *COMMON,
                                "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-2")))

    ddp_checkpoint, checkpoint = ddp_run / "checkpoint-4", tmp_path / "run" / "checkpoint-4"
    # the comparisons below can tell runs apart: steps 3-4 move DDP's weights by far more than their tolerance
    before, after = (load_file(ddp_run / f"checkpoint-{step}" / "model.safetensors") for step in (2, 4))
    assert weights_move(before, after)
    ddp_ema = _ema(load_file(ddp_checkpoint / "training_state.safetensors"))
    assert ddp_ema
    # the checkpoint is DeepSpeed's (accelerator.save_state): per-process optimizer partitions, no model.safetensors
    model_dir = checkpoint / "pytorch_model"
    names = {path.name for path in model_dir.iterdir()}
    assert {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)} <= names
    assert not (checkpoint / "model.safetensors").exists()
    state = load_file(checkpoint / "training_state.safetensors")
    if zero_stage == 2:
        # ZeRO-2: every process holds the full weights, so the EMA is DDP's: one full copy, saved once
        assert "mp_rank_00_model_states.pt" in names
        assert not (checkpoint / "training_state_rank0.safetensors").exists()
        _assert_close(_ema(state), ddp_ema, "EMA")
    else:
        # ZeRO-3: each process holds a flat partition of every parameter (ceil(numel / 2) elements, the last one
        # padded), and so does its EMA; the partitions put together are DDP's full EMA
        assert {f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" for rank in (0, 1)} <= names
        assert not _ema(state)
        parts = [load_file(checkpoint / f"training_state_rank{rank}.safetensors") for rank in (0, 1)]
        assert parts[0].keys() == parts[1].keys() == ddp_ema.keys()
        held = [sum(part[key].numel() for key in ddp_ema) for part in parts]
        assert max(held) < 0.6 * sum(value.numel() for value in ddp_ema.values())
        joined = {}
        for key, full in ddp_ema.items():
            size = -(-full.numel() // 2)
            assert parts[0][key].shape == parts[1][key].shape == (size,)
            flat = torch.cat([parts[0][key], parts[1][key]])
            joined[key] = flat[: full.numel()].reshape(full.shape)
        _assert_close(joined, ddp_ema, "EMA")

    # DeepSpeed clipped at --max_grad_norm (the config's "auto", filled by the launch checks)
    model_states = sorted(model_dir.glob("*mp_rank_00_model_states.pt"))[0]
    assert torch.load(model_states, weights_only=True)["ds_config"]["gradient_clipping"] == MAX_GRAD_NORM

    # the raw weights in the DeepSpeed checkpoint are DDP's
    _assert_close(_deepspeed_weights(checkpoint), load_file(ddp_checkpoint / "model.safetensors"), "weights")

    # the export is one full safetensors folder holding the EMA weights, equal to DDP's export
    exported = load_file(tmp_path / "run" / WEIGHTS)
    _assert_close(exported, load_file(ddp_run / WEIGHTS), "export")
    assert (tmp_path / "run" / "model_index.json").is_file() and (tmp_path / "run" / "samples.png").is_file()

    # resume is exact: the resumed run's step-4 checkpoint and export are bit for bit the uninterrupted run's
    resumed = tmp_path / "resumed" / "checkpoint-4"
    _assert_equal(_deepspeed_weights(resumed), _deepspeed_weights(checkpoint), "weights after resume")
    stems = ["training_state"] + ([f"training_state_rank{rank}" for rank in (0, 1)] if zero_stage == 3 else [])
    for stem in stems:
        _assert_equal(load_file(resumed / f"{stem}.safetensors"), load_file(checkpoint / f"{stem}.safetensors"), stem)
    _assert_equal(load_file(tmp_path / "resumed" / WEIGHTS), exported, "export after resume")
