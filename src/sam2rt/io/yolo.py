"""YOLO segmentation labels: one text file per frame, `<folder>/<frame name>.txt`, a line per polygon:
`<object id> x1 y1 x2 y2 ...` with coordinates divided by the frame's width and height. An object in several
pieces gets a line per piece; holes are cut into their piece's polygon.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import write_text_atomically
from .sinks import TrackedFrame, make_folder


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[np.ndarray]:
    """A mask (H, W) bool as polygons (P, 2) of x, y pixel coordinates, one per connected piece.

    A YOLO polygon has no holes, so each hole is joined to its piece's outline by a zero-width cut
    at their closest points; filling the polygon (cv2.fillPoly, as YOLO tools do) leaves the hole out.
    """
    import cv2

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    links = hierarchy[0]  # (K, 4): next, previous, first child, parent
    polygons = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: joined to its outline below
        polygon = contour.reshape(-1, 2)  # (P, 1, 2) -> (P, 2)
        hole_index = links[index][2]
        while hole_index != -1:
            polygon = _join_hole(polygon, contours[hole_index].reshape(-1, 2))
            hole_index = links[hole_index][0]
        if len(polygon) >= min_points:
            polygons.append(polygon)
    return polygons


def _join_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One polygon that runs along `outline` (P, 2), around `hole` (Q, 2) and back, through their closest points."""
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(-1)  # (P, Q)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    return np.concatenate([outline[: i + 1], hole[j:], hole[: j + 1], outline[i:]])


def yolo_lines(object_ids: list[int], masks: np.ndarray) -> list[str]:
    """YOLO segmentation lines for masks (N, H, W): `<object id> x1 y1 ...`, coordinates in [0, 1]."""
    height, width = masks.shape[1:]
    scale = np.array([width, height], dtype=np.float64)
    lines = []
    for obj_id, mask in zip(object_ids, masks):
        for polygon in mask_polygons(mask):
            coords = (polygon / scale).reshape(-1)  # (P, 2) -> x1, y1, x2, y2, ...
            lines.append(f"{obj_id} " + " ".join(f"{value:.6f}" for value in coords))
    return lines


class YoloWriter:
    """One YOLO segmentation label file per frame; the class index is the object id."""

    def __init__(self, folder: Path) -> None:
        self.folder = make_folder(Path(folder))
        self.count = 0

    @property
    def description(self) -> str:
        return f"{self.count} YOLO label files in {self.folder}"

    def write(self, frame: TrackedFrame) -> None:
        lines = yolo_lines(frame.object_ids, frame.masks)
        text = "".join(line + "\n" for line in lines)
        write_text_atomically(self.folder / f"{frame.name}.txt", text)
        self.count += 1

    def close(self) -> None:
        pass
