"""Input contracts of the wrappers and pipelines: a clear ValueError (naming the value and what is allowed) or a
finite result, never NaN images or an error from deep inside a backbone.

The rules are restated here: guidance weights are finite numbers; batch sizes are integers >= 1; label ids lie in
the model's classes (or equal its null label, which classifier-free guidance cannot use as a class); one label or one
per sample; wrapper config values are numbers in their documented ranges.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_edm import EDMHeunScheduler, EDMPipeline, LearnedVarianceDDPMScheduler, LearnedVariancePipeline
from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from tiny_backbones import tiny_dit, tiny_unet

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NON_FINITE = [math.nan, math.inf, -math.inf]
guidance_scales = st.one_of(st.sampled_from([1.0, 0.0, 2.5, *NON_FINITE]), st.floats(-1e3, 1e3))
batch_sizes = st.one_of(st.integers(-2, 3), st.sampled_from([True, 2.0, "2"]))
label_ids = st.one_of(st.integers(-3, 12), st.integers(2**63, 2**64))  # the second: beyond int64
class_labels = st.one_of(st.none(), label_ids, st.lists(label_ids, max_size=3))


def expected_batch(batch_size, labels, guidance_scale, num_classes: int, null_label: int, labels_required: bool) -> int | None:
    """The number of images a valid call returns, or None when the call must raise a ValueError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 or not math.isfinite(guidance_scale):
        return None
    guided = guidance_scale != 1.0
    if labels is None:
        return None if guided or labels_required else batch_size
    ids = [labels] if isinstance(labels, int) else labels
    if not ids:
        return None
    if not all(0 <= i < num_classes or (i == null_label and not guided) for i in ids):
        return None
    if len(ids) == 1:
        return batch_size
    if batch_size in (1, len(ids)):
        return len(ids)
    return None


def check_contract(pipe, expected: int | None, **kwargs) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            pipe(**kwargs)
        return
    images = pipe(**kwargs).images
    assert images.shape[0] == expected and torch.isfinite(images).all()


@pytest.fixture(scope="module")
def edm_pipe() -> EDMPipeline:
    denoiser = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
    pipe = EDMPipeline(denoiser, EDMHeunScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dit_pipe() -> LearnedVariancePipeline:
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=10, beta_schedule="squaredcos_cap_v2")
    pipe = LearnedVariancePipeline(unet=tiny_dit(learned_variance=True), scheduler=scheduler)  # 10 classes, null 10
    pipe.set_progress_bar_config(disable=True)
    return pipe


@PROPERTY
@given(guidance_scale=guidance_scales, labels=class_labels, batch_size=batch_sizes)
def test_edm_pipeline_gives_a_value_error_or_finite_images(edm_pipe, guidance_scale, labels, batch_size):
    expected = expected_batch(batch_size, labels, guidance_scale, num_classes=5, null_label=5, labels_required=False)
    check_contract(edm_pipe, expected, batch_size=batch_size, class_labels=labels, guidance_scale=guidance_scale,
                   num_inference_steps=1, output_type="pt")


@PROPERTY
@given(guidance_scale=guidance_scales, labels=class_labels, batch_size=batch_sizes)
def test_learned_variance_pipeline_gives_a_value_error_or_finite_images(dit_pipe, guidance_scale, labels, batch_size):
    expected = expected_batch(batch_size, labels, guidance_scale, num_classes=10, null_label=10, labels_required=True)
    check_contract(dit_pipe, expected, batch_size=batch_size, class_labels=labels, guidance_scale=guidance_scale,
                   num_inference_steps=2, output_type="pt")


@pytest.mark.parametrize("guidance_scale", NON_FINITE)
def test_non_finite_guidance_is_refused_by_both_pipelines(edm_pipe, dit_pipe, guidance_scale):
    for pipe in (edm_pipe, dit_pipe):
        with pytest.raises(ValueError, match=rf"guidance_scale must be a finite number .*got {guidance_scale}"):
            pipe(class_labels=[1, 2], guidance_scale=guidance_scale, num_inference_steps=1)


@pytest.mark.parametrize("label", [99, -1])
def test_learned_variance_labels_outside_the_class_table_are_named(dit_pipe, label):
    with pytest.raises(ValueError, match=rf"DiTTransformer2DModel's class table, 0\.\.10 \(10: the null label\); got \[{label}\]"):
        dit_pipe(class_labels=[0, label], num_inference_steps=1)
    scheduler = LearnedVarianceDDPMScheduler(num_train_timesteps=10, beta_schedule="squaredcos_cap_v2")
    unet_pipe = LearnedVariancePipeline(unet=tiny_unet(out_channels=6, num_class_embeds=4), scheduler=scheduler)
    with pytest.raises(ValueError, match=rf"UNet2DModel's class table, 0\.\.3; got \[{label}\]"):
        unet_pipe(class_labels=label, num_inference_steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        LearnedVariancePipeline(unet=tiny_unet(out_channels=6), scheduler=scheduler)(class_labels=0, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"null_class_label must be None or a row of the backbone's class table, 0\.\.3, got 4"):
        LearnedVariancePipeline(unet=tiny_unet(out_channels=6, num_class_embeds=4), scheduler=scheduler, null_class_label=4)


# ---------------------------------------------------------------------------------------------- wrapper configs
CONFIG_KEYS = {
    EDMPrecond: ["sigma_data", "sigma_min", "sigma_max", "num_classes", "null_class_label", "label_dropout"],
    VPPrecond: ["beta_d", "beta_min", "M", "epsilon_t"],
    VEPrecond: ["sigma_min", "sigma_max"],
    IDDPMPrecond: ["C_1", "C_2", "M"],
}
# Magnitudes within 1e-6..1e6 (the coefficients are float32: a VP schedule with beta_d ~ 1e12, or an EDM range
# ending at 1e-168, is valid but puts its noise levels beyond float32).
config_values = st.one_of(
    st.text(max_size=3), st.none(), st.booleans(), st.sampled_from([0.0, *NON_FINITE]),
    st.floats(-1e6, 1e6).filter(lambda v: abs(v) >= 1e-6),
    st.integers(-3, 3000), st.just(10**400), st.lists(st.integers(), max_size=2),
)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_wrapper_config_values_give_a_named_value_error_or_a_finite_denoiser(data):
    wrapper = data.draw(st.sampled_from(sorted(CONFIG_KEYS, key=lambda cls: cls.__name__)))
    key = data.draw(st.sampled_from(CONFIG_KEYS[wrapper]))
    value = data.draw(config_values)
    try:
        model = wrapper.from_backbone(tiny_unet(), **{key: value})
    except ValueError as error:
        assert repr(value) in str(error) or str(value) in str(error), str(error)
        return
    sigma = min(max(1.0, model.sigma_min), model.sigma_max)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 8, 8), sigma).sample).all()


@pytest.mark.parametrize("wrapper,sigma_min", [(VEPrecond, 1234567.0), (VEPrecond, 100.0), (EDMPrecond, 1e9)])
def test_an_empty_noise_range_names_both_ends(wrapper, sigma_min):
    # A sigma_min at or above the (default) sigma_max: the error names the value given, not only the other end.
    sigma_max = 1e6 if wrapper is EDMPrecond else 100.0
    with pytest.raises(ValueError, match=f"sigma_min must be < sigma_max, got sigma_min={sigma_min!r} and sigma_max={sigma_max!r}"):
        wrapper.from_backbone(tiny_unet(), sigma_min=sigma_min, **({"sigma_max": sigma_max} if wrapper is EDMPrecond else {}))


def test_non_numeric_config_values_in_a_saved_config_are_named(tmp_path):
    EDMPrecond.from_backbone(tiny_unet()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "sigma_data": "abc"}))
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0, got 'abc'"):
        EDMPrecond.from_pretrained(tmp_path)
