"""The training forward pass over a batch of clips: SAM2Train's semantics on our model's functions.

Every object of every clip is one row, tracked through the clip with the prompts of its clip's
plan. Frames with prompts (the initial conditioning frames) are processed first and become the
memory the other frames are conditioned on; frames chosen for correction get clicks sampled from
the current error, each click one more decoder pass whose outputs are all supervised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.sam2 import MASK_LOGIT_BIAS, MASK_LOGIT_SCALE, MaskPrediction, MemoryTokens, SAM2Model
from .prompts import ClipPlan, sample_box, sample_click

# The decoder answers with three candidate masks only for ambiguous prompts: none or one click.
MAX_POINTS_FOR_MULTIMASK = 1


@dataclass
class ClipBatch:
    """Clips of T frames; objects are rows, each belonging to one clip.

    images (V*T, 3, S, S): normalised frames, clip-major (row v*T + t is frame t of clip v).
    image_index (T, O) long: the row of `images` each object is seen in on each frame.
    masks (T, O, S, S) bool: each object's ground truth on each frame (empty where it is absent).
    """

    images: Tensor
    image_index: Tensor
    masks: Tensor

    @property
    def num_frames(self) -> int:
        return self.masks.shape[0]

    @property
    def num_objects(self) -> int:
        return self.masks.shape[1]

    def to(self, device: torch.device) -> "ClipBatch":
        return ClipBatch(
            self.images.to(device, non_blocking=True),
            self.image_index.to(device, non_blocking=True),
            self.masks.to(device, non_blocking=True),
        )


class DecoderStep(NamedTuple):
    """One supervised prediction for every object of a frame."""

    masks: Tensor  # (O, M, S, S) mask logits at the input size; M = 3 candidates or 1
    iou_scores: Tensor  # (O, M)
    object_score_logits: Tensor  # (O, 1)


@dataclass
class _FrameMemory:
    spatial: Tensor  # (O, N, C_mem) memory tokens
    pointer: Tensor  # (O, C)


def clip_forward(
    model: SAM2Model, batch: ClipBatch, plan: ClipPlan, clicks_per_frame: int, corrections_as_cond: bool
) -> list[list[DecoderStep]]:
    """Track every object through its clip; returns, per frame in time order, every decoder step to supervise."""
    num_frames = batch.num_frames
    features = model.encode_image(batch.images)
    gt = batch.masks[:, :, None]  # (T, O, 1, S, S)

    # Prompts of the initial conditioning frames, drawn before tracking as SAM2Train draws them.
    points: dict[int, tuple[Tensor, Tensor]] = {}
    if plan.use_points:
        for t in plan.init_cond_frames:
            points[t] = sample_box(gt[t]) if t in plan.box_frames else sample_click(gt[t], None)

    cond: dict[int, _FrameMemory] = {}
    recent: dict[int, _FrameMemory] = {}
    outputs: dict[int, list[DecoderStep]] = {}
    for t in plan.processing_order(num_frames):
        rows = batch.image_index[t]
        embed = features.embed[rows]  # (O, C, h, w)
        high_res = tuple(level[rows] for level in features.high_res)
        if not plan.use_points and t in plan.init_cond_frames:
            full_res, prediction = _mask_as_output(model, embed, high_res, gt[t])
            steps = [DecoderStep(full_res, prediction.iou_scores, prediction.object_score_logits)]
        else:
            if t in plan.init_cond_frames:
                conditioned = model.without_memory(embed)
            else:
                conditioned = model.condition_on_memory(embed, _memory_tokens(model, t, num_frames, cond, recent))
            coords, labels = points.get(t, (None, None))
            full_res, prediction, steps = _decode(model, conditioned, high_res, coords, labels, None)
            if t in plan.frames_to_correct:
                for from_gt in plan.clicks_from_gt[t][:clicks_per_frame]:
                    new_coords, new_labels = sample_click(gt[t], None if from_gt else full_res > 0)
                    coords = new_coords if coords is None else torch.cat([coords, new_coords], dim=1)
                    labels = new_labels if labels is None else torch.cat([labels, new_labels], dim=1)
                    full_res, prediction, more = _decode(
                        model, conditioned, high_res, coords, labels, prediction.best_mask
                    )
                    steps += more
        outputs[t] = steps
        spatial = model.encode_memory(
            embed,
            full_res,
            prediction.object_score_logits,
            torch.zeros(len(rows), dtype=torch.bool, device=embed.device),
        )
        memory = _FrameMemory(spatial, prediction.obj_ptr)
        if t in plan.init_cond_frames or (corrections_as_cond and t in plan.frames_to_correct):
            cond[t] = memory
        else:
            recent[t] = memory
    return [outputs[t] for t in range(num_frames)]


def _upsample(model: SAM2Model, logits: Tensor) -> Tensor:
    size = model.config.image_size
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def _decode(
    model: SAM2Model,
    embed: Tensor,
    high_res: tuple[Tensor, ...],
    coords: Optional[Tensor],
    labels: Optional[Tensor],
    mask_logits: Optional[Tensor],
) -> tuple[Tensor, MaskPrediction, list[DecoderStep]]:
    """One decoder pass; returns the chosen mask at the input size, the prediction and its supervised step."""
    num_points = 0 if coords is None else coords.shape[1]
    multimask = num_points <= MAX_POINTS_FOR_MULTIMASK
    prediction = model.segment(embed, (high_res[0], high_res[1]), coords, labels, mask_logits, multimask)
    candidates = _upsample(model, prediction.masks)  # (O, M, S, S)
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    best = prediction.iou_scores.argmax(dim=-1) if multimask else torch.zeros_like(rows)
    full_res = candidates[rows, best][:, None]  # (O, 1, S, S)
    return full_res, prediction, [DecoderStep(candidates, prediction.iou_scores, prediction.object_score_logits)]


def _mask_as_output(
    model: SAM2Model, embed: Tensor, high_res: tuple[Tensor, ...], mask: Tensor
) -> tuple[Tensor, MaskPrediction]:
    """A mask prompt is taken as the prediction: logits of +-10 at the input size."""
    prediction = model.mask_as_output(embed, (high_res[0], high_res[1]), mask)
    return mask.float() * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS, prediction


def _memory_tokens(
    model: SAM2Model, t: int, num_frames: int, cond: dict[int, _FrameMemory], recent: dict[int, _FrameMemory]
) -> MemoryTokens:
    """The memory frame t attends to: every conditioning frame, the num_maskmem - 1 frames before it,
    and the object pointers of the conditioning frames (past and future: in training the whole clip
    is known) and of up to max_obj_ptrs - 1 frames before it."""
    num_maskmem = model.config.num_maskmem
    cond_slot = num_maskmem - 1  # the temporal encoding of conditioning frames
    spatial, slots = [], []
    for memory in cond.values():
        spatial.append(memory.spatial)
        slots.append(cond_slot)
    for distance in range(num_maskmem - 1, 0, -1):  # oldest first
        memory = recent.get(t - distance)
        if memory is not None:
            spatial.append(memory.spatial)
            slots.append(distance - 1)

    max_pointers = min(num_frames, model.config.max_obj_ptrs)
    pointers = [memory.pointer for memory in cond.values()]
    offsets = [t - frame for frame in cond]
    for distance in range(1, min(t + 1, max_pointers)):
        memory = recent.get(t - distance)
        if memory is not None:
            pointers.append(memory.pointer)
            offsets.append(distance)

    batch = spatial[0].shape[0]
    device = spatial[0].device
    return MemoryTokens(
        spatial=torch.stack(spatial, dim=1),  # (O, F, N, C_mem)
        spatial_tpos=torch.tensor(slots, device=device).expand(batch, -1),
        spatial_valid=None,
        pointers=torch.stack(pointers, dim=1),  # (O, P, C)
        pointer_positions=(torch.tensor(offsets, device=device, dtype=torch.float32) / (max_pointers - 1)).expand(
            batch, -1
        ),
        pointer_valid=None,
    )
