"""``argparse`` types of the command-line tools' numeric options: each parses and range-checks its value at parse time.

A value that is not a number, not finite (``nan``, ``inf``) or out of range is refused by the parser with a message
that names the option, e.g. ``--learning_rate inf`` -> ``--learning_rate must be a finite number > 0, got inf.`` The checks are those of
:mod:`diffusers_edm.value_checks`, so every refusal of the package reads the same way.
"""

from __future__ import annotations

import argparse
from typing import Callable

from .value_checks import check_integer, check_real


def real(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    allowed: str | None = None,
) -> Callable[[str], float]:
    """A ``type=`` for a finite float option within the bounds (inclusive unless ``exclusive_*``); ``allowed``
    replaces the generated description of the range in the message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}.") from None
        try:
            return check_real(
                "value", value, minimum=minimum, maximum=maximum,
                exclusive_minimum=exclusive_minimum, exclusive_maximum=exclusive_maximum, allowed=allowed,
            )
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None

    parse.__name__ = "number"
    return parse


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A ``type=`` for an integer option within ``[minimum, maximum]``."""
    bounds = [f"{sign} {bound}" for sign, bound in ((">=", minimum), ("<=", maximum)) if bound is not None]
    description = " and ".join(["an integer", *bounds]).replace("integer and", "integer", 1)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}.") from None
        try:
            return check_integer("value", value, minimum=minimum, maximum=maximum, allowed=description)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None

    parse.__name__ = "integer"
    return parse


def real_list(
    minimum: float | None = None, maximum: float | None = None, *, exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> Callable[[str], list[float]]:
    """A ``type=`` for comma-separated finite floats, each within the bounds (e.g. ``0.05,0.10``)."""
    item = real(minimum, maximum, exclusive_minimum=exclusive_minimum, exclusive_maximum=exclusive_maximum)

    def parse(text: str) -> list[float]:
        try:
            return [item(part) for part in text.split(",") if part.strip()]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 0.05,0.10; each {error}") from None

    parse.__name__ = "numbers"
    return parse


def parse_or_raise(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a value that one of the types above refuses raised as a ``ValueError``
    ``"--name must be ..., got ..."`` (as every other refusal of the package reads) rather than an exit from inside
    argparse; other usage errors (an unknown option, a value not among the choices) exit as argparse does.
    The parser must be built with ``exit_on_error=False``."""
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as error:
        # argparse raises the ArgumentError while handling the type's ArgumentTypeError
        if isinstance(error.__context__, argparse.ArgumentTypeError) and error.argument_name is not None:
            raise ValueError(f"{error.argument_name} {error.message}") from None
        parser.error(str(error))
