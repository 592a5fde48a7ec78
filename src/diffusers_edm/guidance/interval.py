"""When guidance acts: the guidance interval of Kynkaenniemi et al. 2024.

"Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models"
(Kynkaenniemi, Aittala, Karras, Laine, Aila, Lehtinen 2024): guidance is applied only at the model calls whose
noise level lies in ``(sigma_lo, sigma_hi]``; elsewhere the sampler uses the plain conditional model (weight 1). Guidance at high noise levels mostly pulls samples towards a few modes (lost diversity) and at
low noise levels does little, so a middle interval keeps most of the quality gain at little cost in diversity.

Which calls are inside is decided once per pipeline call, on the host, from the scheduler's float64 plan of noise
levels; the sampling loop reads a Python ``bool`` per call and never waits for the device. A call outside the
interval makes exactly one model call (no doubled batch, no weak model, no classifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..value_checks import check_real


@dataclass(frozen=True)
class GuidanceInterval:
    """The noise levels ``sigma_lo < sigma <= sigma_hi`` at which guidance is applied (Kynkaenniemi et al. 2024).

    Args:
        sigma_lo: the lower end (excluded), finite and ``>= 0``.
        sigma_hi: the upper end (included), finite and ``> sigma_lo``.
    """

    sigma_lo: float
    sigma_hi: float

    def __post_init__(self) -> None:
        allowed = "a finite number >= 0 (guidance acts where sigma_lo < sigma <= sigma_hi)"
        low = check_real("guidance_interval's sigma_lo", self.sigma_lo, minimum=0.0, allowed=allowed)
        high = check_real("guidance_interval's sigma_hi", self.sigma_hi, minimum=0.0, allowed=allowed)
        if not low < high:
            raise ValueError(
                f"guidance_interval needs sigma_lo < sigma_hi (guidance acts where sigma_lo < sigma <= sigma_hi), "
                f"got sigma_lo={self.sigma_lo!r}, sigma_hi={self.sigma_hi!r}."
            )
        object.__setattr__(self, "sigma_lo", low)
        object.__setattr__(self, "sigma_hi", high)

    def contains(self, sigma: float) -> bool:
        """Whether guidance acts at noise level ``sigma`` (a host float): ``sigma_lo < sigma <= sigma_hi``."""
        return self.sigma_lo < sigma <= self.sigma_hi

    def guided_calls(self, call_sigmas: Sequence[float]) -> tuple[bool, ...]:
        """For each model call's noise level (host floats, in call order), whether guidance acts there."""
        return tuple(self.contains(float(sigma)) for sigma in call_sigmas)


def check_guidance_interval(guidance_interval: object) -> GuidanceInterval | None:
    """``guidance_interval`` (``None``, a :class:`GuidanceInterval` or a pair ``(sigma_lo, sigma_hi)``) as a
    :class:`GuidanceInterval`, or ``None`` (guidance at every call); ``ValueError`` naming the bad value otherwise."""
    if guidance_interval is None or isinstance(guidance_interval, GuidanceInterval):
        return guidance_interval
    if isinstance(guidance_interval, (str, bytes)) or not isinstance(guidance_interval, Sequence):
        raise ValueError(
            f"guidance_interval must be None or a pair (sigma_lo, sigma_hi) of finite noise levels with "
            f"0 <= sigma_lo < sigma_hi, got {guidance_interval!r}."
        )
    if len(guidance_interval) != 2:
        raise ValueError(
            f"guidance_interval must be a pair (sigma_lo, sigma_hi), got {len(guidance_interval)} values: "
            f"{guidance_interval!r}."
        )
    return GuidanceInterval(*guidance_interval)

