"""Input contracts of the EDM schedulers: any config and any set_timesteps call either raises a ValueError that names
the bad value, or gives a finite schedule sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (Karras et al. 2022, Algorithm 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_edm import EDMHeunDiscreteScheduler, EDMHeunScheduler

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Mostly sensible numbers (so that schedules get built), with every kind of bad value mixed in.
wild = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-3, max_value=10**6),
    st.sampled_from(["abc", "", None, True, [1.0], "0.5"]),
)
positive = st.one_of(st.floats(min_value=1e-4, max_value=1e3), wild)
fraction = st.one_of(st.floats(min_value=0.0, max_value=1.0), wild)
steps = st.one_of(st.integers(min_value=1, max_value=40), st.sampled_from([0, -1, 2.5, "3", None, True]))


def check_schedule(scheduler) -> None:
    """A finite, strictly decreasing schedule that ends in 0, and finite model-call levels and timesteps."""
    sigmas = scheduler.sigmas.numpy()
    assert sigmas[-1] == 0 and np.all(np.isfinite(sigmas)) and np.all(np.diff(sigmas) < 0), sigmas
    hats = scheduler.sigmas_hat.numpy()
    assert np.all(np.isfinite(hats)) and np.all(hats >= sigmas[:-1])
    calls = scheduler.evaluation_sigmas.numpy()
    assert np.all(np.isfinite(calls)) and np.all(calls > 0)
    assert len(scheduler.timesteps) == len(calls) and torch.isfinite(scheduler.timesteps).all()
    assert math.isfinite(scheduler.init_noise_sigma) and scheduler.init_noise_sigma >= sigmas[0]


def build_or_value_error(factory, **kwargs):
    try:
        return factory(**kwargs)
    except ValueError:
        return None


@SETTINGS
@given(
    sigma_min=positive, sigma_max=positive, rho=positive, s_churn=positive, s_tmin=positive, s_tmax=positive,
    s_noise=positive, vp_epsilon_s=fraction, solver=st.sampled_from(["heun", "euler", "rk4", 3]),
    discretization=st.sampled_from(["edm", "vp", "ve", "iddpm", "cosine"]), num_steps=steps,
)
def test_edm_heun_scheduler_gives_a_value_error_or_a_finite_schedule(
    sigma_min, sigma_max, rho, s_churn, s_tmin, s_tmax, s_noise, vp_epsilon_s, solver, discretization, num_steps
):
    scheduler = build_or_value_error(
        EDMHeunScheduler, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, s_churn=s_churn, s_tmin=s_tmin,
        s_tmax=s_tmax, s_noise=s_noise, vp_epsilon_s=vp_epsilon_s, solver=solver, discretization=discretization,
    )
    if scheduler is None:
        return
    try:
        scheduler.set_timesteps(num_steps)
    except ValueError:
        return
    check_schedule(scheduler)


@SETTINGS
@given(
    levels=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)), min_size=0, max_size=8),
    sigma_min=st.one_of(st.none(), positive), sigma_max=st.one_of(st.none(), positive),
)
def test_set_timesteps_with_sigmas_or_a_range_gives_a_value_error_or_a_finite_schedule(levels, sigma_min, sigma_max):
    for scheduler in (EDMHeunScheduler(s_churn=5.0), EDMHeunDiscreteScheduler(s_churn=5.0)):
        try:
            scheduler.set_timesteps(sigmas=levels)
        except ValueError:
            pass
        else:
            check_schedule(scheduler)
        try:
            scheduler.set_timesteps(6, sigma_min=sigma_min, sigma_max=sigma_max)
        except ValueError:
            continue
        check_schedule(scheduler)


@SETTINGS
@given(
    num_train_timesteps=st.one_of(st.integers(min_value=2, max_value=300), wild),
    beta_start=st.one_of(st.floats(min_value=1e-6, max_value=0.5), wild),
    beta_end=st.one_of(st.floats(min_value=1e-6, max_value=0.5), wild),
    beta_schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "quadratic"]),
    prediction_type=st.sampled_from(["epsilon", "v_prediction", "sample", "x0"]),
    sigma_min=st.one_of(st.none(), positive), sigma_max=st.one_of(st.none(), positive),
    s_churn=positive, s_noise=positive, num_steps=steps,
)
def test_edm_heun_discrete_scheduler_gives_a_value_error_or_a_finite_schedule(
    num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, sigma_min, sigma_max, s_churn, s_noise,
    num_steps,
):
    scheduler = build_or_value_error(
        EDMHeunDiscreteScheduler, num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule=beta_schedule, prediction_type=prediction_type, sigma_min=sigma_min, sigma_max=sigma_max,
        s_churn=s_churn, s_noise=s_noise,
    )
    if scheduler is None:
        return
    check_schedule(scheduler)  # the default schedule of __init__
    try:
        scheduler.set_timesteps(num_steps)
    except ValueError:
        return
    check_schedule(scheduler)


@pytest.mark.parametrize(
    "scheduler_class,key,value",
    [
        (EDMHeunScheduler, "sigma_max", float("inf")),
        (EDMHeunScheduler, "sigma_min", "abc"),
        (EDMHeunScheduler, "sigma_min", float("nan")),
        (EDMHeunScheduler, "s_churn", "x"),
        (EDMHeunScheduler, "s_churn", float("inf")),
        (EDMHeunScheduler, "rho", None),
        (EDMHeunScheduler, "s_noise", [1.0]),
        (EDMHeunScheduler, "s_tmin", True),
        (EDMHeunScheduler, "vp_epsilon_s", 1.5),
        (EDMHeunScheduler, "iddpm_M", 10.5),
        (EDMHeunDiscreteScheduler, "sigma_max", float("inf")),
        (EDMHeunDiscreteScheduler, "sigma_min", "abc"),
        (EDMHeunDiscreteScheduler, "beta_start", "abc"),
        (EDMHeunDiscreteScheduler, "beta_end", None),
        (EDMHeunDiscreteScheduler, "num_train_timesteps", "1000"),
        (EDMHeunDiscreteScheduler, "trained_betas", ["a", "b"]),
        (EDMHeunDiscreteScheduler, "s_churn", "x"),
        (EDMHeunDiscreteScheduler, "rho", None),
    ],
)
def test_a_bad_config_value_is_a_value_error_naming_it(scheduler_class, key, value):
    with pytest.raises(ValueError) as error:
        scheduler_class(**{key: value})
    message = str(error.value)
    assert key in message and repr(value) in message, message


def test_an_unrepresentable_schedule_is_a_value_error_naming_the_settings():
    # rho = 1e-3 raises sigma_max to the 1000th power, beyond float64
    with pytest.raises(ValueError, match="rho=0.001"):
        EDMHeunScheduler(rho=1e-3).set_timesteps(10)
    with pytest.raises(ValueError, match="'vp'"):
        EDMHeunScheduler(sigma_max=1e200, discretization="vp").set_timesteps(10)
    with pytest.raises(ValueError, match="s_noise"):
        EDMHeunScheduler(sigma_min=1e290, sigma_max=1e300, s_churn=10.0, s_noise=1e10).set_timesteps(4)
