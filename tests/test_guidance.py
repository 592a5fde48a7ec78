"""EDMPipeline guidance: classifier guidance (ADM), autoguidance, classifier-free guidance and the guidance interval.

Each guided denoiser is checked against its formula computed here from separate model calls:

- classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 in sigma space): ``D + s sigma^2 grad_x log p(y | x; sigma)``
  with the gradient by central finite differences of the classifier's log-probability (float64 inputs);
- autoguidance (Karras et al. 2024, eq. 2): ``D_weak + w (D_main - D_weak)`` from two separate denoiser calls;
- classifier-free guidance: ``D(null) + w (D(y) - D(null))`` from two separate calls;
- the interval (Kynkaenniemi et al. 2024): guidance exactly at the calls with ``sigma_lo < sigma <= sigma_hi`` of the
  noise level each model receives (hooks count the calls of every model and record their sigmas and batch sizes).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import EDMHeunScheduler, EDMMultistepScheduler, EDMPipeline
from diffusers_edm.models import EDMPrecond, NoiseConditionalClassifier
from guidance_fixtures import (
    NUM_CLASSES,
    conditional_denoiser,
    finite_difference_gradient,
    seeded,
    tiny_classifier,
    unconditional_denoiser,
)
from tiny_backbones import tiny_unet

LABELS = [1, 3]
SIGMA = 3.0  # one Euler step from sigma = 3 to 0 returns the guided D(x_0; 3) itself


def one_step_scheduler() -> EDMHeunScheduler:
    return EDMHeunScheduler(solver="euler", sigma_max=SIGMA)


def quiet(pipe: EDMPipeline) -> EDMPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_sample(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """x_0 = sigma_0 n, with n drawn as the pipeline draws it."""
    return torch.randn(batch, 3, 8, 8, generator=seeded(seed)) * SIGMA


# ---------------------------------------------------------------------------------------------- the formulas
@pytest.mark.parametrize(
    "guiding, classifier_scale",
    [("none", 10.0), ("classifier_free", 10.0), ("autoguidance", 10.0), ("classifier_free", 0.0), ("autoguidance", 0.0)],
)
def test_guided_denoiser_equals_its_formula(guiding, classifier_scale):
    """One Euler step from sigma to 0 returns D_guided(x_0; sigma): the guiding term from separate model calls, plus
    s sigma^2 times the finite-difference gradient of log p(y | x_0; sigma)."""
    w = 2.5
    main, weak = conditional_denoiser(seed=0), conditional_denoiser(seed=1)
    classifier = tiny_classifier(pooling="mean") if classifier_scale > 0 else None
    pipe = quiet(EDMPipeline(main, one_step_scheduler(), guidance_denoiser=weak if guiding == "autoguidance" else None,
                             classifier=classifier))
    sample = pipe(class_labels=LABELS, guidance_scale=1.0 if guiding == "none" else w, classifier_scale=classifier_scale,
                  num_inference_steps=1, generator=seeded(1), output_type="latent").images

    x0 = initial_sample()
    with torch.no_grad():
        conditional = main(x0, SIGMA, class_labels=LABELS).sample
        if guiding == "classifier_free":
            null = main(x0, SIGMA, class_labels=[NUM_CLASSES] * 2).sample
            expected = null + w * (conditional - null)
        elif guiding == "autoguidance":
            weak_prediction = weak(x0, SIGMA, class_labels=LABELS).sample
            assert (weak_prediction - conditional).abs().max() > 0.05  # the weak model is another model
            expected = weak_prediction + w * (conditional - weak_prediction)
        else:
            expected = conditional
    expected = expected.double()
    if classifier_scale > 0:
        correction = classifier_scale * SIGMA**2 * finite_difference_gradient(classifier, x0, SIGMA, LABELS, step=1e-2)
        assert correction.abs().max() > 0.1  # far above the tolerance below: a missing or mis-scaled term fails
        expected = expected + correction
    torch.testing.assert_close(sample.double(), expected, rtol=1e-3, atol=2e-4)


def test_unconditional_denoiser_with_classifier_and_autoguidance():
    """ADM's conditional sampling of an unconditional model (the labels go to the classifier only), autoguided by
    an unconditional weak model."""
    w, s = 1.7, 10.0
    main, weak = unconditional_denoiser(seed=0), unconditional_denoiser(seed=1)
    classifier = tiny_classifier(num_classes=7, pooling="mean")
    received = []
    main.backbone.register_forward_pre_hook(lambda m, a, k: received.append(k.get("class_labels")), with_kwargs=True)
    pipe = quiet(EDMPipeline(main, one_step_scheduler(), guidance_denoiser=weak, classifier=classifier))
    sample = pipe(class_labels=[6, 0], guidance_scale=w, classifier_scale=s, num_inference_steps=1, generator=seeded(1),
                  output_type="latent").images
    assert received == [None]  # the denoiser is unconditional: no labels reach it
    x0 = initial_sample()
    with torch.no_grad():
        d_main, d_weak = main(x0, SIGMA).sample, weak(x0, SIGMA).sample
    gradient = finite_difference_gradient(classifier, x0, SIGMA, [6, 0], step=1e-2)
    expected = d_weak.double() + w * (d_main - d_weak).double() + s * SIGMA**2 * gradient
    torch.testing.assert_close(sample.double(), expected, rtol=1e-3, atol=2e-4)


def test_default_classifier_scale_is_one_with_a_classifier():
    pipe = quiet(EDMPipeline(conditional_denoiser(), one_step_scheduler(), classifier=tiny_classifier()))
    kwargs = dict(class_labels=LABELS, num_inference_steps=1, generator=seeded(1), output_type="latent")
    default = pipe(**kwargs).images
    assert torch.equal(default, pipe(classifier_scale=1.0, **dict(kwargs, generator=seeded(1))).images)
    assert not torch.equal(default, pipe(classifier_scale=0.0, **dict(kwargs, generator=seeded(1))).images)


# ---------------------------------------------------------------------------------------------- every scheduler
SCHEDULERS = {
    "heun_churn": lambda: EDMHeunScheduler(s_churn=10.0),
    "heun_euler": lambda: EDMHeunScheduler(solver="euler"),
    "multistep_auto": lambda: EDMMultistepScheduler(),
    "multistep_dpmpp": lambda: EDMMultistepScheduler(solver="dpmpp", solver_order=2),
    "diffusers_euler": lambda: EDMEulerScheduler(),
    "diffusers_dpmsolver": lambda: EDMDPMSolverMultistepScheduler(),
}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_uses_the_classifier_guided_denoiser_at_every_call(scheduler):
    """Sampling with the classifier equals sampling a denoiser whose every output gets s sigma^2 grad log p added
    (by a forward hook, the gradient taken here with autograd), with the same scheduler and noise."""
    s = 2.0
    classifier = tiny_classifier(pooling="mean")
    pipe = quiet(EDMPipeline(conditional_denoiser(), SCHEDULERS[scheduler](), classifier=classifier))
    calls = []
    hook = classifier.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    guided = pipe(class_labels=LABELS, classifier_scale=s, num_inference_steps=4, generator=seeded(2), output_type="latent").images
    hook.remove()

    def add_classifier_term(module, args, output):
        x, sigma = args[0], torch.as_tensor(args[1], dtype=torch.float32)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(x, sigma).logits, dim=-1)[torch.arange(2), torch.tensor(LABELS)].sum()
            (gradient,) = torch.autograd.grad(log_p, x)
        output.sample = output.sample + s * sigma**2 * gradient
        return output

    denoiser_calls = []
    pipe.denoiser.register_forward_pre_hook(lambda m, args: denoiser_calls.append(args[0].shape[0]))
    hook = pipe.denoiser.register_forward_hook(add_classifier_term)
    reference = pipe(class_labels=LABELS, classifier_scale=0, num_inference_steps=4, generator=seeded(2), output_type="latent").images
    hook.remove()
    assert calls == denoiser_calls and len(calls) >= 4  # one classifier call per model call
    unguided = pipe(class_labels=LABELS, classifier_scale=0, num_inference_steps=4, generator=seeded(2), output_type="latent").images
    assert (guided - unguided).abs().max() > 1e-2
    torch.testing.assert_close(guided, reference, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- the interval
def edm_call_sigmas(steps: int, s_churn: float, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM Algorithm 2 with Heun: the noise level of every model call, sigma_hat_i then sigma_{i+1} (written here)."""
    grid = [(sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(steps)] + [0.0]
    gamma = min(s_churn / steps, math.sqrt(2) - 1)
    calls = []
    for i in range(steps):
        calls.append(grid[i] * (1 + gamma))
        if grid[i + 1] > 0:
            calls.append(grid[i + 1])
    return grid, calls


def record_calls(module: torch.nn.Module, log: list) -> None:
    """Append (sigma of each sample as floats, batch size) of every call of ``module``."""
    def hook(m, args):
        sigma = torch.as_tensor(args[1], dtype=torch.float64).reshape(-1)
        log.append((sigma.tolist(), args[0].shape[0]))
    module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("method", ["classifier_free", "autoguidance", "classifier"])
def test_heun_guidance_interval_tests_each_calls_churned_sigma(method):
    """With churn, step i calls the model at sigma_hat_i = (1 + gamma) sigma_i, then at sigma_{i+1}. sigma_hi lies
    between sigma_2 and sigma_hat_2, so the Heun correction at sigma_2 is guided and the Euler call at sigma_hat_2 is
    not: the tested level is the one the model receives. Outside the interval: one model call of batch B."""
    steps, s_churn = 6, 10.0
    grid, expected_sigmas = edm_call_sigmas(steps, s_churn)
    interval = (grid[4] * 0.9, grid[2] * 1.2)
    inside = [interval[0] < sigma <= interval[1] for sigma in expected_sigmas]
    assert expected_sigmas[3] == pytest.approx(grid[2]) and inside[3] and not inside[4]  # sigma_2 in, sigma_hat_2 out
    assert any(inside) and not all(inside)

    main = conditional_denoiser(seed=0)
    weak = conditional_denoiser(seed=1) if method == "autoguidance" else None
    classifier = tiny_classifier() if method == "classifier" else None
    pipe = quiet(EDMPipeline(main, EDMHeunScheduler(s_churn=s_churn), guidance_denoiser=weak, classifier=classifier))
    main_calls, other_calls = [], []
    record_calls(main, main_calls)
    if weak is not None:
        record_calls(weak, other_calls)
    if classifier is not None:
        record_calls(classifier, other_calls)
    pipe(class_labels=LABELS, guidance_scale=1.0 if method == "classifier" else 3.0,
         classifier_scale=5.0 if method == "classifier" else None, guidance_interval=interval,
         num_inference_steps=steps, generator=seeded(), output_type="latent")

    seen = [sigmas[0] for sigmas, _ in main_calls]
    assert seen == pytest.approx(expected_sigmas, rel=1e-9)
    doubled = method == "classifier_free"
    assert [batch for _, batch in main_calls] == [4 if doubled and guided else 2 for guided in inside]
    if not doubled:  # the weak model or the classifier: called exactly at the guided calls, at the same sigmas
        guided_sigmas = [sigma for sigma, guided in zip(expected_sigmas, inside) if guided]
        assert [sigmas[0] for sigmas, _ in other_calls] == pytest.approx(guided_sigmas, rel=1e-9)
        assert {batch for _, batch in other_calls} == {2}


@pytest.mark.parametrize("scheduler", ["multistep_auto", "diffusers_euler", "diffusers_dpmsolver"])
def test_guidance_interval_with_one_call_per_step_schedulers(scheduler):
    """Autoguidance and classifier guidance act exactly at the calls whose received sigma lies in the interval."""
    main, weak, classifier = conditional_denoiser(seed=0), conditional_denoiser(seed=1), tiny_classifier()
    pipe = quiet(EDMPipeline(main, SCHEDULERS[scheduler](), guidance_denoiser=weak, classifier=classifier))
    main_calls, weak_calls, classifier_calls = [], [], []
    record_calls(main, main_calls)
    record_calls(weak, weak_calls)
    record_calls(classifier, classifier_calls)
    interval = (0.5, 10.0)
    pipe(class_labels=LABELS, guidance_scale=2.0, guidance_interval=interval, num_inference_steps=8, generator=seeded(),
         output_type="latent")
    seen = [sigmas[0] for sigmas, _ in main_calls]
    guided = [sigma for sigma in seen if interval[0] < sigma <= interval[1]]
    assert 0 < len(guided) < len(seen) == 8
    assert [sigmas[0] for sigmas, _ in weak_calls] == guided
    assert [sigmas[0] for sigmas, _ in classifier_calls] == guided


def test_interval_excludes_sigma_lo_and_includes_sigma_hi():
    """sigma_lo < sigma <= sigma_hi at the exact levels the model receives."""
    main, classifier = conditional_denoiser(), tiny_classifier()
    pipe = quiet(EDMPipeline(main, EDMMultistepScheduler(), classifier=classifier))
    main_calls, classifier_calls = [], []
    record_calls(main, main_calls)
    record_calls(classifier, classifier_calls)
    kwargs = dict(class_labels=LABELS, num_inference_steps=8, generator=seeded(), output_type="latent")
    pipe(classifier_scale=0, **kwargs)
    seen = [sigmas[0] for sigmas, _ in main_calls]
    main_calls.clear()
    pipe(guidance_interval=(seen[5], seen[2]), **dict(kwargs, generator=seeded()))
    assert [sigmas[0] for sigmas, _ in main_calls] == seen
    assert [sigmas[0] for sigmas, _ in classifier_calls] == seen[2:5]


def test_interval_outside_every_level_is_the_unguided_sampler_and_inside_every_level_is_full_guidance():
    pipe = quiet(EDMPipeline(conditional_denoiser(), EDMHeunScheduler(s_churn=5.0), classifier=tiny_classifier()))
    kwargs = dict(class_labels=LABELS, num_inference_steps=4, output_type="latent")
    unguided = pipe(guidance_scale=1.0, classifier_scale=0.0, generator=seeded(), **kwargs).images
    guided = pipe(guidance_scale=3.0, classifier_scale=5.0, generator=seeded(), **kwargs).images
    assert not torch.allclose(guided, unguided)
    nowhere = pipe(guidance_scale=3.0, classifier_scale=5.0, guidance_interval=(200.0, 300.0), generator=seeded(), **kwargs).images
    everywhere = pipe(guidance_scale=3.0, classifier_scale=5.0, guidance_interval=(0.0, 1000.0), generator=seeded(), **kwargs).images
    assert torch.equal(nowhere, unguided) and torch.equal(everywhere, guided)


# ---------------------------------------------------------------------------------------------- no guidance
@pytest.mark.parametrize("scheduler", ["heun_churn", "diffusers_dpmsolver"])
def test_unit_weight_and_zero_classifier_scale_reproduce_the_unguided_samples_exactly(scheduler):
    main = conditional_denoiser()
    plain = quiet(EDMPipeline(main, SCHEDULERS[scheduler]()))
    expected = plain(class_labels=LABELS, num_inference_steps=3, generator=seeded(4), output_type="latent").images
    with_components = quiet(EDMPipeline(main, SCHEDULERS[scheduler](), guidance_denoiser=conditional_denoiser(seed=1),
                                        classifier=tiny_classifier()))
    calls = []
    with_components.guidance_denoiser.register_forward_pre_hook(lambda m, a: calls.append("weak"))
    with_components.classifier.register_forward_pre_hook(lambda m, a: calls.append("classifier"))
    for interval in (None, (0.1, 10.0)):
        actual = with_components(class_labels=LABELS, guidance_scale=1.0, classifier_scale=0.0, guidance_interval=interval,
                                 num_inference_steps=3, generator=seeded(4), output_type="latent").images
        assert torch.equal(actual, expected)
    assert calls == []


# ---------------------------------------------------------------------------------------------- saving and loading
def test_save_and_load_with_and_without_the_optional_components(tmp_path):
    main, weak, classifier = conditional_denoiser(seed=0), conditional_denoiser(seed=1, sigma_max=60.0), tiny_classifier()
    pipe = quiet(EDMPipeline(main, EDMHeunScheduler(), guidance_denoiser=weak, classifier=classifier))
    kwargs = dict(class_labels=LABELS, guidance_scale=2.0, classifier_scale=3.0, guidance_interval=(0.1, 20.0),
                  num_inference_steps=3, output_type="latent")
    expected = pipe(generator=seeded(), **kwargs).images
    full, plain = tmp_path / "full", tmp_path / "plain"
    pipe.save_pretrained(full)
    index = json.loads((full / "model_index.json").read_text())
    assert index["guidance_denoiser"] == ["diffusers_edm.models.preconditioned_denoisers", "EDMPrecond"]
    assert index["classifier"] == ["diffusers_edm.models.noise_conditional_classifier", "NoiseConditionalClassifier"]
    for loader in (EDMPipeline, DiffusionPipeline):
        loaded = quiet(loader.from_pretrained(full))
        assert isinstance(loaded.guidance_denoiser, EDMPrecond) and isinstance(loaded.classifier, NoiseConditionalClassifier)
        assert loaded.sampling_range() == (0.002, 60.0)  # within the weak model's range too
        torch.testing.assert_close(loaded(generator=seeded(), **kwargs).images, expected, rtol=0, atol=1e-6)
    dropped = EDMPipeline.from_pretrained(full, guidance_denoiser=None, classifier=None)
    assert dropped.guidance_denoiser is None and dropped.classifier is None

    # A pipeline saved without them (also one saved before they existed) loads, and takes them as overrides.
    EDMPipeline(main, EDMHeunScheduler()).save_pretrained(plain)
    loaded = EDMPipeline.from_pretrained(plain)
    assert loaded.guidance_denoiser is None and loaded.classifier is None
    index = json.loads((plain / "model_index.json").read_text())
    for key in ("guidance_denoiser", "classifier"):
        index.pop(key)
    (plain / "model_index.json").write_text(json.dumps(index))
    loaded = quiet(EDMPipeline.from_pretrained(plain, guidance_denoiser=weak, classifier=classifier))
    torch.testing.assert_close(loaded(generator=seeded(), **kwargs).images, expected, rtol=0, atol=1e-6)
    assert EDMPipeline.from_pretrained(plain).guidance_denoiser is None


# ---------------------------------------------------------------------------------------------- bad input
def test_components_of_another_data_space_are_refused_naming_both_sides():
    main = conditional_denoiser()
    scheduler = EDMHeunScheduler()
    with pytest.raises(ValueError, match=r"classifier has num_classes=7 but the denoiser \(EDMPrecond\) has num_classes=5"):
        EDMPipeline(main, scheduler, classifier=tiny_classifier(num_classes=7))
    with pytest.raises(ValueError, match=r"classifier has in_channels=4 but the denoiser \(EDMPrecond\) has in_channels=3"):
        EDMPipeline(main, scheduler, classifier=tiny_classifier(in_channels=4))
    with pytest.raises(ValueError, match=r"classifier has sample_size=\(16, 16\) but the denoiser \(EDMPrecond\) has sample_size=\(8, 8\)"):
        EDMPipeline(main, scheduler, classifier=tiny_classifier(sample_size=16))
    EDMPipeline(unconditional_denoiser(), scheduler, classifier=tiny_classifier(num_classes=7))  # any classes

    big = EDMPrecond(backbone_class="UNet2DModel", backbone_config={**tiny_unet(num_class_embeds=6).config, "sample_size": 16},
                     num_classes=5, null_class_label=5)
    weak_models = {
        r"image_channels=3 .* has image_channels=4": EDMPrecond.from_backbone(tiny_unet(channels=4, num_class_embeds=6), num_classes=5, null_class_label=5),
        r"sample_size=\(8, 8\) .* has sample_size=\(16, 16\)": big,
        r"sigma_data=0.5 .* has sigma_data=0.3": conditional_denoiser(sigma_data=0.3),
        r"num_classes=5 .* has num_classes=0": unconditional_denoiser(),
    }
    for message, weak in weak_models.items():
        with pytest.raises(ValueError, match=r"the denoiser \(EDMPrecond\) has " + message):
            EDMPipeline(main, scheduler, guidance_denoiser=weak)
    with pytest.raises(TypeError, match="guidance_denoiser must be"):
        EDMPipeline(main, scheduler, guidance_denoiser=tiny_unet())

    # Swapped in after construction: refused when the call starts.
    pipe = EDMPipeline(main, scheduler)
    pipe.register_modules(classifier=tiny_classifier(num_classes=7))
    with pytest.raises(ValueError, match="num_classes=7"):
        pipe(class_labels=LABELS, num_inference_steps=1)


def test_bad_call_arguments():
    pipe = EDMPipeline(conditional_denoiser(), EDMHeunScheduler())
    with pytest.raises(ValueError, match=r"classifier_scale=2.0 needs a classifier"):
        pipe(class_labels=LABELS, classifier_scale=2.0, num_inference_steps=1)
    pipe(class_labels=LABELS, classifier_scale=0, num_inference_steps=1, output_type="latent")  # 0: no classifier needed
    with_classifier = EDMPipeline(unconditional_denoiser(), EDMHeunScheduler(), classifier=tiny_classifier())
    with pytest.raises(ValueError, match="pass class_labels"):
        with_classifier(batch_size=2, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"classes of the classifier, 0\.\.4.*got \[5\]"):
        with_classifier(class_labels=[5], num_inference_steps=1)
    with pytest.raises(ValueError, match="unconditional"):  # labels without classifier guidance: nothing takes them
        with_classifier(class_labels=[1], classifier_scale=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="or a guidance_denoiser for autoguidance"):
        with_classifier(class_labels=[1], guidance_scale=2.0, num_inference_steps=1)


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 500), st.sampled_from([0.0, -0.0, 1e-300, 1e300])
)


@settings(max_examples=40, deadline=None)
@given(low=finite_or_not, high=finite_or_not)
def test_guidance_interval_contract(low, high):
    """A ValueError naming guidance_interval, or (0 <= sigma_lo < sigma_hi, both finite) a finite sample."""
    pipe = quiet(EDMPipeline(conditional_denoiser(), one_step_scheduler()))
    valid = all(math.isfinite(v) for v in (low, high)) and 0 <= low < high
    kwargs = dict(class_labels=LABELS, guidance_scale=2.0, num_inference_steps=1, output_type="latent")
    if not valid:
        with pytest.raises(ValueError, match="guidance_interval"):
            pipe(guidance_interval=(low, high), **kwargs)
        return
    sample = pipe(guidance_interval=(low, high), generator=seeded(), **kwargs).images
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("interval", [3.0, "0.1,1", (0.1,), (0.1, 1.0, 2.0), ("0.1", 1.0), (None, 1.0)])
def test_guidance_interval_must_be_a_pair_of_numbers(interval):
    pipe = EDMPipeline(conditional_denoiser(), one_step_scheduler())
    with pytest.raises(ValueError, match="guidance_interval"):
        pipe(class_labels=LABELS, guidance_interval=interval, num_inference_steps=1)


@settings(max_examples=30, deadline=None)
@given(scale=st.one_of(st.floats(-1e3, 2e3), st.integers(-5, 500), st.none(),
                       st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-300, 1000.0, 1e300, "1", True])))
def test_classifier_scale_contract(scale):
    """A ValueError naming classifier_scale, or (None, or a number in [0, 1000]) a finite sample."""
    pipe = quiet(EDMPipeline(conditional_denoiser(), one_step_scheduler(), classifier=tiny_classifier()))
    kwargs = dict(class_labels=LABELS, num_inference_steps=1, output_type="latent")
    valid = scale is None or (not isinstance(scale, (bool, str)) and math.isfinite(scale) and 0 <= scale <= 1000)
    if not valid:
        with pytest.raises(ValueError, match="classifier_scale"):
            pipe(classifier_scale=scale, **kwargs)
        return
    assert torch.isfinite(pipe(classifier_scale=scale, generator=seeded(), **kwargs).images).all()


# ---------------------------------------------------------------------------------------------- host syncs
def loop_syncs(pipe: EDMPipeline, **kwargs) -> list:
    """The host syncs made from the first model call on (the loop, after the per-call validation)."""
    first = []
    with count_host_syncs() as syncs:
        hook = pipe.denoiser.register_forward_pre_hook(lambda m, a: first.append(syncs.count) if not first else None)
        try:
            pipe(generator=seeded(), output_type="latent", **kwargs)
        finally:
            hook.remove()
    return syncs.calls[first[0]:]


@pytest.mark.parametrize("setup", ["classifier_free", "autoguidance"])
def test_no_host_sync_in_the_guided_sampling_loop(setup):
    weak = conditional_denoiser(seed=1) if setup == "autoguidance" else None
    scheduler = EDMHeunScheduler(s_churn=10.0) if setup == "classifier_free" else EDMMultistepScheduler()
    pipe = quiet(EDMPipeline(conditional_denoiser(), scheduler, guidance_denoiser=weak, classifier=tiny_classifier()))
    syncs = loop_syncs(pipe, class_labels=LABELS, guidance_scale=2.0, classifier_scale=1.0, guidance_interval=(0.1, 10.0),
                       num_inference_steps=4)
    assert syncs == [], syncs


# ---------------------------------------------------------------------------------------------- model cards
def test_model_card_names_the_optional_components_and_its_example_runs(tmp_path):
    """An unconditional denoiser with a weak model and a classifier: the card names both, and its example (labels for
    the classifier, the guidance weight for autoguidance) runs as written."""
    from test_model_cards import REPO_ID, run_usage_example

    pipe = EDMPipeline(unconditional_denoiser(seed=0), EDMHeunScheduler(), guidance_denoiser=unconditional_denoiser(seed=1),
                       classifier=tiny_classifier(num_classes=3))
    pipe.save_pretrained(tmp_path)
    card = str(pipe.model_card(REPO_ID, num_inference_steps=2, guidance_scale=1.8))
    assert "- autoguidance" in card and "- classifier-guidance" in card
    assert "`guidance_denoiser`" in card and "NoiseConditionalClassifier` over 3 classes" in card
    code, images = run_usage_example(card, REPO_ID, tmp_path)
    assert "class_labels=[0, 1, 2]" in code and "guidance_scale=1.8" in code
    assert len(images) == 3

    plain = EDMPipeline(unconditional_denoiser(), EDMHeunScheduler())
    card = str(plain.model_card(REPO_ID, guidance_scale=1.8))
    assert "autoguidance" not in card and "classifier" not in card.lower() and "guidance_scale" not in card
