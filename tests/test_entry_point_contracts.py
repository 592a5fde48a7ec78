"""The input contract of every non-training entry point, as property tests: each call either raises a ``ValueError``
or ``TypeError`` whose message names a bad parameter, or returns a finite result of the documented shape and dtype.

Every parameter is drawn as ``(value, ok)``: mostly valid values, mixed with hostile ones (NaN, +/-inf, 0, negative,
huge, wrong type, empty and wrong-length lists, wrong dtype, wrong shapes). ``ok`` is stated here from the documented
rules, independently of the code: a call whose parameters are all ``ok`` must succeed, any other must be refused
naming one of the bad parameters.

Covered here: every package scheduler's ``set_timesteps``, ``scale_model_input``, ``step`` and ``add_noise``; every
wrapper's ``forward`` (with ``check_sigma``, which callers run once per call: ``forward`` checks shapes, not values,
to stay free of host synchronisation) and ``from_backbone``; ``NoiseConditionalClassifier``'s constructor; both
pipelines' ``__call__``. The scheduler constructors, the wrappers' config values and the classifier's ``forward`` have
their property tests in ``test_scheduler_input_contracts.py``, ``test_input_contracts.py`` and
``test_noise_conditional_classifier.py``.

Known limit: a NaN inside a tensor given to ``scale_model_input``, ``step`` or ``forward`` is not looked for (that
would synchronise with the device at every model call); NaN in, NaN out.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_edm import (
    EDMHeunDiscreteScheduler,
    EDMHeunScheduler,
    EDMMultistepDiscreteScheduler,
    EDMMultistepScheduler,
    EDMPipeline,
    LearnedVarianceDDPMScheduler,
    LearnedVariancePipeline,
)
from diffusers_edm.models import EDMPrecond, IDDPMPrecond, NoiseConditionalClassifier, VEPrecond, VPPrecond
from tiny_backbones import tiny_dit, tiny_unet

CONTRACT = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
NAN, INF = math.nan, math.inf
SHAPE = (2, 3, 4, 4)
LV_TRAIN_STEPS = 50


def ok(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(lambda value: (value, True))


def bad(*values) -> st.SearchStrategy:
    return st.sampled_from(values).map(lambda value: (value, False))


def drawn(data, name: str, *strategies: st.SearchStrategy):
    """Draw ``(value, ok)``: valid 3 times in 4, so that most calls reach the end."""
    use_valid = data.draw(st.sampled_from([True, True, True, False]), label=f"{name} valid")
    choices = [s for s in strategies if s is not None]
    return data.draw(choices[0] if use_valid or len(choices) == 1 else st.one_of(*choices[1:]), label=name)


def check_contract(call, params: dict[str, tuple[object, bool]], aliases: dict[str, tuple[str, ...]] | None = None):
    """Run ``call``: with every parameter ok it must succeed (its result returned), else raise a ValueError or
    TypeError naming one of the bad parameters (or one of its ``aliases``)."""
    bad_names = [name for name, (_, valid) in params.items() if not valid]
    if not bad_names:
        return call()
    with pytest.raises((ValueError, TypeError)) as raised:
        call()
    message = str(raised.value)
    names = [alias for name in bad_names for alias in (name, *(aliases or {}).get(name, ()))]
    assert any(name in message for name in names), f"{message!r} names none of {names}"
    return None


def assert_finite(tensor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == shape and tensor.dtype == dtype
    assert torch.isfinite(tensor).all()


# ================================================================================================ schedulers
SCHEDULERS = {
    "EDMHeunScheduler": lambda: EDMHeunScheduler(s_churn=5.0),
    "EDMHeunDiscreteScheduler": lambda: EDMHeunDiscreteScheduler(),
    "EDMMultistepScheduler": lambda: EDMMultistepScheduler(),
    "EDMMultistepDiscreteScheduler": lambda: EDMMultistepDiscreteScheduler(),
    "LearnedVarianceDDPMScheduler": lambda: LearnedVarianceDDPMScheduler(num_train_timesteps=LV_TRAIN_STEPS),
}


def model_calls(name: str, steps: int) -> int:
    """The documented number of model calls (``len(timesteps)``) of a run of ``steps`` steps."""
    return 2 * steps - 1 if name.startswith("EDMHeun") else steps


def step_counts(name: str):
    top = LV_TRAIN_STEPS if name == "LearnedVarianceDDPMScheduler" else 40
    hostile = [0, -1, 2.5, NAN, INF, True, [3], ()]
    if name == "LearnedVarianceDDPMScheduler":  # at most T respaced steps; strings are spacings ("ddim5", "2,3")
        hostile += [LV_TRAIN_STEPS + 1, 10**12, "ddim", "abc", ""]
    else:
        hostile.append("3")
    return ok(st.integers(1, top)), bad(*hostile)


devices = (ok(st.sampled_from([None, "cpu", torch.device("cpu")])), bad("no-such-device", 3.5, "cpu:x"))


@pytest.mark.parametrize("name", list(SCHEDULERS))
@CONTRACT
@given(data=st.data())
def test_set_timesteps(name, data):
    scheduler = SCHEDULERS[name]()
    steps = drawn(data, "num_inference_steps", *step_counts(name))
    device = drawn(data, "device", *devices)
    params = {"num_inference_steps": steps, "device": device}
    result = check_contract(
        lambda: scheduler.set_timesteps(steps[0], device=device[0]) or scheduler, params
    )
    if result is not None:
        assert len(scheduler.timesteps) == model_calls(name, steps[0])
        assert torch.isfinite(scheduler.timesteps.double()).all()
        assert math.isfinite(float(scheduler.init_noise_sigma))


def sample_tensors(dtype_ok=(torch.float32, torch.float64)):
    valid = st.builds(
        lambda dtype, scale, seed: torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale,
        st.sampled_from(dtype_ok), st.floats(0.0, 1e3), st.integers(0, 2**16),
    )
    hostile = bad(
        torch.zeros(SHAPE, dtype=torch.int64), torch.zeros(SHAPE, dtype=torch.bool), np.zeros(SHAPE, np.float32),
        [[0.0]], None, "x", 1.0,
    )
    return ok(valid), hostile


def model_outputs(name: str):
    channels = 2 * SHAPE[1] if name == "LearnedVarianceDDPMScheduler" else SHAPE[1]
    shape = (SHAPE[0], channels, *SHAPE[2:])
    valid = st.builds(lambda seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed)), st.integers(0, 99))
    hostile = bad(
        torch.zeros(SHAPE[0] + 1, channels, *SHAPE[2:]), torch.zeros(shape[1:]), torch.zeros(shape, dtype=torch.int64),
        np.zeros(shape, np.float32), None, [1.0],
    )
    return ok(valid), hostile


def first_timesteps(scheduler):
    """Valid: the first call's timestep (a tensor, or its value as a Python number); hostile: values and types that
    are no timestep of the run."""
    first = scheduler.timesteps[0]
    valid = st.sampled_from([first, first.item()])
    return ok(valid), bad(NAN, INF, -1.0, 1e9, "t", None, [first.item(), first.item()])


@pytest.mark.parametrize("name", list(SCHEDULERS))
@CONTRACT
@given(data=st.data())
def test_scale_model_input_and_step(name, data):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(3)
    sample = drawn(data, "sample", *sample_tensors())
    timestep = drawn(data, "timestep", *first_timesteps(scheduler))
    model_output = drawn(data, "model_output", *model_outputs(name))
    generator = drawn(
        data, "generator", ok(st.sampled_from([None, torch.Generator().manual_seed(0)])), bad("seed", 3, [None])
    )
    # Only the churned Heun and the DDPM scheduler draw noise, so only they look at the generator.
    draws_noise = name in ("EDMHeunScheduler", "LearnedVarianceDDPMScheduler")
    if not draws_noise:
        generator = (generator[0], True)
    params = {"sample": sample, "timestep": timestep, "model_output": model_output, "generator": generator}

    def call():
        model_input = scheduler.scale_model_input(sample[0], timestep[0])
        assert_finite(model_input, SHAPE, sample[0].dtype)
        return scheduler.step(model_output[0], timestep[0], sample[0], generator=generator[0])

    output = check_contract(call, params, aliases={"sample": ("model_output",), "model_output": ("sample",)})
    if output is not None:
        assert_finite(output.prev_sample, SHAPE, sample[0].dtype)


def noise_levels(name: str, scheduler):
    """Valid ``timesteps`` for ``add_noise``: noise levels (sigma schedulers), the schedule's timesteps (discrete
    ones) or training timesteps (DDPM); one, or one per sample."""
    if name in ("EDMHeunScheduler", "EDMMultistepScheduler"):
        valid = st.one_of(
            st.floats(0.0, 1e3), st.lists(st.floats(0.0, 1e3), min_size=SHAPE[0], max_size=SHAPE[0]).map(torch.tensor)
        )
        return ok(valid), bad(NAN, INF, -1.0, "x", torch.tensor([1.0, 2.0, 3.0]), [], None)
    if name == "LearnedVarianceDDPMScheduler":
        valid = st.lists(st.integers(0, LV_TRAIN_STEPS - 1), min_size=SHAPE[0], max_size=SHAPE[0]).map(torch.tensor)
        return ok(valid), bad(torch.tensor([-1, 0]), torch.tensor([0, LV_TRAIN_STEPS]), torch.tensor([NAN, 1.0]), "x", None)
    first = scheduler.timesteps[0]
    return ok(st.sampled_from([first, first.repeat(SHAPE[0])])), bad(NAN, torch.tensor([1e9]), "x", None)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@CONTRACT
@given(data=st.data())
def test_add_noise(name, data):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(3)
    original = drawn(data, "original_samples", *sample_tensors(dtype_ok=(torch.float32,)))
    noise = drawn(
        data, "noise", ok(st.just(torch.randn(SHAPE))),
        bad(torch.randn(SHAPE[0], *SHAPE[1:3], SHAPE[3] + 1), torch.randn(1, 3), np.zeros(SHAPE, np.float32), None),
    )
    timesteps = drawn(data, "timesteps", *noise_levels(name, scheduler))
    params = {"original_samples": original, "noise": noise, "timesteps": timesteps}
    noisy = check_contract(
        lambda: scheduler.add_noise(original[0], noise[0], timesteps[0]), params,
        aliases={"timesteps": ("timestep", "noise level")},
    )
    if noisy is not None:
        assert_finite(noisy, SHAPE, torch.float32)


@CONTRACT
@given(data=st.data())
def test_learned_variance_ddpm_scheduler_constructor(data):
    """The other schedulers' constructors have their property tests in test_scheduler_input_contracts.py."""
    params = {
        "num_train_timesteps": drawn(data, "num_train_timesteps", ok(st.integers(30, 2000)), bad(0, -1, 1, 2.5, NAN, "100", None, True)),
        "variance_type": drawn(
            data, "variance_type", ok(st.sampled_from(["learned_range", "learned", "fixed_small", "fixed_large"])), bad("x", None, 1)
        ),
        "clip_sample_range": drawn(data, "clip_sample_range", ok(st.floats(0.1, 10.0)), bad(0.0, -1.0, NAN, INF, "1", None)),
    }
    scheduler = check_contract(lambda: LearnedVarianceDDPMScheduler(**{k: v for k, (v, _) in params.items()}), params)
    if scheduler is not None:
        scheduler.set_timesteps(3)
        x = scheduler.step(torch.zeros(SHAPE[0], 2 * SHAPE[1], *SHAPE[2:]), scheduler.timesteps[0], torch.randn(SHAPE)).prev_sample
        assert_finite(x, SHAPE, torch.float32)


# ================================================================================================ wrappers
WRAPPERS = {cls.__name__: cls for cls in (EDMPrecond, VPPrecond, VEPrecond, IDDPMPrecond)}
BACKBONE = tiny_unet()
DENOISERS = {name: cls.from_backbone(BACKBONE).eval() for name, cls in WRAPPERS.items()}
DENOISER_SHAPE = (2, 3, 8, 8)


@pytest.mark.parametrize("name", list(WRAPPERS))
@CONTRACT
@given(data=st.data())
def test_wrapper_forward(name, data):
    """``check_sigma`` then ``forward``: levels finite and > 0 (values, looked at once), shapes one or one per sample."""
    denoiser = DENOISERS[name]
    low, high = max(denoiser.sigma_min, 1e-3), min(denoiser.sigma_max, 1e3)
    valid_sigma = st.one_of(
        st.floats(low, high),
        st.lists(st.floats(low, high), min_size=DENOISER_SHAPE[0], max_size=DENOISER_SHAPE[0]).map(torch.tensor),
    )
    sigma = drawn(
        data, "sigma", ok(valid_sigma),
        bad(NAN, INF, -INF, 0.0, -1.0, "1", None, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([]), [1.0, NAN]),
    )
    sample = drawn(
        data, "sample",
        ok(st.builds(lambda scale: torch.randn(DENOISER_SHAPE) * scale, st.floats(0.0, 1e3))),
        bad(torch.zeros(2, 2, 8, 8), torch.zeros(3, 8, 8), np.zeros((2, 3, 1, 1), np.float32), [[0.0]], None),
    )

    def call():
        with torch.no_grad():
            return denoiser(sample[0], denoiser.check_sigma(sigma[0])).sample

    out = check_contract(call, {"sigma": sigma, "sample": sample})
    if out is not None:
        assert_finite(out, DENOISER_SHAPE, torch.float32)


@pytest.mark.parametrize("name", list(WRAPPERS))
@CONTRACT
@given(data=st.data())
def test_wrapper_from_backbone(name, data):
    backbone = drawn(
        data, "backbone", ok(st.just(BACKBONE)), bad(None, "UNet2DModel", torch.nn.Linear(2, 2), {"sample_size": 8})
    )
    num_classes = drawn(data, "num_classes", ok(st.just(0)), bad(-1, 2.5, NAN, "3", None, [1], 10**30))
    params = {"backbone": backbone, "num_classes": num_classes}
    denoiser = check_contract(lambda: WRAPPERS[name].from_backbone(backbone[0], num_classes=num_classes[0]), params)
    if denoiser is not None:
        with torch.no_grad():
            assert_finite(denoiser.eval()(torch.randn(DENOISER_SHAPE), 1.0).sample, DENOISER_SHAPE, torch.float32)


# ================================================================================================ classifier
@CONTRACT
@given(data=st.data())
def test_noise_conditional_classifier_constructor(data):
    params = {
        "in_channels": drawn(data, "in_channels", ok(st.integers(1, 4)), bad(0, -1, 2.5, NAN, "3", None, 10**30)),
        "num_classes": drawn(data, "num_classes", ok(st.integers(2, 12)), bad(0, 1, -3, 2.5, INF, "3", None)),
        "sample_size": drawn(data, "sample_size", ok(st.sampled_from([8, (8, 8)])), bad(0, -8, 8.5, (8,), "8", None, NAN)),
        "sigma_data": drawn(data, "sigma_data", ok(st.floats(0.05, 5.0)), bad(0.0, -0.5, NAN, INF, "0.5", None)),
    }

    def call():
        torch.manual_seed(0)
        return NoiseConditionalClassifier(
            **{key: value for key, (value, _) in params.items()},
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
            attention_head_dim=4, norm_num_groups=4,
        )

    classifier = check_contract(call, params)
    if classifier is not None:
        channels, classes = params["in_channels"][0], params["num_classes"][0]
        with torch.no_grad():
            logits = classifier(torch.randn(2, channels, 8, 8), classifier.check_sigma(torch.tensor(1.0))).logits
        assert_finite(logits, (2, classes), torch.float32)


# ================================================================================================ pipelines
CONDITIONAL = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
EDM_SCHEDULERS = {
    "EDMHeunScheduler": lambda: EDMHeunScheduler(s_churn=5.0),
    "EDMMultistepScheduler": lambda: EDMMultistepScheduler(),
    "EDMEulerScheduler": lambda: EDMEulerScheduler(),
    "EDMDPMSolverMultistepScheduler": lambda: EDMDPMSolverMultistepScheduler(),
}
PIPELINES = {name: EDMPipeline(CONDITIONAL, make()) for name, make in EDM_SCHEDULERS.items()}
PIPELINES["LearnedVariancePipeline"] = LearnedVariancePipeline(
    unet=tiny_dit(channels=3, learned_variance=True, num_classes=5).eval(),
    scheduler=LearnedVarianceDDPMScheduler(num_train_timesteps=LV_TRAIN_STEPS),
)
for _pipe in PIPELINES.values():
    _pipe.set_progress_bar_config(disable=True)


def generators(batch: int):
    valid = st.sampled_from([None, torch.Generator().manual_seed(0), [torch.Generator().manual_seed(i) for i in range(batch)]])
    hostile = [[], [torch.Generator()] * (batch + 1), "seed", 0, [0] * batch]
    if batch > 1:
        hostile.append([torch.Generator()])
    return ok(valid), bad(*hostile)


@pytest.mark.parametrize("name", list(PIPELINES))
@CONTRACT
@given(data=st.data())
def test_pipeline_call(name, data):
    pipe = PIPELINES[name]
    steps = drawn(data, "num_inference_steps", ok(st.integers(1, 3)), bad(0, -1, 2.5, NAN, "2", None, True, [2]))
    batch = drawn(data, "batch_size", ok(st.integers(1, 2)), bad(0, -1, 2.0, NAN, "2", None, True))
    guidance = drawn(data, "guidance_scale", ok(st.sampled_from([1.0, 0.0, 2.5, -1.0])), bad(NAN, INF, -INF, "2", None))
    generator = drawn(data, "generator", *generators(batch[0] if batch[1] else 1))
    params = {"num_inference_steps": steps, "batch_size": batch, "guidance_scale": guidance, "generator": generator}
    images = check_contract(
        lambda: pipe(
            batch_size=batch[0], class_labels=0, guidance_scale=guidance[0], num_inference_steps=steps[0],
            generator=generator[0], output_type="pt",
        ).images,
        params,
    )
    if images is not None:
        assert_finite(images, (batch[0], 3, 8, 8), torch.float32)


# ================================================================================================ regressions
@pytest.mark.parametrize("scheduler", [EDMEulerScheduler(), EDMDPMSolverMultistepScheduler()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("steps", [0, -1])
def test_zero_or_negative_steps_are_refused_with_diffusers_edm_schedulers(scheduler, steps):
    """Issue 15: 0 steps gave a uniform grey image, -1 torch's "number of steps must be non-negative"."""
    pipe = EDMPipeline(EDMPrecond.from_backbone(tiny_unet()).eval(), scheduler)
    with pytest.raises(ValueError, match=rf"num_inference_steps must be an integer >= 1, got {steps}"):
        pipe(num_inference_steps=steps, output_type="pt")


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_generator_list_of_another_length_than_the_batch_is_refused(name, count):
    with pytest.raises(ValueError, match=rf"generator is a list of {count} generator\(s\) for batch_size=2"):
        PIPELINES[name](
            batch_size=2, class_labels=0, num_inference_steps=1, output_type="pt",
            generator=[torch.Generator() for _ in range(count)],
        )


# Examples hypothesis found on the code before the contract fixes (each failed with an AttributeError, IndexError or
# RuntimeError from deep inside torch, or an error that did not name the parameter).
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_an_invalid_device_is_named(name):
    with pytest.raises(ValueError, match=r"device must be None, a torch.device or a device string.*'no-such-device'"):
        SCHEDULERS[name]().set_timesteps(3, device="no-such-device")


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize(
    "argument,value,message",
    [
        ("sample", np.zeros(SHAPE, np.float32), "sample must be a floating-point tensor, got ndarray"),
        ("sample", torch.zeros(SHAPE, dtype=torch.int64), "sample must be a floating-point tensor, got a torch.int64"),
        ("model_output", np.zeros(SHAPE, np.float32), "model_output must be a floating-point tensor, got ndarray"),
        ("model_output", None, "model_output must be a floating-point tensor, got NoneType"),
        ("timestep", "t", "timestep must be a number or a tensor, got str"),
        ("timestep", None, "timestep must be a number or a tensor, got NoneType"),
    ],
)
def test_step_names_input_of_the_wrong_type(name, argument, value, message):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(3)
    channels = 2 * SHAPE[1] if name == "LearnedVarianceDDPMScheduler" else SHAPE[1]
    call = {"sample": torch.zeros(SHAPE), "model_output": torch.zeros(SHAPE[0], channels, *SHAPE[2:]), "timestep": scheduler.timesteps[0]}
    call[argument] = value
    with pytest.raises(ValueError, match=message):
        scheduler.step(call["model_output"], call["timestep"], call["sample"])


@pytest.mark.parametrize("name", ["EDMHeunScheduler", "LearnedVarianceDDPMScheduler"])
@pytest.mark.parametrize(
    "generator,message",
    [([], r"generator is a list of 0 generator\(s\) for batch_size=2"), ("seed", "generator must be None, a torch.Generator")],
)
def test_step_names_a_bad_generator(name, generator, message):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(3)
    channels = 2 * SHAPE[1] if name == "LearnedVarianceDDPMScheduler" else SHAPE[1]
    with pytest.raises(ValueError, match=message):
        scheduler.step(torch.zeros(SHAPE[0], channels, *SHAPE[2:]), scheduler.timesteps[0], torch.zeros(SHAPE), generator=generator)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize(
    "argument,value,message",
    [
        ("original_samples", np.zeros(SHAPE, np.float32), "original_samples must be a floating-point tensor"),
        ("noise", None, "noise must be a floating-point tensor, got NoneType"),
        ("noise", torch.zeros(1, 3), r"noise shape \(1, 3\) differs from original_samples shape \(2, 3, 4, 4\)"),
        ("timesteps", "x", "timesteps must be a number or a tensor, got str"),
        ("timesteps", None, "timesteps must be a number or a tensor, got NoneType"),
    ],
)
def test_add_noise_names_input_of_the_wrong_type_or_shape(name, argument, value, message):
    scheduler = SCHEDULERS[name]()
    scheduler.set_timesteps(3)
    call = {"original_samples": torch.zeros(SHAPE), "noise": torch.zeros(SHAPE), "timesteps": scheduler.timesteps[0]}
    call[argument] = value
    with pytest.raises(ValueError, match=message):
        scheduler.add_noise(call["original_samples"], call["noise"], call["timesteps"])


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("sample", [[[0.0]], np.zeros(DENOISER_SHAPE, np.float32)], ids=["list", "ndarray"])
def test_a_denoiser_names_a_sample_that_is_not_a_tensor(name, sample):
    with pytest.raises(TypeError, match=r"sample must be a tensor of shape \(B, 3, H, W\)"):
        DENOISERS[name](sample, 1.0)


@pytest.mark.parametrize("value", [NAN, INF, "1"])
def test_a_non_finite_or_non_numeric_clip_sample_range_is_named(value):
    """Found by hypothesis: clip_sample_range=nan passed the ``<= 0`` check and clipped every x_0 prediction to NaN."""
    with pytest.raises(ValueError, match=r"clip_sample_range must be a finite number > 0"):
        LearnedVarianceDDPMScheduler(num_train_timesteps=LV_TRAIN_STEPS, clip_sample_range=value)


@pytest.mark.parametrize(
    "latents,message",
    [
        (torch.full((1, 3, 8, 8), NAN), "latents hold NaN or infinite values"),
        (torch.zeros((1, 3, 8, 8), dtype=torch.int64), "latents must be a floating-point tensor of shape"),
        (np.zeros((1, 3, 8, 8), np.float32), "latents must be a floating-point tensor of shape"),
        (torch.zeros((1, 3, 4, 4)), r"latents must have shape \(1, 3, 8, 8\)"),
    ],
    ids=["nan", "int64", "ndarray", "shape"],
)
def test_edm_pipeline_names_bad_latents(latents, message):
    with pytest.raises(ValueError, match=message):
        PIPELINES["EDMHeunScheduler"](class_labels=0, latents=latents, num_inference_steps=1, output_type="pt")


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("sigma", ["1", None, [1.0, "x"]])
def test_a_sigma_that_is_no_number_is_named(name, sigma):
    """Found by hypothesis: ``sigma="1"`` ended in torch's "new(): invalid data type 'str'"."""
    denoiser = DENOISERS[name]
    with pytest.raises(ValueError, match="sigma must be a number or a tensor of noise levels"):
        denoiser.check_sigma(sigma)
    with pytest.raises(ValueError, match="sigma must be a number or a tensor of noise levels"):
        denoiser(torch.zeros(DENOISER_SHAPE), sigma)
