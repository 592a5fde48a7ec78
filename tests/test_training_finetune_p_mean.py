"""The fine-tuning recipe's default ``P_mean``: EDM's ``-1.2`` (tuned for pixels of ``sigma_data = 0.5``) moved to the
run's ``sigma_data``. EDM's preconditioning and loss are stated in units of ``sigma_data`` (Karras et al. 2022,
section 5, Table 1): scaling the data and every sigma by ``k`` is the same problem, so the same training distribution
of ``sigma / sigma_data`` for data of standard deviation ``sd`` is ``ln sigma ~ N(-1.2 + ln(sd / 0.5), 1.2^2)``
(truncated to the model's noise range). Checked on tiny offline runs: with ``--sigma_data 1``, with ``sigma_data``
measured on the training latents (recomputed here from the VAE), and with an explicit ``--P_mean``, which wins."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusers_edm.losses.finetuning import TruncatedLogNormalLoss, scale_consistent_P_mean
from diffusers_edm.training.train import main
from tiny_stable_diffusion import make_tiny_sd_pipeline
from tiny_training import reset_accelerate_state

EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5  # Karras et al. 2022, Table 1 (pixels in [-1, 1])
RESOLUTION, IMAGE_COUNT = 16, 6


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p_mean")
    make_tiny_sd_pipeline(root / "build").save_pretrained(root / "sd1")
    return root / "sd1"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A captioned folder of random 16x16 RGB images (no resize or crop at --resolution 16), and the images in [-1, 1]."""
    folder, rng = tmp_path_factory.mktemp("images"), np.random.default_rng(0)
    pixels, lines = [], []
    for number in range(IMAGE_COUNT):
        array = rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{number}.png")
        pixels.append(torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1)
        lines.append(json.dumps({"file_name": f"{number}.png", "text": f"picture {number}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder, torch.stack(pixels)


def run(base: Path, images: Path, output_dir: Path, monkeypatch, *extra: str) -> tuple[TruncatedLogNormalLoss, dict]:
    """A 1-step fine-tuning run; the loss it built and its recorded arguments."""
    built: list[TruncatedLogNormalLoss] = []
    init = TruncatedLogNormalLoss.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(TruncatedLogNormalLoss, "__init__", recording_init)
    reset_accelerate_state()
    main([
        "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(images), "--output_dir", str(output_dir),
        "--resolution", str(RESOLUTION), "--train_batch_size", "2", "--max_train_steps", "1",
        "--checkpointing_steps", "100", "--validation_steps", "100", "--num_validation_images", "1",
        "--sample_steps", "2", "--report_to", "none", *extra,
    ])
    assert len(built) == 1
    return built[0], json.loads((output_dir / "training_args.json").read_text())


def table_sigma_range(base: Path) -> tuple[float, float]:
    """sigma_t = sqrt((1 - abar_t) / abar_t) at the first and last entries of the checkpoint's table (DDPM's)."""
    alphas_cumprod = StableDiffusionPipeline.from_pretrained(base, safety_checker=None).scheduler.alphas_cumprod.double()
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    return float(sigmas[0]), float(sigmas[-1])


def assert_draws_truncated_log_normal(loss: TruncatedLogNormalLoss, base: Path, P_mean: float) -> None:
    """The loss's sigma draws against ln sigma ~ N(P_mean, 1.2^2) renormalised on the table's [ln sigma_0, ln sigma_T]."""
    from scipy import stats
    from scipy.special import ndtr

    sigma_min, sigma_max = table_sigma_range(base)
    a, b = ((math.log(sigma_min) - P_mean) / EDM_P_STD, (math.log(sigma_max) - P_mean) / EDM_P_STD)

    def truncated_cdf(x):
        z = np.clip((x - P_mean) / EDM_P_STD, a, b)
        return (ndtr(z) - ndtr(a)) / (ndtr(b) - ndtr(a))

    torch.manual_seed(0)
    log_sigma = loss.sample_sigma(40_000, torch.device("cpu")).double().log().numpy()
    assert stats.kstest(log_sigma, truncated_cdf).pvalue > 1e-3, (P_mean, loss.P_mean)


def test_given_sigma_data_moves_edm_p_mean_by_its_log_ratio(base, images, tmp_path, monkeypatch):
    loss, recorded = run(base, images[0], tmp_path / "out", monkeypatch, "--sigma_data", "1.0")
    expected = EDM_P_MEAN + math.log(1.0 / EDM_SIGMA_DATA)  # -1.2 + ln 2 ~= -0.507
    assert_draws_truncated_log_normal(loss, base, expected)
    assert recorded["P_mean"] == pytest.approx(expected, abs=1e-12)
    card = (tmp_path / "out" / "README.md").read_text()
    stated = re.search(r"ln\(sigma\) ~ N\(([-+0-9.e]+), 1\.2\^2\)", card)
    assert stated and float(stated.group(1)) == pytest.approx(expected, abs=1e-3), card
    assert "-1.2 + ln(sigma_data / 0.5)" in card


def test_measured_sigma_data_moves_edm_p_mean(base, images, tmp_path, monkeypatch):
    folder, pixels = images
    loss, recorded = run(base, folder, tmp_path / "out", monkeypatch)
    # sigma_data: the std of the training latents, VAE posterior means times the scaling factor (no shift in SD 1.x).
    vae = StableDiffusionPipeline.from_pretrained(base, safety_checker=None).vae
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    sigma_data = float(latents.double().std())
    assert abs(math.log(sigma_data / EDM_SIGMA_DATA)) > 0.3  # the shift is visible to the KS test
    expected = EDM_P_MEAN + math.log(sigma_data / EDM_SIGMA_DATA)
    assert recorded["sigma_data"] == pytest.approx(sigma_data, rel=1e-4)
    assert_draws_truncated_log_normal(loss, base, expected)


def test_an_explicit_p_mean_is_kept(base, images, tmp_path, monkeypatch):
    loss, recorded = run(base, images[0], tmp_path / "out", monkeypatch, "--sigma_data", "1.0", "--P_mean", "-2.0")
    assert_draws_truncated_log_normal(loss, base, -2.0)
    assert recorded["P_mean"] == -2.0


@settings(max_examples=40, deadline=None)
@given(sigma_data=st.floats(allow_nan=True, allow_infinity=True), P_mean=st.floats(-5, 5))
def test_scale_consistent_p_mean_is_finite_or_refused(sigma_data, P_mean):
    if 0 < sigma_data < math.inf:
        value = scale_consistent_P_mean(sigma_data, P_mean)
        assert math.isfinite(value) and value == pytest.approx(P_mean + math.log(sigma_data) - math.log(EDM_SIGMA_DATA))
    else:
        with pytest.raises(ValueError, match=re.escape(f"sigma_data={sigma_data},")):
            scale_consistent_P_mean(sigma_data, P_mean)
