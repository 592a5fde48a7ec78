"""EDMMultistepScheduler / EDMMultistepDiscreteScheduler against independent float64 loops of their formulas.

The loops (tests/multistep_reference.py) state iPNDM (Zhang & Chen 2023), multistep DPM-Solver++ (Lu et al. 2022)
and UniPC bh2 (Zhao et al. 2023) in EDM's sigma space; they are first checked against diffusers' own
DPMSolverMultistepScheduler / UniPCMultistepScheduler driven with an exact VP model (the same ODE in VP coordinates),
then the package's schedulers are checked against them to 1e-10 on an exact Gaussian-mixture denoiser, and their
convergence order is measured on Gaussian data, whose probability-flow ODE has a closed-form solution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

import multistep_reference as ref
from algorithm2_reference import GaussianMixtureDenoiser, edm_sigmas, vp_sigmas, vp_table_sigmas
from diffusers_edm import EDMMultistepDiscreteScheduler, EDMMultistepScheduler

SHAPE = (3, 4, 2, 2)
DIM = 16
SOLVER_ORDERS = [("ipndm", 1), ("ipndm", 2), ("ipndm", 3), ("ipndm", 4), ("ipndm_v", 2), ("ipndm_v", 3), ("ipndm_v", 4),
                 ("dpmpp", 1), ("dpmpp", 2), ("dpmpp", 3), ("unipc", 1), ("unipc", 2), ("unipc", 3)]
GRIDS = ("edm", "logsnr", "time_uniform", "custom")
# Budgets (model calls): 3 (orders lowered at once), 5, 8, 14 (14 steps without AFS: < 15, the last steps lower their
# order; 15 with AFS: they do not), 16.
# the package's DPM-Solver++ 3M is the published update (see multistep_reference.dpmpp): second order
DPMPP_TAYLOR_THIRD_ORDER = False
SIGMA_DATA = {"sigma": 0.5, "discrete": 1.0}  # the schedulers' default sigma_data (used by AFS)
SD_TABLE = vp_table_sigmas("scaled_linear")  # Stable Diffusion's training table, sigma_t = sqrt((1 - abar) / abar)


@pytest.fixture(scope="module")
def denoiser() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(DIM, seed=4, spread=0.5)


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(solver: str, denoise, levels, x, **kwargs) -> ref.Run:
    if solver == "dpmpp":
        kwargs["taylor_third_order"] = DPMPP_TAYLOR_THIRD_ORDER
    return ref.SOLVERS[solver](denoise, levels, x, **kwargs)


def reference_levels(grid: str, count: int, sigma_min: float, sigma_max: float, seed: int = 0) -> list[float]:
    """``count`` levels of a grid, each from its own formula (Karras et al. 2022, Table 1; uniform log-sigma)."""
    if grid == "edm":
        return edm_sigmas(count, sigma_min, sigma_max, rho=7.0)
    if grid == "logsnr":
        return ref.logsnr_sigmas(count, sigma_min, sigma_max)
    if grid == "time_uniform":  # EDM's "vp" levels: uniform in VP time t from 1 to epsilon_s = 1e-3
        return vp_sigmas(count, sigma_min, sigma_max, epsilon_s=1e-3)
    return ref.custom_sigmas(count, sigma_min, sigma_max, seed=count)


# ------------------------------------------------------------------------------------------------
# Models: a sigma-conditioned one, and a discrete VP network that reads sigma back from its timestep
# ------------------------------------------------------------------------------------------------
class SigmaModel:
    """An EDM-native model: ``timestep`` is sigma; returns D (``"sample"``) or ``(x - D) / sigma``."""

    def __init__(self, denoise, prediction_type: str = "sample"):
        self.denoise, self.prediction_type, self.sigmas = denoise, prediction_type, []

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = float(timestep)
        self.sigmas.append(sigma)
        denoised = self.denoise(x, sigma)
        return denoised if self.prediction_type == "sample" else (x - denoised) / sigma


def table_sigma(timestep: float, table: np.ndarray = SD_TABLE) -> float:
    """The noise level of a fractional training timestep: linear interpolation of log sigma over the table."""
    low = min(int(math.floor(timestep)), len(table) - 2)
    w = timestep - low
    return math.exp((1 - w) * math.log(table[low]) + w * math.log(table[low + 1]))


class DiscreteVPModel:
    """A discrete-time VP network built from an exact denoiser: input ``x / sqrt(sigma^2 + 1)`` and a fractional
    training timestep; it reads sigma back from the timestep (:func:`table_sigma`), checks it against the expected
    level of this call (float32 timesteps carry ~1e-7 of it) and answers eps, v or x_0 at that level."""

    def __init__(self, denoise, expected_sigmas: list[float], prediction_type: str):
        self.denoise, self.expected, self.prediction_type = denoise, expected_sigmas, prediction_type
        self.read_sigmas: list[float] = []

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        read = table_sigma(float(timestep))
        sigma = self.expected[len(self.read_sigmas)]
        self.read_sigmas.append(read)
        call = len(self.read_sigmas) - 1
        assert abs(read / sigma - 1) < 2e-5, f"call {call}: timestep {float(timestep)} is sigma {read}, not {sigma}"
        x = x_t * math.sqrt(sigma**2 + 1)
        y = self.denoise(x, sigma)
        eps = (x - y) / sigma
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) y
            return (eps - sigma * y) / math.sqrt(sigma**2 + 1)
        return y


def run_scheduler(scheduler, model, x: torch.Tensor, begin: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trajectory = []
    for t in scheduler.timesteps[begin:]:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        trajectory.append(x)
    return x, trajectory


def build(kind: str, solver: str, order: int, afs: bool, lof: bool, grid: str, budget: int, prediction_type: str):
    """A scheduler set to ``budget`` model calls, and the levels sigma_0 > ... its run visits (written here)."""
    common = dict(solver=solver, solver_order=order, lower_order_final=lof, analytical_first_step=afs,
                  prediction_type=prediction_type)
    if kind == "sigma":
        sigma_min, sigma_max = 0.002, 80.0
        cls, extra = EDMMultistepScheduler, {}
    else:
        sigma_min, sigma_max = float(SD_TABLE[0]), float(SD_TABLE[-1])
        cls = EDMMultistepDiscreteScheduler
        extra = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    num_levels = budget + 1 if afs else budget
    levels = reference_levels(grid, num_levels, sigma_min, sigma_max)
    if grid == "custom":
        scheduler = cls(**common, **extra)
        scheduler.set_timesteps(sigmas=levels + [0.0] if budget % 2 else levels)  # a final 0 is allowed
    else:
        scheduler = cls(**common, discretization=grid, **extra)
        scheduler.set_timesteps(budget)
    return scheduler, levels


def check_against_reference(kind, solver, order, prediction_type, denoiser, afs, lof, grid, budget):
    label = f"{kind}/{prediction_type} {solver}-{order} afs={afs} lower_order_final={lof} {grid} {budget} calls"
    scheduler, levels = build(kind, solver, order, afs, lof, grid, budget, prediction_type)
    x0 = noise(budget) * levels[0]
    expected = reference(solver, denoiser, levels, x0, order=order, lower_order_final=lof,
                         analytical_first_step=afs, sigma_data=SIGMA_DATA[kind])
    assert len(scheduler.timesteps) == budget, label
    start = expected.trajectory[0] if afs else x0  # with AFS the run starts at x_1 = a x_0
    torch.testing.assert_close(scheduler.init_noise_sigma * noise(budget), start, rtol=1e-12, atol=1e-12, msg=label)
    if kind == "sigma":
        model = SigmaModel(denoiser, prediction_type)
    else:
        model = DiscreteVPModel(denoiser, expected.call_sigmas, prediction_type)
    result, trajectory = run_scheduler(scheduler, model, start)
    if kind == "sigma":
        np.testing.assert_allclose(model.sigmas, expected.call_sigmas, rtol=1e-12, err_msg=label)
    torch.testing.assert_close(result, expected.sample, rtol=0, atol=1e-10, msg=label)
    # every intermediate sample too (for UniPC: the predictor's output, corrected at the next call)
    for got, want in zip(trajectory, expected.trajectory[1:] if afs else expected.trajectory):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=label)


# ------------------------------------------------------------------------------------------------
# 1. The references agree with diffusers' own multistep schedulers (VP coordinates, integer timesteps)
# ------------------------------------------------------------------------------------------------
def vp_scheduler(cls, order: int, levels: list[float], lof: bool = True):
    """diffusers' scheduler, its noise levels replaced by ``levels`` + [0] in float64: its solver then integrates the
    same ODE in VP coordinates ``x_vp = x / sqrt(sigma^2 + 1)`` (alpha = 1 / sqrt(sigma^2 + 1)); the integer
    timesteps only index the steps."""
    kwargs = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=order,
                  prediction_type="epsilon", use_karras_sigmas=True, final_sigmas_type="zero", lower_order_final=lof)
    if cls is DPMSolverMultistepScheduler:
        kwargs["algorithm_type"] = "dpmsolver++"
    else:
        kwargs.update(solver_type="bh2", predict_x0=True)
    scheduler = cls(**kwargs)
    scheduler.set_timesteps(len(levels))
    scheduler.sigmas = torch.tensor(levels + [0.0], dtype=torch.float64)
    scheduler.set_begin_index(0)
    return scheduler


def to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x / math.sqrt(sigma**2 + 1)


def eps_of(denoised: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x - denoised) / sigma


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lof", [True, False])
@pytest.mark.parametrize("num_steps", [10, 14, 15])  # diffusers lowers the last orders only below 15 steps
def test_dpmpp_reference_matches_diffusers_step_by_step(denoiser, order, lof, num_steps):
    """Each step of the reference equals diffusers' DPM-Solver++ update of that order from the same state and history
    (float64; diffusers' ``step`` itself rounds the sample to float32, so its update functions are called), and the
    orders the reference takes are the ones diffusers' ``step`` chooses."""
    levels = ref.custom_sigmas(num_steps, 0.03, 14.6, seed=1)
    run = ref.dpmpp(denoiser, levels, noise(1) * levels[0], order=order, lower_order_final=lof)
    scheduler = vp_scheduler(DPMSolverMultistepScheduler, order, levels, lof)
    for i, o in enumerate(run.orders):
        scheduler._step_index = i
        x_vp = to_vp(run.starts[i], levels[i])
        converted = scheduler.convert_model_output(eps_of(run.denoised[i], run.starts[i], levels[i]), sample=x_vp)
        torch.testing.assert_close(converted, run.denoised[i], rtol=1e-12, atol=1e-12)
        history = [run.denoised[max(i - k, 0)] for k in (2, 1, 0)]
        if o == 1:
            got = scheduler.dpm_solver_first_order_update(converted, sample=x_vp)
        elif o == 2:
            got = scheduler.multistep_dpm_solver_second_order_update(history, sample=x_vp)
        else:
            got = scheduler.multistep_dpm_solver_third_order_update(history, sample=x_vp)
        want = to_vp(run.trajectory[i], run.levels[i + 1])
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, msg=f"step {i}")
    assert run.orders == diffusers_dpmpp_orders(order, len(levels), lof)


def diffusers_dpmpp_orders(order: int, num_steps: int, lof: bool) -> list[int]:
    """The orders diffusers' DPMSolverMultistepScheduler.step takes (recorded from a float32 run)."""
    scheduler = vp_scheduler(DPMSolverMultistepScheduler, order, edm_sigmas(num_steps, 0.03, 14.6), lof)
    scheduler.sigmas = scheduler.sigmas.float()
    taken = []
    for o, name in ((1, "dpm_solver_first_order_update"), (2, "multistep_dpm_solver_second_order_update"),
                    (3, "multistep_dpm_solver_third_order_update")):
        method = getattr(scheduler, name)
        setattr(scheduler, name, lambda *a, _m=method, _o=o, **k: (taken.append(_o), _m(*a, **k))[1])
    x = torch.ones(1, 4)
    for t in scheduler.timesteps:
        x = scheduler.step(x * 0.1, t, x).prev_sample
    return taken


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_reference_matches_diffusers_predictor_and_corrector(denoiser, order):
    """Each UniP predictor and UniC corrector of the reference equals diffusers' bh2 update of the same order from
    the same samples and history (float64)."""
    levels = ref.custom_sigmas(10, 0.03, 14.6, seed=2)
    run = ref.unipc(denoiser, levels, noise(2) * levels[0], order=order, lower_order_final=True)
    scheduler = vp_scheduler(UniPCMultistepScheduler, order, levels)
    for i, o in enumerate(run.orders[:-1]):  # the last step (to 0) is x = D
        history = [run.denoised[max(i - k, 0)] for k in range(order - 1, -1, -1)]
        scheduler._step_index = i
        scheduler.model_outputs = list(history)
        predicted = scheduler.multistep_uni_p_bh_update(None, sample=to_vp(run.starts[i], levels[i]), order=o)
        torch.testing.assert_close(predicted, to_vp(run.trajectory[i], run.levels[i + 1]), rtol=1e-11, atol=1e-11,
                                   msg=f"predictor {i}")
        scheduler._step_index = i + 1
        corrected = scheduler.multistep_uni_c_bh_update(
            this_model_output=run.denoised[i + 1], last_sample=to_vp(run.starts[i], levels[i]),
            this_sample=predicted, order=o)
        torch.testing.assert_close(corrected, to_vp(run.starts[i + 1], run.levels[i + 1]), rtol=1e-11, atol=1e-11,
                                   msg=f"corrector {i}")


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_reference_matches_a_whole_diffusers_run(denoiser, order):
    """With fewer than 15 steps and lower_order_final (where diffusers' order rule and the spec's agree), a whole
    float64 run of diffusers' UniPCMultistepScheduler with an exact VP eps model equals the reference."""
    levels = ref.custom_sigmas(9, 0.03, 14.6, seed=3)
    run = ref.unipc(denoiser, levels, noise(3) * levels[0], order=order, lower_order_final=True)
    scheduler = vp_scheduler(UniPCMultistepScheduler, order, levels)
    x_vp = to_vp(noise(3) * levels[0], levels[0])
    for i, t in enumerate(scheduler.timesteps):
        x = x_vp * math.sqrt(levels[i] ** 2 + 1)
        x_vp = scheduler.step(eps_of(denoiser(x, levels[i]), x, levels[i]), t, x_vp).prev_sample
        torch.testing.assert_close(x_vp, to_vp(run.trajectory[i], run.levels[i + 1]), rtol=1e-11, atol=1e-11,
                                   msg=f"step {i}")
    torch.testing.assert_close(x_vp, run.sample, rtol=0, atol=1e-11)


def test_ipndm_reference_is_the_published_adams_bashforth_loop(denoiser):
    """iPNDM with lower_order_final=False is the plain loop ``x += (sigma_{i+1} - sigma_i) * AB_o(d)`` written out
    here once more with its weights inline; AFS enters d_0 = (1 - c_skip) x_0 / sigma_0 (not D_0) into the history."""
    levels = edm_sigmas(7, 0.002, 80.0)
    t = levels + [0.0]
    for afs in (False, True):
        x = noise(5) * levels[0]
        ds = []
        for i in range(len(levels)):
            if afs and i == 0:
                d = x * (1 - 0.25 / (t[0] ** 2 + 0.25)) / t[0]
            else:
                d = (x - denoiser(x, t[i])) / t[i]
            ds.insert(0, d)
            w = {1: [1], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12],
                 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}[min(4, i + 1)]
            x = x + (t[i + 1] - t[i]) * sum(wk * dk for wk, dk in zip(w, ds))
        run = ref.ipndm(denoiser, levels, noise(5) * levels[0], order=4, lower_order_final=False,
                        analytical_first_step=afs, sigma_data=0.5)
        torch.testing.assert_close(run.sample, x, rtol=0, atol=1e-12)


def test_dpmpp_third_order_step_is_exact_only_with_the_taylor_factor():
    """The published 3M step halves the D'' term (multistep_reference.dpmpp): for D = lambda^2 (no dependence on x),
    a step from lambda = 0 to h adds ``t int_0^h e^u u^2 du`` exactly; the Taylor-factor step adds that, the
    published one half of it."""
    quadratic = lambda x, sigma: torch.full_like(x, math.log(sigma) ** 2)  # noqa: E731  (lambda = -ln sigma)
    for h in (0.2, 0.1):
        levels = [math.exp(2 * h), math.exp(h), 1.0, math.exp(-h)]  # lambda = -2h, -h, 0, h
        exact = math.exp(-h) * ((h**2 - 2 * h + 2) * math.exp(h) - 2)
        for taylor, share in ((True, 1.0), (False, 0.5)):
            run = ref.dpmpp(quadratic, levels, torch.zeros(1, dtype=torch.float64), order=3, lower_order_final=False,
                            taylor_third_order=taylor)
            assert run.orders[2] == 3
            increment = run.trajectory[2] - math.exp(-h) * run.starts[2]
            assert float(increment) == pytest.approx(share * exact, rel=1e-9)


# ------------------------------------------------------------------------------------------------
# 2. The schedulers equal the references
# ------------------------------------------------------------------------------------------------
# (model kind, prediction type) -> [(grids, budgets), ...] swept with AFS on/off and lower_order_final on/off. The
# solver arithmetic is swept fully once; reading D from the other outputs is checked on fewer grids and budgets.
SWEEPS = {
    ("sigma", "sample"): [(GRIDS, (3, 8, 14)), (("edm", "custom"), (5, 16))],
    ("sigma", "epsilon"): [(("edm", "custom"), (3, 14))],
    ("discrete", "epsilon"): [(GRIDS, (3, 14)), (("edm",), (8,))],
    ("discrete", "v_prediction"): [(("edm", "custom"), (3, 14))],
}


@pytest.mark.parametrize("solver,order", SOLVER_ORDERS)
@pytest.mark.parametrize("kind,prediction_type", list(SWEEPS))
def test_scheduler_matches_reference(denoiser, solver, order, kind, prediction_type):
    for grids, budgets in SWEEPS[(kind, prediction_type)]:
        for afs in (False, True):
            for lof in (True, False):
                for grid in grids:
                    for budget in budgets:
                        check_against_reference(kind, solver, order, prediction_type, denoiser, afs, lof, grid, budget)


@pytest.mark.parametrize("solver", ["ipndm", "dpmpp", "unipc"])
def test_discrete_scheduler_sample_prediction(denoiser, solver):
    check_against_reference("discrete", solver, 3, "sample", denoiser, True, True, "edm", 8)


@pytest.mark.parametrize("kind", ["sigma", "discrete"])
@pytest.mark.parametrize("solver", ["ipndm", "dpmpp", "unipc"])
def test_afs_saves_a_call_and_starts_at_x1(kind, solver):
    """With AFS the levels are sigma_0 > ... > sigma_M (M + 1 of them) for M calls, and the run starts at
    x_1 = a x_0 = a sigma_0 n: init_noise_sigma = a sigma_0 with a = sigma_1/sigma_0 + c_skip(sigma_0)
    (1 - sigma_1/sigma_0); without AFS init_noise_sigma = sigma_0."""
    prediction_type = "sample" if kind == "sigma" else "epsilon"
    for budget in (2, 5, 10):
        scheduler, levels = build(kind, solver, ref.ORDER_RANGE[solver][1], True, True, "edm", budget, prediction_type)
        assert len(scheduler.timesteps) == budget
        a = ref.afs_scale(levels[0], levels[1], SIGMA_DATA[kind])
        assert scheduler.init_noise_sigma == pytest.approx(a * levels[0], rel=1e-12)
        plain, plain_levels = build(kind, solver, 2, False, True, "edm", budget, prediction_type)
        assert plain.init_noise_sigma == pytest.approx(plain_levels[0], rel=1e-12)


@pytest.mark.parametrize(
    "solver,order", [("ipndm", 4), ("ipndm", 2), ("dpmpp", 3), ("dpmpp", 2), ("unipc", 3), ("unipc", 2)]
)
@pytest.mark.parametrize("afs", [False, True])
def test_image_to_image_starts_without_history(denoiser, solver, order, afs):
    """``set_begin_index(k)``: the run from call k equals the reference started at that call's level with no history
    (warm-up orders 1, 2, ... from there; no AFS seed). ``set_begin_index(0)`` (what pipelines call) is a full run."""
    budget = 9
    _, levels = build("sigma", solver, order, afs, True, "edm", budget, "sample")
    full = reference(solver, denoiser, levels, noise(7) * levels[0], order=order, analytical_first_step=afs)
    for k in (0, 1, 3, 6):
        scheduler, levels = build("sigma", solver, order, afs, True, "edm", budget, "sample")
        scheduler.set_begin_index(k)
        level = k + 1 if afs else k  # with AFS call k is at sigma_{k+1}
        x = noise(8) * levels[level] + denoiser.means[0].reshape(SHAPE[1:])
        if k == 0:
            x = full.trajectory[0] if afs else noise(7) * levels[0]
            expected = full
        else:
            expected = reference(solver, denoiser, levels, x, order=order, start=level)
            clean = denoiser.means[0].reshape(SHAPE[1:]).expand(SHAPE)
            noised = scheduler.add_noise(clean, noise(8), scheduler.timesteps[k:k + 1].repeat(SHAPE[0]))
            torch.testing.assert_close(noised, x, rtol=1e-12, atol=1e-12)
        result, _ = run_scheduler(scheduler, SigmaModel(denoiser), x, begin=k)
        torch.testing.assert_close(result, expected.sample, rtol=0, atol=1e-10, msg=f"begin index {k}")


# ------------------------------------------------------------------------------------------------
# 3. Convergence order on Gaussian data
# ------------------------------------------------------------------------------------------------
DATA_STD = 0.5
# (slope expected as the number of steps doubles from 128 to 256 to 512 on EDM's rho = 7 grid, tolerance).
# iPNDM's constant-step Adams-Bashforth weights on a non-uniform grid leave a local error (g'' d' / 12) du^3
# (sigma = g(u), u uniform), so iPNDM-3/4 converge at second order however accurate they are at few steps (the
# variable-step weights of "ipndm_v" keep order p); the
# published DPM-Solver++ 3M halves its D'' term (second order); UniC-p raises UniP-p to order p + 1.
EXPECTED_SLOPES = {
    ("ipndm", 1): 1.0, ("ipndm", 2): 2.0, ("ipndm", 3): 2.0, ("ipndm", 4): 2.0,
    ("ipndm_v", 2): 2.0, ("ipndm_v", 3): 3.0, ("ipndm_v", 4): 4.0,
    ("dpmpp", 1): 1.0, ("dpmpp", 2): 2.0, ("dpmpp", 3): 3.0 if DPMPP_TAYLOR_THIRD_ORDER else 2.0,
    ("unipc", 1): 2.0, ("unipc", 2): 3.0, ("unipc", 3): 4.0,
}
CONVERGENCE_STEPS = (32, 64, 128, 256, 512)


def gaussian_errors(solver: str, order: int, run) -> list[float]:
    """Relative error of the sample at the smallest positive level sigma_min = 0.002 (before the jump to 0, whose
    own error ~ sigma_min^2 / (2 DATA_STD^2) does not shrink with the step count) for each step count."""
    x0 = torch.full((1, 1, 1, 1), 80.0, dtype=torch.float64)
    errors = []
    for steps in CONVERGENCE_STEPS:
        at_sigma_min = run(solver, order, steps, x0)
        exact = ref.gaussian_ode_solution(x0, 80.0, 0.002, DATA_STD)
        errors.append(abs(float(at_sigma_min / exact) - 1))
    return errors


def slopes_of(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return DATA_STD**2 / (sigma**2 + DATA_STD**2) * x


def scheduler_at_sigma_min(solver, order, steps, x0):
    scheduler = EDMMultistepScheduler(solver=solver, solver_order=order, sigma_data=DATA_STD)
    scheduler.set_timesteps(steps)
    _, trajectory = run_scheduler(scheduler, SigmaModel(gaussian_denoiser), x0)
    return trajectory[-2]


def reference_at_sigma_min(solver, order, steps, x0):
    return reference(solver, gaussian_denoiser, edm_sigmas(steps, 0.002, 80.0), x0, order=order).trajectory[-2]


@pytest.mark.parametrize("solver,order", SOLVER_ORDERS)
def test_convergence_order_on_gaussian_data(solver, order):
    errors = gaussian_errors(solver, order, scheduler_at_sigma_min)
    slopes = slopes_of(errors)
    print(f"\n{solver}-{order}: errors at sigma_min " + " ".join(f"{e:.2e}" for e in errors)
          + f" for {CONVERGENCE_STEPS} steps; slopes " + " ".join(f"{s:.2f}" for s in slopes))
    expected = EXPECTED_SLOPES[(solver, order)]
    assert errors[-1] > 1e-13  # above rounding
    for slope in slopes[-2:]:  # 128 -> 256 -> 512 steps: the asymptotic range
        assert slope == pytest.approx(expected, abs=0.3)


def test_reference_convergence_orders():
    """The references converge with the same slopes (they are the same methods; this pins the references' own order
    independently of the schedulers, e.g. when the 3M formula is changed in both)."""
    for solver, order in (("ipndm", 4), ("dpmpp", 3), ("unipc", 2)):
        slopes = slopes_of(gaussian_errors(solver, order, reference_at_sigma_min))
        assert slopes[-1] == pytest.approx(EXPECTED_SLOPES[(solver, order)], abs=0.3)


# ------------------------------------------------------------------------------------------------
# 4. iPNDM with variable steps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_variable_step_weights_integrate_polynomials_exactly(order):
    """Adams-Bashforth of order p integrates every polynomial of degree < p through its nodes exactly: with d(sigma) =
    sigma^m, sum_k W_k d(sigma_{i-k}) = (sigma_{i+1}^(m+1) - sigma_i^(m+1)) / (m + 1)."""
    custom_grid = [80.0, 31.0, 9.5, 3.3, 1.2, 0.41, 0.09, 0.002]
    scheduler = EDMMultistepScheduler(solver="ipndm_v", solver_order=order, lower_order_final=False)
    scheduler.set_timesteps(sigmas=custom_grid)
    levels = custom_grid + [0.0]
    for i in range(order - 1, len(custom_grid)):
        weights = scheduler.plan.predictors[i].history_weights
        assert len(weights) == order
        for m in range(order):
            exact = (levels[i + 1] ** (m + 1) - levels[i] ** (m + 1)) / (m + 1)
            combined = sum(w * levels[i - k] ** m for k, w in enumerate(weights))
            assert combined == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_variable_step_weights_are_ipndms_on_equal_steps(denoiser):
    """On equal steps the variable-step weights are the constant Adams-Bashforth ones: the two solvers agree."""
    grid = [8.0 - 0.5 * i for i in range(15)]  # 8.0 ... 1.0, equal steps (the last one, to 0, is not equal)
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * grid[0]
    ends = []
    for solver in ("ipndm", "ipndm_v"):
        run = reference(solver, denoiser, grid, x, order=4, lower_order_final=False)
        ends.append(run.trajectory[-2])  # at the last positive level: every step so far had equal length
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-12, atol=1e-12)
