"""Sharded training: Accelerate's FSDP2 with 2 processes on CPU (gloo), against plain DDP; the example configs; the
options a sharded launch refuses."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from diffusers_edm.training.sharding import check_sharded_run
from accelerate_launch import SHARDED_VS_DDP_ARGUMENTS, launch, weights_move
from tiny_training import tiny_args

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPOSITORY / "configs" / "accelerate").glob("*.yaml"))
SCRIPT = Path(__file__).with_name("fsdp_training_script.py")

# An FSDP2 config as `accelerate config` writes it, for 2 processes on this machine; each ResnetBlock2D is its own
# FSDP unit (nested fully_shard), as in the example configs. (Accelerate's SIZE_BASED_WRAP fails on diffusers' UNets:
# it picks their ModuleLists, which fully_shard refuses, "containers that do not implement forward".)
FSDP2_CPU_CONFIG = """\
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
fsdp_config:
  fsdp_activation_checkpointing: false
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_transformer_layer_cls_to_wrap: ResnetBlock2D
  fsdp_version: 2
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: false
"""


# ------------------------------------------------------------------------------------------------ example configs
@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_example_configs_parse_with_accelerates_loader(path):
    config = load_config_from_file(str(path))
    machines = 2 if "2nodes" in path.name else 1
    assert config.num_machines == machines and config.num_processes == 8 * machines
    if path.name.startswith("fsdp2"):
        assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    else:
        assert config.distributed_type == DistributedType.DEEPSPEED
        assert config.deepspeed_config["zero_stage"] == (3 if "zero3" in path.name else 2)
    if machines > 1:
        assert config.main_process_ip and config.main_process_port


def test_the_four_example_configs_exist():
    assert {path.name for path in CONFIGS} >= {
        "fsdp2_1node_8gpu.yaml", "fsdp2_2nodes_8gpu.yaml", "deepspeed_zero2_1node_8gpu.yaml", "deepspeed_zero3_2nodes.yaml",
    }


# ------------------------------------------------------------------------------------------------ refused options
def _accelerator(engine: str, fsdp_version: int = 2, zero_stage: int = 2) -> SimpleNamespace:
    distributed_type = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED, "ddp": DistributedType.MULTI_CPU}
    # a DeepSpeed config that matches the command's options (tests/test_training_deepspeed.py varies it)
    deepspeed_config = {"gradient_accumulation_steps": 1, "gradient_clipping": "auto",
                        "zero_optimization": {"stage3_gather_16bit_weights_on_model_save": True}}
    state = SimpleNamespace(
        fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
        deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage, deepspeed_config=deepspeed_config),
    )
    return SimpleNamespace(distributed_type=distributed_type[engine], state=state, mixed_precision="no")


def _args(**changes) -> argparse.Namespace:
    options = {"compile": False, "ema_type": "edm", "task": "denoiser", "gradient_accumulation_steps": 1, "max_grad_norm": None}
    return argparse.Namespace(**{**options, **changes})


@pytest.mark.parametrize(
    ("engine", "accelerator_options", "changes", "named"),
    [
        ("fsdp", {}, {"compile": True}, "--compile"),
        ("fsdp", {}, {"ema_type": "power"}, "--ema_type power"),
        ("deepspeed", {}, {"ema_type": "power"}, "--ema_type power"),
        ("fsdp", {}, {"task": "classifier"}, "--task classifier"),
        ("fsdp", {"fsdp_version": 1}, {}, "fsdp_version"),
        ("deepspeed", {"zero_stage": 3}, {"task": "classifier"}, "--task classifier"),
    ],
)
def test_a_sharded_launch_refuses_what_it_cannot_shard(engine, accelerator_options, changes, named):
    with pytest.raises(ValueError, match=named):
        check_sharded_run(_args(**changes), _accelerator(engine, **accelerator_options))


@pytest.mark.parametrize("changes", [{"compile": True}, {"ema_type": "power"}, {"task": "classifier"}])
def test_ddp_keeps_every_option(changes):
    check_sharded_run(_args(**changes), _accelerator("ddp"))  # no error: only sharded launches are limited


def test_fsdp2_accepts_the_default_options():
    check_sharded_run(_args(), _accelerator("fsdp"))


@settings(max_examples=40, deadline=None)
@given(
    engine=st.sampled_from(["fsdp", "deepspeed", "ddp"]), fsdp_version=st.sampled_from([1, 2]),
    zero_stage=st.sampled_from([1, 2, 3]), compile=st.booleans(), ema_type=st.sampled_from(["edm", "power"]),
    task=st.sampled_from(["denoiser", "classifier"]),
)
def test_a_launch_is_refused_exactly_when_an_option_cannot_be_sharded(engine, fsdp_version, zero_stage, compile, ema_type, task):
    # what cannot be sharded, stated independently: option -> the text the error must name
    offending = {} if engine == "ddp" else {
        "fsdp_version": engine == "fsdp" and fsdp_version != 2,
        "--compile": engine == "fsdp" and compile,
        "--ema_type power": ema_type == "power",
        "--task classifier": task == "classifier",
    }
    named = [text for text, bad in offending.items() if bad]
    arguments = _args(compile=compile, ema_type=ema_type, task=task)
    accelerator = _accelerator(engine, fsdp_version=fsdp_version, zero_stage=zero_stage)
    if not named:
        check_sharded_run(arguments, accelerator)
        return
    with pytest.raises(ValueError) as raised:
        check_sharded_run(arguments, accelerator)
    assert any(text in str(raised.value) for text in named), (named, str(raised.value))


# ------------------------------------------------------------------------------------------------ FSDP2 end to end
# always gloo on CPU (the shim of fsdp_training_script.py); the GPU path is benchmarks/gpu_check_fsdp.sh's
def _launch(launcher: list[str], arguments: list[str]) -> None:
    launch(SCRIPT, launcher, arguments)


def _shards(checkpoint: Path, rank: int) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / f"training_state_rank{rank}.safetensors")


def _dcp_model(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The full raw weights of a sharded checkpoint, read without any process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", scratch / "model.pt")
    return torch.load(scratch / "model.pt", weights_only=True)["model"]


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key in expected:
        # Same arithmetic, other reduction order (all-reduce vs reduce-scatter): equal to float32 rounding.
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} {key}: {m}")


def test_fsdp2_training_checkpoints_resumes_and_exports_what_ddp_trains(tmp_path, tiny_config):
    fsdp_config = tmp_path / "fsdp2_cpu.yaml"
    fsdp_config.write_text(FSDP2_CPU_CONFIG)
    fsdp = ["--config_file", str(fsdp_config)]
    ddp = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # validation at step 3 gathers the EMA model mid-run; the run goes on as DDP's does
    common = SHARDED_VS_DDP_ARGUMENTS

    _launch(ddp, tiny_args(tmp_path / "ddp", tiny_config, *common))
    _launch(fsdp, tiny_args(tmp_path / "fsdp", tiny_config, *common))
    # a second sharded run resumes from the first one's sharded step-2 checkpoint and trains steps 3-4 again
    _launch(fsdp, tiny_args(tmp_path / "resumed", tiny_config, *common,
                            "--resume_from_checkpoint", str(tmp_path / "fsdp" / "checkpoint-2")))

    ddp_checkpoint, fsdp_checkpoint = tmp_path / "ddp" / "checkpoint-4", tmp_path / "fsdp" / "checkpoint-4"
    # the comparisons below can tell runs apart: steps 3-4 move DDP's weights by far more than their tolerance
    assert weights_move(*(load_file(tmp_path / "ddp" / f"checkpoint-{step}" / "model.safetensors") for step in (2, 4)))
    # the sharded checkpoint: Accelerate's torch.distributed.checkpoint folders, an EMA file per process, no full model
    names = {path.name for path in fsdp_checkpoint.iterdir()}
    assert {"pytorch_model_fsdp_0", "optimizer_0", "training_state_rank0.safetensors", "training_state_rank1.safetensors"} <= names
    assert "model.safetensors" not in names
    ddp_state = load_file(ddp_checkpoint / "training_state.safetensors")
    ddp_ema = {key: value for key, value in ddp_state.items() if key.startswith("ema.shadow_params.")}
    assert ddp_ema and not any(key.startswith("ema.") for key in load_file(fsdp_checkpoint / "training_state.safetensors"))

    # the EMA is kept as shards: each process holds its dim-0 chunk of every average (no full copy), and the
    # chunks put together are DDP's full EMA
    rank0, rank1 = _shards(fsdp_checkpoint, 0), _shards(fsdp_checkpoint, 1)
    assert rank0.keys() == rank1.keys() == ddp_ema.keys()
    held = [sum(shards[key].numel() for key in ddp_ema) for shards in (rank0, rank1)]
    full = sum(value.numel() for value in ddp_ema.values())
    assert sum(held) == full and max(held) < 0.6 * full
    for key, value in ddp_ema.items():
        assert rank0[key].shape[0] == -(-value.shape[0] // 2)  # torch.chunk's split of dim 0
    _assert_close({key: torch.cat([rank0[key], rank1[key]]) for key in ddp_ema}, ddp_ema, "EMA")

    # the raw weights in the sharded checkpoint are DDP's
    (tmp_path / "scratch").mkdir()
    _assert_close(_dcp_model(fsdp_checkpoint, tmp_path / "scratch"), load_file(ddp_checkpoint / "model.safetensors"), "weights")

    # the export is one full safetensors folder holding the EMA weights, equal to DDP's export
    weights = "denoiser/diffusion_pytorch_model.safetensors"
    exported = load_file(tmp_path / "fsdp" / weights)
    _assert_close(exported, load_file(tmp_path / "ddp" / weights), "export")
    assert (tmp_path / "fsdp" / "model_index.json").is_file() and (tmp_path / "fsdp" / "samples.png").is_file()

    # resume is exact: the resumed run's step-4 checkpoint and export are bit for bit the uninterrupted run's
    resumed_checkpoint = tmp_path / "resumed" / "checkpoint-4"
    for rank in (0, 1):
        straight, again = _shards(fsdp_checkpoint, rank), _shards(resumed_checkpoint, rank)
        assert all(torch.equal(straight[key], again[key]) for key in straight), f"EMA shards of rank {rank}"
    (tmp_path / "scratch2").mkdir()
    straight, again = _dcp_model(fsdp_checkpoint, tmp_path / "scratch"), _dcp_model(resumed_checkpoint, tmp_path / "scratch2")
    assert all(torch.equal(straight[key], again[key]) for key in straight)
    again = load_file(tmp_path / "resumed" / weights)
    assert all(torch.equal(exported[key], again[key]) for key in exported)
    shutil.rmtree(tmp_path / "scratch")
