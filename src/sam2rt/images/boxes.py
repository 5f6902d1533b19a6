"""Boxes around masks and greedy non-maximum suppression, in plain PyTorch on any device.

Boxes are x0, y0, x1, y1 with inclusive pixel corners (a one-pixel mask has x0 == x1), the way
the official mask generator measures them, and their area is (x1 - x0) * (y1 - y0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processing.images import to_device

EDGE_TOLERANCE = 20.0  # pixels: a box this close to a crop's border was cut by it


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Masks (N, H, W) bool -> boxes (N, 4) int64 around them; [0, 0, 0, 0] for an empty mask."""
    rows = masks.any(dim=2)  # (N, H): the rows a mask touches
    columns = masks.any(dim=1)  # (N, W)
    boxes = torch.stack([_first(columns), _first(rows), _last(columns), _last(rows)], dim=1)  # (N, 4) as x0, y0, x1, y1
    empty = ~rows.any(dim=1)
    return boxes.masked_fill(empty[:, None], 0)


def _first(hits: Tensor) -> Tensor:
    """Index of the first True along the last axis (N, L) -> (N,)."""
    return hits.to(torch.uint8).argmax(dim=1)


def _last(hits: Tensor) -> Tensor:
    length = hits.shape[1]
    return length - 1 - hits.flip(1).to(torch.uint8).argmax(dim=1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes: Tensor) -> Tensor:
    """Pairwise IoU (N, N) of float boxes (N, 4); 0 / 0 (two empty boxes) gives NaN, which suppresses nothing."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])  # (N, N, 2)
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    sides = (bottom_right - top_left).clamp(min=0)
    inter = sides[..., 0] * sides[..., 1]
    area = box_area(boxes)
    return inter / (area[:, None] + area[None, :] - inter)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each group: indices of the kept boxes, highest score first (ties in input order).

    A box is kept when no kept box of its group with a higher rank overlaps it by more than
    `iou_threshold`. That rule defines the kept set from the top down; instead of a loop over the
    boxes, it is iterated over all boxes at once until nothing changes: the first k ranks are
    settled after k rounds, and a state that does not change is the greedy answer. Chains of
    suppression are short, so a handful of rounds settles real inputs.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order].float()
    same_group = groups[order][:, None] == groups[order][None, :]
    # suppresses[j, i]: box j ranks above box i and overlaps it too much
    suppresses = ((box_iou(ranked) > iou_threshold) & same_group).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    while True:
        updated = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(updated, keep):
            return order[keep]
        keep = updated


def near_crop_edge(boxes: Tensor, crop_box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> Tensor:
    """(N,) bool: boxes (N, 4) of the image frame that touch a side of the crop that is not a side of the image."""
    height, width = image_hw
    sides = to_device(torch.tensor([crop_box, (0, 0, width, height)], dtype=torch.float32), boxes.device)
    crop, image = sides  # (4,) each
    boxes = boxes.float()
    at_crop = (boxes - crop).abs() <= EDGE_TOLERANCE
    at_image = (boxes - image).abs() <= EDGE_TOLERANCE
    return (at_crop & ~at_image).any(dim=1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(N, 4) x0, y0, x1, y1 -> x, y, width, height."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
