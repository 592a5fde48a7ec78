"""Checks of scalar settings (config values, call arguments): a ``ValueError`` that names the setting, the value and
what is allowed, instead of a ``TypeError`` deep inside numpy or torch. Used by the schedulers, the models and the
pipelines alike, so every refusal reads the same way.
"""

from __future__ import annotations

import math
import numbers


def _bounds(minimum, maximum, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    conditions = []
    if minimum is not None:
        conditions.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        conditions.append(f"{'<' if exclusive_maximum else '<='} {maximum:g}")
    return f" {' and '.join(conditions)}" if conditions else ""


def check_real(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    allow_infinity: bool = False,
    allowed: str | None = None,
) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``, the value and what is allowed.

    Accepted: a real number (not a bool, string or None), not NaN, finite unless ``allow_infinity``, within the
    bounds. ``allowed`` replaces the generated description of what is allowed in the message.
    """
    description = allowed or (
        f"a {'' if allow_infinity else 'finite '}number"
        + _bounds(minimum, maximum, exclusive_minimum, exclusive_maximum)
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {description}, got {value!r}.")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        raise ValueError(f"{name} must be {description}, got {value!r}.") from None
    accepted = not math.isnan(number) and (allow_infinity or math.isfinite(number))
    if accepted and minimum is not None:
        accepted = number > minimum if exclusive_minimum else number >= minimum
    if accepted and maximum is not None:
        accepted = number < maximum if exclusive_maximum else number <= maximum
    if not accepted:
        raise ValueError(f"{name} must be {description}, got {value!r}.")
    return number


def check_integer(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None, allowed: str | None = None
) -> int:
    """``value`` as an int within ``[minimum, maximum]``, or a ``ValueError`` naming ``name``, the value and what is
    allowed (bools and non-integral numbers are refused)."""
    description = allowed or f"an integer{_bounds(minimum, maximum, False, False)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {description}, got {value!r}.")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {description}, got {value!r}.")
    return number


def check_increasing_pair(
    low_name: str, low: float, high_name: str, high: float
) -> None:
    """A ``ValueError`` naming both settings and both values unless ``low < high`` (each already checked as a number)."""
    if not low < high:
        raise ValueError(f"{low_name} must be < {high_name}, got {low_name}={low!r} and {high_name}={high!r}.")
