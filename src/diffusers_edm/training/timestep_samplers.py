"""Samplers of training timesteps: uniform, and Improved DDPM's importance sampling by the loss second moment.

A sampler returns timesteps and the weights that keep the loss estimate unbiased,
``E_{t ~ p}[w_t L_t] = E_{t ~ U}[L_t]`` with ``w_t = 1 / (T p_t)`` (Nichol & Dhariwal 2021, section 3.3).
Drawing and recording happen on the device of the sampler's state (:meth:`LossSecondMomentTimestepSampler.to`),
without host synchronisation, so a training step never waits for the device.
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
        """``batch_size`` timesteps ``t ~ p`` (int64) and their weights ``1 / (T p_t)`` (float32), on ``device``.

        Drawn by inverting the cumulative distribution on the device of :meth:`probabilities`: ``t`` is the first
        index whose cumulative probability exceeds ``u * sum(p)``, ``u ~ U[0, 1)`` (float64). ``generator`` must
        live on that device.
        """
        probabilities = self.probabilities()
        cumulative = probabilities.cumsum(0)
        u = torch.rand(batch_size, generator=generator, device=cumulative.device, dtype=torch.float64)
        timesteps = torch.searchsorted(cumulative, u * cumulative[-1], right=True).clamp_(max=self.num_timesteps - 1)
        weights = 1.0 / (self.num_timesteps * probabilities[timesteps])
        return timesteps.to(device), weights.to(device=device, dtype=torch.float32)

    def to(self, device: str | torch.device) -> "TimestepSampler":
        """Move the sampler's state to ``device`` (a stateless sampler has none); returns the sampler."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """What a training checkpoint must keep (tensors and plain numbers only): nothing, by default."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a stateless sampler has nothing to restore."""


class UniformTimestepSampler(TimestepSampler):
    """``p_t = 1 / T``; every weight is 1."""

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(
        self, batch_size: int, device: str | torch.device | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` timesteps drawn uniformly on ``device`` (``torch.randint``) and weights 1."""
        timesteps = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)
        return timesteps, torch.ones(batch_size, device=device)


class LossSecondMomentTimestepSampler(TimestepSampler):
    """Importance sampling by ``p_t ∝ sqrt(mean(L_t^2))`` over the last ``history_per_term`` losses of each t.

    Until every t has ``history_per_term`` losses the distribution is uniform; afterwards it is mixed with
    ``uniform_prob`` of the uniform one: ``p = (1 - uniform_prob) * p_raw + uniform_prob / T``
    (Nichol & Dhariwal 2021, section 3.3).
    Feed it the per-example vlb terms with :meth:`update_with_local_losses` after each step; in multi-process
    training every rank passes its ``accelerator`` so that all ranks record the same losses in the same order and
    sample from the same distribution. Save :meth:`state_dict` with each checkpoint (the training script stores it
    as safetensors + JSON) so that a resumed run keeps its history, and move it to the training device with :meth:`to`: its
    history then stays there, and sampling and recording never synchronise with the host.
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

    @property
    def device(self) -> torch.device:
        """Where the loss history lives (and where timesteps are drawn)."""
        return self.loss_history.device

    def to(self, device: str | torch.device) -> "LossSecondMomentTimestepSampler":
        """Move the loss history to ``device``; returns the sampler."""
        self.loss_history = self.loss_history.to(device)
        self.loss_counts = self.loss_counts.to(device)
        return self

    def _warmed_up(self) -> torch.Tensor:
        return (self.loss_counts == self.history_per_term).all()

    def is_warmed_up(self) -> bool:
        """Whether every timestep has a full loss history (reads the device: not for a training step)."""
        return bool(self._warmed_up())

    def probabilities(self) -> torch.Tensor:
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64, device=self.device)
        raw = torch.sqrt((self.loss_history**2).mean(dim=-1))
        total = raw.sum()
        mixed = raw / total * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        # Chosen on the device (no host branch); an all-zero history stays uniform instead of dividing by zero.
        return torch.where(self._warmed_up() & (total > 0), mixed, uniform)

    def update_with_all_losses(self, timesteps: torch.Tensor, losses: torch.Tensor, *, validate: bool = True) -> None:
        """Record the losses of all processes, in order: per t, append to the history, dropping the oldest when full.

        The batch is recorded at once, exactly as one-by-one appends in batch order would (a timestep that occurs
        several times keeps its last ``history_per_term`` losses, in order). ``validate`` checks that every
        timestep lies in ``0 .. T-1`` (one host synchronisation); the training loop, whose timesteps come from
        :meth:`sample`, turns it off.
        """
        timesteps = torch.as_tensor(timesteps).detach().reshape(-1).to(device=self.device, dtype=torch.int64)
        losses = torch.as_tensor(losses).detach().reshape(-1).to(device=self.device, dtype=torch.float64)
        if timesteps.shape != losses.shape:
            raise ValueError(f"Need one loss per timestep, got {timesteps.numel()} timesteps and {losses.numel()} losses.")
        if validate and timesteps.numel() and bool(((timesteps < 0) | (timesteps >= self.num_timesteps)).any()):
            raise ValueError(f"timesteps must lie in 0 .. {self.num_timesteps - 1}, got {timesteps.tolist()}.")
        if timesteps.numel():
            self._record(timesteps, losses)

    def _record(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Append ``losses`` to the histories of ``timesteps`` (both 1-D, on the sampler's device), as if one by one.

        For each t, the old history followed by the batch's losses of t (in batch order) is one sequence of length
        ``L_t = count_t + n_t``; the new history is its last ``min(L_t, H)`` entries, i.e. the sequence shifted left
        by ``shift_t = max(L_t - H, 0)``. Old entry ``j`` moves to ``j - shift_t``; the batch's ``r``-th loss of t goes
        to ``count_t + r - shift_t``; whatever lands below 0 is dropped.
        """
        T, H = self.num_timesteps, self.history_per_term
        batch = timesteps.shape[0]
        device = timesteps.device
        occurrences = torch.zeros(T, dtype=torch.int64, device=device).index_add_(0, timesteps, torch.ones_like(timesteps))
        # r_i: how many earlier batch entries have the same timestep (a stable sort keeps batch order within each t)
        order = torch.sort(timesteps, stable=True).indices
        first_in_order = occurrences.cumsum(0) - occurrences
        rank_in_order = torch.arange(batch, device=device) - first_in_order[timesteps[order]]
        rank = torch.empty_like(rank_in_order).scatter_(0, order, rank_in_order)

        length = self.loss_counts + occurrences
        shift = (length - H).clamp_(min=0)
        source = (torch.arange(H, device=device)[None, :] + shift[:, None]).clamp_(max=H - 1)
        history = self.loss_history.gather(1, source)  # old entries moved left; the rest is overwritten below
        destination = self.loss_counts[timesteps] + rank - shift[timesteps]
        # Dropped losses (destination < 0) are written to one spare slot past the end instead of being filtered out,
        # which would need their number on the host.
        slot = torch.where(destination >= 0, timesteps * H + destination, torch.full_like(destination, T * H))
        flat = torch.cat([history.reshape(-1), history.new_zeros(1)]).scatter_(0, slot, losses)
        self.loss_history = flat[:-1].reshape(T, H)
        self.loss_counts = length.clamp_(max=H)

    def update_with_local_losses(
        self,
        timesteps: torch.Tensor,
        losses: torch.Tensor,
        accelerator: Accelerator | None = None,
        *,
        equal_batch_sizes: bool = False,
        validate: bool = True,
    ) -> None:
        """Gather this process's ``(timesteps, losses)`` from every process (rank order) and record them all.

        Batches may differ in size between processes: they are padded to the largest for the gather and cut back,
        which needs the sizes on the host. ``equal_batch_sizes=True`` promises the same size on every process (a
        training loop with ``drop_last``) and skips that exchange; with ``validate=False`` as well (timesteps from
        :meth:`sample`) nothing synchronises with the host. Every process must call this (it is a collective
        operation when ``accelerator`` has several processes).
        """
        timesteps = torch.as_tensor(timesteps).detach().reshape(-1).to(torch.int64)
        losses = torch.as_tensor(losses).detach().reshape(-1).to(torch.float64)
        if accelerator is None or accelerator.num_processes == 1:
            self.update_with_all_losses(timesteps, losses, validate=validate)
            return
        device = accelerator.device
        timesteps, losses = timesteps.to(device), losses.to(device)
        if equal_batch_sizes:
            self.update_with_all_losses(accelerator.gather(timesteps), accelerator.gather(losses), validate=validate)
            return
        sizes = accelerator.gather(torch.tensor([timesteps.numel()], device=device)).cpu().tolist()
        all_timesteps = accelerator.gather(accelerator.pad_across_processes(timesteps, dim=0))
        all_losses = accelerator.gather(accelerator.pad_across_processes(losses, dim=0))
        padded = max(sizes)
        keep = torch.cat([torch.arange(rank * padded, rank * padded + size) for rank, size in enumerate(sizes)])
        keep = keep.to(all_timesteps.device)
        self.update_with_all_losses(all_timesteps[keep], all_losses[keep], validate=validate)

    def state_dict(self) -> dict[str, Any]:
        """History, counts and settings (CPU tensors and numbers, so ``torch.load(weights_only=True)`` reads it)."""
        return {
            "num_timesteps": self.num_timesteps,
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
            "loss_history": self.loss_history.detach().cpu().clone(),
            "loss_counts": self.loss_counts.detach().cpu().clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` onto this sampler's device; the timestep count and history length must match."""
        for key in ("num_timesteps", "history_per_term"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(f"Saved sampler has {key}={state_dict[key]}, this one has {getattr(self, key)}.")
        self.uniform_prob = float(state_dict["uniform_prob"])
        self.loss_history = torch.as_tensor(state_dict["loss_history"]).detach().to(self.device, torch.float64).clone()
        self.loss_counts = torch.as_tensor(state_dict["loss_counts"]).detach().to(self.device, torch.int64).clone()


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """``"uniform"`` or ``"loss-second-moment"`` (defaults: history 10, uniform mix 0.001)."""
    if name == "uniform":
        return UniformTimestepSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentTimestepSampler(num_timesteps)
    raise ValueError(f"Unknown timestep sampler {name!r}; expected one of {TIMESTEP_SAMPLERS}.")
