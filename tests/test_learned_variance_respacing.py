"""Respacing (REFERENCE.md section 4): kept timesteps and recomputed betas / posterior tables."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

import learned_variance_reference as ref
from diffusers_edm.gaussian_diffusion import space_timesteps
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler

T = 1000


def sections_expected(T: int, counts: list[int]) -> list[int]:
    """'a,b,c': T cut into len(counts) near-equal consecutive sections, each strided to its count."""
    sizes = [T // len(counts) + (1 if i < T % len(counts) else 0) for i in range(len(counts))]
    kept, start = [], 0
    for size, count in zip(sizes, counts):
        kept += [start + round(j * (size - 1) / (count - 1)) for j in range(count)]
        start += size
    return kept


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("ddim25", list(range(0, 1000, 40))),
        ("10,15,20", sections_expected(1000, [10, 15, 20])),
        (50, [round(j * 999 / 49) for j in range(50)]),
    ],
)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_respaced_timesteps_betas_and_posterior(spacing, expected, beta_schedule):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule)
    scheduler.set_timesteps(spacing)
    # the sections of "10,15,20" are 334, 333, 333 long; spot-check the hand-derived boundaries
    if spacing == "10,15,20":
        assert expected[:3] == [0, 37, 74] and expected[9] == 333 and expected[10] == 334 and expected[-1] == 999
    assert scheduler.timesteps.tolist() == expected[::-1]
    assert scheduler.num_inference_steps == len(expected)

    full = ref.linear_betas(T) if beta_schedule == "linear" else ref.cosine_betas(T)
    new_betas = ref.respaced_betas(full, expected)
    np.testing.assert_allclose(scheduler.diffusion.betas, new_betas, rtol=1e-12)
    tab = ref.tables(new_betas)
    np.testing.assert_allclose(scheduler.diffusion.posterior_variance, tab["beta_tilde"], rtol=1e-10)
    np.testing.assert_allclose(scheduler.diffusion.posterior_log_variance_clipped, tab["log_clipped"], rtol=1e-10)
    np.testing.assert_allclose(scheduler.diffusion.posterior_mean_coef1, tab["coef1"], rtol=1e-10)
    np.testing.assert_allclose(scheduler.diffusion.posterior_mean_coef2, tab["coef2"], rtol=1e-10)
    # the kept steps keep their alpha_bar
    np.testing.assert_allclose(scheduler.diffusion.alphas_cumprod, ref.alpha_bars(full)[expected], rtol=1e-10)


def test_explicit_timesteps_and_full_spacing():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(timesteps=[19, 3, 0, 10])
    assert scheduler.timesteps.tolist() == [19, 10, 3, 0]
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(19, -1, -1))
    np.testing.assert_allclose(scheduler.diffusion.betas, ref.cosine_betas(20), rtol=1e-10)


@pytest.mark.parametrize(
    "spacing, message",
    [
        ("ddim300", "no integer stride"),
        ("ddim2000", "2000"),
        ("ddimx", "ddimx"),
        ("10,abc", "10,abc"),
        ("10,0", "10,0"),
        ("600,600", "600,600"),
        (1001, "1001"),
        (0, "0"),
        (2.5, "2.5"),
    ],
)
def test_bad_spacings(spacing, message):
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=T)
    with pytest.raises(ValueError, match=message):
        scheduler.set_timesteps(spacing)


def test_space_timesteps_section_larger_than_section_size():
    with pytest.raises(ValueError, match="section 1 holds 5"):
        space_timesteps(10, [1, 6])


def test_bad_explicit_timesteps():
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="0 .. 19"):
        scheduler.set_timesteps(timesteps=[5, 20])
    with pytest.raises(ValueError, match="exactly one"):
        scheduler.set_timesteps(5, timesteps=[1, 2])
