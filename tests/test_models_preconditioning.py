"""Preconditioned denoisers against EDM Table 1 (Karras et al. 2022), restated here in float64."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import LabelEmbedding

from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from tiny_backbones import tiny_dit, tiny_unet, tiny_unet_condition


SIGMAS = [0.002, 0.05, 0.5, 1.0, 7.3, 80.0]


# ---------------------------------------------------------------------------------------------- reference
def reference_iddpm_table(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> list[float]:
    """u_M = 0; u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1)/abar(j), C_1) - 1), abar(j) = sin(pi/2 j/(M (C_2+1)))^2."""
    abar = [math.sin(math.pi / 2 * j / (M * (C_2 + 1))) ** 2 for j in range(M + 1)]
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar[j - 1] / abar[j], C_1) - 1)
    return u


IDDPM_TABLE = reference_iddpm_table()


def reference_coefficients(family: str, sigma: float) -> tuple[float, float, float, float]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 with EDM's default parameters."""
    if family == "edm":
        sd = 0.5
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2), 1 / math.sqrt(sigma**2 + sd**2), math.log(sigma) / 4)
    if family == "vp":
        beta_d, beta_min, M = 19.9, 0.1, 1000
        t = (math.sqrt(beta_min**2 + 2 * beta_d * math.log(1 + sigma**2)) - beta_min) / beta_d
        return 1.0, -sigma, 1 / math.sqrt(sigma**2 + 1), (M - 1) * t
    if family == "ve":
        return 1.0, sigma, 1.0, math.log(sigma / 2)
    nearest = min(range(len(IDDPM_TABLE)), key=lambda j: abs(IDDPM_TABLE[j] - sigma))
    return 1.0, -sigma, 1 / math.sqrt(sigma**2 + 1), 1000 - 1 - nearest


WRAPPERS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond}


class RecordingBackbone:
    """Hooks on a real backbone: record what it receives and replace its output by a known F."""

    def __init__(self, backbone: torch.nn.Module, output: torch.Tensor):
        self.received: dict[str, torch.Tensor] = {}
        self.output = output
        backbone.register_forward_pre_hook(self._record, with_kwargs=True)
        backbone.register_forward_hook(lambda module, args, kwargs, out: (self.output.to(out[0].dtype),), with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.received["sample"] = args[0]
        self.received["timestep"] = args[1] if len(args) > 1 else kwargs["timestep"]
        self.received["class_labels"] = kwargs.get("class_labels")


# ---------------------------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_coefficients_match_table_1(family):
    batch = len(SIGMAS)
    model = WRAPPERS[family].from_backbone(tiny_unet()).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=generator)
    F = torch.randn(batch, 3, 8, 8, generator=generator)
    recorder = RecordingBackbone(model.backbone, F)

    denoised = model(x, torch.tensor(SIGMAS, dtype=torch.float64)).sample

    reference = torch.tensor([reference_coefficients(family, s) for s in SIGMAS], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = (reference[:, k].reshape(batch, 1, 1, 1) for k in range(4))
    timestep = recorder.received["timestep"]
    assert torch.is_tensor(timestep) and timestep.dtype == torch.float32 and timestep.shape == (batch,)
    torch.testing.assert_close(timestep.double(), c_noise.flatten(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(recorder.received["sample"].double(), c_in * x.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoised.double(), c_skip * x.double() + c_out * F.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_scalar_sigma_is_broadcast_to_every_sample(family):
    model = WRAPPERS[family].from_backbone(tiny_unet()).eval()
    x = torch.randn(3, 3, 8, 8)
    recorder = RecordingBackbone(model.backbone, torch.zeros(3, 3, 8, 8))
    model(x, 0.7)
    expected = reference_coefficients(family, 0.7)[3]
    torch.testing.assert_close(recorder.received["timestep"].double(), torch.full((3,), float(expected), dtype=torch.float64), rtol=1e-5, atol=1e-4)


def test_noise_range_and_round_sigma():
    def vp_sigma(t):
        return math.sqrt(math.exp(19.9 * t**2 / 2 + 0.1 * t) - 1)

    unet = tiny_unet()
    edm, vp, ve, iddpm = (cls.from_backbone(unet) for cls in (EDMPrecond, VPPrecond, VEPrecond, IDDPMPrecond))
    assert (edm.sigma_min, edm.sigma_max) == (0.0, math.inf)
    assert vp.sigma_min == pytest.approx(vp_sigma(1e-5), rel=1e-9) and vp.sigma_max == pytest.approx(vp_sigma(1.0), rel=1e-9)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    assert iddpm.sigma_min == pytest.approx(IDDPM_TABLE[999], rel=1e-9)
    assert iddpm.sigma_max == pytest.approx(IDDPM_TABLE[0], rel=1e-9)

    queries = torch.tensor([0.01, 0.5, 3.0, 79.0, 1e5], dtype=torch.float64)
    expected = [min(IDDPM_TABLE, key=lambda u: abs(u - q)) for q in queries.tolist()]
    rounded = iddpm.round_sigma(queries)
    assert rounded.dtype == torch.float64
    torch.testing.assert_close(rounded, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    for model in (edm, vp, ve):
        assert torch.equal(model.round_sigma(queries), queries)


# ---------------------------------------------------------------------------------------------- EDM identity
def test_edm_denoiser_tends_to_identity_as_sigma_vanishes():
    """Untrained network: c_skip -> 1 and c_out -> 0, so D(x; sigma) -> x."""
    model = EDMPrecond.from_backbone(tiny_unet()).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    errors = [float((model(x, sigma).sample - x).abs().max().detach()) for sigma in (1e-1, 1e-2, 1e-4)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_edm_effective_training_target():
    """F = (y - c_skip x) / c_out gives D = y, and lambda(sigma) c_out^2 = 1 (unit-weighted F loss)."""
    model = EDMPrecond.from_backbone(tiny_unet()).eval()
    generator = torch.Generator().manual_seed(2)
    y = torch.randn(4, 3, 8, 8, generator=generator)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64)
    x = y + sigma.reshape(-1, 1, 1, 1).float() * torch.randn(4, 3, 8, 8, generator=generator)
    ref = torch.tensor([reference_coefficients("edm", s) for s in sigma.tolist()], dtype=torch.float64)
    c_skip, c_out = ref[:, 0].reshape(-1, 1, 1, 1), ref[:, 1].reshape(-1, 1, 1, 1)
    target = (y.double() - c_skip * x.double()) / c_out
    RecordingBackbone(model.backbone, target.float())
    torch.testing.assert_close(model(x, sigma).sample.double(), y.double(), rtol=1e-4, atol=1e-4)
    sd = 0.5
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    c_out_model = model.preconditioning(sigma).c_out.double()
    torch.testing.assert_close(weight * c_out_model**2, torch.ones_like(sigma), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------- dtypes, learned variance
def test_half_precision_backbone_gets_float32_coefficients():
    model = VPPrecond.from_backbone(tiny_unet()).to(torch.bfloat16).eval()
    x = torch.randn(2, 3, 8, 8)
    F = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    recorder = RecordingBackbone(model.backbone, F)
    sigma = 0.01  # c_noise ~ 0.1: far below bf16's resolution at the (M-1) t scale if it were computed in bf16
    denoised = model(x, sigma).sample
    assert recorder.received["sample"].dtype == torch.bfloat16
    assert recorder.received["timestep"].dtype == torch.float32
    c_skip, c_out, _, c_noise = reference_coefficients("vp", sigma)
    torch.testing.assert_close(recorder.received["timestep"].double(), torch.full((2,), c_noise, dtype=torch.float64), rtol=1e-5, atol=0)
    assert denoised.dtype == torch.float32
    torch.testing.assert_close(denoised.double(), c_skip * x.double() + c_out * F.double(), rtol=1e-6, atol=1e-6)


def test_learned_variance_backbone_returns_remaining_channels():
    model = IDDPMPrecond.from_backbone(tiny_dit(channels=4, learned_variance=True)).eval()
    assert model.learned_variance and model.image_channels == 4
    x = torch.randn(2, 4, 8, 8)
    F = torch.randn(2, 8, 8, 8)
    RecordingBackbone(model.backbone, F)
    output = model(x, 1.5, class_labels=[3, 7])
    c_skip, c_out, _, _ = reference_coefficients("iddpm", 1.5)
    torch.testing.assert_close(output.sample.double(), c_skip * x.double() + c_out * F[:, :4].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(output.variance_channels, F[:, 4:])
    assert EDMPrecond.from_backbone(tiny_unet())(x[:, :3], 1.0).variance_channels is None


# ---------------------------------------------------------------------------------------------- class labels
def _labels_seen_by_label_embeddings(model) -> list[torch.Tensor]:
    seen = []
    for module in model.backbone.modules():
        if isinstance(module, LabelEmbedding):
            module.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    return seen


def test_dit_in_train_mode_drops_labels_only_as_configured():
    x, labels = torch.randn(64, 4, 8, 8), torch.arange(64) % 10

    kept = EDMPrecond.from_backbone(tiny_dit()).train()
    assert kept.config.num_classes == 10 and kept.config.null_class_label == 10
    seen = _labels_seen_by_label_embeddings(kept)
    kept(x, 1.0, class_labels=labels)
    assert len(seen) >= 2 and all(torch.equal(s, labels) for s in seen)

    dropping = EDMPrecond.from_backbone(tiny_dit(), label_dropout=0.5).train()
    seen = _labels_seen_by_label_embeddings(dropping)
    dropping(x, 1.0, class_labels=labels)
    # One decision per sample, shared by every block: all blocks see the same labels, some dropped to null.
    assert all(torch.equal(s, seen[0]) for s in seen)
    dropped = seen[0] == 10
    assert 0 < int(dropped.sum()) < 64 and torch.equal(seen[0][~dropped], labels[~dropped])

    dropping.eval()
    seen.clear()
    dropping(x, 1.0, class_labels=labels)
    assert all(torch.equal(s, labels) for s in seen)


def test_missing_labels_use_the_null_label():
    model = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
    recorder = RecordingBackbone(model.backbone, torch.zeros(2, 3, 8, 8))
    model(torch.randn(2, 3, 8, 8), 1.0)
    assert recorder.received["class_labels"].tolist() == [5, 5]


# ---------------------------------------------------------------------------------------------- round trips
BACKBONES = {
    "unet": lambda: tiny_unet(),
    "unet_condition": lambda: tiny_unet_condition(),
    "dit": lambda: tiny_dit(learned_variance=True),
}


@pytest.mark.parametrize("family", sorted(WRAPPERS))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_save_and_load_round_trip(family, backbone, tmp_path):
    model = WRAPPERS[family].from_backbone(BACKBONES[backbone]()).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = WRAPPERS[family].from_pretrained(tmp_path)
    assert type(loaded.backbone) is type(model.backbone)
    x = torch.randn(2, model.image_channels, 8, 8)
    kwargs = {}
    if backbone == "unet_condition":
        kwargs["encoder_hidden_states"] = torch.randn(2, 3, 8)
    if backbone == "dit":
        kwargs["class_labels"] = [1, 10]
    sigma = torch.tensor([0.3, 5.0])
    expected, actual = model(x, sigma, **kwargs), loaded(x, sigma, **kwargs)
    assert torch.equal(expected.sample, actual.sample)
    if backbone == "dit":
        assert torch.equal(expected.variance_channels, actual.variance_channels)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    with pytest.raises(TypeError, match="Unsupported backbone"):
        EDMPrecond.from_backbone(torch.nn.Conv2d(3, 3, 1))

    class MyUNet(UNet2DModel):
        pass

    with pytest.raises(TypeError, match="Unsupported backbone"):
        EDMPrecond.from_backbone(MyUNet.from_config(tiny_unet().config))
    with pytest.raises(ValueError, match="backbone_class 'UNet1DModel'"):
        EDMPrecond(backbone_class="UNet1DModel", backbone_config={})
    with pytest.raises(ValueError, match="learned variance"):
        EDMPrecond.from_backbone(tiny_unet(out_channels=5))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond.from_backbone(tiny_unet(), sigma_data=0.0)
    with pytest.raises(ValueError, match="num_classes=3"):
        EDMPrecond.from_backbone(tiny_unet(), num_classes=3)
    with pytest.raises(ValueError, match="needs a null_class_label"):
        EDMPrecond.from_backbone(tiny_unet(num_class_embeds=4), label_dropout=0.1)

    unconditional = EDMPrecond.from_backbone(tiny_unet())
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, 1.0, class_labels=[0, 1])
    # Values are checked once per pipeline call / data set (check_sigma, check_class_labels), not per forward.
    for bad_sigma in (0.0, -1.0, float("nan"), float("inf"), [1.0, 0.0]):
        with pytest.raises(ValueError, match="sigma must be finite and > 0"):
            unconditional.check_sigma(bad_sigma)
    with pytest.raises(ValueError, match="one value per sample"):
        unconditional(x, [1.0, 2.0, 3.0])

    conditional = EDMPrecond.from_backbone(tiny_unet(num_class_embeds=4))  # 4 classes, no null label
    with pytest.raises(ValueError, match="pass class_labels"):
        conditional(x, 1.0)
    with pytest.raises(ValueError, match=r"0\.\.3.*\[4\]"):
        conditional.check_class_labels([0, 4], batch=2)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        conditional.check_class_labels([-1, 2], batch=2)
    with pytest.raises(TypeError, match="integer label ids"):
        conditional(x, 1.0, class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        EDMPrecond.from_backbone(tiny_unet_condition())(torch.randn(2, 4, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        unconditional(torch.randn(2, 4, 8, 8), 1.0)
