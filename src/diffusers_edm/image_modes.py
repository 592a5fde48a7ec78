"""PIL image modes read by their own bit depth: 8-bit modes converted as ``datasets`` and diffusers' training
scripts convert them, 16-bit / 32-bit integer / float grayscale images as intensities in [0, 1].

Shared by the training data (``training/data.py``) and the evaluation metrics (``evaluation/fid.py``), so both read
an image file the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Modes whose values do not fit 8 bits: read as float intensities in [0, 1] by :func:`image_intensities`.
HIGH_RANGE_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
SIXTEEN_BIT_MAX = 65535
CHANNEL_MODES = {1: "L", 3: "RGB"}  # what every image is converted to, by its number of channels


def image_intensities(image: Image.Image) -> np.ndarray:
    """The float32 intensities (H, W) of a grayscale image whose values do not fit 8 bits, in [0, 1]:

    - ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit): ``value / 65535``;
    - ``I`` (32-bit signed integers): PIL opens 16-bit PNG and TIFF files in this mode, so the values are taken as
      16-bit, ``value / 65535``; an image with values outside 0..65535 is a ``ValueError`` (its range is unknown);
    - ``F`` (32-bit float): the values as given, assumed to be intensities in [0, 1] (not rescaled or clipped);
      a NaN or infinite value is a ``ValueError``.
    """
    array = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(array).all():
            raise ValueError(f"the float ('F') image holds {int((~np.isfinite(array)).sum())} non-finite value(s).")
        return array.astype(np.float32)
    if image.mode == "I" and array.size and (array.min() < 0 or array.max() > SIXTEEN_BIT_MAX):
        raise ValueError(
            f"the 32-bit integer ('I') image holds values in [{int(array.min())}, {int(array.max())}]; only 16-bit "
            f"content (0..{SIXTEEN_BIT_MAX}) is read from this mode: convert it to 16 bits, or to 'F' in [0, 1]."
        )
    return array.astype(np.float32) / SIXTEEN_BIT_MAX


def eight_bit_image(image: Image.Image, channels: int) -> Image.Image:
    """An 8-bit image (any mode but :data:`HIGH_RANGE_MODES`) as ``L`` or ``RGB``, as diffusers' training scripts and
    ``datasets`` convert: a palette image through its palette, alpha (``LA``, ``RGBA``, ``PA``, transparent palette
    entries) dropped, ``1`` as 0 / 255, ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` by PIL's conversion to RGB, colour to
    grayscale by PIL's ITU-R 601-2 luma ``L = 0.299 R + 0.587 G + 0.114 B``."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.convert(CHANNEL_MODES[channels])


def eight_bit_rgb(image: Image.Image) -> np.ndarray:
    """Any image as 8-bit RGB values, a ``uint8`` array (H, W, 3), by its own bit depth.

    8-bit modes by :func:`eight_bit_image` (grayscale repeated over the three channels); 16-bit, ``I`` and ``F``
    images by :func:`image_intensities`: ``round(255 u)`` for intensities ``u`` clipped to [0, 1], repeated over the
    three channels (PIL's own ``convert("RGB")`` would clip 16-bit values at 255 instead of scaling them).
    """
    if image.mode not in HIGH_RANGE_MODES:
        return np.asarray(eight_bit_image(image, 3), dtype=np.uint8)
    levels = np.rint(np.clip(image_intensities(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(levels[:, :, None], 3, axis=2)
