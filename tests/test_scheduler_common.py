"""The checks of diffusers' own scheduler test suite (``SchedulerCommonTest``), in our words, on the package's schedulers.

Each check states what a diffusers scheduler promises to pipelines (save / load, ``from_config``, ``compatibles``,
``return_dict``, re-running ``set_timesteps``, dtypes, batched ``add_noise``, ``scale_model_input``) and runs it on
``EDMHeunScheduler``, ``EDMHeunDiscreteScheduler``, ``EDMMultistepScheduler``, ``EDMMultistepDiscreteScheduler`` and
``LearnedVarianceDDPMScheduler``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, HeunDiscreteScheduler
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import DummyObject
from diffusers.utils import logging as diffusers_logging

import learned_variance_reference as ref
from algorithm2_reference import vp_table_sigmas
from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    LearnedVarianceDDPMScheduler,
)

SHAPE = (4, 3, 8, 8)


def sigma_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for D(x; sigma) (timestep = sigma): shrinks x towards 0 as sigma grows."""
    t = torch.as_tensor(timestep, dtype=sample.dtype)
    return sample / (1 + t)


def vp_eps_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(timestep, dtype=sample.dtype)
    return 0.1 * sample * t / (t + 1)


def learned_variance_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """eps, then the variance output v in [-1, 1]."""
    return torch.cat([0.1 * sample, torch.tanh(sample)], dim=1)


@dataclass
class Case:
    scheduler_class: type
    config: dict[str, Any]
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    num_steps: int
    compatibles: list[type]
    stochastic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def make(self, **overrides: Any):
        return self.scheduler_class(**{**self.config, **overrides})

    def __str__(self) -> str:
        return self.scheduler_class.__name__


CASES = [
    Case(
        EDMHeunScheduler,
        dict(s_churn=10.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),
        sigma_model,
        6,
        [EDMHeunScheduler, EDMMultistepScheduler, EDMEulerScheduler, EDMDPMSolverMultistepScheduler],
        stochastic=True,
    ),
    Case(
        EDMHeunDiscreteScheduler,
        dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", s_churn=2.0, s_tmax=10.0),
        vp_eps_model,
        6,
        [EDMHeunDiscreteScheduler, EDMMultistepDiscreteScheduler]
        + [getattr(__import__("diffusers"), e.name) for e in KarrasDiffusionSchedulers],
        stochastic=True,
    ),
    Case(
        EDMMultistepScheduler,
        dict(solver="unipc", analytical_first_step=True),
        sigma_model,
        8,
        [EDMMultistepScheduler, EDMHeunScheduler, EDMEulerScheduler, EDMDPMSolverMultistepScheduler],
    ),
    Case(
        EDMMultistepDiscreteScheduler,
        dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver="ipndm"),
        vp_eps_model,
        8,
        [EDMMultistepDiscreteScheduler, EDMHeunDiscreteScheduler]
        + [getattr(__import__("diffusers"), e.name) for e in KarrasDiffusionSchedulers],
    ),
    Case(LearnedVarianceDDPMScheduler, dict(num_train_timesteps=1000), learned_variance_model, 8,
         [LearnedVarianceDDPMScheduler, DDPMScheduler], stochastic=True),
]


@pytest.fixture(params=CASES, ids=str)
def case(request) -> Case:
    return request.param


def sample_like(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def full_loop(case: Case, scheduler, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator).to(dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        output = case.model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x


def public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


# ------------------------------------------------------------------------------------------------ config
def test_save_load_round_trip_gives_the_same_scheduler(case, tmp_path):
    scheduler = case.make()
    scheduler.save_config(tmp_path)
    loaded = case.scheduler_class.from_pretrained(tmp_path)
    assert type(loaded) is case.scheduler_class
    assert public(loaded.config) == public(scheduler.config)
    for s in (scheduler, loaded):
        s.set_timesteps(case.num_steps)
    torch.testing.assert_close(full_loop(case, loaded), full_loop(case, scheduler), rtol=0, atol=0)


def test_save_pretrained_config_equals_the_loaded_one(case, tmp_path):
    scheduler = case.make()
    scheduler.save_pretrained(tmp_path)
    loaded = case.scheduler_class.from_pretrained(tmp_path)
    config = dict(scheduler.config)
    config.pop("_use_default_values", None)
    assert config == dict(loaded.config)


def test_from_config_with_overrides(case):
    scheduler = case.make()
    copy = case.scheduler_class.from_config(scheduler.config)
    assert public(copy.config) == public(scheduler.config)
    changed = case.scheduler_class.from_config(scheduler.config, prediction_type="sample")
    assert changed.config.prediction_type == "sample"


def test_compatibles_list_the_scheduler_itself_and_round_trip(case):
    """diffusers' test_compatibles: every entry resolves to a class, each can be built from our config, and our
    scheduler built back from theirs has our config (their own keys are kept aside, not passed to our __init__)."""
    scheduler = case.make()
    compatibles = scheduler.compatibles
    assert all(c is not None for c in compatibles)
    assert compatibles[0] is case.scheduler_class
    assert set(compatibles) == set(case.compatibles)
    init_keys = set(inspect.signature(case.scheduler_class.__init__).parameters)
    for other_class in compatibles:
        if isinstance(other_class, DummyObject):  # its optional dependency (e.g. torchsde) is not installed
            continue
        other = other_class.from_config(scheduler.config)
        back = case.scheduler_class.from_config(other.config)
        expected = dict(scheduler.config)
        their_solvers = getattr(other_class, "solver_choices", ())
        if their_solvers and expected["solver"] not in their_solvers:
            # Heun and multistep share the key `solver` but no value: each reads the other's as its own default (as
            # diffusers' UniPC reads DPM-Solver's solver_type), so the round trip comes back with the default.
            assert other.config.solver == inspect.signature(other_class.__init__).parameters["solver"].default
            expected["solver"] = inspect.signature(case.scheduler_class.__init__).parameters["solver"].default
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == expected, other_class
        assert not ({k for k in back.config if k not in scheduler.config} & init_keys), other_class


def test_no_deprecated_kwargs(case):
    parameters = inspect.signature(case.scheduler_class.__init__).parameters
    assert "kwargs" not in parameters and not case.scheduler_class._deprecated_kwargs


def test_trained_betas_survive_save_and_load(case, tmp_path):
    if case.scheduler_class in (EDMHeunScheduler, EDMMultistepScheduler):
        pytest.skip("sigma-conditioned: no training table")
    scheduler = case.make(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]), beta_schedule="linear")
    scheduler.save_pretrained(tmp_path)
    loaded = case.scheduler_class.from_pretrained(tmp_path)
    assert loaded.betas.tolist() == scheduler.betas.tolist() == [0.1, 0.3]


def test_config_attribute_access_follows_diffusers(case):
    """Plain attributes read without a warning; config keys read as attributes warn (FutureWarning); unknown ones raise."""
    scheduler = case.make()
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    assert scheduler.dummy_attribute == 5
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.raises(AttributeError, match="does_not_exist"):
        scheduler.does_not_exist  # noqa: B018


# ------------------------------------------------------------------------------------------------ stepping
def test_public_api_and_scale_model_input_shape(case):
    scheduler = case.make()
    scheduler.set_timesteps(case.num_steps)
    assert math.isfinite(float(scheduler.init_noise_sigma)) and scheduler.order in (1, 2)
    sample = sample_like()
    assert scheduler.scale_model_input(sample, scheduler.timesteps[0]).shape == sample.shape


def test_step_shapes(case):
    scheduler = case.make()
    scheduler.set_timesteps(case.num_steps)
    sample = sample_like()
    outputs = []
    for t in scheduler.timesteps[:2]:
        output = scheduler.step(case.model(scheduler.scale_model_input(sample, t), t), t, sample)
        assert output.prev_sample.shape == sample.shape and output.pred_original_sample.shape == sample.shape
        outputs.append(output.prev_sample)
    assert outputs[0].shape == outputs[1].shape


def test_return_dict_false_equals_the_dataclass(case):
    outputs = []
    for return_dict in (True, False):
        scheduler = case.make()
        scheduler.set_timesteps(case.num_steps)
        sample = sample_like()
        t = scheduler.timesteps[0]
        result = scheduler.step(
            case.model(scheduler.scale_model_input(sample, t), t), t, sample,
            generator=torch.Generator().manual_seed(0), return_dict=return_dict,
        )
        outputs.append(result)
    as_dict, as_tuple = outputs
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for from_tuple, from_dict in zip(as_tuple, as_dict.to_tuple()):
        torch.testing.assert_close(from_tuple, from_dict, rtol=0, atol=0)


def test_set_timesteps_twice_gives_the_same_run(case):
    scheduler = case.make()
    scheduler.set_timesteps(case.num_steps)
    timesteps = scheduler.timesteps.clone()
    first = full_loop(case, scheduler)
    scheduler.set_timesteps(case.num_steps)
    scheduler.set_timesteps(case.num_steps)
    torch.testing.assert_close(scheduler.timesteps, timesteps, rtol=0, atol=0)
    torch.testing.assert_close(full_loop(case, scheduler), first, rtol=0, atol=0)
    # a different seed gives a different run where the sampler draws noise
    if case.stochastic:
        scheduler.set_timesteps(case.num_steps)
        assert not torch.equal(full_loop(case, scheduler, seed=1), first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loop_keeps_dtype_and_stays_close(case, dtype):
    scheduler = case.make()
    scheduler.set_timesteps(case.num_steps)
    reference = full_loop(case, scheduler)
    scheduler.set_timesteps(case.num_steps)
    half = full_loop(case, scheduler, dtype=dtype)
    assert half.dtype == dtype and torch.isfinite(half.float()).all()
    # the model input is rounded to the half type at every call: allow a few dozen roundings' worth of error
    scale = reference.abs().max()
    assert float((half.float() - reference).abs().max() / scale) < 20 * torch.finfo(dtype).eps


def test_add_noise_takes_one_timestep_per_sample(case):
    """A batch of clean samples noised to a different level each, checked against the noising formula."""
    scheduler = case.make()
    scheduler.set_timesteps(case.num_steps)
    clean = sample_like(1)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    timesteps = scheduler.timesteps[[0, 2, 4, 6]]
    noisy = scheduler.add_noise(clean, noise, timesteps)
    assert noisy.shape == clean.shape
    for b, t in enumerate(timesteps.tolist()):
        if case.scheduler_class is LearnedVarianceDDPMScheduler:
            alpha_bar = ref.alpha_bars(ref.linear_betas(1000))[int(t)]
            expected = math.sqrt(alpha_bar) * clean[b] + math.sqrt(1 - alpha_bar) * noise[b]
        else:
            if case.scheduler_class in (EDMHeunScheduler, EDMMultistepScheduler):
                sigma = t  # the timestep is the noise level
            else:  # the fractional training timestep, read back through the table's log-sigma
                log_table = np.log(vp_table_sigmas("scaled_linear"))
                sigma = math.exp(np.interp(t, np.arange(1000), log_table))
            expected = clean[b] + sigma * noise[b]
        torch.testing.assert_close(noisy[b], expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ EDMHeunScheduler specifics
def test_a_saved_config_with_sigma_data_still_loads(tmp_path):
    """sigma_data was a config key of EDMHeunScheduler that the sampler never used; old configs still load."""
    scheduler = EDMHeunScheduler(s_churn=5.0)
    scheduler.save_config(tmp_path)
    path = tmp_path / EDMHeunScheduler.config_name
    config = json.loads(path.read_text())
    assert "sigma_data" not in config
    config["sigma_data"] = 0.25
    path.write_text(json.dumps(config))
    loaded = EDMHeunScheduler.from_pretrained(tmp_path)
    assert loaded.config.s_churn == 5.0
    loaded.set_timesteps(4)
    scheduler.set_timesteps(4)
    torch.testing.assert_close(loaded.timesteps, scheduler.timesteps, rtol=0, atol=0)
    # from diffusers' EDM schedulers' configs (which have sigma_data) as well
    EDMHeunScheduler.from_config(EDMEulerScheduler(sigma_data=0.3).config).set_timesteps(4)


def test_diffusers_warns_about_keys_no_compatible_scheduler_knows(tmp_path, caplog):
    """diffusers ignores unknown config keys with a warning, and keys of compatible schedulers silently."""
    scheduler = EDMHeunScheduler()
    scheduler.save_config(tmp_path)
    path = tmp_path / EDMHeunScheduler.config_name
    config = json.loads(path.read_text())
    config.update(unexpected_key=1, sigma_data=0.5)
    path.write_text(json.dumps(config))
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers.configuration_utils"):
            EDMHeunScheduler.from_pretrained(tmp_path)
    finally:
        diffusers_logging.disable_propagation()
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "unexpected_key" in warnings and "sigma_data" not in warnings


def test_swapping_to_a_compatible_diffusers_scheduler_keeps_the_sampling_settings():
    scheduler = EDMHeunScheduler(sigma_min=0.01, sigma_max=50.0, rho=5.0, prediction_type="epsilon")
    euler = EDMEulerScheduler.from_config(scheduler.config)
    assert (euler.config.sigma_min, euler.config.sigma_max, euler.config.rho) == (0.01, 50.0, 5.0)
    assert euler.config.prediction_type == "epsilon"
    heun = HeunDiscreteScheduler()
    assert EDMHeunScheduler not in heun.compatibles
