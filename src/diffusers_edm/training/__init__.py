"""Training: the Accelerate script (``train.py``) and the pieces it is made of."""

from .ema import EDMEMAModel
from .timestep_samplers import (
    LossSecondMomentTimestepSampler,
    TimestepSampler,
    UniformTimestepSampler,
    create_timestep_sampler,
)

__all__ = ["EDMEMAModel", "LossSecondMomentTimestepSampler", "TimestepSampler", "UniformTimestepSampler", "create_timestep_sampler"]
