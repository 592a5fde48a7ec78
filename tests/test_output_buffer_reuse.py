"""A model that returns one buffer it overwrites at every call (what CUDA graphs and
``torch.compile(mode="reduce-overhead")`` do) must sample exactly what a model returning fresh tensors samples.

A sampler may keep what it needs from a model call for a later one (Heun's derivative ``d`` of the Euler call for its
correction, Karras et al. 2022, Algorithm 2; the history of a multistep solver) only as its own tensor: the model's
buffer holds the next call's output by then. Each run below is done twice with the same model function and the same
random numbers, once returning fresh tensors and once copying every output into one preallocated buffer; the final
samples must agree to rounding.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import pytest
import torch

from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    LearnedVarianceDDPMScheduler,
)
from diffusers_edm.models import EDMPrecond
from diffusers_edm.pipelines import EDMPipeline
from tiny_backbones import tiny_unet

SHAPE = (2, 3, 4, 4)
NUM_STEPS = 6
MULTISTEP_SOLVERS = ("ipndm", "ipndm_v", "dpmpp", "unipc")


def model_function(model_input: torch.Tensor, timestep: torch.Tensor, channels_out: int) -> torch.Tensor:
    """A smooth, input- and time-dependent stand-in for a network (bounded outputs, any prediction type)."""
    level = math.log1p(abs(float(timestep)))
    out = torch.tanh(model_input * (0.4 + 0.1 * level)) + 0.05 * level
    return out if channels_out == model_input.shape[1] else torch.cat([out, torch.tanh(0.5 * out)], dim=1)


class ReusedBuffer:
    """Every call's output copied into the same preallocated tensor, which is returned."""

    def __init__(self, function):
        self.function = function
        self.buffer: torch.Tensor | None = None

    def __call__(self, *args, **kwargs):
        out = self.function(*args, **kwargs)
        tensor = out if isinstance(out, torch.Tensor) else out.sample  # a denoiser's output: D in `sample`
        if self.buffer is None:
            self.buffer = torch.empty_like(tensor)
        self.buffer.copy_(tensor)
        if isinstance(out, torch.Tensor):
            return self.buffer
        out.sample = self.buffer
        return out


def sample(scheduler, reuse: bool, channels_out: int = SHAPE[1]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(NUM_STEPS)
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    model = (lambda inp, t: model_function(inp, t, channels_out))
    if reuse:
        model = ReusedBuffer(model)
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def schedulers():
    for prediction_type in ("sample", "epsilon"):
        for s_churn in (0.0, 10.0):
            yield f"heun-{prediction_type}-churn{s_churn:g}", lambda p=prediction_type, c=s_churn: EDMHeunScheduler(
                prediction_type=p, s_churn=c, s_noise=1.003
            )
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        for s_churn in (0.0, 10.0):
            yield f"heun_discrete-{prediction_type}-churn{s_churn:g}", lambda p=prediction_type, c=s_churn: (
                EDMHeunDiscreteScheduler(prediction_type=p, s_churn=c)
            )
    for solver in MULTISTEP_SOLVERS:
        for prediction_type in ("sample", "epsilon"):
            yield f"multistep-{solver}-{prediction_type}", lambda s=solver, p=prediction_type: EDMMultistepScheduler(
                solver=s, solver_order=3, prediction_type=p
            )
        for prediction_type in ("epsilon", "v_prediction", "sample"):
            yield f"multistep_discrete-{solver}-{prediction_type}", lambda s=solver, p=prediction_type: (
                EDMMultistepDiscreteScheduler(solver=s, solver_order=3, prediction_type=p)
            )


SCHEDULERS = dict(schedulers())


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_reused_output_buffer_samples_what_fresh_outputs_sample(name):
    fresh = sample(SCHEDULERS[name](), reuse=False)
    reused = sample(SCHEDULERS[name](), reuse=True)
    assert torch.isfinite(fresh).all()
    torch.testing.assert_close(reused, fresh, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("variance_type", ["learned_range", "fixed_small"])
def test_learned_variance_ddpm_with_a_reused_output_buffer(variance_type):
    def build():
        scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=100, variance_type=variance_type)
        return scheduler

    channels_out = 2 * SHAPE[1]
    fresh = sample(build(), reuse=False, channels_out=channels_out)
    reused = sample(build(), reuse=True, channels_out=channels_out)
    torch.testing.assert_close(reused, fresh, rtol=0.0, atol=1e-6)


def test_the_heun_discrete_regression_of_issue_15():
    """The probe of the issue: eps outputs, 6 steps, EDMHeunDiscreteScheduler kept the model's eps as its ``d``."""
    fresh = sample(EDMHeunDiscreteScheduler(), reuse=False)
    reused = sample(EDMHeunDiscreteScheduler(), reuse=True)
    assert torch.equal(reused, fresh)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda: EDMHeunScheduler(prediction_type="sample", s_churn=5.0),
        *[lambda s=solver: EDMMultistepScheduler(solver=s, solver_order=3) for solver in MULTISTEP_SOLVERS],
    ],
    ids=["heun", *MULTISTEP_SOLVERS],
)
def test_edm_pipeline_with_a_denoiser_that_reuses_its_output_buffer(make_scheduler):
    denoiser = EDMPrecond.from_backbone(tiny_unet()).eval()
    pipe = EDMPipeline(denoiser, make_scheduler())
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0)).images

    fresh = run()
    denoiser.forward = ReusedBuffer(denoiser.forward)  # the instance attribute wins over the class's forward
    reused = run()
    assert torch.isfinite(fresh).all()
    torch.testing.assert_close(reused, fresh, rtol=0.0, atol=1e-6)
