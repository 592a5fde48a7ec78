"""Training data through Hugging Face ``datasets``: a named or local data set, an image folder, or the embedded digits.

Images become float tensors in [-1, 1] (C, H, W): read by their own bit depth (8-bit, 16-bit, ``I``, ``F``; see
:func:`image_to_tensor`), resized so the shorter side is ``resolution``, then center- or randomly-cropped. Random horizontal flips are applied per batch in the training step (from the checkpointed
torch RNG), not here, so a resumed run sees exactly the flips an uninterrupted one would.

Each example also records where its pixels came from (:class:`SquareCrop`), what SDXL's micro-conditioning reads
(Podell et al. 2023, section 2.2): its size before resizing and the top-left corner of the crop in the resized image.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from PIL import Image

from ..image_modes import CHANNEL_MODES, HIGH_RANGE_MODES, eight_bit_image, image_intensities

logger = logging.getLogger(__name__)

EMBEDDED_DATASET = "sklearn-digits"
#: ImageDataset keeps decoded, resized images when all of them (float32) fit in this many bytes.
DECODED_CACHE_BYTES = 2**30


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: The phrasings of the embedded digits' captions, with ``{digit}`` (e.g. ``7``) and ``{word}`` (``seven``).
DIGIT_CAPTION_TEMPLATES = (
    "a handwritten {digit}", "the digit {word}", "{word}", "a {digit}", "number {word}", "the number {digit}",
    "a handwritten {word}", "digit {digit}",
)


def digit_captions(label: int) -> list[str]:
    """Every caption of digit ``label`` (0-9), one per :data:`DIGIT_CAPTION_TEMPLATES` entry, in that order."""
    return [template.format(digit=label, word=DIGIT_WORDS[label]) for template in DIGIT_CAPTION_TEMPLATES]


def embedded_digits_dataset() -> datasets.Dataset:
    """The 1,797 8x8 handwritten digits that scikit-learn ships (UCI optical digits), with labels 0-9 and captions.

    Pixel values 0..16 are stretched to 0..255 grayscale; no network is needed. The ``text`` column holds, per image,
    the list of its label's captions (:func:`digit_captions`: "a handwritten 7", "the digit seven", "seven", ...), of
    which text-conditional training (``--caption_column text``) draws one per example and step.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray(np.round(image * (255.0 / 16.0)).astype(np.uint8), mode="L") for image in digits.images]
    labels = digits.target.tolist()
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
        "text": datasets.List(datasets.Value("string")),
    })
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "text": [digit_captions(label) for label in labels]}, features=features
    )


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """A ``datasets.Dataset`` from a Hub name or local path, an image folder (``imagefolder``), or the embedded digits."""
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError("Pass at most one of --dataset_name and --train_data_dir.")
    if train_data_dir is not None:
        return datasets.load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
    if dataset_name is None or dataset_name == EMBEDDED_DATASET:
        return embedded_digits_dataset()
    return datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)


GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _image_feature(dataset: datasets.Dataset, image_column: str) -> datasets.Image:
    if image_column not in dataset.column_names:
        raise ValueError(f"Image column {image_column!r} not in the data set; its columns are {dataset.column_names}.")
    feature = dataset.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise ValueError(f"Column {image_column!r} holds {feature}, not images.")
    return feature


def _entry_name(entry: dict, index: int) -> str:
    return entry.get("path") or f"row {index}"


def image_modes(dataset: datasets.Dataset, image_column: str, batch_size: int = 256) -> Counter:
    """How many images of each PIL mode, read from the file headers: ``Image.open`` decodes no pixel data.

    An image whose header cannot be read is a ``ValueError`` naming its file. (Damaged pixel data behind a valid
    header is found when :class:`ImageDataset` first reads the image.)
    """
    _image_feature(dataset, image_column)
    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    modes: Counter = Counter()
    index = 0
    for batch in raw.iter(batch_size=batch_size):
        for entry in batch[image_column]:
            try:
                with Image.open(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"]) as image:
                    modes[image.mode] += 1
            except Exception as error:  # PIL raises many types for bad files
                raise ValueError(f"Cannot read training image {_entry_name(entry, index)}: {error}") from error
            index += 1
    return modes


def image_channels(dataset: datasets.Dataset, image_column: str, num_channels: int | None = None) -> int:
    """The channels to train with: ``num_channels`` if given, else 3 if any image is in colour, else 1.

    Without ``num_channels`` every image header is read once (:func:`image_modes`); the modes found and the number
    of images that :class:`ImageDataset` converts are logged.
    """
    feature = _image_feature(dataset, image_column)
    if num_channels is not None:
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        logger.info("Training images: every image is converted to %s (num_channels=%d).", CHANNEL_MODES[num_channels], num_channels)
        return num_channels
    if feature.mode is not None:  # datasets converts every image to this mode when decoding
        channels = 1 if feature.mode in GRAYSCALE_MODES else 3
        logger.info("Training images: the data set decodes to mode %s; training with %d channel(s).", feature.mode, channels)
        return channels
    modes = image_modes(dataset, image_column)
    channels = 3 if any(mode not in GRAYSCALE_MODES for mode in modes) else 1
    target = CHANNEL_MODES[channels]
    converted = {mode: count for mode, count in sorted(modes.items()) if mode != target}
    logger.info(
        "Training images: %s by mode; training in %s (%d channel(s)); %s.", dict(sorted(modes.items())), target, channels,
        f"converting {sum(converted.values())} image(s) {converted} to {target}" if converted else "no image is converted",
    )
    return channels


def inspect_labels(dataset: datasets.Dataset, label_column: str, num_classes: int | None = None) -> int:
    """Check a class-label column (present, integer ids in [0, num_classes)); return the number of classes."""
    if label_column not in dataset.column_names:
        raise ValueError(f"Label column {label_column!r} not in the data set; its columns are {dataset.column_names}.")
    feature = dataset.features[label_column]
    labels = np.asarray(dataset[label_column])
    if labels.dtype.kind not in "iu":
        raise ValueError(f"Label column {label_column!r} must hold integer class ids, got values like {labels[:3].tolist()}.")
    found = int(labels.max()) + 1 if len(labels) else 0
    declared = feature.num_classes if isinstance(feature, datasets.ClassLabel) else found
    if labels.min() < 0:
        raise ValueError(f"Label column {label_column!r} holds negative ids ({int(labels.min())}).")
    if num_classes is not None and max(found, declared) > num_classes:
        raise ValueError(
            f"Label column {label_column!r} has {max(found, declared)} classes, more than --num_classes={num_classes}."
        )
    return num_classes or declared


def held_out_split(
    dataset: datasets.Dataset, fraction: float, seed: int, label_column: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(training, held_out)``: about ``fraction`` of the rows held out, the same rows for the same ``seed``.

    With ``label_column`` the split is stratified: each class gives ``round(fraction * its size)`` rows (drawn by a
    NumPy generator seeded with ``seed``), so the held-out classes are in the data set's proportions. Both parts keep
    the data set's order. ``ValueError`` when either part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The held-out fraction must lie in (0, 1), got {fraction!r}.")
    labels = np.asarray(dataset[label_column]) if label_column is not None else np.zeros(len(dataset), dtype=np.int64)
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held_out.append(rng.permutation(members)[: int(round(fraction * len(members)))])
    held = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, dtype=np.int64)
    training = np.setdiff1d(np.arange(len(dataset)), held)
    if len(held) == 0 or len(training) == 0:
        raise ValueError(
            f"A held-out fraction of {fraction} of {len(dataset)} images leaves {len(training)} for training and "
            f"{len(held)} held out; both must be non-empty."
        )
    return dataset.select(training), dataset.select(held)


@dataclass(frozen=True)
class SquareCrop:
    """Where :func:`image_to_tensor` takes a ``resolution`` x ``resolution`` image from: the image, ``original_size``
    (height, width) in pixels, is resized to ``resized_size`` (height, width; shorter side ``resolution``), whose
    pixels ``[top, top + resolution) x [left, left + resolution)`` are kept."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    top: int
    left: int

    def fields(self) -> dict[str, torch.Tensor]:
        """The example's ``original_size``, ``resized_size`` and ``crop_top_left`` as ``(2,)`` int64 tensors (batched
        by the loader to ``(B, 2)``): SDXL's micro-conditioning of the example."""
        return {
            "original_size": torch.tensor(self.original_size),
            "resized_size": torch.tensor(self.resized_size),
            "crop_top_left": torch.tensor((self.top, self.left)),
        }


def square_crop(width: int, height: int, resolution: int, center_crop: bool, rng: random.Random | None = None) -> SquareCrop:
    """The resize and crop of a ``width`` x ``height`` image: scale ``s = resolution / min(width, height)``, resized
    size ``max(resolution, round(width s))`` x ``max(resolution, round(height s))``, then the crop's offsets are half
    the excess (floor) with ``center_crop`` or without ``rng``, else uniform integers in ``[0, excess]`` from ``rng``."""
    scale = resolution / min(width, height)
    resized_width, resized_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left_max, top_max = resized_width - resolution, resized_height - resolution
    if center_crop or rng is None:
        left, top = left_max // 2, top_max // 2
    else:
        left, top = rng.randint(0, left_max), rng.randint(0, top_max)
    return SquareCrop((height, width), (resized_height, resized_width), top, left)


def flipped_crop_top_left(crop_top_left: torch.Tensor, resized_size: torch.Tensor, resolution: int) -> torch.Tensor:
    """The crop's top-left corner ``(top, W' - left - resolution)`` in the horizontally flipped resized image (width
    ``W'``): a flipped example is the crop of the flipped image, whose micro-conditioning reads this corner (as
    diffusers' SDXL script, which flips before cropping). Batched: ``(B, 2)`` tensors, on any device."""
    top, left = crop_top_left.unbind(-1)
    return torch.stack([top, resized_size[..., 1] - left - resolution], dim=-1)


def image_to_tensor(
    image: Image.Image, resolution: int, center_crop: bool, channels: int, rng: random.Random | None = None,
    crop: SquareCrop | None = None,
) -> torch.Tensor:
    """Resize (shorter side = resolution, bicubic), crop to a square, scale to [-1, 1]; shape (channels, res, res).

    The resize and crop are ``crop`` when given, else :func:`square_crop` of the image's size.
    Each mode is read by its own bit depth: 8-bit modes by :func:`eight_bit_image` (``v / 127.5 - 1``); 16-bit,
    ``I`` and ``F`` images by :func:`image_intensities` (``2 u - 1`` for intensities ``u`` in [0, 1]), resized in
    float (integer ones clipped to [0, 1] after the bicubic filter, as an 8-bit image is) and repeated over 3
    channels for ``channels=3``. A ``ValueError`` for values these rules do not define.
    """
    high_range = image.mode in HIGH_RANGE_MODES
    planes = [Image.fromarray(image_intensities(image), mode="F")] if high_range else [eight_bit_image(image, channels)]
    if crop is None:
        crop = square_crop(*image.size, resolution, center_crop, rng)
    size = crop.resized_size[::-1]  # PIL's (width, height)
    box = (crop.left, crop.top, crop.left + resolution, crop.top + resolution)
    planes = [(p.resize(size, Image.Resampling.BICUBIC) if size != p.size else p).crop(box) for p in planes]
    if not high_range:
        array = np.asarray(planes[0], dtype=np.float32) / 127.5 - 1.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    intensities = np.asarray(planes[0], dtype=np.float32)
    if image.mode != "F":
        intensities = np.clip(intensities, 0.0, 1.0)
    array = np.repeat(intensities[None] * 2.0 - 1.0, channels, axis=0)
    return torch.from_numpy(np.ascontiguousarray(array))


class ImageDataset(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset`` that yields ``{"images": (C, H, W), "labels": int, "index": int}``
    with the example's :meth:`SquareCrop.fields` (and ``"captions"``, the row's captions as a list of strings, with
    ``caption_column``).

    Random crops (when ``center_crop`` is False) come from a generator seeded by (seed, epoch, index): a new crop
    each epoch, and the same one in a resumed run. The training loop calls :meth:`set_epoch`.
    Images are decoded here, when first read (none up front): one that cannot be decoded is a ``ValueError`` naming
    its file. With ``center_crop`` (the same pixels every epoch) and a data set whose images fit in ``cache_bytes``
    as float32, each item is kept once read, so later epochs pay no decoding or resizing (in each worker process of
    the loader, when it has some).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        image_column: str,
        resolution: int,
        channels: int,
        center_crop: bool = True,
        label_column: str | None = None,
        seed: int = 0,
        caption_column: str | None = None,
        cache_bytes: int = DECODED_CACHE_BYTES,
    ):
        feature = _image_feature(dataset, image_column)
        # Undecoded rows keep the file name for the error; the feature decodes exactly as datasets would.
        self.dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.decoder = datasets.Image(mode=feature.mode)
        self.image_column, self.label_column, self.caption_column = image_column, label_column, caption_column
        self.resolution, self.channels, self.center_crop, self.seed = resolution, channels, center_crop, seed
        self.epoch = 0
        fits = len(dataset) * channels * resolution * resolution * 4 <= cache_bytes
        self.decoded: dict[int, dict] | None = {} if center_crop and fits else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if self.decoded is not None and int(index) in self.decoded:
            return dict(self.decoded[int(index)])
        row = self.dataset[int(index)]
        entry = row[self.image_column]
        try:
            image = self.decoder.decode_example(entry)
        except Exception as error:  # PIL raises many types for bad files
            raise ValueError(f"Cannot read training image {_entry_name(entry, int(index))}: {error}") from error
        rng = None if self.center_crop else random.Random(f"{self.seed}-{self.epoch}-{int(index)}")
        crop = square_crop(*image.size, self.resolution, self.center_crop, rng)
        try:
            images = image_to_tensor(image, self.resolution, self.center_crop, self.channels, crop=crop)
        except ValueError as error:
            raise ValueError(f"Training image {_entry_name(entry, int(index))}: {error}") from error
        item = {"images": images, "index": int(index), **crop.fields()}
        if self.label_column is not None:
            item["labels"] = int(row[self.label_column])
        if self.caption_column is not None:  # checked once per data set (captions.check_caption_column)
            captions = row[self.caption_column]
            item["captions"] = [captions] if isinstance(captions, str) else list(captions)
        if self.decoded is not None:
            self.decoded[int(index)] = dict(item)
        return item
