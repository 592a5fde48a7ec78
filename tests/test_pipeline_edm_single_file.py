"""The single-file pipeline (pipelines/pipeline_edm.py) for diffusers' custom_pipeline=, without diffusers_edm."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from diffusers_edm.models import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from tiny_backbones import tiny_dit


SINGLE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "pipeline_edm.py"
TESTS = Path(__file__).resolve().parent


def load_single_file():
    spec = importlib.util.spec_from_file_location("single_file_pipeline_edm", SINGLE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("wrapper", [EDMPrecond, VPPrecond, VEPrecond, IDDPMPrecond])
def test_single_file_denoisers_load_package_weights_and_agree(wrapper, tmp_path):
    single_file = load_single_file()
    model = wrapper.from_backbone(tiny_dit(learned_variance=True)).eval()
    model.save_pretrained(tmp_path)
    twin = getattr(single_file, wrapper.__name__).from_pretrained(tmp_path)
    x, sigma, labels = torch.randn(3, 4, 8, 8), torch.tensor([0.01, 0.9, 45.0], dtype=torch.float64), [0, 9, 10]
    expected, actual = model(x, sigma, labels), twin(x, sigma, labels)
    torch.testing.assert_close(actual.sample, expected.sample, rtol=0, atol=0)
    torch.testing.assert_close(actual.variance_channels, expected.variance_channels, rtol=0, atol=0)
    assert (twin.sigma_min, twin.sigma_max) == pytest.approx((model.sigma_min, model.sigma_max), rel=1e-12)


def run_without_diffusers_edm(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh interpreter where `import diffusers_edm` fails."""
    prelude = f"import sys\nsys.modules['diffusers_edm'] = None\nsys.path.insert(0, {str(TESTS)!r})\nimport torch\ntorch.set_num_threads(1)\n"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_custom_pipeline_loads_and_samples_with_diffusers_alone(tmp_path):
    saved = tmp_path / "saved"
    run_without_diffusers_edm(
        f"""
        import importlib.util
        from diffusers import EDMEulerScheduler
        from tiny_backbones import tiny_unet
        spec = importlib.util.spec_from_file_location("pipeline_edm", {str(SINGLE_FILE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        denoiser = module.EDMPrecond.from_backbone(tiny_unet(num_class_embeds=6), num_classes=5, null_class_label=5).eval()
        pipe = module.EDMPipeline(denoiser, EDMEulerScheduler())
        images = pipe(class_labels=[1, 3], guidance_scale=2.0, num_inference_steps=3,
                      generator=torch.Generator().manual_seed(0), output_type="pt").images
        pipe.save_pretrained({str(saved)!r})
        torch.save(images, {str(tmp_path / "expected.pt")!r})
        """,
        tmp_path,
    )
    assert (saved / "pipeline_edm.py").is_file() and (saved / "denoiser" / "pipeline_edm.py").is_file()
    out = run_without_diffusers_edm(
        f"""
        from diffusers import DiffusionPipeline
        for extra in ({{"custom_pipeline": {str(SINGLE_FILE)!r}}}, {{}}):
            pipe = DiffusionPipeline.from_pretrained({str(saved)!r}, trust_remote_code=True, **extra)
            images = pipe(class_labels=[1, 3], guidance_scale=2.0, num_inference_steps=3,
                          generator=torch.Generator().manual_seed(0), output_type="pt").images
            expected = torch.load({str(tmp_path / "expected.pt")!r})
            torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
            print(type(pipe).__name__, type(pipe.denoiser).__name__, tuple(images.shape))
        """,
        tmp_path,
    )
    assert out.split() == ["EDMPipeline", "EDMPrecond", "(2,", "3,", "8,", "8)"] * 2
