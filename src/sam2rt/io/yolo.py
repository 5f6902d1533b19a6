"""YOLO segmentation labels: one text file per frame, `<folder>/<frame name>.txt`, a line per object:
`<class> x1 y1 x2 y2 ...` with coordinates divided by the frame's width and height.

A YOLO polygon is one outline without holes, and the trainers read a line as one instance. So an object in
several pieces becomes one polygon, its pieces joined by zero-width cuts at their closest points (as
Ultralytics' own COCO converter joins them), and holes are cut into their piece the same way: filling the
polygon (cv2.fillPoly, as the YOLO tools do) gives the mask back, but for the one-pixel seams of the cuts.
`per_piece=True` writes the older form instead, a line per piece.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

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
            polygon = _join_loop(polygon, contours[hole_index].reshape(-1, 2))
            hole_index = links[hole_index][0]
        if len(polygon) >= min_points:
            polygons.append(polygon)
    return polygons


def object_polygon(mask: np.ndarray) -> Optional[np.ndarray]:
    """A mask (H, W) bool as one polygon (P, 2) of x, y pixels, or None for a mask without a piece of 3 points.

    Its pieces (holes cut) are joined along a short spanning tree over the gaps between their boxes, each to
    its parent at their closest points: the cuts, drawn as one-pixel seams when the polygon is filled, stay
    about as short as the pieces allow, and the work grows with the pieces' outlines, not their square.
    """
    pieces = mask_polygons(mask)
    if not pieces:
        return None
    polygon = pieces[0]
    for child, parent in _spanning_tree(pieces):
        gaps = ((pieces[parent][:, None, :] - pieces[child][None, :, :]) ** 2).sum(-1)  # (P, Q)
        i, j = np.unravel_index(int(gaps.argmin()), gaps.shape)
        # The parent's point is on the polygon already (perhaps twice: any visit will do).
        at = int(np.flatnonzero((polygon == pieces[parent][i]).all(axis=1))[0])
        loop = pieces[child]
        polygon = np.concatenate([polygon[: at + 1], loop[j:], loop[: j + 1], polygon[at:]])
    return polygon


def _spanning_tree(pieces: list[np.ndarray]) -> list[tuple[int, int]]:
    """(piece, parent) pairs in the order Prim's algorithm grows a shortest spanning tree from piece 0, over the
    gaps between the pieces' bounding boxes."""
    boxes = np.array([[*piece.min(axis=0), *piece.max(axis=0)] for piece in pieces], dtype=np.float64)  # (K, 4)
    dx = np.maximum(0, np.maximum(boxes[:, None, 0] - boxes[None, :, 2], boxes[None, :, 0] - boxes[:, None, 2]))
    dy = np.maximum(0, np.maximum(boxes[:, None, 1] - boxes[None, :, 3], boxes[None, :, 1] - boxes[:, None, 3]))
    gaps = np.hypot(dx, dy)  # (K, K)
    joined = np.zeros(len(pieces), bool)
    joined[0] = True
    nearest, parent = gaps[0].copy(), np.zeros(len(pieces), int)  # each piece's gap to the tree, and through whom
    edges = []
    for _ in range(len(pieces) - 1):
        child = int(np.where(joined, np.inf, nearest).argmin())
        edges.append((child, int(parent[child])))
        joined[child] = True
        closer = gaps[child] < nearest
        nearest[closer], parent[closer] = gaps[child][closer], child
    return edges


def _join_loop(outline: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """One polygon that runs along `outline` (P, 2), around `loop` (Q, 2: a hole inside it, or another piece
    outside) and back, through their closest points."""
    distances = ((outline[:, None, :] - loop[None, :, :]) ** 2).sum(-1)  # (P, Q)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    return np.concatenate([outline[: i + 1], loop[j:], loop[: j + 1], outline[i:]])


def yolo_lines(classes: Sequence[int], masks: np.ndarray, per_piece: bool = False) -> list[str]:
    """YOLO segmentation lines for masks (N, H, W): `<class> x1 y1 ...`, coordinates in [0, 1]; a line per mask
    (an empty mask has none), or with `per_piece` a line per connected piece."""
    height, width = masks.shape[1:]
    scale = np.array([width, height], dtype=np.float64)
    lines = []
    for class_index, mask in zip(classes, masks):
        polygons = mask_polygons(mask) if per_piece else [object_polygon(mask)]
        for polygon in polygons:
            if polygon is None:
                continue
            coords = (polygon / scale).reshape(-1)  # (P, 2) -> x1, y1, x2, y2, ...
            lines.append(f"{class_index} " + " ".join(f"{value:.6f}" for value in coords))
    return lines


class YoloWriter:
    """One YOLO segmentation label file per frame; the class index is the object id."""

    def __init__(self, folder: Path, per_piece: bool = False) -> None:
        self.folder = make_folder(Path(folder))
        self.per_piece = per_piece
        self.count = 0

    @property
    def description(self) -> str:
        return f"{self.count} YOLO label files in {self.folder}"

    def write(self, frame: TrackedFrame) -> None:
        lines = yolo_lines(frame.object_ids, frame.masks, self.per_piece)
        text = "".join(line + "\n" for line in lines)
        write_text_atomically(self.folder / f"{frame.name}.txt", text)
        self.count += 1

    def close(self) -> None:
        pass
