"""Timestep samplers: uniform, loss-second-moment (Nichol & Dhariwal 2021, section 3.3), checkpointing, two processes."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_edm.training import (
    LossSecondMomentTimestepSampler,
    UniformTimestepSampler,
    create_timestep_sampler,
)
from accelerate_launch import free_port


def reference_probabilities(events: list[tuple[int, float]], T: int, history: int = 10, uniform_prob: float = 0.001) -> np.ndarray:
    """Keep the last `history` losses per t; uniform until all full; then sqrt(mean L^2), normalized, mixed."""
    per_t: dict[int, list[float]] = {t: [] for t in range(T)}
    for t, loss in events:
        per_t[t] = (per_t[t] + [loss])[-history:]
    if any(len(values) < history for values in per_t.values()):
        return np.full(T, 1.0 / T)
    raw = np.array([np.sqrt(np.mean(np.square(per_t[t]))) for t in range(T)])
    return (1 - uniform_prob) * raw / raw.sum() + uniform_prob / T


def sequential_histories(batches: list[list[tuple[int, float]]], T: int, history: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule one loss at a time, in order: a full history drops its oldest entry, otherwise the loss is appended.

    Returned as the sampler stores it: histories left-aligned in a (T, history) array (zeros after the count).
    """
    per_t: dict[int, list[float]] = {t: [] for t in range(T)}
    for batch in batches:
        for t, loss in batch:
            if len(per_t[t]) == history:
                per_t[t].pop(0)
            per_t[t].append(loss)
    table = np.zeros((T, history))
    for t, values in per_t.items():
        table[t, : len(values)] = values
    return table, np.array([len(per_t[t]) for t in range(T)])


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 5),
    history=st.integers(1, 4),
    batches=st.lists(st.lists(st.tuples(st.integers(0, 4), st.floats(0, 100)), min_size=0, max_size=12), max_size=6),
)
def test_batched_history_update_equals_one_by_one_appends(T, history, batches):
    """Duplicated timesteps in one batch, batches longer than the history: the vectorised update keeps the same losses."""
    batches = [[(t % T, loss) for t, loss in batch] for batch in batches]
    sampler = LossSecondMomentTimestepSampler(T, history_per_term=history)
    for batch in batches:
        timesteps = torch.tensor([t for t, _ in batch], dtype=torch.int64)
        losses = torch.tensor([loss for _, loss in batch], dtype=torch.float64)
        sampler.update_with_all_losses(timesteps, losses)
    expected_history, expected_counts = sequential_histories(batches, T, history)
    np.testing.assert_array_equal(sampler.loss_history.numpy(), expected_history)
    np.testing.assert_array_equal(sampler.loss_counts.numpy(), expected_counts)


def test_uniform_sampler():
    sampler = create_timestep_sampler("uniform", 7)
    assert isinstance(sampler, UniformTimestepSampler)
    timesteps, weights = sampler.sample(100, generator=torch.Generator().manual_seed(0))
    assert timesteps.min() >= 0 and timesteps.max() < 7 and torch.all(weights == 1)


def test_loss_second_moment_warm_up_and_weights():
    T = 5
    sampler = create_timestep_sampler("loss-second-moment", T)
    rng = np.random.default_rng(0)
    events = []
    for round_ in range(12):
        timesteps = np.arange(T) if round_ < 10 else rng.integers(0, T, 4)
        losses = rng.random(len(timesteps)) * (1 + timesteps) ** 2
        if round_ < 9:
            assert not sampler.is_warmed_up()
        sampler.update_with_local_losses(torch.from_numpy(timesteps), torch.from_numpy(losses))
        events += list(zip(timesteps.tolist(), losses.tolist()))
        if round_ == 8:  # nine losses per t: still uniform
            np.testing.assert_allclose(sampler.probabilities().numpy(), np.full(T, 1 / T))
    assert sampler.is_warmed_up()
    expected = reference_probabilities(events, T)
    assert not np.allclose(expected, 1 / T)
    np.testing.assert_allclose(sampler.probabilities().numpy(), expected, rtol=1e-12)
    timesteps, weights = sampler.sample(64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(weights.numpy(), 1 / (T * expected[timesteps.numpy()]), rtol=1e-6)
    # the importance weights make the estimate unbiased: sum_t p_t w_t L_t = mean_t L_t
    assert float((sampler.probabilities() * (1 / (T * sampler.probabilities()))).sum()) == pytest.approx(1.0)


def test_state_dict_and_accelerate_checkpoint(tmp_path):
    sampler = LossSecondMomentTimestepSampler(4, history_per_term=2)
    sampler.update_with_all_losses(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2]), torch.arange(9.0))
    accelerator = Accelerator(cpu=True)
    accelerator.register_for_checkpointing(sampler)
    accelerator.save_state(str(tmp_path / "checkpoint"))
    saved_history = sampler.loss_history.clone()
    sampler.update_with_all_losses(torch.tensor([1]), torch.tensor([100.0]))
    accelerator.load_state(str(tmp_path / "checkpoint"))
    assert torch.equal(sampler.loss_history, saved_history)
    assert sampler.loss_history[2].tolist() == [6.0, 8.0]  # oldest of t=2 dropped
    other = LossSecondMomentTimestepSampler(4, history_per_term=2)
    other.load_state_dict(sampler.state_dict())
    assert torch.equal(other.probabilities(), sampler.probabilities())
    with pytest.raises(ValueError, match="num_timesteps=4"):
        LossSecondMomentTimestepSampler(5, history_per_term=2).load_state_dict(sampler.state_dict())


def test_bad_sampler_inputs():
    with pytest.raises(ValueError, match="importance"):
        create_timestep_sampler("importance", 10)
    with pytest.raises(ValueError, match="0 .. 3"):
        LossSecondMomentTimestepSampler(4).update_with_all_losses(torch.tensor([4]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="uniform_prob"):
        LossSecondMomentTimestepSampler(4, uniform_prob=2.0)


def test_two_processes_share_the_same_state(tmp_path):
    script = Path(__file__).with_name("multiprocess_resampler_script.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(script), str(tmp_path),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for key in ("loss_history", "loss_counts"):
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key])
    assert torch.equal(ranks[0]["probabilities"], ranks[1]["probabilities"])
    # both ranks hold the losses of both ranks, recorded in rank order at each update
    events = []
    for (t0, l0), (t1, l1) in zip(ranks[0]["local_batches"], ranks[1]["local_batches"]):
        events += list(zip(torch.cat([t0, t1]).tolist(), torch.cat([l0, l1]).tolist()))
    expected = reference_probabilities(events, 8)
    assert not np.allclose(expected, 1 / 8)  # warmed up
    np.testing.assert_allclose(ranks[0]["probabilities"].numpy(), expected, rtol=1e-12)
