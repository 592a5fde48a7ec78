"""EDMPipeline samples within the denoiser's noise range, as EDM's sampler does (Karras et al. 2022, generate.py:
``sigma_min = max(sigma_min, net.sigma_min)``, ``sigma_max = min(sigma_max, net.sigma_max)``, then ``net.round_sigma``).

The noise level of every backbone call is read back from the noise label the backbone receives, with the inverse of
EDM Table 1's c_noise written here: EDM ``sigma = exp(4 c)``, VE ``sigma = 2 exp(c)``, VP ``sigma = sigma_vp(c / (M-1))``
with ``sigma_vp(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``, iDDPM ``sigma = u_{M-1-c}``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from diffusers_edm import EDMHeunScheduler, EDMPipeline
from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from test_models_preconditioning import reference_iddpm_table
from tiny_backbones import tiny_unet

M = 1000
U = reference_iddpm_table()  # u_0 > ... > u_M = 0


def vp_sigma(t: float, beta_d: float = 19.9, beta_min: float = 0.1) -> float:
    return math.sqrt(math.exp(beta_d * t**2 / 2 + beta_min * t) - 1)


# The noise range each family is trained on (EDM's networks.py defaults) and the map from its noise label to sigma.
FAMILIES = {
    "edm": (EDMPrecond, (0.0, math.inf), lambda c: math.exp(4 * c)),
    "vp": (VPPrecond, (vp_sigma(1e-5), vp_sigma(1.0)), lambda c: vp_sigma(c / (M - 1))),
    "ve": (VEPrecond, (0.02, 100.0), lambda c: 2 * math.exp(c)),
    "iddpm": (IDDPMPrecond, (U[M - 1], U[0]), lambda c: U[M - 1 - round(c)]),
}
SCHEDULERS = {
    "heun": EDMHeunScheduler,
    "heun_churn": lambda: EDMHeunScheduler(s_churn=40.0),  # sigma_hat = sigma (1 + gamma) reaches 80 * sqrt(2) > 100
    "euler": EDMEulerScheduler,
    "dpm": EDMDPMSolverMultistepScheduler,
}
STEPS = 4
RELATIVE = 1e-5  # float32 noise labels and diffusers' float32 sigmas


def backbone_sigmas(pipe, family: str) -> list[float]:
    """Sample once and return the noise level of every backbone call, read from its noise label."""
    to_sigma = FAMILIES[family][2]
    received: list[float] = []

    def record(module, args, kwargs):
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]  # by name or by position
        received.extend(to_sigma(c) for c in timestep.tolist())

    pipe.denoiser.backbone.register_forward_pre_hook(record, with_kwargs=True)
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=1, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="latent")
    return received


def rho_schedule(sigma_min: float, sigma_max: float, n: int = STEPS, rho: float = 7.0) -> list[float]:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    return [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(n)]


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_wrapper_is_called_outside_its_noise_range(family, scheduler):
    wrapper, (low, high), _ = FAMILIES[family]
    pipe = EDMPipeline(wrapper.from_backbone(tiny_unet()).eval(), SCHEDULERS[scheduler]())
    sigmas = backbone_sigmas(pipe, family)
    assert len(sigmas) >= STEPS
    outside = [s for s in sigmas if not low * (1 - RELATIVE) <= s <= high * (1 + RELATIVE)]
    assert not outside, f"{family} ({low}..{high}) was called at {outside}"
    # The schedule spans the clamped range: EDM's sampler range [0.002, 80] within the model's.
    sampler_low, sampler_high = max(0.002, low), min(80.0, high)
    if family == "iddpm":  # rounded to the nearest table level
        sampler_low, sampler_high = (min(U[:M], key=lambda u: abs(u - s)) for s in (sampler_low, sampler_high))
    assert min(sigmas) == pytest.approx(sampler_low, rel=RELATIVE)
    if scheduler != "heun_churn":
        assert max(sigmas) == pytest.approx(sampler_high, rel=RELATIVE)


def test_heun_schedule_is_edm_rho_schedule_over_the_clamped_range():
    """VE: sigma_min = max(0.002, 0.02) = 0.02, sigma_max = min(80, 100) = 80; Heun calls s0, s1, s1, s2, s2, s3, s3."""
    pipe = EDMPipeline(VEPrecond.from_backbone(tiny_unet()).eval(), EDMHeunScheduler())
    s = rho_schedule(0.02, 80.0)
    assert backbone_sigmas(pipe, "ve") == pytest.approx([s[0], s[1], s[1], s[2], s[2], s[3], s[3]], rel=RELATIVE)


def test_iddpm_with_the_default_heun_scheduler_samples_on_its_table():
    """EDM rounds every level to the table (round_sigma): the calls are table levels u_j, found by nearest match."""
    pipe = EDMPipeline(IDDPMPrecond.from_backbone(tiny_unet()).eval(), EDMHeunScheduler())
    received = []
    pipe.denoiser.register_forward_pre_hook(lambda module, args: received.append(float(args[1])))
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="latent")
    expected = [min(U[:M], key=lambda u: abs(u - s)) for s in rho_schedule(max(0.002, U[M - 1]), 80.0)]
    assert received == pytest.approx([expected[0], expected[1], expected[1], expected[2], expected[2], expected[3], expected[3]], rel=1e-12)


@pytest.mark.parametrize("scheduler_class", [EDMEulerScheduler, EDMDPMSolverMultistepScheduler])
def test_diffusers_schedulers_sample_a_clamped_copy_and_keep_the_users_config(scheduler_class):
    scheduler = scheduler_class()
    before = dict(scheduler.config)
    pipe = EDMPipeline(VEPrecond.from_backbone(tiny_unet()).eval(), scheduler)
    sigmas = backbone_sigmas(pipe, "ve")
    expected = rho_schedule(0.02, 80.0)
    assert sorted(set(round(s, 4) for s in sigmas), reverse=True) == pytest.approx(expected, rel=1e-4)
    assert pipe.scheduler is scheduler and dict(scheduler.config) == before


def test_disjoint_ranges_are_refused():
    pipe = EDMPipeline(VEPrecond.from_backbone(tiny_unet()).eval(), EDMHeunScheduler(sigma_min=200.0, sigma_max=300.0))
    with pytest.raises(ValueError, match=r"\[200.0, 300.0\].*\[0.02, 100.0\] do not overlap"):
        pipe(num_inference_steps=2, output_type="latent")


# ---------------------------------------------------------------------------------------------- single-file twin
SINGLE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "pipeline_edm.py"


@pytest.mark.parametrize("scheduler", ["heun_churn", "euler"])
@pytest.mark.parametrize("family", ["ve", "iddpm"])
def test_single_file_pipeline_clamps_the_same_way(family, scheduler):
    spec = importlib.util.spec_from_file_location("single_file_pipeline_edm", SINGLE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wrapper, (low, high), _ = FAMILIES[family]
    denoiser = getattr(module, wrapper.__name__).from_backbone(tiny_unet()).eval()
    sigmas = backbone_sigmas(module.EDMPipeline(denoiser, SCHEDULERS[scheduler]()), family)
    assert all(low * (1 - RELATIVE) <= s <= high * (1 + RELATIVE) for s in sigmas), sigmas
    assert min(sigmas) == pytest.approx(max(0.002, low) if family == "ve" else U[M - 1], rel=RELATIVE)


@pytest.mark.parametrize("scheduler", ["heun_churn", "dpm"])
@pytest.mark.parametrize("family", ["ve", "iddpm"])
def test_single_file_pipeline_samples_what_the_package_samples(family, scheduler):
    spec = importlib.util.spec_from_file_location("single_file_pipeline_edm", SINGLE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wrapper = FAMILIES[family][0]
    package = EDMPipeline(wrapper.from_backbone(tiny_unet(num_class_embeds=4), num_classes=3, null_class_label=3).eval(), SCHEDULERS[scheduler]())
    twin = module.EDMPipeline(getattr(module, wrapper.__name__).from_backbone(package.denoiser.backbone, num_classes=3, null_class_label=3).eval(), SCHEDULERS[scheduler]())
    kwargs = dict(class_labels=[0, 2], guidance_scale=1.5, num_inference_steps=3, output_type="latent")
    expected = package(generator=torch.Generator().manual_seed(0), **kwargs).images
    torch.testing.assert_close(twin(generator=torch.Generator().manual_seed(0), **kwargs).images, expected, rtol=0, atol=0)
