"""The engine's image and mask operations around the graphs, in numpy: resizing as torch's bilinear
`F.interpolate` does (with and without antialiasing), normalising frames, filling small holes.

Written to give PyTorch's numbers, so that the ONNX runner and the engine agree; no PyTorch here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..processing.components import small_components_on_host

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """(out_size, in_size) float32 weights of 1D bilinear resizing, align_corners=False.

    With `antialias`, a triangle filter stretched by the scale when shrinking (PIL's and torch's
    `antialias=True`); without, plain interpolation between the two nearest pixels.
    """
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    if antialias:
        support = scale if scale >= 1 else 1.0
        inverse = 1 / scale if scale >= 1 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            first = max(int(center - support + 0.5), 0)
            last = min(int(center + support + 0.5), in_size)
            taps = np.arange(first, last)
            tap_weights = np.clip(1 - np.abs((taps - center + 0.5) * inverse), 0, None)
            weights[i, first:last] = tap_weights / tap_weights.sum()
    else:
        source = np.clip((np.arange(out_size) + 0.5) * scale - 0.5, 0, None)
        left = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        right = np.minimum(left + 1, in_size - 1)
        fraction = source - left
        rows = np.arange(out_size)
        np.add.at(weights, (rows, left), 1 - fraction)
        np.add.at(weights, (rows, right), fraction)
    return weights.astype(np.float32)


@lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """`resize_weights` as each output pixel's few input pixels: their indices and weights, (out_size, K) each,
    K the widest filter (narrower ones padded with weight 0)."""
    weights = resize_weights(in_size, out_size, antialias)
    nonzero = weights != 0
    first = nonzero.argmax(axis=1)  # (out_size,)
    taps = int((in_size - nonzero[:, ::-1].argmax(axis=1) - first).max())  # the widest run of nonzero weights
    indices = np.minimum(first[:, None] + np.arange(taps), in_size - 1)  # (out_size, K)
    tap_weights = np.take_along_axis(weights, indices, axis=1)
    tap_weights[first[:, None] + np.arange(taps) >= in_size] = 0  # taps clamped onto the last pixel count once
    return indices, tap_weights


def resize(images: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """(..., H, W) float32 -> (..., size[0], size[1]), bilinear, align_corners=False.

    Each output pixel sums its few input pixels (2 or 3 taps enlarging, about twice the scale shrinking): a
    dense weight matrix product would cost the full input per output pixel (100 ms a frame to 1024 px). Tap by
    tap, whole rows at a time, each axis in turn made the one of rows: 960x540x3 to 512 px in 7 ms, against 14
    gathering every tap at once and summing across them (inside the runner, its caches cold: 15 against 17)."""
    height, width = images.shape[-2:]
    if (height, width) == tuple(size):
        return images
    rows = _resize_rows(images, *resize_taps(height, size[0], antialias))  # (..., H', W)
    columns = _resize_rows(rows.swapaxes(-1, -2), *resize_taps(width, size[1], antialias))  # (..., W', H')
    return np.ascontiguousarray(columns.swapaxes(-1, -2))  # (..., H', W')


def _resize_rows(images: np.ndarray, taps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., H', W): output row i the sum of input rows taps[i, k] times weights[i, k]."""
    out = images[..., taps[:, 0], :] * weights[:, 0, None]
    for k in range(1, taps.shape[1]):
        out += images[..., taps[:, k], :] * weights[:, k, None]
    return out


def model_input(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W, 3) uint8, or float in [0, 1] -> (1, 3, S, S) float32 normalised, resized as the engine's default
    ("bilinear-antialias")."""
    pixels = rgb.astype(np.float32) / 255 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    channels = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
    resized = resize(channels, (image_size, image_size), antialias=True).astype(np.float32, copy=False)  # (3, S, S)
    resized -= IMAGENET_MEAN[:, None, None]  # in place: one pass over the output less each
    resized /= IMAGENET_STD[:, None, None]
    return resized[None]


def mask_input(mask: np.ndarray, image_size: int) -> np.ndarray:
    """A mask (H, W), non-zero on the object -> (1, 1, S, S) float32 0/1, as the engine's `mask_to_model_frame`:
    resized with antialiasing, kept where at least half covered. (Exactly half-covered pixels, which halving a
    ragged mask can make, may fall either side of the engine's: one pixel of 16,384 in a test of noise.)"""
    covered = (mask != 0).astype(np.float32)
    if covered.shape != (image_size, image_size):
        covered = (resize(covered, (image_size, image_size), antialias=True) >= 0.5).astype(np.float32)
    return covered[None, None]


def fill_holes(logits: np.ndarray, max_area: int, fill_value: float = 0.1) -> np.ndarray:
    """Background regions (logits <= 0) of at most `max_area` pixels set to `fill_value`; logits (N, 1, H, W)."""
    if max_area <= 0:
        return logits
    return np.where(small_components_on_host(logits <= 0, max_area), np.float32(fill_value), logits)


def keep_highest_object(logits: np.ndarray, floor: float = -10.0) -> np.ndarray:
    """Where an object (N, ...) does not have the highest logit, cap it at `floor`."""
    if logits.shape[0] <= 1:
        return logits
    winner = logits.argmax(axis=0)[None]
    rows = np.arange(logits.shape[0]).reshape(-1, *([1] * (logits.ndim - 1)))
    return np.where(winner == rows, logits, np.minimum(logits, floor))
