"""Schedulers: one class per file, each a diffusers ``SchedulerMixin`` / ``ConfigMixin``.

How a solver calls and reads a model is :mod:`.model_call` (shared by every solver); Algorithm 2's float64 plan is
:class:`.stochastic_heun.Algorithm2Plan`; the multistep solvers' (iPNDM, DPM-Solver++, UniPC) is
:class:`.multistep.MultistepPlan`.
"""

from .model_call import DiscreteVPModelCall, ModelCall, SigmaModelCall
from .multistep import EDMMultistepSchedulerOutput, MultistepPlan
from .scheduling_edm_heun import EDMHeunScheduler
from .scheduling_edm_heun_discrete import EDMHeunDiscreteScheduler
from .scheduling_edm_multistep import EDMMultistepScheduler
from .scheduling_edm_multistep_discrete import EDMMultistepDiscreteScheduler
from .scheduling_learned_variance_ddpm import LearnedVarianceDDPMScheduler
from .stochastic_heun import Algorithm2Plan, EDMHeunSchedulerOutput

__all__ = [
    "Algorithm2Plan",
    "DiscreteVPModelCall",
    "EDMHeunDiscreteScheduler",
    "EDMHeunScheduler",
    "EDMHeunSchedulerOutput",
    "EDMMultistepDiscreteScheduler",
    "EDMMultistepScheduler",
    "EDMMultistepSchedulerOutput",
    "LearnedVarianceDDPMScheduler",
    "ModelCall",
    "MultistepPlan",
    "SigmaModelCall",
]
