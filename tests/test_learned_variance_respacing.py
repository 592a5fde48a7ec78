"""Respacing (Nichol & Dhariwal 2021, section 4): kept timesteps and recomputed betas / posterior tables."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random
from itertools import accumulate, repeat

import numpy as np
import pytest

import learned_variance_reference as ref
from diffusers_edm.gaussian_diffusion import space_timesteps
from diffusers_edm.schedulers.scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler

T = 1000


def iddpm_space_timesteps(T: int, section_counts: str | list[int]) -> np.ndarray:
    """Improved DDPM's respacing as its ``space_timesteps`` states it, as a sorted array.

    "ddimK": the first stride s = 1, 2, ..., T-1 for which range(0, T, s) has K entries (ValueError if none).
    "a,b,c" / counts: T cut into len(counts) consecutive sections, the first T % len(counts) one longer; a section of
    size n keeps start + round(cur) while cur runs 0, frac, frac + frac, ... (frac = (n - 1) / (count - 1), 1 for
    count 1): a running sum of Python floats, rounded half to even.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, T):
                if len(range(0, T, stride)) == desired:
                    return np.arange(0, T, stride)
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(T, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # cur_idx = 0.0, then cur_idx += frac_stride after each kept step: itertools.accumulate adds in that order
        running_sum = np.fromiter(accumulate(repeat(frac_stride, count - 1), initial=0.0), dtype=np.float64, count=count)
        steps.append(start + np.rint(running_sum).astype(np.int64))  # rint: half to even, as Python's round
        start += size
    kept = np.sort(np.concatenate(steps))
    return kept[np.concatenate(([True], kept[1:] != kept[:-1]))]  # as a set: each timestep once


def ddim_strides(T: int) -> dict[int, int]:
    """For each reachable K, the first stride in 1 .. T-1 whose range(0, T, stride) has K entries."""
    first: dict[int, int] = {}
    for stride in range(1, T):
        first.setdefault(len(range(0, T, stride)), stride)
    return first


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("ddim25", list(range(0, 1000, 40))),
        ("10,15,20", iddpm_space_timesteps(1000, "10,15,20").tolist()),
        (50, iddpm_space_timesteps(1000, [50]).tolist()),
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


def test_running_sum_not_multiples_of_the_stride():
    """T = 1000, K = 21: the stride 49.95 accumulated ten times is 499.49999999999994 and rounds to 499, where
    10 * 49.95 = 499.5 would round (half to even) to 500."""
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(21)
    kept = scheduler.timesteps.tolist()[::-1]
    assert kept[10] == 499 and 500 not in kept
    assert kept == iddpm_space_timesteps(1000, "21").tolist()


@pytest.mark.parametrize("T", [50, 100, 1000, 4000])
def test_space_timesteps_equals_improved_ddpm_for_every_step_count(T):
    """Every K = 1 .. T as an int, as the string "K" and as "ddimK", and a sample of multi-section strings."""
    for K in range(1, T + 1):
        expected = iddpm_space_timesteps(T, [K])
        expected = expected.tolist()
        assert space_timesteps(T, K) == expected, K
        if K % 7 == 0 or K < 30:
            assert space_timesteps(T, str(K)) == expected, K

    strides = ddim_strides(T)
    for K in range(1, T + 1):
        if K in strides:
            assert space_timesteps(T, f"ddim{K}") == list(range(0, T, strides[K])), K
        else:
            with pytest.raises(ValueError) as error:
                space_timesteps(T, f"ddim{K}")
            assert f"'ddim{K}'" in str(error.value)

    rng = random.Random(T)
    for _ in range(60):
        sections = rng.randint(2, 6)
        size = T // sections
        counts = ",".join(str(rng.randint(1, size)) for _ in range(sections))
        assert space_timesteps(T, counts) == iddpm_space_timesteps(T, counts).tolist(), counts


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
