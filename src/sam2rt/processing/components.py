"""Connected components on the host, by OpenCV's labelling: one pass a mask. What `masks.small_components`
computes for masks on the CPU, and the ONNX runner's hole filling; numpy and OpenCV only (the runner imports it
without PyTorch)."""

from __future__ import annotations

import numpy as np


def small_components_on_host(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Pixels of `mask` (..., H, W) bool that lie in an 8-connected component of at most `max_area` pixels."""
    import cv2  # imported on first use: 0.1 s of every command's start otherwise

    height, width = mask.shape[-2:]
    planes = np.ascontiguousarray(mask.reshape(-1, height, width), dtype=np.uint8)  # (P, H, W), 1 on the mask
    small = np.zeros(planes.shape, dtype=bool)
    if max_area <= 0:
        return small.reshape(mask.shape)
    for plane, out in zip(planes, small):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        small_label = stats[:, cv2.CC_STAT_AREA] <= max_area  # (labels,)
        small_label[0] = False  # label 0: the pixels off the mask
        out[:] = small_label[labels]
    return small.reshape(mask.shape)
