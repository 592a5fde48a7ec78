"""Training data: images are decoded when first read, not all up front; the channel count comes from the whole data
set (any colour image -> RGB) and every image is converted to it."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.data import ImageDataset, image_channels, inspect_labels, load_image_dataset
from diffusers_edm.training.train import Trainer, main
from tiny_training import tiny_args as training_args
from tiny_training import write_tiny_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

def tiny_args(output_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Two steps, no checkpoints or validation grids."""
    return training_args(output_dir, write_tiny_config(tmp_path), "--max_train_steps", "2", "--checkpointing_steps",
                         "1000", "--validation_steps", "1000", "--num_validation_images", "2", "--sample_steps", "2", *extra)


def write_images(folder: Path, count: int, mode: str = "RGB", prefix: str = "img", seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        shape = (10, 12, 3) if mode == "RGB" else (10, 12)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"{prefix}_{index:03d}.png")


def undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.cast_column("image", datasets.Image(decode=False))


@pytest.fixture
def count_decodes(monkeypatch) -> set[str]:
    """The names of the image files whose pixel data was decoded (``ImageFile.load``, called on every decode)."""
    decoded: set[str] = set()
    original = ImageFile.ImageFile.load

    def load(self):
        decoded.add(Path(getattr(self, "filename", "") or "<bytes>").name)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


# ------------------------------------------------------------------------------------------------ lazy decoding
def test_startup_reads_headers_only_and_decodes_an_image_when_it_is_first_read(tmp_path, count_decodes):
    folder = tmp_path / "images"
    write_images(folder, 48)
    dataset = load_image_dataset(train_data_dir=str(folder))
    channels = image_channels(dataset, "image")
    images = ImageDataset(dataset, "image", 8, channels)
    assert count_decodes == set()
    name = Path(undecoded(dataset)[5]["image"]["path"]).name
    assert images[5]["images"].shape == (3, 8, 8)
    assert count_decodes == {name}


def test_trainer_setup_decodes_no_image(tmp_path, count_decodes):
    folder = tmp_path / "images"
    write_images(folder, 48)
    trainer = Trainer(parse_args(tiny_args(tmp_path / "run", tmp_path, "--train_data_dir", str(folder))))
    trainer.setup()
    assert count_decodes == set()
    assert trainer.image_channels == 3


def truncated_png(path: Path) -> None:
    """A PNG whose header is intact but whose pixel data is cut off: only decoding finds the damage."""
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_image_with_damaged_pixel_data_is_named_when_first_read(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 7)
    truncated_png(folder / "cut.png")
    dataset = load_image_dataset(train_data_dir=str(folder))
    images = ImageDataset(dataset, "image", 8, image_channels(dataset, "image"))  # headers are fine
    broken = next(i for i, row in enumerate(undecoded(dataset)) if row["image"]["path"].endswith("cut.png"))
    with pytest.raises(ValueError, match=r"Cannot read training image .*cut\.png"):
        images[broken]


def test_training_on_a_folder_with_a_damaged_image_stops_naming_it(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 7)
    truncated_png(folder / "cut.png")  # 8 images, batch 8: every epoch reads it
    with pytest.raises(ValueError, match=r"cut\.png"):
        main(tiny_args(tmp_path / "run", tmp_path, "--train_data_dir", str(folder)))


def test_an_unreadable_header_is_named_at_startup(tmp_path, count_decodes):
    folder = tmp_path / "images"
    write_images(folder, 7)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        image_channels(load_image_dataset(train_data_dir=str(folder)), "image")
    assert count_decodes == set()


# ------------------------------------------------------------------------------------------------ channels
def test_one_grayscale_image_sorting_first_does_not_make_a_colour_folder_grayscale(tmp_path, caplog):
    folder = tmp_path / "images"
    write_images(folder, 15, "RGB", prefix="b")
    gray = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(gray, mode="L").save(folder / "a_gray.png")  # sorts first
    dataset = load_image_dataset(train_data_dir=str(folder))
    with caplog.at_level(logging.INFO, logger="diffusers_edm"):
        assert image_channels(dataset, "image") == 3
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "'L': 1" in message and "'RGB': 15" in message and "converting 1 image" in message

    # the grayscale image becomes RGB with R = G = B = its gray level (resolution 12x10 -> 10: no resize, centre crop)
    images = ImageDataset(dataset, "image", 10, 3)
    index = next(i for i in range(len(images)) if images[i]["images"][0].equal(images[i]["images"][1])
                 and images[i]["images"][1].equal(images[i]["images"][2]))
    expected = gray[:, 1:11].astype(np.float32) / 127.5 - 1.0
    for channel in range(3):
        np.testing.assert_allclose(images[index]["images"][channel].numpy(), expected, atol=1e-6)


def test_a_mixed_folder_trains_an_rgb_model(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 15, "RGB", prefix="b")
    write_images(folder, 1, "L", prefix="a")
    result = main(tiny_args(tmp_path / "run", tmp_path, "--train_data_dir", str(folder)))
    assert result.model.config.backbone_config["in_channels"] == 3


@pytest.mark.parametrize("modes,expected", [(["L", "L"], 1), (["L", "RGBA"], 3), (["L", "P"], 3), (["LA", "1"], 1)])
def test_channels_are_rgb_when_any_image_is_colour(tmp_path, modes, expected):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, mode in enumerate(modes * 4):
        Image.new(mode, (8, 8)).save(folder / f"{index:02d}.png")
    dataset = load_image_dataset(train_data_dir=str(folder))
    assert image_channels(dataset, "image") == expected
    assert ImageDataset(dataset, "image", 8, expected)[0]["images"].shape == (expected, 8, 8)


def test_num_channels_overrides_and_reads_no_header(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    write_images(folder, 8, "RGB")
    dataset = load_image_dataset(train_data_dir=str(folder))
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or original(*a, **k))
    assert image_channels(dataset, "image", num_channels=1) == 1
    assert opened == []
    result = main(tiny_args(tmp_path / "run", tmp_path, "--train_data_dir", str(folder), "--num_channels", "1"))
    assert result.model.config.backbone_config["in_channels"] == 1


@settings(max_examples=25, deadline=None)
@given(num_channels=st.integers(-5, 10).filter(lambda n: n not in (1, 3)))
def test_other_channel_counts_are_refused(num_channels):
    dataset = load_image_dataset()
    with pytest.raises(ValueError, match=f"got {num_channels}"):
        image_channels(dataset, "image", num_channels=num_channels)


def test_inspect_labels_returns_the_class_count():
    assert inspect_labels(load_image_dataset(), "label") == 10
