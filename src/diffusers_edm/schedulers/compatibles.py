"""``compatibles`` for this package's schedulers.

diffusers' ``SchedulerMixin.compatibles`` adds the class itself to ``_compatibles`` and looks every name up in the
``diffusers`` module only, so a scheduler defined elsewhere is missing from its own list (and from the keys that
``from_config`` recognises as belonging to a compatible scheduler). :class:`PackageCompatiblesMixin` resolves the
names in ``diffusers_edm.schedulers`` as well.
"""

from __future__ import annotations

import importlib


class PackageCompatiblesMixin:
    """Put before ``SchedulerMixin`` in the bases: ``compatibles`` then lists the class itself first, followed by the
    ``_compatibles`` names found in ``diffusers_edm.schedulers`` or ``diffusers`` (in that order of lookup)."""

    _compatibles: list[str] = []

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        modules = (importlib.import_module("diffusers_edm.schedulers"), importlib.import_module("diffusers"))
        classes = [cls]
        for name in dict.fromkeys(cls._compatibles):  # keeps the listed order, drops repeats
            found = next((getattr(module, name) for module in modules if hasattr(module, name)), None)
            if found is not None and found not in classes:
                classes.append(found)
        return classes
