"""The training script's recipe against EDM's and Improved DDPM's own rules, stated here independently.

Loss reduction (EDM: sum over pixels, mean over the batch), learning-rate ramp and latent encoding, the backbone's
calling convention through DDP / compile wrappers, host synchronisations per optimizer step, label dropout and the
sample grid. Tiny backbones, the embedded digits, CPU only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import diffusers_edm.training.recipes.hybrid as hybrid_recipe
import diffusers_edm.training.train as train_module
from diffusers_edm.training.image_grid import image_grid
from diffusers_edm.models.backbones import call_backbone, drop_class_labels
from diffusers_edm.training.arguments import parse_args
from benchmarks.host_syncs import count_host_syncs
from tiny_backbones import tiny_dit, tiny_unet_condition
from tiny_training import tiny_args as training_args
from tiny_training import reset_accelerate_state

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DIT = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}
VAE_SCALE, VAE_SHIFT = 0.7, 0.3


@pytest.fixture
def shifted_vae_dir(tmp_path) -> Path:
    """A grayscale AutoencoderKL (factor 2, 4 latent channels) whose config has scaling and shift factors."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        scaling_factor=VAE_SCALE, shift_factor=VAE_SHIFT)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def tiny_args(output_dir: Path, config: Path, *extra: str) -> list[str]:
    """No checkpoints, logs or validation grids: only the steps themselves."""
    return training_args(output_dir, config, "--checkpointing_steps", "1000", "--logging_steps", "1000",
                         "--validation_steps", "1000", *extra)


def make_trainer(output_dir: Path, config: Path, *extra: str) -> train_module.Trainer:
    reset_accelerate_state()
    trainer = train_module.Trainer(parse_args(tiny_args(output_dir, config, *extra)))
    trainer.setup()
    return trainer


def first_batch(trainer: train_module.Trainer) -> dict:
    return next(iter(trainer.dataloader))


# ------------------------------------------------------------------------------------------------ loss reduction
def test_default_reduction_is_edms_sum_for_precond_and_the_mean_for_hybrid(tmp_path):
    assert parse_args(["--output_dir", str(tmp_path / "a")]).loss_reduction == "sum"
    assert parse_args(["--output_dir", str(tmp_path / "b"), "--loss", "hybrid"]).loss_reduction == "mean"
    assert parse_args(["--output_dir", str(tmp_path / "c"), "--loss_reduction", "mean"]).loss_reduction == "mean"
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", str(tmp_path / "d"), "--loss_reduction", "max"])
    with pytest.raises(ValueError, match="--max_grad_norm must be > 0"):
        parse_args(["--output_dir", str(tmp_path / "e"), "--max_grad_norm", "0"])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_precond_loss_reduction_follows_its_formula(tmp_path, tiny_config, reduction):
    trainer = make_trainer(tmp_path / "run", tiny_config, "--loss_reduction", reduction, "--label_column", "label")
    per_element = []
    loss_fn = trainer.recipe.loss_fn

    def recording_loss(model, images, **conditioning):
        output = loss_fn(model, images, **conditioning)
        per_element.append(output.loss.detach().double())
        return output

    trainer.recipe.loss_fn = recording_loss
    batch = first_batch(trainer)
    loss, _ = trainer._loss(batch["images"], batch["labels"])
    elements = per_element[0]
    batch_size = elements.shape[0]
    # EDM: loss.sum() / batch (each image's squared errors summed over its C*H*W pixels, then the batch mean);
    # mean: the average over every element.
    expected = elements.sum() / batch_size if reduction == "sum" else elements.sum() / elements.numel()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hybrid_loss_reduction_follows_its_formula(tmp_path, tiny_config, monkeypatch, reduction):
    trainer = make_trainer(tmp_path / "run", tiny_config, "--loss", "hybrid", "--num_train_timesteps", "50",
                           "--loss_reduction", reduction)
    outputs = []
    original = hybrid_recipe.hybrid_loss

    def recording_hybrid_loss(*args, **kwargs):
        output = original(*args, **kwargs)
        outputs.append(output)
        return output

    monkeypatch.setattr(hybrid_recipe, "hybrid_loss", recording_hybrid_loss)
    images = first_batch(trainer)["images"]
    loss, _ = trainer._loss(images, None)
    per_example_mean = outputs[0].loss.detach().double()  # Improved DDPM's mean over each example's dimensions
    pixels = images[0].numel()
    # uniform sampler: every importance weight is 1
    expected = (per_example_mean * pixels).mean() if reduction == "sum" else per_example_mean.mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def test_sum_reduction_gradient_norm_is_c_h_w_times_the_means(tmp_path, tiny_config):
    """The --max_grad_norm scale documented in --help: under sum the gradient is C*H*W times the mean's."""
    norms = {}
    for reduction in ("sum", "mean"):
        trainer = make_trainer(tmp_path / reduction, tiny_config, "--loss_reduction", reduction, "--max_grad_norm", "1e30")
        batch = first_batch(trainer)
        _, stats = trainer._train_step(batch)
        norms[reduction] = float(stats["grad_norm"])
    assert norms["sum"] / norms["mean"] == pytest.approx(1 * 8 * 8, rel=1e-4)


# ------------------------------------------------------------------------------------------------ learning rate
@pytest.mark.parametrize("accumulation", [1, 2])
def test_learning_rate_ramp_is_edms_rule_in_images_seen_before_the_step(tmp_path, tiny_config, accumulation):
    lr, rampup_kimg = 2e-3, 0.02  # 20 images: not a whole number of global batches (8 or 16)
    trainer = make_trainer(tmp_path / "run", tiny_config, "--learning_rate", str(lr), "--lr_rampup_kimg", str(rampup_kimg),
                           "--gradient_accumulation_steps", str(accumulation))
    used = []
    # the torch optimizer inside Accelerate's wrapper: it steps only when an accumulation cycle completes
    trainer.optimizer.optimizer.register_step_pre_hook(lambda optimizer, *_: used.append(optimizer.param_groups[0]["lr"]))
    batches = iter(trainer.dataloader)
    for _ in range(5 * accumulation):
        trainer._train_step(next(batches))
    global_batch = 8 * accumulation
    # EDM: g['lr'] = lr * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1) before the step, then cur_nimg += batch
    expected, cur_nimg = [], 0
    for _ in range(5):
        expected.append(lr * min(cur_nimg / max(rampup_kimg * 1000, 1e-8), 1))
        cur_nimg += global_batch
    assert used == pytest.approx(expected, rel=1e-12, abs=0)


# ------------------------------------------------------------------------------------------------ latent space
def test_latent_training_batch_is_the_shifted_then_scaled_vae_sample(tmp_path, tiny_config, shifted_vae_dir):
    trainer = make_trainer(tmp_path / "run", tiny_config, "--vae", str(shifted_vae_dir), "--label_column", "label")
    images = first_batch(trainer)["images"]
    torch.manual_seed(3)
    latents, _ = trainer._batch_inputs({"images": images})
    # E(x): a sample of the encoder's Gaussian, mean + std * n; the model sees (E(x) - shift_factor) * scaling_factor
    with torch.no_grad():
        posterior = AutoencoderKL.from_pretrained(shifted_vae_dir).encode(images).latent_dist
    torch.manual_seed(3)
    encoded = posterior.mean + posterior.std * torch.randn(posterior.mean.shape)
    torch.testing.assert_close(latents, (encoded - VAE_SHIFT) * VAE_SCALE, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ backbone calls
def test_backbone_calls_look_through_a_compile_wrapper():
    """A compiled UNet2DConditionModel still gets its cross-attention context (the UNet2DModel convention drops it)."""
    unet = tiny_unet_condition(channels=4).eval()
    sample, noise_label = torch.randn(2, 4, 8, 8), torch.tensor([0.3, -1.0])
    context = torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = unet(sample, noise_label, encoder_hidden_states=context, return_dict=False)[0]
        output = call_backbone(torch.compile(unet, backend="eager"), sample, noise_label, None, context)
    torch.testing.assert_close(output, expected)

    dit = tiny_dit(channels=4).eval()
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        expected = dit(sample, timestep=noise_label, class_labels=labels, return_dict=False)[0]
        output = call_backbone(torch.compile(dit, backend="eager"), sample, noise_label, labels, None)
    torch.testing.assert_close(output, expected)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("recipe", ["hybrid", "edm"])
def test_dit_trains_under_two_processes(tmp_path, shifted_vae_dir, recipe):
    """DDP-wrapped DiT: called with DiT's own argument names, both ranks agree (weights, importance-sampler state)."""
    dit = tmp_path / "dit.json"
    dit.write_text(json.dumps(TINY_DIT))
    extra = ["--backbone", "dit", "--vae", str(shifted_vae_dir), "--label_column", "label", "--label_dropout", "0.1",
             "--max_train_steps", "3", "--num_validation_images", "2", "--sample_steps", "2"]
    if recipe == "hybrid":
        extra += ["--loss", "hybrid", "--timestep_sampler", "loss-second-moment", "--num_train_timesteps", "4"]
    out = tmp_path / "ddp"
    script = Path(__file__).with_name("multiprocess_training_script.py")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path / "ranks"), *tiny_args(out, dit, *extra),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in ranks:
        assert rank["num_processes"] == 2
        # 3 optimizer steps, one training call each (the EDM wrapper calls its DiT the same way)
        assert rank["dit_timestep_passing"] == ["keyword"] * 3
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    if recipe == "hybrid":
        states = [rank["sampler_state"] for rank in ranks]
        # 3 steps x 2 processes x 8 timesteps, recorded on both ranks in the same order (at most 10 per timestep)
        assert 0 < int(states[0]["loss_counts"].sum()) <= 40
        assert torch.equal(states[0]["loss_history"], states[1]["loss_history"])
        assert torch.equal(states[0]["loss_counts"], states[1]["loss_counts"])
    assert (out / "model_index.json").is_file()


# ------------------------------------------------------------------------------------------------ host syncs
@pytest.mark.parametrize(
    "recipe",
    [
        ["--label_column", "label", "--label_dropout", "0.1", "--max_grad_norm", "1.0"],
        ["--loss", "hybrid", "--timestep_sampler", "loss-second-moment", "--num_train_timesteps", "4",
         "--label_column", "label", "--label_dropout", "0.1", "--max_grad_norm", "1.0"],
    ],
    ids=["edm", "hybrid-loss-second-moment"],
)
def test_no_host_synchronisation_in_an_optimizer_step(tmp_path, tiny_config, recipe):
    trainer = make_trainer(tmp_path / "run", tiny_config, "--max_train_steps", "20", *recipe)
    batches = iter(trainer.dataloader)
    counts = []
    for _ in range(16):  # the importance sampler warms up (10 losses for each of 4 timesteps) within these steps
        batch = next(batches)
        with count_host_syncs() as counter:
            trainer._train_step(batch)  # loss, backward, clipping, optimizer step, learning-rate ramp, EMA
        counts.append(counter.calls)
    assert all(not calls for calls in counts), next(calls for calls in counts if calls)
    if "hybrid" in recipe:
        assert trainer.recipe.timestep_sampler.is_warmed_up()


# ------------------------------------------------------------------------------------------------ label dropout
def test_label_dropout_replaces_each_label_where_its_uniform_draw_is_below_p():
    labels = torch.arange(1000) % 10
    torch.manual_seed(7)
    dropped = drop_class_labels(labels, 0.3, 10)
    torch.manual_seed(7)
    expected = torch.where(torch.rand(1000) < 0.3, 10, labels)  # one decision per example
    assert torch.equal(dropped, expected)
    assert 250 < int((dropped == 10).sum()) < 350


# ------------------------------------------------------------------------------------------------ sample grid
def test_sample_grid_leaves_a_background_gap_between_intact_cells():
    cells = np.stack([np.full((4, 4, 1), level, dtype=np.float32) for level in (0.0, 0.2, 0.4, 0.6, 0.8)])
    cells[:, 0, 0] = 0.1  # a marked corner shows each cell is placed whole and unflipped
    grid = np.asarray(image_grid(cells, rows=2, min_cell=8, gap=2))
    size, gap = 8, 2  # 4 px enlarged 2x
    assert grid.shape == (2 * size + gap, 3 * size + 2 * gap)
    for index, cell in enumerate(cells):
        row, col = divmod(index, 3)
        top, left = row * (size + gap), col * (size + gap)
        expected = np.round(np.kron(cell[..., 0], np.ones((2, 2))) * 255).astype(np.uint8)
        np.testing.assert_array_equal(grid[top : top + size, left : left + size], expected)
    background = 255
    assert (grid[size : size + gap, :] == background).all()  # between the rows
    for col in (1, 2):
        assert (grid[:, col * (size + gap) - gap : col * (size + gap)] == background).all()  # between the columns
    assert (grid[size + gap :, 2 * (size + gap) :] == background).all()  # the empty sixth cell


# ------------------------------------------------------------------------------------------------ packaging
def test_transformers_is_a_package_dependency():
    """The text pipelines and text-conditional training need tokenizers and text encoders (issue 16)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements}  # noqa: E731
    assert "transformers" in names(project["dependencies"])
