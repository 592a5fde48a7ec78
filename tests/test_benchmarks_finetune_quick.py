"""The fine-tuning comparison (issue #17's benchmark) runs in ``--quick`` mode, writes its outputs, and its two
diffusers recipes compute the objectives diffusers' scripts state.

The quick run is far too small to rank the recipes; it checks that every arm and noise level is measured, that the
summaries follow from the per-level numbers, that fine-tuning on the new concept lowers its held-out error, and
that with two training seeds every arm is trained and scored once per seed and summarised by the mean and spread.
The full run and its reading are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

os.environ["HF_HUB_OFFLINE"] = "1"

from benchmarks import finetune_comparison  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return finetune_comparison.main(["--quick", "--train-seeds", ",".join(map(str, TRAIN_SEEDS)),
                                     "--output-dir", str(tmp_path_factory.mktemp("finetune"))])


def test_every_arm_and_noise_level_is_measured(comparison: dict) -> None:
    rows = comparison["rows"]
    assert list(rows) == [finetune_comparison.BASE, *finetune_comparison.ARMS]
    sigma_data = comparison["sigma_data"]
    assert sigma_data > 0
    for name, row in rows.items():
        per_sigma = row["heldout"]["per_sigma"]
        assert [p["sigma"] for p in per_sigma] == list(finetune_comparison.SIGMAS)
        for point in per_sigma:
            assert math.isfinite(point["mse"]) and point["mse"] > 0 and math.isfinite(point["se"]) and point["se"] >= 0
            # EDM's weight, Karras et al. 2022 Table 1: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
            weight = (point["sigma"] ** 2 + sigma_data**2) / (point["sigma"] * sigma_data) ** 2
            assert point["weighted"] == pytest.approx(weight * point["mse"])
        assert row["heldout"]["edm_weighted_mean"] == pytest.approx(
            sum(p["weighted"] for p in per_sigma) / len(per_sigma))
        samples = row["samples"]
        assert math.isfinite(samples["frechet"]) and samples["frechet"] >= 0
        assert 0 <= samples["accuracy"] <= 1 and -1 <= samples["mean_pixel"] <= 1
    # Equal steps: every arm trained exactly the quick run's steps; the package arm through the real command.
    for name in finetune_comparison.ARMS:
        assert rows[name]["training"]["steps"] == finetune_comparison.QUICK.finetune_steps
    command = rows["package-edm"]["training"]["command"]
    assert command.startswith("diffusers-edm-train --pretrained_model_name_or_path ")
    assert f"--max_train_steps {finetune_comparison.QUICK.finetune_steps}" in command
    assert f"--train_batch_size {finetune_comparison.QUICK.finetune_batch}" in command


def test_finetuning_lowers_the_new_concepts_heldout_error(comparison: dict) -> None:
    rows = comparison["rows"]
    base = rows[finetune_comparison.BASE]["heldout"]["edm_weighted_mean"]
    for name in finetune_comparison.ARMS:
        assert rows[name]["heldout"]["edm_weighted_mean"] < base, name


def test_outputs_are_written(comparison: dict) -> None:
    files = comparison["files"]
    markdown = Path(files["markdown"]).read_text()
    for name in finetune_comparison.ARMS:
        assert name in markdown
    assert "EDM-weighted mean" in markdown and "Frechet" in markdown
    record = json.loads(Path(files["json"]).read_text())
    assert set(record["rows"]) == set(comparison["rows"])
    assert set(files["grids"]) == {finetune_comparison.BASE, *finetune_comparison.ARMS, "base on its own prompts"}
    own = comparison["base_on_own_prompts"]["samples"]
    assert math.isfinite(own["frechet"]) and 0 <= own["accuracy"] <= 1
    pngs = list(files["grids"].values()) + ([files["png"]] if HAS_MATPLOTLIB else [])
    for path in pngs:
        assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_each_arm_is_trained_per_seed_and_summarised_by_mean_and_spread(comparison: dict) -> None:
    """Per arm: one run per training seed (its seed in the package command), different results per seed, and the
    summary's every score the mean over the seeds with min / max / sample std (for two values: |a - b| / sqrt(2))."""
    rows = comparison["rows"]
    assert list(comparison["settings"]["train_seeds"]) == list(TRAIN_SEEDS)
    assert "seeds" not in rows[finetune_comparison.BASE]  # the base is trained once, with the fixed base seed
    for name in finetune_comparison.ARMS:
        runs = rows[name]["seeds"]
        assert list(runs) == list(TRAIN_SEEDS)
        for seed, run in runs.items():
            assert run["training"]["seed"] == seed
            assert run["training"]["steps"] == finetune_comparison.QUICK.finetune_steps
            if name == "package-edm":
                assert run["training"]["command"].endswith(f"--seed {seed}")
        # Grids for the first seed only.
        assert runs[TRAIN_SEEDS[0]]["grid"] == rows[name]["grid"] and Path(rows[name]["grid"]).is_file()
        assert all(run["grid"] is None for seed, run in runs.items() if seed != TRAIN_SEEDS[0])
        first, second = (runs[seed] for seed in TRAIN_SEEDS)
        pairs = [(p["mse"], q["mse"]) for p, q in zip(first["heldout"]["per_sigma"], second["heldout"]["per_sigma"])]
        assert any(a != b for a, b in pairs), f"{name}: the training seed changed nothing"
        for point, (a, b) in zip(rows[name]["heldout"]["per_sigma"], pairs):
            assert point["mse"] == pytest.approx((a + b) / 2)
            assert point["spread"]["min"] == min(a, b) and point["spread"]["max"] == max(a, b)
            assert point["spread"]["std"] == pytest.approx(abs(a - b) / math.sqrt(2))
        for summary, spread, values in [
            (rows[name]["heldout"]["edm_weighted_mean"], rows[name]["heldout"]["edm_weighted_spread"],
             [run["heldout"]["edm_weighted_mean"] for run in runs.values()]),
            (rows[name]["samples"]["frechet"], rows[name]["samples"]["frechet_spread"],
             [run["samples"]["frechet"] for run in runs.values()]),
        ]:
            assert summary == pytest.approx(sum(values) / 2)
            assert (spread["min"], spread["max"]) == (min(values), max(values))
            assert spread["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    markdown = Path(comparison["files"]["markdown"]).read_text()
    per_seed = markdown.split("## Per training seed")[1].split("##")[0]
    for name in finetune_comparison.ARMS:
        for seed in TRAIN_SEEDS:
            assert any(line.startswith(f"| {name} ") and line.split("|")[2].strip() == str(seed)
                       for line in per_seed.splitlines()), (name, seed)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="0123456789,- x", max_size=12))
@example("0, 1")  # the inputs random text rarely reaches: valid lists, a duplicate, nothing
@example("1,1")
@example("")
def test_train_seeds_are_distinct_non_negative_integers_or_a_clear_error(text: str) -> None:
    """``--train-seeds``: comma-separated decimal integers (spaces around them allowed), all distinct; anything else a
    ValueError that quotes the value and says what is allowed."""
    parts = text.split(",")
    valid = all(re.fullmatch(r" *[0-9]+ *", part) for part in parts) and len({int(p) for p in parts}) == len(parts)
    try:
        seeds = finetune_comparison.parse_train_seeds(text)
    except ValueError as error:
        assert not valid
        assert repr(text) in str(error) and "non-negative integers" in str(error)
    else:
        assert valid and seeds == tuple(int(part) for part in parts)


def _tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=8,
    ).eval()


@pytest.mark.parametrize("recipe", ["epsilon", "edm_style"])
def test_diffusers_recipes_are_the_eps_objective_on_the_sd_table(recipe: str) -> None:
    """Both diffusers arms, on an eps checkpoint with Stable Diffusion's table, minimise ``|eps_hat - n|^2`` at
    ``x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n``: train_text_to_image.py directly; the EDM-style path of
    train_dreambooth_lora_sdxl.py through ``D = x - sigma eps_hat`` (input ``x / sqrt(sigma^2 + 1)``, ``x = y + sigma
    n``) and the weight ``sigma^-2``. The table is built here from its definition (Ho et al. 2020 with SD's
    ``scaled_linear`` betas: ``beta = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2``)."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    unet = _tiny_unet()
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    states = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(2))
    config = finetune_comparison.SD_TABLE
    scheduler = (DDPMScheduler if recipe == "epsilon" else EulerDiscreteScheduler).from_config(config)
    loss_fn = finetune_comparison.epsilon_loss if recipe == "epsilon" else finetune_comparison.edm_style_loss
    torch.manual_seed(3)
    with torch.no_grad():
        loss = loss_fn(unet, scheduler, latents, states)

    # The same draws, in the same order: the noise, then one index per example in 0..999.
    torch.manual_seed(3)
    noise = torch.randn_like(latents)
    index = torch.randint(0, 1000, (len(latents),))
    timesteps = index if recipe == "epsilon" else 999 - index  # EulerDiscreteScheduler lists timesteps 999..0
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[timesteps].reshape(-1, 1, 1, 1)
    noisy = (alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise).float()
    with torch.no_grad():
        eps_hat = unet(noisy, timesteps.float(), states).sample
    expected = (eps_hat - noise).pow(2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=2e-4)
