"""LearnedVariancePipeline guidance in DDPM form: classifier guidance (ADM), with classifier-free guidance, and the
guidance interval.

The reference is Dhariwal & Nichol 2021, Algorithm 1, written here with the float64 DDPM tables of
tests/learned_variance_reference.py: ``x_{t-1} ~ N(mu + s Sigma grad_{x_t} log p(y | x_t, t), Sigma)``, where the
sigma-space classifier reads ``x_t / sqrt(alpha_bar_t)`` at ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` and the
gradient with respect to ``x_t`` is taken by central finite differences (perturbing ``x_t`` itself, so the chain rule
is not written anywhere in the test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from hypothesis import given, settings
from hypothesis import strategies as st

import learned_variance_reference as ref
from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import LearnedVarianceDDPMScheduler, LearnedVariancePipeline
from diffusers_edm.models import NoiseConditionalClassifier
from guidance_fixtures import finite_difference_gradient, seeded, tiny_classifier
from test_learned_variance_pipeline import tiny_class_unet, tiny_dit_pipeline

T = 40
KEPT = [0, 10, 19, 20, 39]  # "3,2": sections 0..19 and 20..39
SPACING = "3,2"
ALPHA_BARS = ref.alpha_bars(ref.cosine_betas(T))


def tiny_unconditional_unet() -> UNet2DModel:
    torch.manual_seed(1)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def scheduler() -> LearnedVarianceDDPMScheduler:
    return LearnedVarianceDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


def pipeline(conditional: bool, classifier: NoiseConditionalClassifier | None) -> LearnedVariancePipeline:
    """Conditional: a UNet with 3 class rows, the last (2) the null label, so 2 classes."""
    if conditional:
        pipe = LearnedVariancePipeline(unet=tiny_class_unet().eval(), scheduler=scheduler(), null_class_label=2, classifier=classifier)
    else:
        pipe = LearnedVariancePipeline(unet=tiny_unconditional_unet(), scheduler=scheduler(), classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sigma_of(t: int) -> float:
    return math.sqrt((1 - ALPHA_BARS[t]) / ALPHA_BARS[t])


@pytest.mark.parametrize("conditional", [True, False], ids=["cfg_and_classifier", "classifier_only"])
def test_classifier_guidance_moves_the_mean_by_s_sigma_grad(conditional):
    w, s, labels = 3.0, 5.0, [0, 1]
    classifier = tiny_classifier(num_classes=2, pooling="mean")
    pipe = pipeline(conditional, classifier)
    kwargs = dict(num_inference_steps=SPACING, output_type="latent", guidance_scale=w if conditional else 1.0)
    sample = pipe(class_labels=labels, classifier_scale=s, generator=seeded(0), **kwargs).images
    # Without classifier guidance an unconditional model takes no labels.
    unguided_labels = dict(class_labels=labels) if conditional else dict(batch_size=2)
    unguided = pipe(classifier_scale=0, generator=seeded(0), **unguided_labels, **kwargs).images
    assert (sample - unguided).abs().max() > 1e-2

    unet = pipe.unet
    betas = ref.respaced_betas(ref.cosine_betas(T), KEPT)
    generator = seeded(0)
    x = torch.randn((2, 3, 8, 8), generator=generator).double().numpy()
    for i in reversed(range(len(KEPT))):
        inputs = torch.from_numpy(x).float()
        with torch.no_grad():
            if conditional:  # CFG on eps, v from the conditional half
                out = unet(torch.cat([inputs, inputs]), torch.full((4,), KEPT[i]), class_labels=torch.tensor(labels + [2, 2])).sample.double().numpy()
                eps, v = out[2:, :3] + w * (out[:2, :3] - out[2:, :3]), out[:2, 3:]
            else:
                out = unet(inputs, torch.full((2,), KEPT[i])).sample.double().numpy()
                eps, v = out[:, :3], out[:, 3:]
        mean, log_var, _ = ref.reverse_mean_log_variance(betas, i, x, eps, v, "learned_range")
        alpha_bar = ALPHA_BARS[KEPT[i]]
        gradient = finite_difference_gradient(
            classifier, torch.from_numpy(x), sigma_of(KEPT[i]), labels, input_scale=1 / math.sqrt(alpha_bar), step=1e-2
        ).numpy()
        mean = mean + s * np.exp(log_var) * gradient
        x = mean + np.exp(0.5 * log_var) * torch.randn((2, 3, 8, 8), generator=generator).double().numpy() if i > 0 else mean
    np.testing.assert_allclose(sample.numpy(), x, atol=2e-4)


def test_guidance_interval_on_the_steps_sigma_t():
    """CFG doubles the batch and the classifier is called exactly at the steps with sigma_lo < sigma_t <= sigma_hi."""
    classifier = tiny_classifier(num_classes=2)
    pipe = pipeline(True, classifier)
    unet_calls, classifier_calls = [], []
    pipe.unet.register_forward_pre_hook(  # the timestep by name or by position
        lambda m, args, kwargs: unet_calls.append((int(kwargs.get("timestep", args[1:2] and args[1])[0]), args[0].shape[0])),
        with_kwargs=True,
    )
    classifier.register_forward_pre_hook(lambda m, args: classifier_calls.append(float(args[1])))
    sigmas = [sigma_of(t) for t in reversed(KEPT)]
    interval = (sigmas[3], sigmas[1])  # sigma_t of t = 19 (excluded) and of t = 20 (included)
    pipe(class_labels=[0, 1], guidance_scale=2.0, classifier_scale=1.0, guidance_interval=interval,
         num_inference_steps=SPACING, generator=seeded(), output_type="latent")
    inside = [interval[0] < sigma <= interval[1] for sigma in sigmas]
    assert inside == [False, True, True, False, False]
    assert unet_calls == [(t, 4 if guided else 2) for t, guided in zip(reversed(KEPT), inside)]
    assert classifier_calls == pytest.approx([sigma for sigma, guided in zip(sigmas, inside) if guided], rel=1e-12)


@pytest.mark.parametrize("interval", [None, (0.5, 5.0)])
def test_unit_weight_and_zero_scale_reproduce_the_unguided_samples_exactly(interval):
    plain = pipeline(True, None)
    expected = plain(class_labels=[0, 1], num_inference_steps=SPACING, generator=seeded(3), output_type="latent").images
    with_classifier = pipeline(True, tiny_classifier(num_classes=2))
    actual = with_classifier(class_labels=[0, 1], guidance_scale=1.0, classifier_scale=0.0, guidance_interval=interval,
                             num_inference_steps=SPACING, generator=seeded(3), output_type="latent").images
    assert torch.equal(actual, expected)
    nowhere = with_classifier(class_labels=[0, 1], guidance_scale=4.0, classifier_scale=5.0, guidance_interval=(500.0, 600.0),
                              num_inference_steps=SPACING, generator=seeded(3), output_type="latent").images
    assert torch.equal(nowhere, expected)


def test_latent_dit_with_classifier_and_save_load(tmp_path):
    pipe = tiny_dit_pipeline()
    pipe.register_modules(classifier=tiny_classifier(num_classes=5, in_channels=4, sample_size=4))
    kwargs = dict(class_labels=[1, 3], guidance_scale=1.5, classifier_scale=2.0, num_inference_steps=4, output_type="latent")
    expected = pipe(generator=seeded(), **kwargs).images
    assert not torch.allclose(expected, pipe(generator=seeded(), **dict(kwargs, classifier_scale=0)).images)
    pipe.save_pretrained(tmp_path / "full")
    index = json.loads((tmp_path / "full" / "model_index.json").read_text())
    assert index["classifier"] == ["diffusers_edm.models.noise_conditional_classifier", "NoiseConditionalClassifier"]
    loaded = LearnedVariancePipeline.from_pretrained(tmp_path / "full")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.classifier, NoiseConditionalClassifier)
    torch.testing.assert_close(loaded(generator=seeded(), **kwargs).images, expected)
    assert LearnedVariancePipeline.from_pretrained(tmp_path / "full", classifier=None).classifier is None

    plain = pipeline(True, None)
    plain.save_pretrained(tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    index.pop("classifier")  # saved before the component existed
    (tmp_path / "plain" / "model_index.json").write_text(json.dumps(index))
    assert LearnedVariancePipeline.from_pretrained(tmp_path / "plain").classifier is None


def test_bad_classifier_and_arguments():
    with pytest.raises(ValueError, match=r"classifier has num_classes=5 but the unet \(UNet2DModel\) has num_classes=2"):
        pipeline(True, tiny_classifier(num_classes=5))
    with pytest.raises(ValueError, match=r"classifier has in_channels=3 but the unet \(DiTTransformer2DModel\) has in_channels=4"):
        pipe = tiny_dit_pipeline()
        LearnedVariancePipeline(**{**pipe.components, "classifier": tiny_classifier(num_classes=5, sample_size=4)})
    with pytest.raises(ValueError, match=r"classifier has sample_size=\(16, 16\) but the unet \(UNet2DModel\) has sample_size=\(8, 8\)"):
        pipeline(False, tiny_classifier(num_classes=2, sample_size=16))
    pipe = pipeline(True, None)
    with pytest.raises(ValueError, match="classifier_scale=1.0 needs a classifier"):
        pipe(class_labels=[0], classifier_scale=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="classifier_scale must be"):
        pipe(class_labels=[0], classifier_scale=-1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="guidance_interval needs sigma_lo < sigma_hi"):
        pipe(class_labels=[0], guidance_interval=(2.0, 1.0), num_inference_steps=2)
    unconditional = pipeline(False, tiny_classifier(num_classes=3))
    with pytest.raises(ValueError, match=r"guidance_scale=2.0 is classifier-free guidance.*UNet2DModel is unconditional"):
        unconditional(class_labels=[0], guidance_scale=2.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="pass class_labels"):
        unconditional(batch_size=2, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"classes of the classifier, 0\.\.2.*got \[3\]"):
        unconditional(class_labels=[3], num_inference_steps=2)
    out = unconditional(class_labels=[0, 2, 1], num_inference_steps=2, output_type="latent").images
    assert out.shape == (3, 3, 8, 8) and torch.isfinite(out).all()


numbers = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e300]))


@settings(max_examples=30, deadline=None)
@given(scale=numbers, low=numbers, high=numbers)
def test_classifier_scale_and_interval_contract(scale, low, high):
    """A ValueError naming the bad argument, or finite samples (0 <= s <= 1000; 0 <= sigma_lo < sigma_hi finite)."""
    pipe = pipeline(True, tiny_classifier(num_classes=2))
    call = dict(class_labels=[0, 1], guidance_scale=2.0, classifier_scale=scale, guidance_interval=(low, high),
                num_inference_steps=2, generator=seeded(), output_type="latent")
    if not (math.isfinite(scale) and 0 <= scale <= 1000):
        with pytest.raises(ValueError, match="classifier_scale"):
            pipe(**call)
    elif not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        with pytest.raises(ValueError, match="guidance_interval"):
            pipe(**call)
    else:
        assert torch.isfinite(pipe(**call).images).all()


def test_no_host_sync_in_the_guided_ancestral_loop():
    pipe = pipeline(True, tiny_classifier(num_classes=2))
    first = []
    with count_host_syncs() as syncs:
        pipe.unet.register_forward_pre_hook(lambda m, a: first.append(syncs.count) if not first else None)
        pipe(class_labels=[0, 1], guidance_scale=2.0, classifier_scale=1.0, guidance_interval=(0.5, 50.0),
             num_inference_steps=SPACING, generator=seeded(), output_type="latent")
    assert syncs.calls[first[0]:] == []


def test_model_card_names_the_classifier_and_its_example_runs(tmp_path):
    from test_model_cards import REPO_ID, run_usage_example

    pipe = pipeline(False, tiny_classifier(num_classes=3))
    pipe.save_pretrained(tmp_path)
    card = str(pipe.model_card(REPO_ID, num_inference_steps=3))
    assert "- classifier-guidance" in card and "NoiseConditionalClassifier` over 3 classes" in card
    code, images = run_usage_example(card, REPO_ID, tmp_path)
    assert "class_labels=[0, 1, 2]" in code and len(images) == 3
