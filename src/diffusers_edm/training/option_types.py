"""The command-line tools' ``argparse`` types, re-exported for the training modules: they live in
:mod:`diffusers_edm.option_types`, below both training and evaluation, which share them."""

from ..option_types import integer, parse_or_raise, real, real_list

__all__ = ["integer", "parse_or_raise", "real", "real_list"]
