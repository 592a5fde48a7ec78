"""The bookkeeping every package scheduler shares: a float64 plan of model calls, and where a run is in it.

A package scheduler computes its whole run when the schedule is set (:class:`~.stochastic_heun.Algorithm2Plan`,
:class:`~.multistep.MultistepPlan`: the noise level of every model call, every coefficient) and then only counts
calls. How a call is located (``set_begin_index`` or the first ``timestep`` seen), how the model's input is scaled
(:mod:`.model_call`) and the diffusers properties around them (``step_index``, ``begin_index``,
``evaluation_sigmas``) are the same for every solver, and live here once.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from .compatibles import PackageCompatiblesMixin
from .model_call import ModelCall


def check_device(device: object) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), or a ``ValueError`` naming it."""
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(
            f"device must be None, a torch.device or a device string such as 'cpu' or 'cuda:0', got {device!r}."
        ) from error


def check_float_tensor(name: str, value: object) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a floating-point tensor (its metadata only: no host sync;
    an integer sample would be truncated back to its dtype after the step)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {got}.")


def check_generator(generator: object, batch_size: int) -> None:
    """A ``ValueError`` naming ``generator`` unless it is None, a ``torch.Generator``, or a list of exactly
    ``batch_size`` of them (one per sample, diffusers' convention): a list of another length would silently reuse or
    ignore generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)):
        raise ValueError(
            f"generator must be None, a torch.Generator or a list of {batch_size} (one per sample), "
            f"got {type(generator).__name__}."
        )
    if len(generator) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generator)} generator(s) for batch_size={batch_size}; give one per sample."
        )
    wrong = sorted({type(g).__name__ for g in generator if not isinstance(g, torch.Generator)})
    if wrong:
        raise ValueError(f"generator must hold torch.Generator objects only, got {wrong}.")


def check_timestep_type(name: str, timestep: object) -> None:
    """A ``ValueError`` naming ``name`` unless ``timestep`` is a tensor or a real number (not a bool)."""
    if isinstance(timestep, torch.Tensor) or (isinstance(timestep, numbers.Real) and not isinstance(timestep, bool)):
        return
    raise ValueError(f"{name} must be a number or a tensor, got {type(timestep).__name__} {timestep!r:.80}.")


class PlannedSchedulerMixin(PackageCompatiblesMixin):
    """Base of the solvers' mixins. A subclass sets ``self.model_call``, ``self.timesteps`` (one per model call) and
    ``self._plan`` (an object with ``call_sigmas``: the noise level of every call, float64, in call order), resets
    ``_step_index`` / ``_begin_index`` to None with every new schedule, and defines ``index_for_timestep`` (which calls
    a run may start from)."""

    model_call: ModelCall
    timesteps: torch.Tensor | None
    _plan: Any
    _step_index: int | None
    _begin_index: int | None

    @property
    def plan(self) -> Any:
        """The float64 plan of the current schedule (None before ``set_timesteps`` where there is no default)."""
        return self._plan

    @property
    def evaluation_sigmas(self) -> torch.Tensor | None:
        """The noise level of every model call, in the order of ``timesteps`` (float64, CPU)."""
        return None if self._plan is None else torch.tensor(self._plan.call_sigmas, dtype=torch.float64)

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in ``timesteps`` (None until the first ``step`` / ``scale_model_input``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first model call, set by :meth:`set_begin_index` (image-to-image starts part way)."""
        return self._begin_index

    def _checked_begin_index(self, begin_index: object) -> int:
        """``begin_index`` as the index of a model call of the current schedule, or a ``ValueError``."""
        if self.timesteps is None:
            raise ValueError("set_begin_index needs a schedule: call `set_timesteps` first.")
        if not isinstance(begin_index, (int, np.integer)) or not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"begin_index must be an integer in [0, {len(self.timesteps) - 1}], got {begin_index!r}.")
        return int(begin_index)

    def _calls_at(self, timestep: float | torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """The indices of the model calls whose timestep is ``timestep`` (a host sync: only pipelines that never set
        a begin index pay it, once per run), and the value looked up."""
        check_timestep_type("timestep", timestep)
        schedule = self.timesteps
        value = torch.as_tensor(timestep, device=schedule.device).to(schedule.dtype).reshape(-1)[:1]
        return torch.isclose(schedule, value, rtol=1e-6, atol=0.0).nonzero().flatten().tolist(), value

    def _started_at(self, call: int) -> None:
        """Called once per run when its first call is located (a solver whose plan depends on it rebuilds it)."""

    def _current_call(self, timestep: float | torch.Tensor) -> int:
        """The index of the model call being made (set from ``begin_index`` or ``timestep`` at the first call)."""
        if self._plan is None:
            raise ValueError(f"{type(self).__name__} has no schedule yet: call `set_timesteps` first.")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            self._started_at(self._step_index)
        if self._step_index >= len(self._plan.call_sigmas):
            raise ValueError(
                f"All {len(self._plan.call_sigmas)} model calls of this schedule have been stepped; "
                "call `set_timesteps` to sample again."
            )
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model's input for the current call (``model_call.model_input``: ``x`` itself for a sigma-conditioned
        model, ``x / sqrt(sigma^2 + 1)`` for a discrete VP network)."""
        check_float_tensor("sample", sample)
        if not self.model_call.scales_input:
            return sample
        return self.model_call.model_input(sample, self._plan.call_sigmas[self._current_call(timestep)])
