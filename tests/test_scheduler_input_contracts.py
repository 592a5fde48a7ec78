"""Input contracts of the EDM schedulers: any config and any set_timesteps call either raises a ValueError that names
the bad value, or gives a finite schedule sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (Karras et al. 2022, Algorithm 2;
for the multistep schedulers also finite solver weights and one model call per requested step)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
)

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


def check_multistep_schedule(scheduler, num_calls: int | None = None) -> None:
    """A finite, strictly decreasing schedule that ends in 0, one finite positive level and timestep per model call
    (``num_calls`` of them when given), a finite positive initial noise level and finite solver weights."""
    sigmas = scheduler.sigmas.numpy()
    assert sigmas[-1] == 0 and np.all(np.isfinite(sigmas)) and np.all(np.diff(sigmas) < 0), sigmas
    calls = scheduler.evaluation_sigmas.numpy()
    assert np.all(np.isfinite(calls)) and np.all(calls > 0) and set(calls) <= set(sigmas)
    assert len(scheduler.timesteps) == len(calls) and torch.isfinite(scheduler.timesteps).all()
    if num_calls is not None:
        assert len(calls) == num_calls
    assert math.isfinite(scheduler.init_noise_sigma) and scheduler.init_noise_sigma > 0
    plan = scheduler.plan
    for update in (*plan.predictors, *plan.correctors):
        if update is not None:
            assert all(math.isfinite(w) for w in (update.sample_weight, *update.history_weights)), update


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


def sometimes_bad(good: st.SearchStrategy, bad: list) -> st.SearchStrategy:
    """Mostly ``good`` values (7 in 8, so that schedules get built despite many settings), the ``bad`` ones mixed in."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda use_good: good if use_good else st.sampled_from(bad))


MULTISTEP_SETTINGS = dict(
    rho=sometimes_bad(st.floats(min_value=0.5, max_value=20.0), [0.0, -1.0, float("nan"), "7"]),
    sigma_data=sometimes_bad(st.floats(min_value=0.05, max_value=5.0), [0.0, float("inf"), None]),
    solver=sometimes_bad(st.sampled_from(["auto", "ipndm", "ipndm_v", "dpmpp", "unipc"]), ["heun", "rk4", 3, None]),
    solver_order=sometimes_bad(st.integers(min_value=1, max_value=4), [0, 5, 2.0, "2", True, None]),
    lower_order_final=sometimes_bad(st.booleans(), [1, "no"]),
    analytical_first_step=sometimes_bad(st.booleans(), [0, None]),
    discretization=sometimes_bad(
        st.sampled_from(["edm", "logsnr", "time_uniform", "vp", "ve", "iddpm"]), ["karras", None]
    ),
    num_steps=sometimes_bad(st.integers(min_value=1, max_value=40), [0, -1, 2.5, "3", None, True]),
)


@SETTINGS
@given(
    sigma_min=sometimes_bad(st.floats(min_value=1e-4, max_value=1.0), [0.0, float("nan"), "abc"]),
    sigma_max=sometimes_bad(st.floats(min_value=0.5, max_value=1e3), [float("inf"), -1.0, None]),
    **MULTISTEP_SETTINGS,
)
def test_edm_multistep_scheduler_gives_a_value_error_or_a_finite_schedule(
    sigma_min, sigma_max, rho, sigma_data, solver, solver_order, lower_order_final, analytical_first_step,
    discretization, num_steps,
):
    scheduler = build_or_value_error(
        EDMMultistepScheduler, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, sigma_data=sigma_data, solver=solver,
        solver_order=solver_order, lower_order_final=lower_order_final, analytical_first_step=analytical_first_step,
        discretization=discretization,
    )
    if scheduler is None:
        return
    try:
        scheduler.set_timesteps(num_steps)
    except ValueError:
        return
    check_multistep_schedule(scheduler, num_steps)


@SETTINGS
@given(
    beta_schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "quadratic"]),
    prediction_type=st.sampled_from(["epsilon", "v_prediction", "sample", "x0"]),
    sigma_min=st.one_of(st.none(), st.none(), positive), sigma_max=st.one_of(st.none(), st.none(), positive),
    **MULTISTEP_SETTINGS,
)
def test_edm_multistep_discrete_scheduler_gives_a_value_error_or_a_finite_schedule(
    beta_schedule, prediction_type, sigma_min, sigma_max, rho, sigma_data, solver, solver_order, lower_order_final,
    analytical_first_step, discretization, num_steps,
):
    scheduler = build_or_value_error(
        EDMMultistepDiscreteScheduler, beta_schedule=beta_schedule, prediction_type=prediction_type,
        sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, sigma_data=sigma_data, solver=solver,
        solver_order=solver_order, lower_order_final=lower_order_final, analytical_first_step=analytical_first_step,
        discretization=discretization,
    )
    if scheduler is None:
        return
    try:
        scheduler.set_timesteps(num_steps)
    except ValueError:
        return
    check_multistep_schedule(scheduler, num_steps)


@SETTINGS
@given(
    levels=st.one_of(
        st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)), min_size=0, max_size=8),
        # decreasing positive levels (within the SD table's range 0.03..14.6 half of the time), maybe a final 0
        st.tuples(
            st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=8, unique=True),
            st.lists(st.floats(min_value=0.03, max_value=14.6), min_size=1, max_size=8, unique=True),
            st.booleans(), st.booleans(),
        ).map(lambda v: sorted(v[0] if v[2] else v[1], reverse=True) + [0.0] * v[3]),
    ),
    analytical_first_step=st.booleans(),
    solver=st.sampled_from(["ipndm", "dpmpp", "unipc"]),
)
def test_multistep_set_timesteps_with_sigmas_gives_a_value_error_or_a_finite_schedule(levels, analytical_first_step, solver):
    for scheduler_class in (EDMMultistepScheduler, EDMMultistepDiscreteScheduler):
        scheduler = scheduler_class(solver=solver, analytical_first_step=analytical_first_step)
        try:
            scheduler.set_timesteps(sigmas=levels)
        except ValueError:
            continue
        check_multistep_schedule(scheduler)


@SETTINGS
@given(
    sigma_min=st.floats(min_value=1e-3, max_value=1.0), sigma_max=st.floats(min_value=2.0, max_value=500.0),
    rho=st.floats(min_value=0.5, max_value=20.0), sigma_data=st.floats(min_value=0.05, max_value=5.0),
    solver_and_order=st.sampled_from(["auto", "ipndm", "ipndm_v", "dpmpp", "unipc"]).flatmap(
        lambda solver: st.tuples(st.just(solver), st.integers(1, 4 if solver in ("auto", "ipndm", "ipndm_v") else 3))
    ),
    lower_order_final=st.booleans(), analytical_first_step=st.booleans(),
    discretization=st.sampled_from(["edm", "logsnr", "time_uniform", "vp", "ve"]),
    num_steps=st.integers(min_value=1, max_value=40), discrete=st.booleans(),
)
def test_every_valid_multistep_setting_builds_a_finite_schedule(
    sigma_min, sigma_max, rho, sigma_data, solver_and_order, lower_order_final, analytical_first_step, discretization,
    num_steps, discrete,
):
    """Valid options over sensible ranges never fail (the discrete scheduler: within Stable Diffusion's table), except
    that EDM's VP refit (``"vp"``, ``"time_uniform"``) has no increasing sigma(t) when sigma_min is too large for
    sigma_max (``beta_min + beta_d <= 0``): that is a ValueError naming the discretization."""
    solver, solver_order = solver_and_order
    options = dict(
        rho=rho, sigma_data=sigma_data, solver=solver, solver_order=solver_order, lower_order_final=lower_order_final,
        analytical_first_step=analytical_first_step, discretization=discretization,
    )
    if discrete:
        scheduler = EDMMultistepDiscreteScheduler(beta_schedule="scaled_linear", **options)
        sigma_min, sigma_max = max(sigma_min, 0.03), min(sigma_max, 14.6)
    else:
        scheduler = EDMMultistepScheduler(sigma_min=sigma_min, sigma_max=sigma_max, **options)
        sigma_min = sigma_max = None
    try:
        scheduler.set_timesteps(num_steps, sigma_min=sigma_min, sigma_max=sigma_max)
    except ValueError as error:
        assert discretization in ("vp", "time_uniform") and repr(discretization) in str(error), error
        return
    check_multistep_schedule(scheduler, num_steps)
