"""``--precond edm2``: EDM's preconditioning with EDM2's learned-uncertainty loss (Karras et al. 2024, eq. 21),
stated independently here:

    per element: ``lambda(sigma) / exp(u(sigma)) * (D(y + sigma n; sigma) - y)^2 + u(sigma)``,
    ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``, ``ln sigma ~ N(-0.4, 1.0^2)``,

``u`` a linear layer (no bias) on the Fourier features ``sqrt(2) cos(f c_noise + p)`` of EDM's
``c_noise = ln(sigma) / 4`` (Karras et al. 2022, Table 1). ``--loss_reduction mean`` averages over each image's
elements and the batch: ``mean_b(lambda / exp(u) * mean_pixels((D - y)^2) + u)``; ``sum`` is C*H*W times that.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.recipes import RecipeData, select_recipe
from diffusers_edm.training.train import Trainer, main
from tiny_training import tiny_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def make_recipe(tmp_path: Path, config: Path, *extra: str):
    args = parse_args(tiny_args(tmp_path / "run", config, "--precond", "edm2", *extra))
    data = RecipeData(num_classes=0, image_channels=1, sample_size=8, channels=1)
    return args, select_recipe(args)(args, data, Accelerator(cpu=True))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_loss_is_lambda_over_exp_u_times_the_error_plus_u(tmp_path, tiny_config, reduction):
    args, recipe = make_recipe(tmp_path, tiny_config, "--loss_reduction", reduction)
    model = recipe.build_model()
    with torch.no_grad():  # a u that is not zero, so the formula is exercised
        model.uncertainty.linear.weight.copy_(torch.randn(model.uncertainty.linear.weight.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    torch.manual_seed(7)
    loss, stats = recipe.loss(model, images, None)

    torch.manual_seed(7)  # the same draws: sigma first, then n
    sigma = (torch.randn(6) * 1.0 - 0.4).exp()
    noise = torch.randn_like(images)
    with torch.no_grad():
        denoised = model.denoiser(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma).sample
        c_noise = sigma.log() / 4
        features = math.sqrt(2) * torch.cos(c_noise[:, None] * model.uncertainty.frequencies + model.uncertainty.phases)
        u = features @ model.uncertainty.linear.weight[0]
    sd = 0.5
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    per_image = weight / u.exp() * (denoised - images).square().mean(dim=(1, 2, 3)) + u
    expected = per_image.mean() * (64 if reduction == "sum" else 1)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["u_mean"], u.mean(), rtol=1e-5, atol=1e-6)
    assert u.abs().min() > 0


def test_edm2_mode_defaults_to_edm2s_noise_distribution_and_other_modes_keep_edms(tmp_path, tiny_config):
    edm2 = parse_args(tiny_args(tmp_path / "a", tiny_config, "--precond", "edm2"))
    assert (edm2.P_mean, edm2.P_std, edm2.loss_reduction) == (-0.4, 1.0, "sum")
    edm = parse_args(tiny_args(tmp_path / "b", tiny_config))
    assert (edm.P_mean, edm.P_std) == (-1.2, 1.2)
    given = parse_args(tiny_args(tmp_path / "c", tiny_config, "--precond", "edm2", "--P_mean", "-1.0", "--P_std", "0.8"))
    assert (given.P_mean, given.P_std) == (-1.0, 0.8)
    _, recipe = make_recipe(tmp_path, tiny_config)
    recipe.build_model()
    assert (recipe.loss_fn.P_mean, recipe.loss_fn.P_std) == (-0.4, 1.0)


def test_edm2_is_refused_with_the_hybrid_loss_and_the_classifier(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="drop --precond edm2"):
        parse_args(tiny_args(tmp_path / "a", tiny_config, "--precond", "edm2", "--loss", "hybrid"))
    with pytest.raises(ValueError, match="--precond edm2 does not apply to --task classifier"):
        parse_args(tiny_args(tmp_path / "b", tiny_config, "--precond", "edm2", "--task", "classifier", "--label_column", "label"))


def test_u_is_checkpointed_and_restored_on_resume_but_not_exported(tmp_path, tiny_config):
    run = tmp_path / "run"
    arguments = ["--precond", "edm2", "--lr_rampup_kimg", "0", "--validation_steps", "1000", "--num_validation_images", "2",
                 "--sample_steps", "2", "--report_to", "tensorboard"]
    result = main(tiny_args(run, tiny_config, *arguments, "--max_train_steps", "2"))
    curve = result.metrics["uncertainty"]
    assert len(curve) == 15 and all(math.isfinite(v) for v in curve.values())

    exported = load_file(str(run / "denoiser" / "diffusion_pytorch_model.safetensors"))
    assert not any("uncertainty" in name for name in exported)
    pipeline = EDMPipeline.from_pretrained(run)
    assert type(pipeline.denoiser).__name__ == "EDMPrecond"

    checkpoint = load_file(str(run / "checkpoint-2" / "model.safetensors"))
    saved_u = checkpoint["uncertainty.linear.weight"]
    assert saved_u.abs().sum() > 0  # trained away from its zero initialisation
    assert {"uncertainty.frequencies", "uncertainty.phases"} <= set(checkpoint)

    from tiny_training import reset_accelerate_state

    reset_accelerate_state()
    trainer = Trainer(parse_args(tiny_args(run, tiny_config, *arguments, "--max_train_steps", "4",
                                           "--resume_from_checkpoint", "latest")))
    trainer.setup()
    torch.testing.assert_close(trainer.unwrapped_model().uncertainty.linear.weight.detach(), saved_u, rtol=0, atol=0)


def test_the_uncertainty_curve_is_logged_to_tensorboard(tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    main(tiny_args(run, tiny_config, "--precond", "edm2", "--max_train_steps", "3", "--validation_steps", "2",
                   "--num_validation_images", "2", "--sample_steps", "2", "--report_to", "tensorboard"))
    (events,) = [p.parent for p in (run / "logs").rglob("events.out.tfevents.*")][:1]
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"uncertainty/sigma_0.002", "uncertainty/sigma_1", "uncertainty/sigma_80", "u_mean"} <= tags
    assert [event.step for event in accumulator.Scalars("uncertainty/sigma_1")] == [2, 3]
