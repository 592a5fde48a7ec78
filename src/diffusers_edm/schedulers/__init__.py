"""Schedulers: one class per file, each a diffusers ``SchedulerMixin`` / ``ConfigMixin``."""

from .scheduling_edm_heun import EDMHeunScheduler
from .scheduling_edm_heun_discrete import EDMHeunDiscreteScheduler
from .scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from .stochastic_heun import EDMHeunSchedulerOutput

__all__ = ["EDMHeunDiscreteScheduler", "EDMHeunScheduler", "EDMHeunSchedulerOutput", "LearnedVarianceDDPMScheduler"]
