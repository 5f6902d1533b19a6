"""The concept plan's mask comparisons: the rules of `concept_plan` that read only this frame's tensors.

Rules 1 to 3 (which detections take part, which tracks each one matches, which start new tracks) and the overlap
test of rule 7 (which of two overlapping tracks gives way) compare masks by IoU and keep nothing between frames;
the rule numbers and Meta's semantics are those of `concept_plan`'s docstring. They live apart from `plan_frame`,
which owns the per-stream state (track records, duplicate counters, keep-alive, hotstart, confirmation), so that
each file reads as one kind of work: tensor geometry here, bookkeeping there.

`ConceptOptions` is only named in annotations here: `concept_plan` imports this module, not the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .concept_plan import ConceptOptions

NEVER_OCCLUDED = -1  # rule 7: a track's last occluded frame before it was ever empty or suppressed
BOUNDARY_MARGIN = 0.025  # rule 3: fraction of the image's width or height


def mask_iou(masks_a: Tensor, masks_b: Tensor) -> Tensor:
    """IoU (N, M) float32 of binary masks (N, H, W) and (M, H, W); 0 where both are empty."""
    flat_a = masks_a.flatten(1).float()  # (N, H*W)
    flat_b = masks_b.flatten(1).float()  # (M, H*W)
    inter = flat_a @ flat_b.T  # exact: pixel counts stay far below 2**24
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1)


def _descending(scores: Tensor) -> list[int]:
    """Indices by score, highest first, with numpy's sort as Meta calls it (so that ties break the same way)."""
    return np.argsort(scores.detach().float().cpu().numpy())[::-1].tolist()


def select_detections(scores: Tensor, masks: Tensor, options: ConceptOptions) -> Tensor:
    """Rule 1: rows (D,) int64, ascending, of the detections that take part.

    scores (Q,) probabilities; masks (Q, H, W) mask logits.
    """
    above = scores > options.score_threshold_detection
    rows = torch.nonzero(above).flatten()
    if options.det_nms_thresh <= 0 or rows.numel() == 0:
        return rows
    # compared in float32, as Meta's numpy does (an IoU of float32 0.1 is not above the bar 0.1)
    compatible = (mask_iou(masks[rows] > 0, masks[rows] > 0) <= options.det_nms_thresh).tolist()
    order = _descending(scores[rows])
    kept = []
    while order:
        best, order = order[0], order[1:]
        kept.append(best)
        order = [i for i in order if compatible[best][i]]
    return rows[sorted(kept)]


class Association(NamedTuple):
    """Rule 2's result for D detections and M tracks."""

    is_new: list[bool]  # (D,) starts a track
    matches: list[list[int]]  # (D,) track positions each detection matches at assoc_iou_thresh, in track order
    unmatched: list[bool]  # (M,)
    empty: list[bool]  # (M,)
    recondition: dict[int, int]  # track position -> detection (its best high-confidence, high-IoU match)


def associate(det_masks: Tensor, det_scores: Tensor, track_masks: Tensor, options: ConceptOptions) -> Association:
    """Rule 2. det_masks (D, Hd, Wd) and track_masks (M, Ht, Wt) mask logits; det_scores (D,) probabilities."""
    num_dets, num_tracks = det_masks.shape[0], track_masks.shape[0]
    if num_tracks == 0:
        return Association([True] * num_dets, [[] for _ in range(num_dets)], [], [], {})
    if num_dets == 0:
        empty = (~(track_masks > 0).flatten(1).any(1)).tolist()
        return Association([], [], [not e for e in empty], empty, {})
    if det_masks.shape[-2:] != track_masks.shape[-2:]:
        # compare at the smaller resolution; on a tie of pixel counts the detections take the tracks' size
        if det_masks.shape[-2] * det_masks.shape[-1] < track_masks.shape[-2] * track_masks.shape[-1]:
            track_masks = _resized(track_masks, det_masks.shape[-2:])
        else:
            det_masks = _resized(det_masks, track_masks.shape[-2:])
    track_binary = track_masks > 0
    ious = mask_iou(det_masks > 0, track_binary)  # (D, M)
    empty = ~track_binary.flatten(1).any(1)
    unmatched = ~empty & ~(ious >= options.trk_assoc_iou_thresh).any(0)
    matched = ious >= options.assoc_iou_thresh  # (D, M)
    is_new = (det_scores >= options.new_det_thresh) & ~matched.any(1)
    best_iou, best_track = ious.amax(1), ious.argmax(1)  # the first track on a tie, as numpy's argmax
    candidate = (det_scores >= options.high_conf_thresh) & ~is_new & (best_iou >= options.high_iou_thresh)
    recondition = {}
    for det, track in zip(torch.nonzero(candidate).flatten().tolist(), best_track[candidate].tolist()):
        recondition[track] = det  # a later detection overwrites an earlier one for the same track
    matches = [torch.nonzero(row).flatten().tolist() for row in matched.cpu()]
    return Association(is_new.tolist(), matches, unmatched.tolist(), empty.tolist(), recondition)


def _resized(masks: Tensor, size) -> Tensor:
    """Mask logits (N, H, W) resized bilinearly to `size` (N, h, w)."""
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def near_boundary(boxes: Tensor) -> Tensor:
    """(N,) bool: boxes (N, 4) normalised x0, y0, x1, y1 whose centre lies within the margin of the border."""
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (centre_x > BOUNDARY_MARGIN) & (centre_x < 1.0 - BOUNDARY_MARGIN)
    inside &= (centre_y > BOUNDARY_MARGIN) & (centre_y < 1.0 - BOUNDARY_MARGIN)
    return ~inside


def new_detections(
    assoc: Association, scores: Tensor, boxes: Tensor, num_tracks: int, options: ConceptOptions
) -> list[int]:
    """Rule 3: the detections (positions among those taking part) that start tracks, in id order."""
    new = [d for d, is_new in enumerate(assoc.is_new) if is_new]
    if options.suppress_det_close_to_boundary and new:
        far = (~near_boundary(boxes[new])).tolist()
        new = [d for d, keep in zip(new, far) if keep]
    room = options.object_limit - num_tracks
    if len(new) > room:
        if room <= 0:
            return []
        by_score = _descending(scores[new])
        new = [new[i] for i in by_score[:room]]
    return new


def occlusion_suppression(masks: Tensor, last_occluded: Tensor, threshold: float) -> Tensor:
    """Rule 7's choice (M,) bool, from masks (M, H, W) logits and each track's last occluded frame (M,) int64."""
    if masks.shape[0] <= 1:
        return torch.zeros(masks.shape[0], dtype=torch.bool, device=masks.device)
    binary = masks > 0
    overlapping = torch.triu(mask_iou(binary, binary) >= threshold, diagonal=1)  # (M, M), pairs i < j
    later_i = last_occluded[:, None] > last_occluded[None, :]  # (M, M): i occluded after j
    ever_i = last_occluded[:, None] > NEVER_OCCLUDED
    ever_j = last_occluded[None, :] > NEVER_OCCLUDED
    # i gives way to j when i was occluded later and j was ever occluded, and the other way round
    suppress_i = overlapping & later_i & ever_j
    suppress_j = overlapping & later_i.T & ever_i
    return suppress_i.any(1) | suppress_j.any(0)
