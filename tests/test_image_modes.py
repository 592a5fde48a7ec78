"""Every PIL image mode becomes the training tensor its own bit depth gives (values in [-1, 1], shape (C, H, W)).

The expected tensors are computed here from the raw pixel values with NumPy, by the rules the training data follows:

- 8-bit modes: ``v / 127.5 - 1``; ``1`` is 0 or 255; a palette image is its palette colours; alpha is dropped (as
  diffusers' training scripts and ``datasets`` convert, ``image.convert("RGB")``); CMYK is
  ``(255 - C)(255 - K) / 255`` per channel; colour to grayscale is the ITU-R 601-2 luma
  ``0.299 R + 0.587 G + 0.114 B``; grayscale to RGB repeats the channel;
- 16-bit modes (``I;16``, ``I;16L``, ``I;16B``) and ``I`` with 16-bit content: ``2 v / 65535 - 1``;
- ``F``: ``2 v - 1`` for intensities ``v`` assumed in [0, 1], as given; non-finite values are refused, naming the file.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_edm.training.data import ImageDataset, image_channels, image_to_tensor, load_image_dataset

SIZE = 4  # images are SIZE x SIZE and sampled at SIZE: no resize, no crop
ONE_LEVEL = 1 / 127.5 + 1e-6  # one 8-bit grey level, for PIL's fixed-point colour conversions

rng = np.random.default_rng(0)
RAW_16 = np.array([[0, 1, 255, 256], [1000, 30000, 32768, 40000], [65534, 65535, 12345, 54321], [7, 8, 9, 60000]])
RGB = rng.integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.uint8)
GREY = rng.integers(0, 256, size=(SIZE, SIZE)).astype(np.uint8)
ALPHA = rng.integers(0, 256, size=(SIZE, SIZE)).astype(np.uint8)


def tensor_of(image: Image.Image, channels: int) -> torch.Tensor:
    return image_to_tensor(image, SIZE, center_crop=True, channels=channels)


def from_8_bit(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) 8-bit values as the (C, H, W) tensor."""
    values = array.astype(np.float64) / 127.5 - 1.0
    return values[None] if values.ndim == 2 else values.transpose(2, 0, 1)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def assert_tensor(actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-6) -> None:
    assert actual.dtype == torch.float32
    assert tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------- 16 and 32 bits
SIXTEEN_BIT_IMAGES = {
    "I;16": lambda: Image.fromarray(RAW_16.astype(np.uint16)),
    "I;16L": lambda: Image.frombytes("I;16L", (SIZE, SIZE), RAW_16.astype("<u2").tobytes()),
    "I;16B": lambda: Image.frombytes("I;16B", (SIZE, SIZE), RAW_16.astype(">u2").tobytes()),
    "I": lambda: Image.fromarray(RAW_16.astype(np.int32)),
}


@pytest.mark.parametrize("mode", list(SIXTEEN_BIT_IMAGES))
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images_are_scaled_by_65535(mode, channels):
    image = SIXTEEN_BIT_IMAGES[mode]()
    assert image.mode == mode
    expected = np.repeat((2.0 * RAW_16 / 65535.0 - 1.0)[None], channels, axis=0)
    assert_tensor(tensor_of(image, channels), expected)


def test_a_sixteen_bit_image_is_not_clipped_to_white():
    """Issue 15's probe: mid-range 16-bit values read as 0..65535 and clipped to 255 were (almost) all white."""
    values = rng.integers(0, 65536, size=(16, 16)).astype(np.uint16)
    out = image_to_tensor(Image.fromarray(values), 16, True, 1)
    assert float((out >= 1.0).float().mean()) < 0.01
    np.testing.assert_allclose(float(out.mean()), 2 * values.mean() / 65535 - 1, atol=1e-5)


def test_a_sixteen_bit_image_is_resized_in_float_without_clipping_its_values():
    values = np.full((8, 12), 30000, dtype=np.uint16)
    out = image_to_tensor(Image.fromarray(values), 4, True, 1)
    assert_tensor(out, np.full((1, 4, 4), 2 * 30000 / 65535 - 1))


def test_a_32_bit_integer_image_beyond_16_bits_is_refused_with_its_range():
    image = Image.fromarray(np.array([[0, 70000], [3, 4]], dtype=np.int32))
    with pytest.raises(ValueError, match=r"'I'.*\[0, 70000\]"):
        image_to_tensor(image, 2, True, 1)
    with pytest.raises(ValueError, match=r"\[-5, 4\]"):
        image_to_tensor(Image.fromarray(np.array([[-5, 1], [3, 4]], dtype=np.int32)), 2, True, 1)


# ---------------------------------------------------------------------------------------------- float
def tensor_of_size(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    return image_to_tensor(image, size, center_crop=True, channels=channels)


def test_float_images_are_taken_as_intensities_in_0_1():
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    assert_tensor(tensor_of_size(Image.fromarray(values), 2, 1), (2 * values - 1)[None].astype(np.float64))
    assert_tensor(tensor_of_size(Image.fromarray(values), 2, 3), np.repeat((2 * values - 1)[None], 3, axis=0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_float_image_is_refused_naming_its_file(tmp_path, bad):
    folder = tmp_path / "data"
    folder.mkdir()
    values = np.full((4, 4), 0.5, dtype=np.float32)
    values[1, 2] = bad
    Image.fromarray(values).save(folder / "broken.tiff")
    dataset = load_image_dataset(train_data_dir=str(folder))
    images = ImageDataset(dataset, "image", 4, image_channels(dataset, "image"))
    with pytest.raises(ValueError, match=r"broken\.tiff.*non-finite"):
        images[0]


def test_a_folder_of_16_bit_pngs_trains_on_its_values(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(RAW_16.astype(np.uint16)).save(folder / "scan.png")
    dataset = load_image_dataset(train_data_dir=str(folder))
    channels = image_channels(dataset, "image")
    assert channels == 1
    assert_tensor(ImageDataset(dataset, "image", SIZE, channels)[0]["images"], (2.0 * RAW_16 / 65535.0 - 1.0)[None])


# ---------------------------------------------------------------------------------------------- 8 bits
def test_bilevel_images_are_black_or_white():
    bits = GREY > 127
    image = Image.fromarray(bits)
    assert image.mode == "1"
    assert_tensor(tensor_of(image, 1), np.where(bits, 1.0, -1.0)[None])


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_images(channels):
    expected = np.repeat(from_8_bit(GREY), channels, axis=0)
    assert_tensor(tensor_of(Image.fromarray(GREY), channels), expected)


def test_rgb_images_and_their_luma():
    assert_tensor(tensor_of(Image.fromarray(RGB), 3), from_8_bit(RGB))
    assert_tensor(tensor_of(Image.fromarray(RGB), 1), from_8_bit(luma(RGB.astype(np.float64))), atol=ONE_LEVEL)


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_images_are_read_through_their_palette(transparency):
    palette = rng.integers(0, 256, size=(16, 3)).astype(np.uint8)
    indices = rng.integers(0, 16, size=(SIZE, SIZE)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    if transparency:
        image.info["transparency"] = 3  # palette entry 3 transparent: its colour is kept (alpha dropped)
    colours = palette[indices]
    assert_tensor(tensor_of(image, 3), from_8_bit(colours))
    assert_tensor(tensor_of(image, 1), from_8_bit(luma(colours.astype(np.float64))), atol=ONE_LEVEL)


@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_is_dropped_from_grayscale_with_alpha(channels):
    image = Image.fromarray(np.stack([GREY, ALPHA], axis=-1), mode="LA")
    assert_tensor(tensor_of(image, channels), np.repeat(from_8_bit(GREY), channels, axis=0))


def test_alpha_is_dropped_from_rgba():
    image = Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], axis=-1), mode="RGBA")
    assert_tensor(tensor_of(image, 3), from_8_bit(RGB))
    assert_tensor(tensor_of(image, 1), from_8_bit(luma(RGB.astype(np.float64))), atol=ONE_LEVEL)


def test_cmyk_images_are_converted_to_rgb():
    cmyk = rng.integers(0, 256, size=(SIZE, SIZE, 4)).astype(np.uint8)
    image = Image.fromarray(cmyk, mode="CMYK")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    rgb = (255 - c) * (255 - k) / 255
    assert_tensor(tensor_of(image, 3), from_8_bit(rgb), atol=ONE_LEVEL)
