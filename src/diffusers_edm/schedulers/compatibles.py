"""``compatibles`` for this package's schedulers.

diffusers' ``SchedulerMixin.compatibles`` adds the class itself to ``_compatibles`` and looks every name up in the
``diffusers`` module only, so a scheduler defined elsewhere is missing from its own list (and from the keys that
``from_config`` recognises as belonging to a compatible scheduler). :class:`PackageCompatiblesMixin` resolves the
names in ``diffusers_edm.schedulers`` as well.
"""

from __future__ import annotations

import importlib
from typing import ClassVar


class PackageCompatiblesMixin:
    """Put before ``SchedulerMixin`` in the bases: ``compatibles`` then lists the class itself first, followed by the
    ``_compatibles`` names found in ``diffusers_edm.schedulers`` or ``diffusers`` (in that order of lookup)."""

    _compatibles: list[str] = []
    #: the values of the config key ``solver`` this scheduler knows
    solver_choices: ClassVar[tuple[str, ...]] = ()

    def _read_compatible_solver(self, solver: object, default: str) -> object:
        """``solver`` as this scheduler reads it. A config built from an interchangeable package scheduler carries that
        scheduler's ``solver`` (``"heun"`` into a multistep one, ``"ipndm"`` into a Heun one); as diffusers does for a
        shared key with another scheduler's value (UniPC reads DPM-Solver's ``solver_type`` as its own default), such a
        value becomes ``default`` here (and in the config). Any other value is returned as given, to be checked."""
        if isinstance(solver, str) and solver not in self.solver_choices:
            others = [c for c in self._get_compatibles()[1:] if issubclass(c, PackageCompatiblesMixin)]
            if any(solver in other.solver_choices for other in others):
                self.register_to_config(solver=default)
                return default
        return solver

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        modules = (importlib.import_module("diffusers_edm.schedulers"), importlib.import_module("diffusers"))
        classes = [cls]
        for name in dict.fromkeys(cls._compatibles):  # keeps the listed order, drops repeats
            found = next((getattr(module, name) for module in modules if hasattr(module, name)), None)
            if found is not None and found not in classes:
                classes.append(found)
        return classes
