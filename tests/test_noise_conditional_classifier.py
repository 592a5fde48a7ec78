"""NoiseConditionalClassifier: ADM's classifier (the encoder half of a UNet with an attention- or mean-pooling head)
with EDM's preconditioning. Restated from the papers:

- EDM Table 1: the network sees ``c_in(sigma) x`` with ``c_in = 1/sqrt(sigma^2 + sigma_data^2)`` and the noise label
  ``c_noise(sigma) = ln(sigma)/4``.
- Classifier guidance (Dhariwal & Nichol 2021) needs ``grad_x log p(y | x; sigma)``: the logits are differentiable
  in the input.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import NoiseConditionalClassifier
from diffusers_edm.models import NoiseConditionalClassifierOutput

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POOLINGS = ["attention", "mean"]


def tiny_classifier(pooling: str = "attention", in_channels: int = 3, num_classes: int = 10, seed: int = 0, **config):
    torch.manual_seed(seed)
    settings_ = dict(
        sample_size=8,
        in_channels=in_channels,
        num_classes=num_classes,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=4,
        pooling=pooling,
    )
    settings_.update(config)
    return NoiseConditionalClassifier(**settings_).eval()


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("in_channels", [3, 4])  # pixels or (e.g.) 4-channel latents
def test_logits_shape_and_dtype_for_every_form_of_sigma(pooling, in_channels):
    model = tiny_classifier(pooling, in_channels=in_channels, num_classes=7)
    x = torch.randn(3, in_channels, 8, 8)
    for sigma in (0.5, torch.tensor(0.5), torch.tensor([0.5]), torch.full((3,), 0.5)):
        with torch.no_grad():
            output = model(x, sigma)
        assert isinstance(output, NoiseConditionalClassifierOutput)
        assert output.logits.shape == (3, 7) and output.logits.dtype == torch.float32
        assert torch.isfinite(output.logits).all()
    with torch.no_grad():
        (logits,) = model(x, 0.5, return_dict=False)
        torch.testing.assert_close(logits, model(x, torch.full((3,), 0.5)).logits)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_network_sees_c_in_x_and_c_noise_as_in_edm_table_1(pooling):
    """logits(x, sigma) == F(x / sqrt(sigma^2 + sigma_data^2), ln(sigma)/4), with the coefficients computed here."""
    sigma_data = 1.3  # not the default, so a wrong sigma_data shows
    model = tiny_classifier(pooling, sigma_data=sigma_data)
    x = torch.randn(4, 3, 8, 8) * 3
    sigma = torch.tensor([0.002, 0.4, 3.0, 80.0])
    c_in = 1 / torch.sqrt(sigma.double() ** 2 + sigma_data**2)
    c_noise = torch.log(sigma.double()) / 4
    with torch.no_grad():
        expected = model.network((x.double() * c_in.reshape(4, 1, 1, 1)).float(), c_noise.float())
        actual = model(x, sigma).logits
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
        # The noise label matters: the same scaled input at another label gives other logits.
        other = model.network((x.double() * c_in.reshape(4, 1, 1, 1)).float(), c_noise.float() + 1)
    assert (other - expected).abs().max() > 1e-3


@pytest.mark.parametrize("pooling", POOLINGS)
def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, pooling):
    model = tiny_classifier(pooling, sample_size=(8, 16), num_classes=5)
    model.save_pretrained(tmp_path)
    loaded = NoiseConditionalClassifier.from_pretrained(tmp_path).eval()
    public = lambda config: json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))  # noqa: E731
    assert public(loaded.config) == public(model.config)
    assert loaded.sample_size == (8, 16) and loaded.num_classes == 5
    x, sigma = torch.randn(2, 3, 8, 16), torch.tensor([0.1, 10.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma).logits, model(x, sigma).logits, rtol=0, atol=0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gradient_of_log_probability_reaches_the_input_and_matches_finite_differences(pooling):
    """Classifier guidance uses grad_x log p(y | x; sigma): autograd must agree with a central difference."""
    model = tiny_classifier(pooling).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    sigma, labels = torch.tensor([0.3, 2.0], dtype=torch.float64), torch.tensor([1, 4])

    def log_p(sample):
        return torch.log_softmax(model(sample, sigma).logits.double(), dim=-1)[torch.arange(2), labels].sum()

    (gradient,) = torch.autograd.grad(log_p(x), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    direction = torch.randn_like(x)
    step = 1e-3
    with torch.no_grad():
        difference = (log_p(x + step * direction) - log_p(x - step * direction)) / (2 * step)
    # The logits are returned in float32 (about 1e-7 relative), so the difference carries ~1e-4 of rounding.
    assert math.isclose(float((gradient * direction).sum()), float(difference), rel_tol=1e-3, abs_tol=1e-3)


def test_forward_makes_no_host_synchronisation():
    model = tiny_classifier()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), count_host_syncs() as syncs:
        model(x, torch.tensor([0.3, 7.0]))
        model(x, 0.7)
    assert syncs.count == 0, syncs.calls


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_classes", 1),
        ("num_classes", 2.5),
        ("in_channels", 0),
        ("sample_size", 0),
        ("sample_size", (8, 8, 8)),
        ("sample_size", 7),  # not divisible by 2 ** (len(down_block_types) - 1) = 2
        ("sigma_data", 0.0),
        ("sigma_min", -1.0),
        ("sigma_max", 0.001),  # below sigma_min = 0.002
        ("pooling", "max"),
        ("down_block_types", ("CrossAttnDownBlock2D", "DownBlock2D")),
        ("block_out_channels", (8,)),
        ("block_out_channels", (8, 18)),  # 18 not divisible by norm_num_groups = 4
        ("norm_num_groups", 0),
        ("attention_head_dim", 3),  # does not divide 16
        ("layers_per_block", 0),
        ("resnet_time_scale_shift", "spatial"),
        ("dropout", 1.0),
        ("mid_block_attention", "yes"),
    ],
)
def test_bad_config_values_raise_value_error_naming_them(key, value):
    with pytest.raises(ValueError, match=key):
        tiny_classifier(**{key: value})


def test_input_of_the_wrong_shape_is_refused_with_the_expected_shape():
    model = tiny_classifier("attention")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 4, 8, 8), 1.0)
    with pytest.raises(ValueError, match="attention pooling"):
        model(torch.randn(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        model(torch.randn(2, 3, 8, 8), torch.ones(3))
    # Mean pooling has no positional embedding: any size passes through.
    assert tiny_classifier("mean")(torch.randn(2, 3, 16, 12), 1.0).logits.shape == (2, 10)


MODELS = {pooling: tiny_classifier(pooling) for pooling in POOLINGS}
sigma_values = st.one_of(
    st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e-30]), st.floats(1e-3, 1e3, allow_nan=False)
)


@PROPERTY
@given(
    pooling=st.sampled_from(POOLINGS),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    height=st.sampled_from([4, 8, 12]),
    sigmas=st.lists(sigma_values, min_size=1, max_size=4),
    scale=st.floats(0.0, 1e3),
)
def test_input_contract_finite_logits_or_a_value_error(pooling, batch, channels, height, sigmas, scale):
    """Valid input (3 channels, 8x8 for attention pooling, one sigma or one per sample, every sigma finite and > 0
    as checked once by check_sigma): finite logits of shape (B, 10). Anything else: ValueError."""
    model = MODELS[pooling]
    x = torch.randn(batch, channels, height, height) * scale
    valid_shape = channels == 3 and (pooling == "mean" or height == 8) and len(sigmas) in (1, batch)
    valid_values = all(math.isfinite(s) and s > 0 for s in sigmas)

    def call():
        sigma = model.check_sigma(torch.tensor(sigmas))
        with torch.no_grad():
            return model(x, sigma).logits

    if not (valid_shape and valid_values):
        with pytest.raises(ValueError):
            call()
        return
    logits = call()
    assert logits.shape == (batch, 10) and torch.isfinite(logits).all()
