"""Discrete Gaussian diffusion (DDPM / Improved DDPM): the one place where its tables and reverse-step math live.

Ho et al. 2020 (DDPM, eqs. 6-7) and Nichol & Dhariwal 2021 (Improved DDPM, section 2 and eqs. 15-17); the formulas
are collected in docs/algorithms.md, section 4. Every table is computed in float64 NumPy from the betas; the tensor functions gather the
entries they need and cast them to the dtype and device of the tensors they work on. The
:class:`~diffusers_edm.schedulers.LearnedVarianceDDPMScheduler`, the vlb / hybrid losses and the bits/dim
evaluation all call this module, so sampling and likelihood use the same formulas.

Notation: ``t`` is a training timestep (0 .. T-1), ``index`` its position in a (possibly respaced) diffusion,
``alpha_bar`` the cumulative product of ``1 - beta``. A model with a learned variance outputs ``2C`` channels for
``C`` data channels: first the prediction (eps or x_0), then the variance output ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .noise_schedules import PREDICTION_TYPES as NOISE_SCHEDULE_PREDICTION_TYPES

VARIANCE_TYPES = ("learned_range", "learned", "fixed_small", "fixed_large")
LEARNED_VARIANCE_TYPES = ("learned_range", "learned")
PREDICTION_TYPES = NOISE_SCHEDULE_PREDICTION_TYPES["ddpm_posterior"]


def check_variance_type(variance_type: str) -> None:
    """Raise ``ValueError`` unless ``variance_type`` is one of :data:`VARIANCE_TYPES`."""
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance_type {variance_type!r}; expected one of {VARIANCE_TYPES}.")


def check_prediction_type(prediction_type: str) -> None:
    """Raise ``ValueError`` unless ``prediction_type`` is one of :data:`PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}.")


# --------------------------------------------------------------------------------------------
# Respacing: which training timesteps a K-step sampler keeps
# --------------------------------------------------------------------------------------------
def space_timesteps(num_train_timesteps: int, spacing: int | str | Sequence[int]) -> list[int]:
    """The sorted training timesteps kept by a respaced sampler.

    Improved DDPM's rule (Nichol & Dhariwal 2021, section 4; ``space_timesteps`` of its code), exactly:

    - ``"ddimK"``: ``range(0, T, stride)`` for the smallest integer stride in ``1 .. T-1`` that gives exactly K
      steps (none for K = 1).
    - ``"a,b,c"`` (or a sequence of ints): the T timesteps are cut into ``len(counts)`` consecutive sections
      (sizes differ by at most one, the first ``T % len(counts)`` one larger); section ``i`` of size ``n`` keeps
      ``count_i`` of its timesteps at offsets ``round(c_j)`` with the running sum ``c_0 = 0``,
      ``c_{j+1} = c_j + (n - 1) / (count_i - 1)`` (offset 0 alone when ``count_i = 1``). The sum is accumulated in
      float64 and rounded half to even, as Improved DDPM does: where ``j (n - 1) / (count_i - 1)`` would round
      differently from the accumulated sum (e.g. T = 1000, K = 21 keeps 499, not 500), Improved DDPM's value is kept.
    - an int K: the same with one section, i.e. an even spacing from 0 to T-1 (``set_timesteps(K)``).

    Raises ``ValueError`` for an unparsable string, a count below 1, a section asked for more steps than it
    holds, or a "ddimK" that no integer stride meets.
    """
    if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}.")
    if isinstance(spacing, str):
        text = spacing.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim") :])
            except ValueError as error:
                raise ValueError(f"Invalid spacing {spacing!r}: 'ddim' must be followed by an integer step count, e.g. 'ddim25'.") from error
            if desired < 1 or desired > num_train_timesteps:
                raise ValueError(
                    f"Invalid spacing {spacing!r}: asks for {desired} steps; allowed are 1 .. num_train_timesteps={num_train_timesteps}."
                )
            # len(range(0, T, s)) = ceil(T / s) falls as s grows, so the first stride of Improved DDPM's search over
            # s = 1 .. T-1 with exactly K entries, if there is one, is the smallest with at most K: ceil(T / K).
            stride = -(-num_train_timesteps // desired)
            if stride < num_train_timesteps and len(range(0, num_train_timesteps, stride)) == desired:
                return list(range(0, num_train_timesteps, stride))
            raise ValueError(
                f"Invalid spacing {spacing!r}: no integer stride gives exactly {desired} of {num_train_timesteps} timesteps "
                f"(use a section count such as '{desired}' for an approximately even spacing)."
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError as error:
            raise ValueError(
                f"Invalid spacing {spacing!r}: expected 'ddimK' or comma-separated section counts such as '10,15,20'."
            ) from error
    elif isinstance(spacing, (int, np.integer)) and not isinstance(spacing, bool):
        counts = [int(spacing)]
    else:
        try:
            counts = [int(count) for count in spacing]
        except TypeError as error:
            raise ValueError(f"Invalid spacing {spacing!r}: expected an int, 'ddimK', 'a,b,c' or a sequence of ints.") from error
    if len(counts) == 0 or any(count < 1 for count in counts):
        raise ValueError(f"Invalid spacing {spacing!r}: every section count must be an integer >= 1.")
    if sum(counts) > num_train_timesteps:
        raise ValueError(
            f"Invalid spacing {spacing!r}: asks for {sum(counts)} steps, more than num_train_timesteps={num_train_timesteps}."
        )

    size_per_section, extra = divmod(num_train_timesteps, len(counts))
    kept: list[np.ndarray] = []
    section_start = 0
    for section, count in enumerate(counts):
        size = size_per_section + (1 if section < extra else 0)
        if count > size:
            raise ValueError(
                f"Invalid spacing {spacing!r}: section {section} holds {size} timesteps and cannot keep {count} of them."
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        # The running sum 0, stride, stride + stride, ... (np.cumsum adds left to right, like Improved DDPM's loop);
        # np.rint rounds half to even, like Python's round.
        offsets = np.rint(np.cumsum(np.concatenate(([0.0], np.full(count - 1, stride))))).astype(np.int64)
        kept.append(section_start + offsets)
        section_start += size
    # Sorted and distinct already: a stride >= 1 never rounds two offsets of a section to one value, sections follow
    # each other.
    return np.concatenate(kept).tolist()


# --------------------------------------------------------------------------------------------
# Model output helpers
# --------------------------------------------------------------------------------------------
def split_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, variance_type: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a ``2C``-channel output into (prediction, variance output ``v``); a ``C``-channel one into (prediction, None).

    Works for any channel count ``C = sample.shape[1]`` (RGB pixels, 4-channel latents). A fixed variance type
    accepts a ``2C`` output and ignores ``v`` (so a learned-variance model can be sampled with fixed variances);
    a learned type needs the ``2C`` channels.
    """
    check_variance_type(variance_type)
    channels = sample.shape[1]
    if model_output.shape[0] != sample.shape[0] or model_output.shape[2:] != sample.shape[2:]:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)}, incompatible with the sample's {tuple(sample.shape)} "
            "(batch and spatial sizes must match)."
        )
    if model_output.shape[1] == 2 * channels:
        prediction, variance_output = torch.split(model_output, channels, dim=1)
        return prediction, variance_output
    if model_output.shape[1] == channels:
        if variance_type in LEARNED_VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {variance_type!r} needs a model output with 2 * {channels} = {2 * channels} channels "
                f"(the prediction, then the variance output v), got {channels} channels; use 'fixed_small' or "
                "'fixed_large' for a model without a learned variance."
            )
        return model_output, None
    raise ValueError(
        f"model_output has {model_output.shape[1]} channels; for a {channels}-channel sample expected {channels} "
        f"(fixed variance) or {2 * channels} (prediction and variance output)."
    )


def learned_range_log_variance(variance_output: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """Improved DDPM's interpolation ``frac * max_log + (1 - frac) * min_log`` with ``frac = (v + 1) / 2``.

    ``max_log = log(beta_t)``, ``min_log`` = the clipped ``log(beta_tilde_t)``; ``v`` is not clamped, as in the paper.
    """
    frac = (variance_output + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


@dataclass
class ReverseStepParameters:
    """The Gaussian ``p(x_{t-1} | x_t) = N(mean, variance)`` and the x_0 prediction it was built from."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------
class DiscreteGaussianDiffusion:
    """Float64 tables of a discrete Gaussian diffusion, original or respaced (Ho et al. 2020, DDPM, eqs. 4-7;
    Nichol & Dhariwal 2021, Improved DDPM, sections 3.1 and 4 for the learned range and respacing).

    For betas ``beta_0 .. beta_{K-1}`` (``K`` steps, index ``i``):

    - ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``, ``alpha_bar_{-1} = 1``;
    - posterior variance ``beta_tilde_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i)``, and its "clipped"
      log, where index 0 takes the value of index 1 (the true value is ``log 0``);
    - posterior mean ``coef1_i x_0 + coef2_i x_t`` with ``coef1 = beta sqrt(alpha_bar_{i-1}) / (1 - alpha_bar_i)``
      and ``coef2 = (1 - alpha_bar_{i-1}) sqrt(alpha_i) / (1 - alpha_bar_i)``.

    ``timesteps[i]`` is the training timestep of index ``i`` (the one the network is called with); it is
    ``0 .. T-1`` for an original diffusion and the kept subset for a respaced one (see :meth:`respace`).

    With a single step there is no index 1 to borrow the clipped log variance from; index 0 then uses
    ``log(beta_0)`` (the "fixed_large" value). Sampling never uses it (no noise is added at the last step).

    The tensor methods read the tables as tensors on the device (and in the dtype) of the data they work on; each
    table is converted once per device and dtype and kept, so a training or sampling step copies nothing from the
    host and never waits for the device (:meth:`gather`, :meth:`device_index`).
    """

    def __init__(self, betas: Sequence[float] | np.ndarray, timesteps: Sequence[int] | np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}.")
        if np.any(~np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas > 1):
            raise ValueError(f"Every beta must lie in (0, 1]; got values from {betas.min()} to {betas.max()}.")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timesteps = (
            np.arange(self.num_timesteps, dtype=np.int64) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
        )
        if self.timesteps.shape != betas.shape or np.any(np.diff(self.timesteps) <= 0):
            raise ValueError(
                f"timesteps must be {self.num_timesteps} strictly increasing training timesteps, got {self.timesteps.tolist()}."
            )

        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log1p(-self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_alphas_cumprod
        borrowed_first_variance = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(borrowed_first_variance, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_alphas_cumprod
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / one_minus_alphas_cumprod
        # "fixed_large" (Ho et al.: sigma_t^2 = beta_t) with index 0 set to beta_tilde_1 as Improved DDPM does,
        # which only changes the decoder likelihood (beta_0 is far below the posterior variance of index 1).
        self.fixed_large_log_variance = np.log(np.append(borrowed_first_variance, betas[1:]))
        self.log_betas = np.log(betas)
        self._is_original = bool(np.array_equal(self.timesteps, np.arange(self.num_timesteps)))
        self._device_tables: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def respace(self, kept_timesteps: Sequence[int]) -> "DiscreteGaussianDiffusion":
        """The diffusion that visits only ``kept_timesteps`` (training timesteps of this diffusion).

        Walking the kept timesteps in increasing order, ``beta_new = 1 - alpha_bar_t / alpha_bar_last`` and then
        ``alpha_bar_last = alpha_bar_t`` (starting from 1), so the kept steps keep their ``alpha_bar``.
        """
        kept = sorted({int(t) for t in kept_timesteps})
        positions = self._positions_of(np.asarray(kept, dtype=np.int64))
        kept_alphas_cumprod = self.alphas_cumprod[positions]
        previous = np.append(1.0, kept_alphas_cumprod[:-1])
        return DiscreteGaussianDiffusion(1.0 - kept_alphas_cumprod / previous, timesteps=self.timesteps[positions])

    def _positions_of(self, timesteps: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.timesteps, timesteps)
        clipped = np.minimum(positions, self.num_timesteps - 1)
        missing = (positions >= self.num_timesteps) | (self.timesteps[clipped] != timesteps)
        if np.any(missing):
            bad = sorted(set(timesteps[missing].tolist()))
            if self.num_timesteps == self.timesteps[-1] + 1:
                allowed = f"integers 0 .. {self.num_timesteps - 1}"
            else:
                allowed = f"the {self.num_timesteps} timesteps of the schedule, {self.timesteps.tolist()}"
            raise ValueError(f"timesteps {bad[:10]} are not in the diffusion's table; allowed are {allowed}.")
        return clipped

    def index_of(self, timesteps: torch.Tensor | int | Sequence[int]) -> torch.Tensor:
        """Indices (positions in this diffusion) of training timesteps; ``ValueError`` for one not in the table.

        Looks at the values on the host (one synchronisation for a device tensor): for input checks, once per call
        or data set. Hot loops over timesteps that come from the table use :meth:`device_index`.
        """
        values = torch.as_tensor(timesteps)
        if values.is_floating_point():
            if not torch.all(values == values.round()):
                raise ValueError(f"timesteps must be integers, got {values.tolist()}.")
        flat = values.detach().cpu().reshape(-1).to(torch.int64).numpy()
        return torch.from_numpy(self._positions_of(flat)).reshape(values.shape).to(values.device)

    def host_index(self, timestep: int) -> int:
        """The index of one training timestep given as a Python int; ``ValueError`` if it is not in the table.

        Pure host work (no tensor), so a sampling loop that passes Python ints checks every step for free.
        """
        if int(timestep) != timestep:
            raise ValueError(f"timesteps must be integers, got {timestep!r}.")
        return int(self._positions_of(np.asarray([int(timestep)], dtype=np.int64))[0])

    def device_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Indices of training timesteps that are in the table, computed on their device without looking at them.

        No host synchronisation and no check: a timestep that is not in the table gets the index of a neighbour.
        Use it for timesteps drawn from the table (training) or taken from ``scheduler.timesteps`` (sampling), and
        :meth:`index_of` to check input from elsewhere. An original diffusion's index is the timestep itself; a
        respaced one's is found by ``searchsorted`` in its (increasing) timesteps, held on the device.
        """
        timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point():
            timesteps = timesteps.round()
        timesteps = timesteps.to(torch.int64)
        if self._is_original:
            return timesteps
        kept = self._table("timesteps", timesteps.device, torch.int64)
        return torch.searchsorted(kept, timesteps).clamp_(max=self.num_timesteps - 1)

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The table ``name`` as a tensor of ``dtype`` on ``device``, converted once and kept."""
        key = (name, torch.device(device), dtype)
        if key not in self._device_tables:
            # Cast on the CPU first: some devices (MPS) have no float64.
            self._device_tables[key] = torch.from_numpy(getattr(self, name)).to(dtype).to(device)
        return self._device_tables[key]

    def gather(self, name: str, index: torch.Tensor | int | Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The entries ``index`` of the table ``name`` in ``like``'s dtype and device, broadcastable against ``like``.

        A Python int or 0-d index gives a 0-d tensor; a batch of B indices gives shape ``(B, 1, ..., 1)``. Indexes
        a device copy of the table kept by :meth:`_table` (no host copy, no synchronisation).
        """
        table = self._table(name, like.device, like.dtype)
        if isinstance(index, (int, np.integer)):
            return table[int(index)]
        values = table[torch.as_tensor(index).to(like.device)]
        if values.ndim == 1:
            values = values.reshape(-1, *([1] * (like.ndim - 1)))
        return values

    # ----------------------------------------------------------------------------------------
    # Forward process and posterior
    # ----------------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise``."""
        return (
            self.gather("sqrt_alphas_cumprod", index, x_start) * x_start
            + self.gather("sqrt_one_minus_alphas_cumprod", index, x_start) * noise
        )

    def q_mean_log_variance(self, x_start: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of ``q(x_t | x_0) = N(sqrt(alpha_bar) x_0, 1 - alpha_bar)``."""
        mean = self.gather("sqrt_alphas_cumprod", index, x_start) * x_start
        log_variance = self.gather("log_one_minus_alphas_cumprod", index, x_start).expand_as(x_start)
        return mean, log_variance

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = self.gather("posterior_mean_coef1", index, x_t) * x_start + self.gather("posterior_mean_coef2", index, x_t) * x_t
        variance = self.gather("posterior_variance", index, x_t).expand_as(x_t)
        log_variance = self.gather("posterior_log_variance_clipped", index, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_0 = sqrt(1 / alpha_bar) x_t - sqrt(1 / alpha_bar - 1) eps``."""
        return self.gather("sqrt_recip_alphas_cumprod", index, x_t) * x_t - self.gather("sqrt_recipm1_alphas_cumprod", index, x_t) * eps

    # ----------------------------------------------------------------------------------------
    # Reverse process
    # ----------------------------------------------------------------------------------------
    def model_log_variance(
        self, variance_output: torch.Tensor | None, index: torch.Tensor, variance_type: str, like: torch.Tensor
    ) -> torch.Tensor:
        """Log variance of ``p(x_{t-1} | x_t)`` for each variance type (shape of ``like``).

        - ``"learned"``: ``v`` is the log variance itself.
        - ``"learned_range"``: :func:`learned_range_log_variance` between the clipped ``log beta_tilde`` and ``log beta``.
        - ``"fixed_small"``: the clipped ``log beta_tilde``.
        - ``"fixed_large"``: ``log beta`` (index 0: ``log beta_tilde_1``).
        """
        check_variance_type(variance_type)
        if variance_type in LEARNED_VARIANCE_TYPES and variance_output is None:
            raise ValueError(f"variance_type {variance_type!r} needs the model's variance output v, got None.")
        if variance_type == "learned":
            return variance_output
        min_log = self.gather("posterior_log_variance_clipped", index, like)
        if variance_type == "learned_range":
            return learned_range_log_variance(variance_output, min_log, self.gather("log_betas", index, like))
        if variance_type == "fixed_small":
            return min_log.expand_as(like)
        return self.gather("fixed_large_log_variance", index, like).expand_as(like)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        index: torch.Tensor,
        variance_type: str,
        prediction_type: str,
        clip_range: float | None = None,
    ) -> ReverseStepParameters:
        """``p(x_{t-1} | x_t)`` from the model output: x_0 from the prediction (clamped to ``[-clip_range, clip_range]``
        when ``clip_range`` is given), the posterior mean at that x_0, and the variance of ``variance_type``."""
        check_prediction_type(prediction_type)
        prediction, variance_output = split_model_output(model_output, x_t, variance_type)
        log_variance = self.model_log_variance(variance_output, index, variance_type, x_t)
        if prediction_type == "epsilon":
            pred_original_sample = self.predict_x0_from_eps(x_t, index, prediction)
        else:
            pred_original_sample = prediction
        if clip_range is not None:
            pred_original_sample = pred_original_sample.clamp(-clip_range, clip_range)
        mean, _, _ = self.q_posterior_mean_variance(pred_original_sample, x_t, index)
        return ReverseStepParameters(
            mean=mean, variance=torch.exp(log_variance), log_variance=log_variance, pred_original_sample=pred_original_sample
        )
