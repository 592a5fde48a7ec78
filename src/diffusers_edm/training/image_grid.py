"""The sample grids of training runs and benchmarks: images tiled with visible gaps and crisp enlarged pixels."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, rows: int, min_cell: int = 64, gap: int = 2) -> Image.Image:
    """Tile ``(N, H, W, C)`` images in [0, 1] into one PIL image with ``rows`` rows, ``gap`` white pixels between cells.

    Small images are enlarged by an integer factor (nearest neighbour, pixels stay visible) to at least ``min_cell``.
    (diffusers' ``make_image_grid`` needs a full grid, resizes with interpolation, which blurs 16 px digits, and
    puts cells edge to edge, where neighbouring digits touch.) Empty cells of an incomplete last row stay white.
    """
    count, height, width, channels = images.shape
    cols = math.ceil(count / rows)
    factor = max(1, math.ceil(min_cell / min(height, width)))
    cell_height, cell_width = height * factor, width * factor
    grid = np.ones((rows * cell_height + (rows - 1) * gap, cols * cell_width + (cols - 1) * gap, channels), dtype=np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        top, left = row * (cell_height + gap), col * (cell_width + gap)
        grid[top : top + cell_height, left : left + cell_width] = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    grid = (grid * 255).round().astype(np.uint8)
    return Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")
