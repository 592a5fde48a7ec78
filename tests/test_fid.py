"""``diffusers-edm-fid``: feature statistics, the Frechet distance and the command line, offline.

The expected values are written here from the definitions, independently of the package:

- statistics: ``mu = mean_i f_i`` and ``S = sum_i (f_i - mu)(f_i - mu)^T / (N - 1)`` of the features ``f_i`` of
  every image (EDM's fid.py normalises by N - 1);
- Frechet distance (Heusel et al. 2017, Eq. 6): ``||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2))``,
  with ``Tr((S_1 S_2)^(1/2)) = sum_k sqrt(lambda_k)`` for the eigenvalues ``lambda_k`` of the symmetric
  ``S_1^(1/2) S_2 S_1^(1/2)`` (similar to ``S_1 S_2``), computed with ``numpy.linalg.eigh``;
- Inception calling convention (EDM's fid.py): ``detector(uint8 NCHW images, return_features=True)``;
- DINOv2 (EDM2's detector): bicubic antialiased resize to 224, ``/ 255``, ImageNet mean / std, class token of the
  final (layer-normed) hidden state.

The feature networks are tiny stand-ins built here (a TorchScript module with Inception's signature, a
``Dinov2Model`` from a small config), passed with ``--feature_model``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from diffusers_edm.evaluation import FeatureStatistics, frechet_distance, load_feature_network
from diffusers_edm.evaluation.feature_networks import DINOV2_NAME, INCEPTION_NAME, inception_cache_path
from diffusers_edm.evaluation.fid import build_parser, main
from diffusers_edm.image_modes import eight_bit_rgb
from accelerate_launch import free_port

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    # the stand-in is TorchScript, as NVIDIA's published Inception is; torch 2.13 deprecates TorchScript
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]

TINY_INCEPTION_DIM = 6


# ------------------------------------------------------------------------------------------------ independent statements
def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    mu = features.sum(axis=0) / len(features)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def expected_frechet(mu1, s1, mu2, s2) -> float:
    root1 = psd_sqrt(s1)
    eigenvalues = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


# ------------------------------------------------------------------------------------------------ tiny networks
class TinyInception(torch.nn.Module):
    """Inception's TorchScript signature: uint8-valued NCHW images of any size; features only with return_features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(12, TINY_INCEPTION_DIM)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 2).flatten(1)
        features = torch.tanh(self.linear(pooled) * 3.0)
        if return_features:
            return features
        return features.sum(dim=1, keepdim=True)  # "logits": a different shape, so a missing flag is seen


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "tiny-inception.pt"
    torch.jit.script(TinyInception()).save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          image_size=28, patch_size=14)
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).eval().save_pretrained(path)
    return path


def write_images(folder: Path, count: int, size: int = 8, seed: int = 0, mode: str = "RGB", subfolders: bool = True) -> list[Path]:
    """Random images in EDM's generate layout (000000/000000.png, ...)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        image = Image.fromarray(rng.integers(0, 256, size=shape).astype(np.uint8), mode=mode)
        path = folder / (f"{index // 1000 * 1000:06d}" if subfolders else "") / f"{index:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths


def rgb_batch(paths: list[Path]) -> torch.Tensor:
    """Every (8-bit) image as RGB uint8 (N, 3, H, W); grayscale repeated over the channels."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image)
        arrays.append(np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def inception_features(module_path: Path, paths: list[Path]) -> np.ndarray:
    return torch.jit.load(str(module_path))(rgb_batch(paths), return_features=True).detach().numpy()


def dinov2_features(model_path: Path, paths: list[Path]) -> np.ndarray:
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(model_path).eval()
    x = torch.nn.functional.interpolate(rgb_batch(paths).float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, 0].numpy()


def run(*argv: str) -> float | None:
    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------ Frechet distance
def test_frechet_distance_equals_the_eigenvalue_formula_for_random_gaussians():
    rng = np.random.default_rng(1)
    for dim in (1, 3, 17):
        a, b = rng.normal(size=(dim, dim + 2)), rng.normal(size=(dim, dim + 5))
        s1, s2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.05 * np.eye(dim)
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim) * 3
        expected = expected_frechet(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    # W_2^2 between N(m1, diag(a)) and N(m2, diag(b)): ||m1 - m2||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_statistics_of_known_gaussian_features():
    rng = np.random.default_rng(2)
    mean, factor = np.array([1.0, -2.0, 0.5]), rng.normal(size=(3, 3))
    features = rng.normal(size=(4000, 3)) @ factor.T + mean
    stats = FeatureStatistics.from_features(features, INCEPTION_NAME)
    mu, sigma = statistics(features)
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-10)
    assert stats.mu.dtype == stats.sigma.dtype == np.float64 and stats.num_images == 4000
    # and they estimate the Gaussian's: the distance to the true (mean, factor factor^T) is small
    assert frechet_distance(stats.mu, stats.sigma, mean, factor @ factor.T) < 0.05


@pytest.mark.parametrize("shapes", [((3,), (3, 3), (4,), (4, 4)), ((3,), (3, 2), (3,), (3, 3)), ((), (1, 1), (1,), (1, 1))])
def test_frechet_distance_refuses_mismatched_shapes(shapes):
    arrays = [np.ones(shape) for shape in shapes]
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(*arrays)


# ------------------------------------------------------------------------------------------------ end to end
def test_inception_ref_and_calc_end_to_end(tmp_path, tiny_inception):
    paths = write_images(tmp_path / "data", 13)
    others = write_images(tmp_path / "samples", 11, seed=5, mode="L")  # grayscale: repeated over 3 channels
    run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "ref.npz", "--feature_model", tiny_inception,
        "--batch", "4", "--workers", "0")

    mu, sigma = statistics(inception_features(tiny_inception, paths))
    with np.load(tmp_path / "ref.npz") as saved:
        # float32 features of batches of 4 here and of 13 there: equal up to float32 rounding
        np.testing.assert_allclose(saved["mu"], mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(saved["sigma"], sigma, rtol=1e-5, atol=1e-6)
        assert str(saved["feature_network"]) == INCEPTION_NAME
        assert int(saved["feature_dim"]) == TINY_INCEPTION_DIM and int(saved["num_images"]) == 13

    self_distance = run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "ref.npz",
                        "--feature_model", tiny_inception, "--workers", "0")
    assert abs(self_distance) < 1e-6

    distance = run("calc", "--images", tmp_path / "samples", "--ref", tmp_path / "ref.npz", "--feature_model",
                   tiny_inception, "--batch", "3", "--workers", "0", "--json", tmp_path / "out" / "fid.json")
    expected = expected_frechet(*statistics(inception_features(tiny_inception, others)), mu, sigma)
    assert distance == pytest.approx(expected, rel=1e-5) and distance > 0.01
    result = json.loads((tmp_path / "out" / "fid.json").read_text())
    assert result["metric"] == "FID" and result["value"] == distance
    assert result["num_images"] == 11 and result["reference_num_images"] == 13 and result["feature_dim"] == TINY_INCEPTION_DIM


def test_dinov2_ref_and_calc_end_to_end(tmp_path, tiny_dinov2):
    paths = write_images(tmp_path / "data", 20, size=10, subfolders=False)
    others = write_images(tmp_path / "samples", 18, size=10, seed=3)
    run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "ref.npz", "--features", "dinov2",
        "--feature_model", tiny_dinov2, "--batch", "7", "--workers", "0")
    mu, sigma = statistics(dinov2_features(tiny_dinov2, paths))
    reference = FeatureStatistics.load(tmp_path / "ref.npz")
    assert reference.feature_network == DINOV2_NAME and reference.feature_dim == 16 and reference.num_images == 20
    np.testing.assert_allclose(reference.mu, mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reference.sigma, sigma, rtol=1e-3, atol=1e-6)

    assert abs(run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "ref.npz", "--features", "dinov2",
                   "--feature_model", tiny_dinov2, "--workers", "0")) < 1e-6
    distance = run("calc", "--images", tmp_path / "samples", "--ref", tmp_path / "ref.npz", "--features", "dinov2",
                   "--feature_model", tiny_dinov2, "--workers", "0")
    expected = expected_frechet(*statistics(dinov2_features(tiny_dinov2, others)), mu, sigma)
    assert distance == pytest.approx(expected, rel=1e-3) and distance > 0


def test_a_saved_data_set_gives_the_statistics_of_the_same_images_in_a_folder(tmp_path, tiny_inception):
    import datasets

    paths = write_images(tmp_path / "folder", 9, mode="L")
    images = [Image.open(path) for path in paths]
    datasets.Dataset.from_dict({"label": list(range(9)), "picture": images}).cast_column(
        "picture", datasets.Image()).save_to_disk(str(tmp_path / "saved"))
    common = ("--feature_model", tiny_inception, "--workers", "0", "--batch", "4")
    run("ref", "--data", tmp_path / "folder", "--dest", tmp_path / "folder.npz", *common)
    run("ref", "--data", tmp_path / "saved", "--dest", tmp_path / "saved.npz", *common)
    folder, saved = FeatureStatistics.load(tmp_path / "folder.npz"), FeatureStatistics.load(tmp_path / "saved.npz")
    np.testing.assert_array_equal(folder.mu, saved.mu)
    np.testing.assert_array_equal(folder.sigma, saved.sigma)


def test_images_of_every_bit_depth_become_eight_bit_rgb():
    raw16 = np.array([[0, 257, 65535], [32768, 1000, 12345]], dtype=np.uint16)
    np.testing.assert_array_equal(eight_bit_rgb(Image.fromarray(raw16))[..., 1], np.rint(raw16 / 65535 * 255))
    floats = np.array([[0.0, 0.5, 1.0], [-0.2, 1.3, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(eight_bit_rgb(Image.fromarray(floats, mode="F"))[..., 0], np.rint(np.clip(floats, 0, 1) * 255))
    grey = np.array([[0, 7, 255]], dtype=np.uint8)
    assert (eight_bit_rgb(Image.fromarray(grey, mode="L")) == grey[..., None]).all()
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(eight_bit_rgb(Image.fromarray(rgba, mode="RGBA")), rgba[..., :3])
    assert eight_bit_rgb(Image.fromarray(grey, mode="L")).dtype == np.uint8


def test_the_default_inception_is_read_from_the_torch_hub_cache(tmp_path, tiny_inception, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cached = inception_cache_path()
    assert cached == tmp_path / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_inception.read_bytes())
    network = load_feature_network("inception")  # present: no download
    assert network(torch.zeros(2, 3, 5, 5, dtype=torch.uint8)).shape == (2, TINY_INCEPTION_DIM)


# ------------------------------------------------------------------------------------------------ two processes
def test_two_processes_give_the_statistics_of_one(tmp_path, tiny_inception):
    write_images(tmp_path / "data", 13)
    options = ["--data", str(tmp_path / "data"), "--feature_model", str(tiny_inception), "--batch", "3", "--workers", "0"]
    run("ref", *options, "--dest", tmp_path / "one.npz")
    command = [
        # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA it runs the processes on gloo/CPU
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(Path(__file__).with_name("multiprocess_fid_script.py")), "ref", *options, "--dest", str(tmp_path / "two.npz"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "3/3" in result.stderr  # the main process's bar: its 3 of the 5 batches (the other process has 2)
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        for key in ("mu", "sigma", "num_images", "feature_dim"):
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)


# ------------------------------------------------------------------------------------------------ bad input
def test_mixed_sizes_are_refused_naming_two_files(tmp_path, tiny_inception):
    write_images(tmp_path / "data", 3, size=8, subfolders=False)
    odd = write_images(tmp_path / "data" / "more", 1, size=9, subfolders=False)[0]
    with pytest.raises(ValueError, match=r"000000\.png is 8x8.*more/000000\.png is 9x9.*wrong folder"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "ref.npz", "--feature_model", tiny_inception, "--workers", "0")
    assert odd.is_file() and not (tmp_path / "ref.npz").exists()


@pytest.mark.filterwarnings("ignore:8 images for 16-dimensional:UserWarning")
def test_statistics_of_other_features_are_refused_naming_both(tmp_path, tiny_inception, tiny_dinov2):
    write_images(tmp_path / "data", 8, size=10)
    run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "dino.npz", "--features", "dinov2",
        "--feature_model", tiny_dinov2, "--workers", "0")
    with pytest.raises(ValueError, match=f"'{DINOV2_NAME}'.*'{INCEPTION_NAME}'"):
        run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "dino.npz", "--feature_model", tiny_inception)
    # EDM's format (mu and sigma only) is taken as Inception: 2048-d, here against the tiny 6-d network
    np.savez(tmp_path / "edm.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"\(2048-d\).*\(6-d\)"):
        run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "edm.npz", "--feature_model", tiny_inception, "--workers", "0")


def test_missing_files_are_refused_by_name(tmp_path, tiny_inception):
    write_images(tmp_path / "data", 4)
    with pytest.raises(ValueError, match="nope.npz.*no such file"):
        run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "nope.npz", "--feature_model", tiny_inception)
    with pytest.raises(ValueError, match="no such folder"):
        run("ref", "--data", tmp_path / "missing", "--dest", tmp_path / "r.npz", "--feature_model", tiny_inception)
    with pytest.raises(ValueError, match="someone/no-such-data.*not a folder here.*load_dataset cannot read it"):
        run("ref", "--data", "someone/no-such-data", "--dest", tmp_path / "r.npz", "--feature_model", tiny_inception)
    with pytest.raises(ValueError, match="absent.pt.*not a file"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "r.npz", "--feature_model", tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="absent.*not a folder"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "r.npz", "--features", "dinov2",
            "--feature_model", tmp_path / "absent")
    with pytest.raises(ValueError, match="000000.png.*not a TorchScript file"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "r.npz", "--feature_model", tmp_path / "data" / "000000" / "000000.png")
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8,
                       patch_size=4)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="vit.*'vit' model, not DINOv2"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "r.npz", "--features", "dinov2", "--feature_model", tmp_path / "vit")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"\['mean'\].*'mu' and 'sigma'"):
        run("calc", "--images", tmp_path / "data", "--ref", tmp_path / "bad.npz", "--feature_model", tiny_inception)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*without image files"):
        run("ref", "--data", tmp_path / "empty", "--dest", tmp_path / "r.npz", "--feature_model", tiny_inception)
    write_images(tmp_path / "one", 1)
    with pytest.raises(ValueError, match="1 image.*at least 2"):
        run("ref", "--data", tmp_path / "one", "--dest", tmp_path / "r.npz", "--feature_model", tiny_inception)


def test_fewer_images_than_feature_dimensions_warn_but_compute(tmp_path, tiny_inception):
    paths = write_images(tmp_path / "data", 4)
    with pytest.warns(UserWarning, match="4 images for 6-dimensional.*singular"):
        run("ref", "--data", tmp_path / "data", "--dest", tmp_path / "ref.npz", "--feature_model", tiny_inception, "--workers", "0")
    mu, sigma = statistics(inception_features(tiny_inception, paths))
    np.testing.assert_allclose(FeatureStatistics.load(tmp_path / "ref.npz").sigma, sigma, rtol=1e-5, atol=1e-6)


HOSTILE = ["nan", "inf", "-inf", "0", "-0", "-1", "0.5", "1", "2", "1e3", "99999999999999999999", "abc", "", " ", "0x10", "True"]
INTEGER_OPTIONS = {"batch": 1, "workers": 0}  # option: documented minimum


def parse(*argv: str):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(list(argv)), ""
    except SystemExit as exit:
        assert exit.code == 2
        return None, stderr.getvalue()


@seed(13)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(["ref", "calc"]), option=st.sampled_from(sorted(INTEGER_OPTIONS)),
       value=st.one_of(st.sampled_from(HOSTILE), st.integers(-(2**40), 2**40).map(str), st.floats().map(repr), st.text(max_size=5)))
def test_integer_options_are_refused_by_name_or_parsed_in_range(command, option, value):
    required = ["--data", "d", "--dest", "s.npz"] if command == "ref" else ["--images", "i", "--ref", "r.npz"]
    args, error = parse(command, *required, f"--{option}={value}")
    if args is None:
        assert f"--{option}" in error and "must be an integer" in error, error
    else:
        parsed = getattr(args, option)
        assert isinstance(parsed, int) and not isinstance(parsed, bool) and parsed >= INTEGER_OPTIONS[option]


@seed(13)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dest=st.one_of(st.text(max_size=12), st.text(max_size=8).map(lambda t: t + ".npz"), st.sampled_from(["a.NPZ", "x.npz.tmp", "npz", ".npz"])))
def test_dest_must_name_an_npz_file(dest):
    args, error = parse("ref", "--data", "d", f"--dest={dest}")
    if args is None:
        assert "--dest" in error and ".npz" in error, error
    else:
        assert args.dest.lower().endswith(".npz")


@pytest.mark.parametrize("features", ["clip", "", "Inception"])
def test_unknown_features_are_refused(features):
    args, error = parse("calc", "--images", "i", "--ref", "r.npz", f"--features={features}")
    assert args is None and "--features" in error and "inception" in error and "dinov2" in error


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    write_images(folder, 3)
    return folder


PATH_TEXT = st.one_of(st.text(max_size=10), st.sampled_from(["", ".", "..", "/", "~", "nope.npz", "a/b/c.npz", " ", "-x"]))


@seed(13)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=PATH_TEXT)
def test_a_ref_path_that_is_no_statistics_file_is_refused_by_name(text, small_folder, tiny_inception):
    with pytest.raises(ValueError, match="reference statistics") as caught:
        run("calc", "--images", small_folder, f"--ref={text}", "--feature_model", tiny_inception)
    assert repr(str(Path(text))) in str(caught.value)


@seed(13)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=PATH_TEXT, features=st.sampled_from(["inception", "dinov2"]))
def test_a_feature_model_path_that_is_no_network_is_refused_by_name(text, features, small_folder, tmp_path_factory):
    dest = tmp_path_factory.getbasetemp() / "never-written.npz"
    with pytest.raises(ValueError, match="--feature_model") as caught:
        run("ref", "--data", small_folder, "--dest", dest, "--features", features, f"--feature_model={text}")
    assert repr(str(Path(text))) in str(caught.value) and not dest.exists()
