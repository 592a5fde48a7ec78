"""The embedded digits split into a training part and a held-out part, as tensors and as an image folder.

The quality benchmark trains its diffusion models and its feature classifier on the training part only and scores
samples against the held-out part, so a model that memorised its training images gains nothing. The images go
through the training script's own preprocessing (:func:`diffusers_edm.training.data.image_to_tensor`: the 8x8
digits stretched to 0..255 and resized bicubically to the resolution), so the real images the samples are compared
with are exactly what the models were trained to produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusers_edm.training.data import image_to_tensor

NUM_CLASSES = 10


@dataclass
class DigitsSplit:
    """Real digits as float tensors in [-1, 1], ``(N, 1, R, R)``, with their labels, split into train / held-out."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor
    train_pil: list[Image.Image]  # the 8x8 training digits as written to the image folder


def _digit_images() -> tuple[list[Image.Image], np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as grayscale PIL images (0..16 stretched to 0..255, as the package does)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray(np.round(image * (255.0 / 16.0)).astype(np.uint8), mode="L") for image in digits.images]
    return images, digits.target.astype(np.int64)


def load_digits_split(resolution: int, heldout_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """A class-stratified split of the digits (every class held out in the same proportion), preprocessed to ``resolution``."""
    from sklearn.model_selection import train_test_split

    images, labels = _digit_images()
    train_index, heldout_index = train_test_split(
        np.arange(len(images)), test_size=heldout_fraction, stratify=labels, random_state=seed
    )

    def tensors(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack([image_to_tensor(images[i], resolution, True, 1) for i in indices])
        return stacked, torch.from_numpy(labels[indices])

    train_images, train_labels = tensors(train_index)
    heldout_images, heldout_labels = tensors(heldout_index)
    return DigitsSplit(train_images, train_labels, heldout_images, heldout_labels, [images[i] for i in train_index])


def write_image_folder(split: DigitsSplit, directory: Path) -> Path:
    """Write the training digits as ``directory/<label>/<n>.png`` (8x8 PNGs), the layout of datasets' ``imagefolder``.

    The training script reads it with ``--train_data_dir directory --label_column label``; the folder names ``0``..``9``
    sort into class ids 0..9, so its labels equal the digits.
    """
    for label in range(NUM_CLASSES):
        (directory / str(label)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(split.train_pil, split.train_labels.tolist())):
        image.save(directory / str(label) / f"{index:05d}.png")
    return directory
