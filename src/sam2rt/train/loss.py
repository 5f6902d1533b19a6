"""SAM 2's training loss: focal and dice on the best of the candidate masks, L1 on the predicted IoU,
and binary cross-entropy on the object score; summed over every decoder step of every frame.

Rules for objects absent from a frame (an empty ground truth): only the object-score loss counts
there. Among candidate masks, the one with the lowest weighted focal + dice loss is supervised;
the IoU prediction of every candidate is. Every term is divided by the number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .clip_forward import DecoderStep


@dataclass(frozen=True)
class LossWeights:
    mask: float = 20.0  # focal
    dice: float = 1.0
    iou: float = 1.0  # L1 between predicted and actual IoU
    object_score: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


class LossTerms(NamedTuple):
    total: Tensor
    mask: Tensor
    dice: Tensor
    iou: Tensor
    object_score: Tensor


def focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss per pixel (RetinaNet); alpha < 0 turns class weighting off."""
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    right = prob * targets + (1 - prob) * (1 - targets)  # the probability given to the true class
    if gamma != 0:
        loss = loss * (1 - right) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - soft Dice (with +1 smoothing) per mask: (N, M, H, W) -> (N, M)."""
    prob = logits.sigmoid().flatten(2)
    targets = targets.flatten(2)
    return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of the thresholded masks per candidate: (N, M, H, W) -> (N, M); 0 when both are empty."""
    predicted = logits.flatten(2) > 0
    truth = targets.flatten(2) > 0
    intersection = (predicted & truth).sum(-1).float()
    union = (predicted | truth).sum(-1).float()
    return intersection / union.clamp(min=1.0)


def step_loss(step: DecoderStep, target: Tensor, weights: LossWeights) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums over objects of (focal, dice, IoU, object score) for one decoder step. target (N, 1, H, W) float."""
    targets = target.expand_as(step.masks)
    focal = focal_loss(step.masks, targets, weights.focal_alpha, weights.focal_gamma).flatten(2).mean(-1)  # (N, M)
    dice = dice_loss(step.masks, targets)
    iou = (step.iou_scores - mask_iou(step.masks, targets)).abs()  # (N, M)
    present = target.flatten(1).gt(0).any(dim=1, keepdim=True).float()  # (N, 1)
    object_score = F.binary_cross_entropy_with_logits(step.object_score_logits, present, reduction="none")

    rows = torch.arange(focal.shape[0], device=focal.device)
    best = (focal * weights.mask + dice * weights.dice).argmin(dim=-1)
    focal, dice = focal[rows, best][:, None], dice[rows, best][:, None]
    iou = iou.mean(dim=-1, keepdim=True)  # every candidate's IoU prediction is supervised
    return (focal * present).sum(), (dice * present).sum(), (iou * present).sum(), object_score.sum()


def clip_loss(outputs: list[list[DecoderStep]], masks: Tensor, weights: LossWeights, num_objects: float) -> LossTerms:
    """The loss of a batch: outputs per frame (from `clip_forward`), masks (T, O, S, S) bool.

    num_objects: the objects per batch to divide by (averaged over ranks in distributed training).
    """
    if len(outputs) != masks.shape[0]:
        raise ValueError(f"{len(outputs)} frames of outputs for {masks.shape[0]} frames of masks")
    totals = [masks.new_zeros((), dtype=torch.float32) for _ in range(4)]
    for steps, frame_masks in zip(outputs, masks):
        target = frame_masks[:, None].float()  # (O, 1, S, S)
        for step in steps:
            for index, value in enumerate(step_loss(step, target, weights)):
                totals[index] = totals[index] + value
    mask, dice, iou, object_score = (value / max(num_objects, 1.0) for value in totals)
    total = weights.mask * mask + weights.dice * dice + weights.iou * iou + weights.object_score * object_score
    return LossTerms(total, mask, dice, iou, object_score)
