"""diffusers-edm: the EDM design space (Karras et al. 2022) and Improved-DDPM learned variances for Diffusers.

``ModelMixin`` and ``SchedulerMixin`` are re-exported so that a ``model_index.json`` entry
``["diffusers_edm", "ClassName"]`` loads through ``DiffusionPipeline.from_pretrained``
(diffusers looks these base classes up in the named library).
"""

from diffusers import ModelMixin, SchedulerMixin

from .schedulers import EDMHeunDiscreteScheduler, EDMHeunScheduler

__version__ = "0.1.0"

__all__ = [
    "EDMHeunDiscreteScheduler",
    "EDMHeunScheduler",
    "ModelMixin",
    "SchedulerMixin",
]
