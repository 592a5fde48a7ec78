"""What the training command's step no longer pays over a bare loop (issue #18): decoded images are kept between
epochs, and AdamW runs torch's multi-tensor implementation on the CPU, with the very numbers of the per-tensor one."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.data import ImageDataset, image_channels, load_image_dataset
from diffusers_edm.training.train import Trainer
from tiny_training import tiny_args as training_args
from tiny_training import write_tiny_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"img_{index:03d}.png")


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    """The names of the image files whose pixel data was loaded, once per ``ImageFile.load`` call (a decode makes
    one or more)."""
    decoded: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self):
        decoded.append(Path(getattr(self, "filename", "") or "<bytes>").name)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


def test_a_center_cropped_image_is_decoded_once_and_read_the_same_every_epoch(tmp_path, count_decodes):
    folder = tmp_path / "images"
    write_images(folder, 6)
    dataset = load_image_dataset(train_data_dir=str(folder))
    images = ImageDataset(dataset, "image", 8, image_channels(dataset, "image"), center_crop=True)
    first = images[3]
    loads = len(count_decodes)
    assert loads >= 1 and set(count_decodes) == {"img_003.png"}
    images.set_epoch(1)
    again = images[3]
    assert len(count_decodes) == loads  # kept: no second decode
    assert torch.equal(again["images"], first["images"]) and again["index"] == 3
    # The same pixels as a fresh data set that never kept anything (resize 12x10 -> 10x8, centre crop 8x8).
    fresh = ImageDataset(dataset, "image", 8, 3, center_crop=True, cache_bytes=0)[3]
    assert torch.equal(fresh["images"], first["images"])
    expected = np.asarray(Image.open(sorted(folder.iterdir())[3]).convert("RGB").resize((10, 8), Image.Resampling.BICUBIC))
    expected = expected[:, 1:9].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    assert np.array_equal(first["images"].numpy(), expected)


def test_random_crops_and_data_sets_over_the_budget_are_decoded_at_every_read(tmp_path, count_decodes):
    folder = tmp_path / "images"
    write_images(folder, 6)
    dataset = load_image_dataset(train_data_dir=str(folder))
    random_crops = ImageDataset(dataset, "image", 8, 3, center_crop=False)
    random_crops[2]
    loads = len(count_decodes)
    assert loads >= 1
    random_crops.set_epoch(1)  # a new crop each epoch: nothing to keep
    random_crops[2]
    assert len(count_decodes) == 2 * loads
    over_budget = ImageDataset(dataset, "image", 8, 3, center_crop=True, cache_bytes=6 * 3 * 8 * 8 * 4 - 1)
    over_budget[2]
    over_budget[2]
    assert len(count_decodes) == 4 * loads


def test_the_command_takes_torchs_multi_tensor_adamw_on_the_cpu(tmp_path):
    from diffusers_edm.training.train import adam_implementation

    trainer = Trainer(parse_args(training_args(tmp_path / "run", write_tiny_config(tmp_path), "--max_train_steps", "1")))
    trainer.setup()
    assert trainer.optimizer.optimizer.defaults["foreach"] is True
    assert adam_implementation(torch.device("cpu")) == {"foreach": True}
    assert adam_implementation(torch.device("cuda")) == {"fused": True}


def adamw_reference(params, grads_per_step, lr, betas, eps, weight_decay):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2, with torch's bias-corrected step size), in float64."""
    beta1, beta2 = betas
    theta = [p.double().clone() for p in params]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for step, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            theta[i] = theta[i] * (1 - lr * weight_decay)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**step), v[i] / (1 - beta2**step)
            theta[i] = theta[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


def test_multi_tensor_adamw_gives_the_per_tensor_numbers_exactly():
    from diffusers_edm.training.train import adam_implementation

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.GroupNorm(1, 5), torch.nn.Linear(5, 3))
    other = copy.deepcopy(model)
    settings = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
    multi = torch.optim.AdamW(model.parameters(), **settings, **adam_implementation(torch.device("cpu")))
    single = torch.optim.AdamW(other.parameters(), **settings, foreach=False)
    initial = [p.detach().clone() for p in model.parameters()]
    grads_per_step = [[torch.randn(p.shape, generator=generator) * 10 ** torch.randint(-6, 2, (), generator=generator)
                       for p in model.parameters()] for _ in range(4)]
    for grads in grads_per_step:
        for optimizer, module in ((multi, model), (single, other)):
            for p, g in zip(module.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    for a, expected in zip(model.parameters(), adamw_reference(initial, grads_per_step, **settings)):
        torch.testing.assert_close(a.double(), expected, rtol=1e-5, atol=1e-7)
