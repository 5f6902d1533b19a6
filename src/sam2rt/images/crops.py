"""Where the mask generator looks: a grid of points per crop layer, and the crops of each layer.

Layer 0 is the whole image; layer i cuts it into 2**i x 2**i overlapping crops. Crop boxes are
integer pixels x0, y0, x1, y1 (x1, y1 exclusive).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Crop(NamedTuple):
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the image
    layer: int


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) points x, y in [0, 1], at the centres of an n x n grid of cells, row by row."""
    half_cell = 1 / (2 * points_per_side)
    along = np.linspace(half_cell, 1 - half_cell, points_per_side)
    xs, ys = np.meshgrid(along, along)  # (n, n) each: x varies along a row
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)  # (n, n, 2) -> (n*n, 2)


def layer_point_grids(points_per_side: int, crop_n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has points_per_side / downscale_factor**i points per side."""
    return [point_grid(int(points_per_side / downscale_factor**layer)) for layer in range(crop_n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], crop_n_layers: int, overlap_ratio: float) -> list[Crop]:
    """The whole image, then for each layer i >= 1 its (2**i)**2 crops, column by column."""
    height, width = image_hw
    crops = [Crop((0, 0, width, height), 0)]
    for layer in range(1, crop_n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_width = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_height = math.ceil((overlap * (per_side - 1) + height) / per_side)
        x_starts = [int((crop_width - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_height - overlap) * i) for i in range(per_side)]
        for x0 in x_starts:
            for y0 in y_starts:
                crops.append(Crop((x0, y0, min(x0 + crop_width, width), min(y0 + crop_height, height)), layer))
    return crops
