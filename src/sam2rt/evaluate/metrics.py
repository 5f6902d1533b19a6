"""J (region similarity) and F (boundary accuracy) of video object masks, by the official definitions.

The definitions are those of the DAVIS 2017 semi-supervised benchmark as Meta's SA-V benchmark
computes them:
- J of an object on a frame: |pred & gt| / |pred | gt|, and 1 when both are empty.
- F: boundary maps of prediction and ground truth (a pixel is on the boundary when it differs from
  its right, lower or lower-right neighbour inside the image); each is dilated by a disk of radius
  ceil(0.008 x image diagonal); precision = prediction boundary pixels inside the dilated ground
  truth boundary / prediction boundary pixels, recall the other way round, F their harmonic mean.
  No boundary on either side scores 1; a boundary on one side only scores 0.
- An object's score on a video is its mean over the frames evaluated from the first one where it
  appears (in the ground truth or the prediction) on; only objects of the ground truth are scored.

All objects of a frame are scored at once: masks, boundaries and dilations are (K, H, W) arrays, and
the dilations are computed within the bounding box of the boundaries only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal


def boundary_radius(height: int, width: int) -> int:
    """Radius in pixels of the disk that boundaries are matched within."""
    # The official tool takes np.linalg.norm of the shape; the same float operations give the same ceiling.
    return int(math.ceil(BOUNDARY_TOLERANCE * float(np.linalg.norm((height, width)))))


def boundary_maps(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool -> (K, H, W) bool: pixels whose right, lower or lower-right neighbour (inside the image) differs."""
    edges = np.zeros_like(masks)
    edges[:, :, :-1] |= masks[:, :, :-1] != masks[:, :, 1:]
    edges[:, :-1, :] |= masks[:, :-1, :] != masks[:, 1:, :]
    edges[:, :-1, :-1] |= masks[:, :-1, :-1] != masks[:, 1:, 1:]
    return edges


def disk(radius: int) -> np.ndarray:
    """(2r + 1, 2r + 1) uint8 structuring element: 1 where dx^2 + dy^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def dilate_disk(maps: np.ndarray, radius: int) -> np.ndarray:
    """(K, H, W) bool dilated by the disk of `radius`; pixels outside the image count as empty (OpenCV's default)."""
    kernel = disk(radius)
    dilated = np.empty_like(maps)
    for index, plane in enumerate(maps):  # one OpenCV call per map: faster than one over K channels
        dilated[index] = cv2.dilate(np.ascontiguousarray(plane).view(np.uint8), kernel) > 0
    return dilated


def _ratio(numerator: np.ndarray, denominator: np.ndarray, when_empty: float) -> np.ndarray:
    """numerator / denominator as float64, `when_empty` where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.full(numerator.shape, when_empty), where=denominator > 0)


def frame_scores(gt: np.ndarray, pred: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """J and F (float64, (K,)) of objects `ids` (K,) on one frame of label maps `gt` and `pred` (H, W)."""
    gt_masks = gt[None] == ids[:, None, None]  # (K, H, W)
    pred_masks = pred[None] == ids[:, None, None]
    intersection = (gt_masks & pred_masks).sum((1, 2))
    union = (gt_masks | pred_masks).sum((1, 2))
    j = _ratio(intersection, union, 1.0)

    radius = boundary_radius(*gt.shape)
    edges = boundary_maps(np.concatenate([gt_masks, pred_masks]))  # (2K, H, W): ground truth, then prediction
    # Only pixels within `radius` of a boundary pixel can be reached by a dilation: work in their bounding box.
    rows, columns = np.flatnonzero(edges.any((0, 2))), np.flatnonzero(edges.any((0, 1)))
    if len(rows):
        top, bottom = max(rows[0] - radius, 0), rows[-1] + radius + 1
        left, right = max(columns[0] - radius, 0), columns[-1] + radius + 1
        edges = edges[:, top:bottom, left:right]
    zones = dilate_disk(edges, radius)
    gt_edges, pred_edges = edges[: len(ids)], edges[len(ids) :]
    pred_hits = (pred_edges & zones[: len(ids)]).sum((1, 2))
    gt_hits = (gt_edges & zones[len(ids) :]).sum((1, 2))
    # No boundary on a side: that side's ratio is 1, and the other side's hits are 0 unless both are empty.
    precision = _ratio(pred_hits, pred_edges.sum((1, 2)), 1.0)
    recall = _ratio(gt_hits, gt_edges.sum((1, 2)), 1.0)
    f = _ratio(2 * precision * recall, precision + recall, 0.0)
    return j, f


@dataclass
class SequenceScorer:
    """Feeds the frames of one sequence in order; gives each ground-truth object's mean J and F, in percent.

    Frames where an object, once seen, is absent from both sides score 1 without being computed.
    """

    frames: int = 0
    first_seen: dict[int, int] = field(default_factory=dict)  # object id -> first frame it appeared in
    in_ground_truth: set[int] = field(default_factory=set)
    computed: dict[int, list[float]] = field(default_factory=dict)  # id -> [frames scored, sum of J, sum of F]

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """One frame: label maps (H, W) of integer object ids, 0 for the background."""
        gt_ids, pred_ids = np.unique(gt), np.unique(pred)
        self.in_ground_truth.update(gt_ids[gt_ids != 0].tolist())
        present = np.union1d(gt_ids, pred_ids)
        present = present[present != 0]
        for obj_id in present.tolist():
            self.first_seen.setdefault(obj_id, self.frames)
        if len(present):
            j, f = frame_scores(gt, pred, present)
            for obj_id, j_value, f_value in zip(present.tolist(), j.tolist(), f.tolist()):
                sums = self.computed.setdefault(obj_id, [0, 0.0, 0.0])
                sums[0] += 1
                sums[1] += j_value
                sums[2] += f_value
        self.frames += 1

    def result(self) -> dict[int, tuple[float, float]]:
        """Ground-truth object id -> (J, F) in percent, in id order."""
        scores = {}
        for obj_id in sorted(self.in_ground_truth):
            scored, j_sum, f_sum = self.computed[obj_id]
            count = self.frames - self.first_seen[obj_id]
            empty = count - scored  # frames after its first appearance where neither side has it: 1 each
            scores[obj_id] = (100 * (j_sum + empty) / count, 100 * (f_sum + empty) / count)
        return scores
