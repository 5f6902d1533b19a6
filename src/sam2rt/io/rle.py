"""Run-length encoding of masks, the COCO way: runs down the columns, starting with a run of zeros.

Masks on the host are encoded by pycocotools (`encode_rle`). Masks on a GPU (segment-everything's) have their
runs found on the device in one pass (`mask_run_lengths`), so that only the runs' boundaries travel to the
host; pycocotools turns those counts into its compressed string (`coco_rle`). Either way the counts are text.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from torch import Tensor


def encode_rle(masks: np.ndarray) -> list[dict]:
    """Masks (N, H, W) bool -> N COCO RLEs {"size": [H, W], "counts": str}."""
    from pycocotools import mask as mask_utils

    # (H, W, N) uint8 column-major, as RLE wants: bools read as bytes in place, and laid out in one copy, none for
    # masks laid out down their columns already (the server's downloads: a 720p mask 0.4 ms against 1.9)
    columns = masks.transpose(1, 2, 0)
    if columns.dtype == np.bool_:
        columns = columns.view(np.uint8)
    columns = np.asfortranarray(columns, dtype=np.uint8)
    rles = mask_utils.encode(columns)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str for JSON
    return rles


PIXELS_PER_CHUNK = 2**28  # bound the temporaries of one pass (a few hundred MB of bools)


def mask_run_lengths(masks: Tensor) -> list[np.ndarray]:
    """Masks (N, H, W) bool -> for each, its run lengths in column-major order, the first run being zeros.

    The counts of a mask sum to H * W; a mask that starts with a set pixel begins with a zero count.
    """
    count, height, width = masks.shape
    pixels = height * width
    if count == 0:
        return []
    per_chunk = max(1, PIXELS_PER_CHUNK // max(pixels, 1))
    runs: list[np.ndarray] = []
    for start in range(0, count, per_chunk):
        chunk = masks[start : start + per_chunk]
        columns = chunk.transpose(1, 2).reshape(len(chunk), pixels)  # (n, W*H): column after column
        changes = (columns[:, 1:] != columns[:, :-1]).nonzero()  # (K, 2) mask, position before each change
        starts_set = columns[:, 0].cpu().numpy()
        changes = changes.cpu().numpy()
        rows = np.searchsorted(changes[:, 0], np.arange(len(chunk) + 1))  # where each mask's changes begin
        for index in range(len(chunk)):
            bounds = changes[rows[index] : rows[index + 1], 1] + 1
            edges = np.concatenate([[0], bounds, [pixels]])
            lengths = np.diff(edges)
            runs.append(np.concatenate([[0], lengths]) if starts_set[index] else lengths)
    return runs


def uncompressed_rle(lengths: np.ndarray, image_hw: tuple[int, int]) -> dict:
    """{"size": [H, W], "counts": [int, ...]}: the form of the official 'uncompressed_rle' output."""
    return {"size": [int(image_hw[0]), int(image_hw[1])], "counts": lengths.tolist()}


def coco_rle(lengths: np.ndarray, image_hw: tuple[int, int]) -> dict:
    """{"size": [H, W], "counts": str}: pycocotools' compressed RLE, with the counts as text for JSON."""
    from pycocotools import mask as mask_utils

    height, width = int(image_hw[0]), int(image_hw[1])
    encoded = mask_utils.frPyObjects({"size": [height, width], "counts": lengths.tolist()}, height, width)
    return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE, compressed (counts as str or bytes) or uncompressed (a list of counts) -> (H, W) bool mask."""
    height, width = rle["size"]
    counts: Union[str, bytes, list] = rle["counts"]
    if isinstance(counts, list):
        values = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate, zeros first
        return values.reshape(width, height).T.copy()  # column-major -> (H, W)
    from pycocotools import mask as mask_utils

    encoded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)
