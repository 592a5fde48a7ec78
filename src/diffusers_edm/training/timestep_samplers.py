"""Samplers of training timesteps: uniform, and Improved DDPM's importance sampling by the loss second moment.

A sampler returns timesteps and the weights that keep the loss estimate unbiased,
``E_{t ~ p}[w_t L_t] = E_{t ~ U}[L_t]`` with ``w_t = 1 / (T p_t)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from accelerate import Accelerator

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


class TimestepSampler(ABC):
    """A distribution ``p_t`` over the ``num_timesteps`` training timesteps."""

    def __init__(self, num_timesteps: int):
        if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")
        self.num_timesteps = num_timesteps

    @abstractmethod
    def probabilities(self) -> torch.Tensor:
        """``p_t`` for t = 0 .. T-1, float64, summing to 1."""

    def sample(
        self, batch_size: int, device: str | torch.device | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` timesteps ``t ~ p`` (int64) and their weights ``1 / (T p_t)`` (float32), on ``device``."""
        probabilities = self.probabilities()
        timesteps = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * probabilities[timesteps])
        return timesteps.to(device), weights.to(device=device, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """What a training checkpoint must keep (Accelerate's ``register_for_checkpointing``): nothing, by default."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a stateless sampler has nothing to restore."""


class UniformTimestepSampler(TimestepSampler):
    """``p_t = 1 / T``; every weight is 1."""

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)


class LossSecondMomentTimestepSampler(TimestepSampler):
    """Importance sampling by ``p_t ∝ sqrt(mean(L_t^2))`` over the last ``history_per_term`` losses of each t.

    Until every t has ``history_per_term`` losses the distribution is uniform; afterwards it is mixed with
    ``uniform_prob`` of the uniform one: ``p = (1 - uniform_prob) * p_raw + uniform_prob / T``.
    Feed it the per-example vlb terms with :meth:`update_with_local_losses` after each step; in multi-process
    training every rank passes its ``accelerator`` so that all ranks record the same losses in the same order and
    sample from the same distribution. Register it with ``accelerator.register_for_checkpointing(sampler)`` so that
    ``save_state`` / ``load_state`` keep its history.
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if not isinstance(history_per_term, int) or history_per_term < 1:
            raise ValueError(f"history_per_term must be a positive integer, got {history_per_term!r}.")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob!r}.")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.int64)

    def is_warmed_up(self) -> bool:
        """Whether every timestep has a full loss history."""
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> torch.Tensor:
        if not self.is_warmed_up():
            return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        raw = torch.sqrt((self.loss_history**2).mean(dim=-1))
        raw = raw / raw.sum()
        return raw * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update_with_all_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses of all processes, in order: per t, append to the history, dropping the oldest when full."""
        timesteps = torch.as_tensor(timesteps).detach().cpu().reshape(-1).to(torch.int64)
        losses = torch.as_tensor(losses).detach().cpu().reshape(-1).to(torch.float64)
        if timesteps.shape != losses.shape:
            raise ValueError(f"Need one loss per timestep, got {timesteps.numel()} timesteps and {losses.numel()} losses.")
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in 0 .. {self.num_timesteps - 1}, got {timesteps.tolist()}.")
        for t, loss in zip(timesteps.tolist(), losses.tolist()):
            if self.loss_counts[t] == self.history_per_term:
                self.loss_history[t, :-1] = self.loss_history[t, 1:].clone()
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def update_with_local_losses(
        self, timesteps: torch.Tensor, losses: torch.Tensor, accelerator: Accelerator | None = None
    ) -> None:
        """Gather this process's ``(timesteps, losses)`` from every process (rank order) and record them all.

        Batches may differ in size between processes: they are padded to the largest for the gather and cut back.
        Every process must call this (it is a collective operation when ``accelerator`` has several processes).
        """
        timesteps = torch.as_tensor(timesteps).detach().reshape(-1).to(torch.int64)
        losses = torch.as_tensor(losses).detach().reshape(-1).to(torch.float64)
        if accelerator is None or accelerator.num_processes == 1:
            self.update_with_all_losses(timesteps, losses)
            return
        device = accelerator.device
        timesteps, losses = timesteps.to(device), losses.to(device)
        sizes = accelerator.gather(torch.tensor([timesteps.numel()], device=device)).cpu().tolist()
        all_timesteps = accelerator.gather(accelerator.pad_across_processes(timesteps, dim=0)).cpu()
        all_losses = accelerator.gather(accelerator.pad_across_processes(losses, dim=0)).cpu()
        padded = max(sizes)
        keep = torch.cat([torch.arange(rank * padded, rank * padded + size) for rank, size in enumerate(sizes)])
        self.update_with_all_losses(all_timesteps[keep], all_losses[keep])

    def state_dict(self) -> dict[str, Any]:
        """History, counts and settings (tensors and ints only, so ``torch.load(weights_only=True)`` reads it)."""
        return {
            "num_timesteps": self.num_timesteps,
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
            "loss_history": self.loss_history.clone(),
            "loss_counts": self.loss_counts.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the timestep count and history length must match this sampler's."""
        for key in ("num_timesteps", "history_per_term"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(f"Saved sampler has {key}={state_dict[key]}, this one has {getattr(self, key)}.")
        self.uniform_prob = float(state_dict["uniform_prob"])
        self.loss_history = state_dict["loss_history"].detach().cpu().to(torch.float64).clone()
        self.loss_counts = state_dict["loss_counts"].detach().cpu().to(torch.int64).clone()


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """``"uniform"`` or ``"loss-second-moment"`` (defaults: history 10, uniform mix 0.001)."""
    if name == "uniform":
        return UniformTimestepSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentTimestepSampler(num_timesteps)
    raise ValueError(f"Unknown timestep sampler {name!r}; expected one of {TIMESTEP_SAMPLERS}.")
