"""The Accelerate training script end to end, on tiny backbones and the embedded digits (offline, CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusers_edm.training.train import main
from tiny_training import TINY_UNET, tiny_args
from tiny_training import reset_accelerate_state

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TRAINING_SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train_edm.py"
def run_subprocess(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = (launcher or [sys.executable]) + [str(TRAINING_SCRIPT), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------------------------------------ outputs
def test_edm_run_writes_a_loadable_pipeline_card_checkpoints_and_logs(tmp_path, tiny_config):
    from diffusers_edm import EDMHeunScheduler
    from diffusers_edm.pipelines.pipeline_edm import EDMPipeline

    out = tmp_path / "run"
    result = main(tiny_args(out, tiny_config, "--label_column", "label", "--label_dropout", "0.1",
                            "--report_to", "tensorboard", "--checkpoints_total_limit", "1"))
    assert result.global_step == 4 and len(result.losses) == 4 and all(np.isfinite(result.losses))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]
    assert not list(out.glob(".checkpoint-*"))
    assert (out / "samples" / "step-0000003.png").is_file() and list((out / "logs").rglob("events.out.tfevents.*"))
    grid = Image.open(out / "samples.png")
    # 4 samples of 8x8, fewer than the 10 classes: a 2x2 grid, cells enlarged 8x to 64 px, 2 px apart
    assert grid.size == (2 * 64 + 2, 2 * 64 + 2)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "diffusers-edm" in card and "edm-preconditioning" in card
    assert json.loads((out / "training_args.json").read_text())["label_dropout"] == 0.1

    pipe = EDMPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, EDMHeunScheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=[3, 7], num_inference_steps=3, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    # the exported weights are the EMA weights, not the raw ones
    exported = load_file(next((out / "denoiser").glob("*.safetensors")))
    raw = result.model.state_dict()
    ema = dict(zip(raw.keys(), result.ema.shadow_params))
    name = next(k for k in exported if k.endswith("conv_in.weight"))
    torch.testing.assert_close(exported[name], ema[name])
    assert not torch.equal(exported[name], raw[name])


@pytest.mark.parametrize("precond", ["vp", "ve", "iddpm"])
def test_other_preconditionings_train_and_export(tmp_path, tiny_config, precond):
    out = tmp_path / precond
    result = main(tiny_args(out, tiny_config, "--precond", precond, "--max_train_steps", "2"))
    assert result.global_step == 2 and (out / "model_index.json").is_file()
    assert json.loads((out / "denoiser" / "config.json").read_text())["_class_name"] == f"{precond.upper() if precond != 'iddpm' else 'IDDPM'}Precond"


@pytest.mark.parametrize("option", [["--mixed_precision", "bf16"], ["--compile"]], ids=["bf16", "compile"])
def test_mixed_precision_and_compile_train_and_export(tmp_path, tiny_config, option):
    from diffusers_edm import EDMPipeline

    out = tmp_path / "run"
    result = main(tiny_args(out, tiny_config, "--max_train_steps", "2", *option))
    assert type(result.model).__name__ == "EDMPrecond"  # not a compile or autocast wrapper
    assert EDMPipeline.from_pretrained(out).denoiser.dtype == torch.float32


def test_hybrid_loss_with_the_default_uniform_timestep_sampler_checkpoints(tmp_path, tiny_config):
    out = tmp_path / "hybrid_uniform"
    result = main(tiny_args(out, tiny_config, "--loss", "hybrid", "--num_train_timesteps", "50", "--max_train_steps", "2"))
    assert result.global_step == 2 and (out / "checkpoint-2").is_dir() and (out / "model_index.json").is_file()


def test_hybrid_loss_trains_a_learned_variance_pipeline(tmp_path, tiny_config):
    from diffusers_edm.pipelines.pipeline_learned_variance import LearnedVariancePipeline

    out = tmp_path / "hybrid"
    result = main(tiny_args(out, tiny_config, "--loss", "hybrid", "--timestep_sampler", "loss-second-moment",
                            "--num_train_timesteps", "50", "--max_train_steps", "3", "--label_column", "label"))
    assert result.global_step == 3 and result.model.config.out_channels == 2
    pipe = LearnedVariancePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=[1, 2], num_inference_steps=5, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_push_to_hub_uploads_pipeline_and_card_at_the_api_boundary(tmp_path, tiny_config, monkeypatch):
    import huggingface_hub

    calls = {}

    class Repo:
        repo_id = "someone/edm-digits"

    def create_repo(repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return Repo()

    def upload_folder(**kwargs):
        calls["upload_folder"] = kwargs
        calls["files"] = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    out = tmp_path / "hub"
    main(tiny_args(out, tiny_config, "--push_to_hub", "--hub_model_id", "someone/edm-digits", "--max_train_steps", "2"))
    assert calls["create_repo"][0] == "someone/edm-digits"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "someone/edm-digits" and Path(upload["folder_path"]) == out
    assert "checkpoint-*" in upload["ignore_patterns"]
    assert {"model_index.json", "README.md", "samples.png", "denoiser/config.json"} <= set(calls["files"])
    assert "someone/edm-digits" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--precond", "edm", "--loss", "hybrid"], "drop --precond"),
        (["--model_size", "huge"], "preset"),
        (["--backbone", "dit"], "--backbone dit is class-conditional"),  # on pixels or latents, it needs labels
        (["--resolution", "7"], "divisible by 2"),
        (["--label_column", "digit"], "Label column 'digit'"),
        (["--label_column", "label", "--num_classes", "5"], "more than --num_classes=5"),
        (["--label_dropout", "0.1"], "--label_column"),
        (["--push_to_hub"], "--hub_model_id"),
        (["--train_batch_size", "0"], "--train_batch_size"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, tiny_config, extra, message):
    out = tmp_path / "bad"
    with pytest.raises((ValueError, SystemExit), match=message):
        main(tiny_args(out, tiny_config, *extra))
    assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()


def test_output_dir_of_another_run_needs_overwrite(tmp_path, tiny_config):
    out = tmp_path / "run"
    main(tiny_args(out, tiny_config, "--max_train_steps", "1"))
    reset_accelerate_state()
    with pytest.raises(SystemExit, match="holds another run"):
        main(tiny_args(out, tiny_config, "--max_train_steps", "1"))
    main(tiny_args(out, tiny_config, "--max_train_steps", "1", "--overwrite"))


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny_config):
    out = tmp_path / "run"
    main(tiny_args(out, tiny_config, "--max_train_steps", "2"))
    reset_accelerate_state()
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TINY_UNET, "block_out_channels": [8, 24]}))
    with pytest.raises(ValueError, match="does not match the model"):
        main(tiny_args(out, wider, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))


def test_corrupt_image_is_named_before_training(tmp_path, tiny_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(8):
        Image.fromarray(np.full((8, 8, 3), index * 30, dtype=np.uint8)).save(folder / f"ok_{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        main(tiny_args(tmp_path / "run", tiny_config, "--train_data_dir", str(folder)))


def test_image_folder_trains_in_rgb(tmp_path, tiny_config):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    result = main(tiny_args(tmp_path / "run", tiny_config, "--train_data_dir", str(folder), "--random_flip",
                            "--no-center_crop", "--max_train_steps", "2"))
    assert result.model.config.backbone_config["in_channels"] == 3


# ------------------------------------------------------------------------------------------------ resume
def test_run_killed_after_a_checkpoint_resumes_to_identical_weights(tmp_path, tiny_config):
    args = ["--max_train_steps", "40", "--checkpointing_steps", "4", "--validation_steps", "1000", "--random_flip",
            "--label_column", "label", "--label_dropout", "0.2"]
    straight = tmp_path / "straight"
    process = run_subprocess(tiny_args(straight, tiny_config, *args))
    log = process.communicate(timeout=300)[0]
    assert process.returncode == 0, log[-3000:]

    killed = tmp_path / "killed"
    process = run_subprocess(tiny_args(killed, tiny_config, *args))
    deadline = time.time() + 240
    while not (killed / "checkpoint-4").is_dir():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.005)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert still_running, "the run finished before it could be killed"
    assert not (killed / "model_index.json").exists()

    process = run_subprocess(tiny_args(killed, tiny_config, *args, "--resume_from_checkpoint", "latest"))
    log = process.communicate(timeout=300)[0]
    assert process.returncode == 0, log[-3000:]
    assert "Resumed from" in log
    for relative in ("checkpoint-40/model.safetensors", "denoiser/diffusion_pytorch_model.safetensors"):
        a, b = load_file(straight / relative), load_file(killed / relative)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{relative}: {key} differs after resume"


# ------------------------------------------------------------------------------------------------ distributed
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_split_the_batch_and_agree(tmp_path, tiny_config):
    script = Path(__file__).with_name("multiprocess_training_script.py")
    out = tmp_path / "ddp"
    command = [
        # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA the script runs it on gloo/CPU
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path / "ranks"), *tiny_args(out, tiny_config, "--max_train_steps", "3"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["num_processes"] == ranks[1]["num_processes"] == 2
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    # each optimizer step: 8 images per process, disjoint between processes (the global batch is 16)
    for batch0, batch1 in zip(ranks[0]["indices"], ranks[1]["indices"]):
        assert len(batch0) == len(batch1) == 8 and not set(batch0) & set(batch1)
    assert (out / "model_index.json").is_file()


# ------------------------------------------------------------------------------------------------ latent space
@pytest.fixture
def tiny_vae_dir(tmp_path) -> Path:
    """A grayscale AutoencoderKL (factor 2, 4 latent channels) saved locally, as --vae takes it."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_latent_space_training_with_a_vae(tmp_path, tiny_config, tiny_vae_dir, backbone):
    from diffusers_edm import EDMPipeline

    out = tmp_path / backbone
    extra = ["--vae", str(tiny_vae_dir), "--label_column", "label", "--max_train_steps", "2", "--resolution", "8"]
    if backbone == "dit":
        dit = tmp_path / "dit.json"
        dit.write_text(json.dumps({"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}))
        extra += ["--backbone", "dit", "--backbone_config", str(dit)]
    result = main(tiny_args(out, tiny_config, *extra))
    assert result.model.config.backbone_config["in_channels"] == 4
    assert result.model.config.backbone_config["sample_size"] == 4  # 8 px / VAE factor 2
    pipe = EDMPipeline.from_pretrained(out)
    assert pipe.vae is not None
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 5], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_dit_needs_labels_and_a_vae_channel_match(tmp_path, tiny_config, tiny_vae_dir):
    with pytest.raises(ValueError, match="--label_column"):
        main(tiny_args(tmp_path / "a", tiny_config, "--vae", str(tiny_vae_dir), "--backbone", "dit"))
    reset_accelerate_state()
    folder = tmp_path / "rgb"
    folder.mkdir()
    for index in range(8):
        Image.fromarray(np.full((8, 8, 3), index * 30, dtype=np.uint8)).save(folder / f"{index}.png")
    with pytest.raises(ValueError, match="1-channel images"):
        main(tiny_args(tmp_path / "b", tiny_config, "--vae", str(tiny_vae_dir), "--train_data_dir", str(folder)))
