"""How a sampler calls a model and reads its output: one adapter per kind of model, shared by every solver.

Every solver of this package integrates the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``
(Karras et al. 2022, "EDM", eq. 1 and 3) on the sigma-space sample ``x = y + sigma n``, and needs from a model call
only the denoiser ``D(x; sigma)``. What differs between models is how they are called and what they return; an
adapter states exactly that, so that a solver never asks which kind of model it drives:

- :class:`SigmaModelCall`, a sigma-conditioned (EDM-native) model: it receives ``x`` unchanged and
  ``timestep = sigma``, and returns ``D`` (``"sample"``) or ``eps = (x - D) / sigma`` (``"epsilon"``).
- :class:`DiscreteVPModelCall`, a network trained on a discrete VP table (DDPM, Stable Diffusion): with
  ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` its input ``sqrt(alpha_bar) y + sqrt(1 - alpha_bar) n`` is
  ``x / sqrt(sigma^2 + 1)`` (EDM section 2, the VP scaling ``s(t) = 1 / sqrt(sigma(t)^2 + 1)``), its timestep is the
  fractional training timestep whose table sigma is ``sigma`` (linear interpolation of ``log sigma`` over the
  table), and it returns eps, v or x_0, read back as ``D``. It knows no noise level outside its table.

Build one from a scheduler's config with ``from_config`` and use:

- ``sigma_range(sigma_min, sigma_max)``: the range of a time discretization (the config's, or overrides), checked;
- ``check_sigmas(sigmas)``: user-given noise levels, checked (and, for a table, clamped to its ends);
- ``max_sigma``: the largest level the model can be evaluated at (churned levels are capped there);
- ``timesteps_for(call_sigmas, device)``: the ``timestep`` the model receives at each call;
- ``scales_input`` / ``model_input(sample, sigma)`` / ``model_input_scale(sigma)``: the model's input;
- ``denoised(model_output, x, sigma)``: ``D``; ``derivative(model_output, x, sigma)``: ``(d, D)`` with
  ``d = (x - D) / sigma`` (taken directly from an eps output, which is ``d`` itself).

The ``sigma`` arguments are Python floats from a sampler's float64 plan, so none of this synchronises with the device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ..noise_schedules import (
    PREDICTION_TYPES,
    betas_for_schedule,
    check_sigma_steps,
    sigmas_from_betas,
    table_timestep,
)
from ..value_checks import check_real

# User-given levels this close (relative) to the ends of a training table are clamped to them: published schedules
# print the ends rounded (diffusers' AysSchedules start Stable Diffusion at 14.615 for a table that ends at 14.6146).
TABLE_END_TOLERANCE = 1e-4


def check_sigma_range(sigma_min: object, sigma_max: object) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` as floats, ``0 < sigma_min < sigma_max < inf``, or a ``ValueError`` naming them."""
    low = check_real("sigma_min", sigma_min, minimum=0.0, exclusive_minimum=True)
    high = check_real("sigma_max", sigma_max, minimum=0.0, exclusive_minimum=True)
    if not low < high:
        raise ValueError(f"Need sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}.")
    return low, high


class ModelCall(ABC):
    """How a solver calls one kind of model and reads ``D(x; sigma)`` from its output (see the module docstring)."""

    #: key of :data:`~diffusers_edm.noise_schedules.PREDICTION_TYPES` that lists the outputs this kind of model may have
    family: ClassVar[str]
    #: whether the model's input differs from the sigma-space sample (``model_input`` is not the identity)
    scales_input: ClassVar[bool]
    #: the largest noise level the model can be evaluated at
    max_sigma: float

    def __init__(self, prediction_type: str):
        allowed = PREDICTION_TYPES[self.family]
        if not isinstance(prediction_type, str) or prediction_type not in allowed:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {allowed}.")
        self.prediction_type = prediction_type

    @abstractmethod
    def sigma_range(self, sigma_min: float | None = None, sigma_max: float | None = None) -> tuple[float, float]:
        """The range of a time discretization: the configured one, or the overrides given, checked."""

    @abstractmethod
    def check_sigmas(self, sigmas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
        """User-given ``sigma_0 > ... > sigma_{N-1}`` (one final 0 allowed) as float64, or a ``ValueError``."""

    @abstractmethod
    def timesteps_for(self, call_sigmas: Sequence[float], device: str | torch.device | None = None) -> torch.Tensor:
        """The ``timestep`` the model receives at each call, on ``device``."""

    def model_input_scale(self, sigma: float) -> float:
        """The factor from the sigma-space sample to the model's input (1: the model takes ``x`` itself)."""
        return 1.0

    def model_input(self, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's input at noise level ``sigma``."""
        return sample

    @abstractmethod
    def denoised(self, model_output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``D(x; sigma)`` from the model output."""

    def derivative(
        self, model_output: torch.Tensor, x: torch.Tensor, sigma: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d, D)``: the ODE's ``d = (x - D) / sigma`` and ``D``; an eps output is ``d`` itself."""
        if self.prediction_type == "epsilon":
            return model_output, torch.add(x, model_output, alpha=-sigma)  # D = x - sigma eps
        denoised = self.denoised(model_output, x, sigma)
        return torch.sub(x, denoised).div_(sigma), denoised


class SigmaModelCall(ModelCall):
    """A sigma-conditioned (EDM-native) model: ``timestep = sigma``, input ``x``, output ``D`` or ``eps``.

    Args:
        prediction_type: ``"sample"`` (the model returns D) or ``"epsilon"`` (``(x - D) / sigma``).
        sigma_min, sigma_max: the default range of a time discretization, ``0 < sigma_min < sigma_max < inf``.
    """

    family = "sigma"
    scales_input = False
    max_sigma = math.inf

    def __init__(self, prediction_type: str = "sample", sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(prediction_type)
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)

    @classmethod
    def from_config(cls, config: Any) -> SigmaModelCall:
        """From a scheduler config with ``prediction_type``, ``sigma_min`` and ``sigma_max``."""
        return cls(config.prediction_type, config.sigma_min, config.sigma_max)

    def sigma_range(self, sigma_min: float | None = None, sigma_max: float | None = None) -> tuple[float, float]:
        if sigma_min is None and sigma_max is None:
            return self.sigma_min, self.sigma_max  # checked when built
        return check_sigma_range(
            self.sigma_min if sigma_min is None else sigma_min, self.sigma_max if sigma_max is None else sigma_max
        )

    def check_sigmas(self, sigmas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
        return check_sigma_steps(sigmas)

    def timesteps_for(self, call_sigmas: Sequence[float], device: str | torch.device | None = None) -> torch.Tensor:
        # The model is conditioned on sigma itself: keep float64 where the device has it.
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        return torch.tensor(call_sigmas, dtype=torch.float64).to(device=device, dtype=dtype)

    def denoised(self, model_output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return torch.add(x, model_output, alpha=-sigma)  # D = x - sigma eps
        return model_output


class DiscreteVPModelCall(ModelCall):
    """A network trained on a discrete VP table: input ``x / sqrt(sigma^2 + 1)``, fractional training timestep.

    With the table's ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` (increasing in t), the output is read as

    - ``"epsilon"``: ``D = x - sigma eps`` (eps is the same in both coordinates);
    - ``"v_prediction"``: ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v`` (``v = sqrt(alpha_bar) eps -
      sqrt(1 - alpha_bar) y`` with ``sqrt(alpha_bar) = 1 / sqrt(sigma^2 + 1)``);
    - ``"sample"``: ``D = output``.

    Args:
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        betas: the training betas (float64, each in (0, 1)).
        sigma_min, sigma_max: the default range of a time discretization; None is the table's end. Values outside
            the table by at most :data:`TABLE_END_TOLERANCE` (relative) are clamped to its ends, others refused.
    """

    family = "discrete_vp"
    scales_input = True

    def __init__(
        self, prediction_type: str, betas: np.ndarray, sigma_min: float | None = None, sigma_max: float | None = None
    ):
        super().__init__(prediction_type)
        self.betas = np.asarray(betas, dtype=np.float64)
        with np.errstate(all="ignore"):
            self.train_sigmas = sigmas_from_betas(self.betas)
            self.log_train_sigmas = np.log(self.train_sigmas)
        if len(self.train_sigmas) < 2 or not (
            np.all(np.isfinite(self.log_train_sigmas)) and np.all(np.diff(self.log_train_sigmas) > 0)
        ):
            raise ValueError(
                f"The training table needs at least 2 timesteps with finite, strictly increasing noise levels "
                f"sqrt((1 - alpha_bar) / alpha_bar); these {len(self.betas)} betas give "
                f"{self.train_sigmas[:4].tolist()} ... {self.train_sigmas[-2:].tolist()}."
            )
        self.max_sigma = float(self.train_sigmas[-1])
        low, high = self.table_range
        self.sigma_min, self.sigma_max = self._checked_range(
            low if sigma_min is None else sigma_min, high if sigma_max is None else sigma_max
        )

    @classmethod
    def from_config(cls, config: Any) -> DiscreteVPModelCall:
        """From a diffusers-style discrete scheduler config (``num_train_timesteps``, ``beta_*``, ``trained_betas``,
        ``prediction_type``, ``sigma_min``, ``sigma_max``)."""
        betas = betas_for_schedule(
            config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end, config.trained_betas
        )
        return cls(config.prediction_type, betas, config.sigma_min, config.sigma_max)

    @property
    def table_range(self) -> tuple[float, float]:
        """The smallest and largest noise level of the training table."""
        return float(self.train_sigmas[0]), self.max_sigma

    def clamp_to_table(self, name: str, values: np.ndarray) -> np.ndarray:
        """``values`` clamped to the table's range if none lies outside it by more than :data:`TABLE_END_TOLERANCE`."""
        low, high = self.table_range
        outside = (values < low * (1 - TABLE_END_TOLERANCE)) | (values > high * (1 + TABLE_END_TOLERANCE))
        if np.any(outside):
            raise ValueError(
                f"{name} must lie within the training table's noise levels [{low:.6g}, {high:.6g}] (the model knows no "
                f"others; levels within a relative {TABLE_END_TOLERANCE:g} of its ends are clamped to them), got "
                f"{values[outside].tolist()}."
            )
        return np.clip(values, low, high)

    def sigma_range(self, sigma_min: float | None = None, sigma_max: float | None = None) -> tuple[float, float]:
        if sigma_min is None and sigma_max is None:
            return self.sigma_min, self.sigma_max  # checked when built
        return self._checked_range(
            self.sigma_min if sigma_min is None else sigma_min, self.sigma_max if sigma_max is None else sigma_max
        )

    def _checked_range(self, sigma_min: object, sigma_max: object) -> tuple[float, float]:
        sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
        sigma_min = float(self.clamp_to_table("sigma_min", np.array([sigma_min]))[0])
        sigma_max = float(self.clamp_to_table("sigma_max", np.array([sigma_max]))[0])
        if not sigma_min < sigma_max:
            raise ValueError(
                f"Need sigma_min < sigma_max within the training table, got {sigma_min:.6g} and {sigma_max:.6g}."
            )
        return sigma_min, sigma_max

    def check_sigmas(self, sigmas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
        values = self.clamp_to_table("sigmas", check_sigma_steps(sigmas))
        if np.any(np.diff(values) >= 0):
            raise ValueError(
                "sigmas must stay strictly decreasing once clamped to the training table's ends, "
                f"got {values.tolist()}."
            )
        return values

    def sigma_to_timestep(self, sigmas: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fractional training timestep of each noise level: linear interpolation of log-sigma over the table."""
        log_sigmas = torch.from_numpy(np.log(np.asarray(sigmas, dtype=np.float64)))
        return table_timestep(log_sigmas, torch.from_numpy(self.log_train_sigmas)).numpy()

    def timesteps_for(self, call_sigmas: Sequence[float], device: str | torch.device | None = None) -> torch.Tensor:
        return torch.from_numpy(self.sigma_to_timestep(call_sigmas)).to(device=device, dtype=torch.float32)

    def model_input_scale(self, sigma: float) -> float:
        return 1.0 / math.sqrt(sigma**2 + 1)

    def model_input(self, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        return sample / math.sqrt(sigma**2 + 1)

    def denoised(self, model_output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return torch.add(x, model_output, alpha=-sigma)
        if self.prediction_type == "v_prediction":
            return torch.add(x / (sigma**2 + 1), model_output, alpha=-sigma / math.sqrt(sigma**2 + 1))
        return model_output
