"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", section 3 and Appendix C), stated independently here:

- a power-function EMA of exponent gamma averages the weights with the profile ``tau^gamma``; its relative std is
  ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (eq. 123); EDM2 tracks sigma_rel 0.05 and 0.10,
  i.e. gamma = 16.97 and 6.94 (section 3.1);
- per optimizer step ``beta = (1 - batch / n_img)^(gamma + 1)`` with ``n_img`` the images seen including the step
  (eq. 127) and ``ema = beta ema + (1 - beta) theta``;
- the inner product of two unit-mass profiles ``p(tau) = (g + 1) tau^g / t^(g + 1)`` on ``[0, t]`` is their integral
  product (checked here by numerical integration), and the EMA of any profile is reconstructed from snapshots of
  others by least squares.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from diffusers_edm.pipelines import EDMPipeline
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.ema import (
    PowerFunctionEMA,
    PowerFunctionEMAModel,
    gamma_to_sigma_rel,
    sigma_rel_to_gamma,
)
from diffusers_edm.training.posthoc_ema import (
    EMASnapshotWriter,
    list_snapshots,
    main as posthoc_main,
    plan_reconstruction,
    power_function_inner_product,
    reconstruct_pipelines,
    reconstruct_weights,
)
from diffusers_edm.training.train import main as train_main
from tiny_training import reset_accelerate_state, tiny_args

MAX_SIGMA_REL = math.sqrt(1 / 12)  # the uniform average, gamma = 0


def closed_form_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


# ------------------------------------------------------------------------------------------------ gamma <-> sigma_rel
@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0, 6.94, 16.97, 50.0, 400.0])
def test_gamma_and_sigma_rel_invert_each_other_against_the_closed_form(gamma):
    sigma_rel = closed_form_sigma_rel(gamma)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-12)
    recovered = sigma_rel_to_gamma(sigma_rel)
    assert recovered == pytest.approx(gamma, rel=1e-8)
    # it is a root of the cubic gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0
    s2 = sigma_rel**-2
    assert recovered**3 + 7 * recovered**2 + (16 - s2) * recovered + (12 - s2) == pytest.approx(0, abs=1e-6 * s2 * recovered)


def test_edm2_tracked_stds_have_the_published_exponents():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-3, max_value=MAX_SIGMA_REL * 0.999))
def test_every_std_in_range_maps_to_a_positive_gamma_with_that_std(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma > 0
    assert closed_form_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=MAX_SIGMA_REL), st.just(float("nan"))))
def test_a_std_outside_the_profiles_range_is_refused_by_name(sigma_rel):
    with pytest.raises(ValueError, match="relative EMA std must lie in") as error:
        sigma_rel_to_gamma(sigma_rel)
    assert repr(sigma_rel) in str(error.value) or str(sigma_rel) in str(error.value)


# ------------------------------------------------------------------------------------------------ per-step update
def test_each_step_updates_with_beta_of_the_images_seen_including_the_step():
    batch, gamma = 8, 6.94
    parameter = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ema = PowerFunctionEMAModel([parameter], gamma=gamma, batch_size=batch)
    expected = torch.full((3,), 123.0, dtype=torch.float64)  # anything: the first step must overwrite it
    generator = torch.Generator().manual_seed(0)
    for k in range(1, 30):
        with torch.no_grad():
            parameter.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
        ema.step([parameter])
        n_img = k * batch
        beta = (1 - batch / n_img) ** (gamma + 1)
        expected = beta * expected + (1 - beta) * parameter.detach()
        assert ema.cur_decay_value == pytest.approx(beta, rel=1e-12, abs=0)
        torch.testing.assert_close(ema.shadow_params[0], expected, rtol=1e-12, atol=1e-12)


def test_the_multi_std_ema_steps_every_profile_and_exposes_the_first():
    batch = 4
    parameter = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    ema = PowerFunctionEMA([parameter], [0.05, 0.10], batch)
    expected = [torch.zeros(2, dtype=torch.float64) for _ in range(2)]
    for k in range(1, 12):
        with torch.no_grad():
            parameter.copy_(torch.tensor([k**0.5, -k], dtype=torch.float64))
        ema.step([parameter])
        for i, std in enumerate((0.05, 0.10)):
            gamma = sigma_rel_to_gamma(std)
            beta = (1 - batch / (k * batch)) ** (gamma + 1)
            expected[i] = beta * expected[i] + (1 - beta) * parameter.detach()
            torch.testing.assert_close(ema.averages[i].shadow_params[0], expected[i], rtol=1e-12, atol=1e-12)
    target = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    ema.copy_to([target])
    torch.testing.assert_close(target.detach(), expected[0])


# ------------------------------------------------------------------------------------------------ the solve
@pytest.mark.parametrize("g_a, t_a, g_b, t_b", [(3.0, 100.0, 7.0, 160.0), (16.97, 320.0, 6.94, 200.0), (2.0, 50.0, 2.0, 50.0)])
def test_inner_product_is_the_integral_of_the_two_profiles(g_a, t_a, g_b, t_b):
    tau = np.linspace(0, max(t_a, t_b), 400_001)
    p_a = np.where(tau <= t_a, (g_a + 1) * tau**g_a / t_a ** (g_a + 1), 0.0)
    p_b = np.where(tau <= t_b, (g_b + 1) * tau**g_b / t_b ** (g_b + 1), 0.0)
    integral = np.trapezoid(p_a * p_b, tau)
    assert float(power_function_inner_product(g_a, t_a, g_b, t_b)) == pytest.approx(integral, rel=1e-4)


class Vector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))


def trajectory(k: int, steps: int) -> torch.Tensor:
    """A smooth, non-monotone trajectory of three weights over the run (step k of steps)."""
    x = k / steps
    return torch.tensor([math.exp(-3 * x) + 0.3 * math.cos(7 * x), 1 + math.sin(5 * x) ** 2, math.log1p(10 * x)],
                        dtype=torch.float64)


def track(directory: Path, stds: list[float], steps: int, batch: int, snapshot_every: int) -> PowerFunctionEMA:
    model = Vector()
    ema = PowerFunctionEMA(model.parameters(), stds, batch)
    writer = EMASnapshotWriter(directory, ema, model, snapshot_every * batch, metadata={})
    for k in range(1, steps + 1):
        with torch.no_grad():
            model.theta.copy_(trajectory(k, steps))
        ema.step(model.parameters())
        writer.after_step(k)
    return ema


def test_a_trajectory_tracked_at_the_target_std_is_matched_by_the_reconstruction_from_two_other_stds(tmp_path):
    steps, batch = 400, 8
    track(tmp_path, [0.05, 0.10], steps, batch, snapshot_every=20)
    snapshots = list_snapshots(tmp_path)
    assert len(snapshots) == 2 * steps // 20 and {s.std for s in snapshots} == {0.05, 0.10}
    for target in (0.07, 0.13):
        direct = track(tmp_path / f"direct-{target}", [target], steps, batch, snapshot_every=10**9)
        (plan,) = plan_reconstruction(snapshots, [target])
        (weights,) = reconstruct_weights([plan])
        expected = direct.averages[0].shadow_params[0]
        relative = ((weights["theta"] - expected).abs() / expected.abs()).max()
        assert relative < 1e-3, (target, float(relative))
        assert plan.n_img == steps * batch and plan.coefficients.sum() == pytest.approx(1.0)


def test_a_tracked_std_reconstructs_to_its_own_last_snapshot(tmp_path):
    track(tmp_path, [0.05, 0.10], 100, 4, snapshot_every=10)
    snapshots = list_snapshots(tmp_path)
    (plan,) = plan_reconstruction(snapshots, [0.10])
    (weights,) = reconstruct_weights([plan])
    last = load_file(str(next(s.path for s in snapshots if s.std == 0.10 and s.n_img == 400)))
    torch.testing.assert_close(weights["theta"], last["theta"], rtol=1e-9, atol=1e-9)


def test_at_kimg_uses_only_the_snapshots_up_to_then(tmp_path):
    track(tmp_path, [0.05, 0.10], 100, 4, snapshot_every=10)  # snapshots at 40, 80, ..., 400 images
    (plan,) = plan_reconstruction(list_snapshots(tmp_path), [0.10], at_kimg=0.21)
    assert plan.n_img == 200 and max(s.n_img for s in plan.snapshots) == 200 and len(plan.snapshots) == 10


# ------------------------------------------------------------------------------------------------ errors
def test_no_snapshots_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No EMA snapshots"):
        plan_reconstruction(list_snapshots(tmp_path), [0.07])


def test_unsupported_stds_and_times_are_refused_by_name(tmp_path):
    track(tmp_path, [0.05, 0.10], 40, 4, snapshot_every=10)  # 4 snapshots per std
    snapshots = list_snapshots(tmp_path)
    with pytest.raises(ValueError, match=r"std 0\.3: .*must lie in"):
        plan_reconstruction(snapshots, [0.3])
    with pytest.raises(ValueError, match=r"std 0\.25 cannot be reconstructed .* support stds of about"):
        plan_reconstruction(snapshots, [0.25])
    with pytest.raises(ValueError, match=r"std 0\.005 cannot be reconstructed"):
        plan_reconstruction(snapshots, [0.005])
    with pytest.raises(ValueError, match=r"at_kimg=0\.01 .* before the first snapshot \(40 images"):
        plan_reconstruction(snapshots, [0.07], at_kimg=0.01)
    with pytest.raises(ValueError, match="at_kimg must be finite"):
        plan_reconstruction(snapshots, [0.07], at_kimg=-1.0)


def test_the_cli_reports_errors_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="error: No EMA snapshots"):
        posthoc_main(["--run_dir", str(tmp_path), "--std", "0.07", "--output_dir", str(tmp_path / "out")])


@pytest.mark.parametrize("extra, message", [
    (["--ema_stds", "0.05,0.1"], "--ema_stds applies to --ema_type power only"),
    (["--ema_snapshot_kimg", "1"], "--ema_snapshot_kimg applies to --ema_type power only"),
    (["--ema_type", "power", "--ema_stds", "0.05,0.4"], r"--ema_stds: .*got 0\.4"),
    (["--ema_type", "power", "--ema_stds", "0.0501,0.0502"], "must differ at 3 decimals"),
    (["--ema_type", "power", "--ema_snapshot_kimg", "0"], "--ema_snapshot_kimg must be"),
    (["--ema_type", "power", "--task", "classifier", "--label_column", "label"], "--task classifier keeps --ema_type edm"),
])
def test_bad_ema_arguments_are_refused(tmp_path, tiny_config, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(tiny_args(tmp_path / "run", tiny_config, *extra))


def test_power_ema_defaults_to_edm2s_stds(tmp_path, tiny_config):
    args = parse_args(tiny_args(tmp_path / "run", tiny_config, "--ema_type", "power"))
    assert args.ema_stds == [0.05, 0.10] and args.ema_snapshot_kimg is None


# ------------------------------------------------------------------------------------------------ training runs
POWER = ("--ema_type", "power", "--ema_snapshot_kimg", "0.016", "--checkpointing_steps", "4", "--validation_steps", "1000",
         "--num_validation_images", "2", "--sample_steps", "2", "--label_column", "label", "--lr_rampup_kimg", "0")


def train(run: Path, config: Path, *extra: str):
    reset_accelerate_state()
    try:
        return train_main(tiny_args(run, config, *POWER, *extra))
    finally:
        reset_accelerate_state()


def snapshot_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "ema_snapshots").iterdir())}


def test_a_resumed_run_ends_with_byte_identical_snapshots_and_nothing_stale(tmp_path, tiny_config):
    straight = tmp_path / "straight"
    train(straight, tiny_config, "--max_train_steps", "8")
    expected = snapshot_bytes(straight)
    # batch 8, a snapshot every 16 images: steps 2, 4, 6, 8, two stds
    assert sorted(expected) == [f"ema-{s}-{n:09d}.safetensors" for s in ("0.050", "0.100") for n in (16, 32, 48, 64)]

    interrupted = tmp_path / "interrupted"
    train(interrupted, tiny_config, "--max_train_steps", "6")  # checkpoint-4, snapshots up to step 6
    snapshots = interrupted / "ema_snapshots"
    # What a kill after step 6 (or a crash while writing) can leave behind, newer than checkpoint-4:
    (snapshots / "ema-0.050-000000048.safetensors").write_bytes(b"half-written")
    (snapshots / "ema-0.100-000000056.safetensors").write_bytes(expected["ema-0.100-000000048.safetensors"])
    (snapshots / ".ema-0.050-000000064.safetensors.incomplete").write_bytes(b"partial")
    train(interrupted, tiny_config, "--max_train_steps", "8", "--resume_from_checkpoint", "latest")
    assert snapshot_bytes(interrupted) == expected


def test_reconstructed_pipelines_load_their_cards_run_and_a_tracked_std_gives_its_snapshot(tmp_path, tiny_config):
    run = tmp_path / "run"
    result = train(run, tiny_config, "--max_train_steps", "8")
    snapshots = list_snapshots(run)
    last_050 = load_file(str(next(s.path for s in snapshots if s.std == 0.05 and s.n_img == 64)))
    # The training export of a power-EMA run is the first std's EMA, i.e. its last snapshot here.
    exported = load_file(str(run / "denoiser" / "diffusion_pytorch_model.safetensors"))
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, last_050[name], rtol=0, atol=0)
    assert isinstance(result.ema, PowerFunctionEMA)

    reset_accelerate_state()
    written = reconstruct_pipelines(run, [0.05, 0.07], tmp_path / "out")
    reset_accelerate_state()
    assert [p.name for p in written] == ["std-0.050", "std-0.070"]
    for directory in written:
        assert {"model_index.json", "denoiser", "scheduler", "README.md", "samples.png"} <= {p.name for p in directory.iterdir()}
        pipeline = EDMPipeline.from_pretrained(directory)
        assert pipeline.denoiser.config.num_classes == 10
    # Reconstructing a tracked std at the last snapshot gives that snapshot (the least-squares solution is exact).
    reconstructed = load_file(str(written[0] / "denoiser" / "diffusion_pytorch_model.safetensors"))
    for name, tensor in reconstructed.items():
        torch.testing.assert_close(tensor, last_050[name], rtol=1e-5, atol=1e-6)

    card = (written[1] / "README.md").read_text()
    assert "relative std **0.070**" in card and "at 64" in card
    for snapshot in snapshots:
        assert snapshot.path.name in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "model card example", "exec"), namespace)
    assert len(namespace["images"]) >= 1


def test_the_cli_writes_one_pipeline_per_std(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    train(run, tiny_config, "--max_train_steps", "4")
    # The reconstruction needs only the snapshots and training_args.json: not the checkpoints, nor the
    # --backbone_config file (its keys are stored with the snapshots).
    shutil.rmtree(run / "checkpoint-4")
    tiny_config.unlink()
    reset_accelerate_state()
    written = posthoc_main(["--run_dir", str(run), "--std", "0.06", "0.08", "--at_kimg", "0.02", "--output_dir", str(tmp_path / "out")])
    reset_accelerate_state()
    assert [p.name for p in written] == ["std-0.060", "std-0.080"]
    info = json.loads((written[0] / "posthoc_ema.json").read_text())
    assert info["n_img"] == 16 and [s["n_img"] for s in info["snapshots"]] == [16, 16]
    assert "std 0.060 at 16 images from 2 snapshots" in capsys.readouterr().out
