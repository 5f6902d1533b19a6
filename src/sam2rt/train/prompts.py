"""Simulated user prompts for training: which frames get prompts, which kind, and clicks on the error.

The choices follow SAM2Train: per clip, a mask prompt or points (a click or a noised box) on 1-2
initial conditioning frames, then correction clicks sampled from the error between the prediction
and the ground truth on those frames and maybe one more. The choices per clip come from a NumPy
generator (the same seed on every rank, so that every rank takes the same branches); the pixel
sampling draws from torch's generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are simulated; the defaults are Meta's fine-tuning recipe (MOSE config)."""

    prob_points: float = 0.5  # points (a click or a box) instead of a mask on the conditioning frames
    prob_box: float = 0.5  # a box rather than a click, when points are used
    prob_clicks_from_gt: float = 0.1  # a correction click drawn from the ground truth, not the error
    num_init_cond_frames: int = 2  # at most this many initial conditioning frames (the first always)
    random_init_cond_frames: bool = True  # draw 1..num_init_cond_frames of them, else exactly that many
    num_frames_to_correct: int = 2  # frames that get correction clicks (when points are used)
    random_frames_to_correct: bool = True  # draw num_init_cond..num_frames_to_correct of them
    corrections_as_cond: bool = True  # a corrected frame becomes a conditioning frame
    clicks_per_frame: int = 7  # correction clicks on each frame to correct

    def __post_init__(self) -> None:
        for name in ("prob_points", "prob_box", "prob_clicks_from_gt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.num_init_cond_frames < 1:
            raise ValueError(f"num_init_cond_frames must be at least 1, got {self.num_init_cond_frames}")
        if self.num_frames_to_correct < self.num_init_cond_frames:
            raise ValueError("num_frames_to_correct must be at least num_init_cond_frames")
        if self.clicks_per_frame < 0:
            raise ValueError(f"clicks_per_frame must be >= 0, got {self.clicks_per_frame}")


@dataclass
class ClipPlan:
    """The prompts chosen for one clip (all its objects share them)."""

    use_points: bool
    init_cond_frames: list[int]  # the first is frame 0; processed first, in this order
    frames_to_correct: list[int]
    box_frames: set[int] = field(default_factory=set)  # initial frames prompted by a box instead of a click
    clicks_from_gt: dict[int, list[bool]] = field(default_factory=dict)  # per corrected frame, per click

    def processing_order(self, num_frames: int) -> list[int]:
        """Initial conditioning frames first (they build the memory), then the others in time order."""
        return self.init_cond_frames + [t for t in range(num_frames) if t not in self.init_cond_frames]


def plan_clip(settings: PromptSettings, num_frames: int, rng: np.random.Generator) -> ClipPlan:
    """Draw a clip's prompt plan. A single frame (an image) always gets points and corrections."""
    prob_points = settings.prob_points
    num_init, num_correct = settings.num_init_cond_frames, settings.num_frames_to_correct
    if num_frames == 1:
        prob_points, num_init, num_correct = 1.0, 1, 1
    num_init = min(num_init, num_frames)
    num_correct = min(num_correct, num_frames)
    use_points = bool(rng.random() < prob_points)
    if settings.random_init_cond_frames and num_init > 1:
        num_init = int(rng.integers(1, num_init, endpoint=True))
    if use_points and settings.random_frames_to_correct and num_correct > num_init:
        num_correct = int(rng.integers(num_init, num_correct, endpoint=True))

    init_frames = [0]
    if num_init > 1:
        init_frames += rng.choice(range(1, num_frames), num_init - 1, replace=False).tolist()
    box_frames = set()
    if use_points:
        box_frames = {t for t in init_frames if rng.random() < settings.prob_box}

    if not use_points:
        to_correct: list[int] = []
    elif num_correct <= num_init:
        to_correct = list(init_frames)
    else:
        others = [t for t in range(num_frames) if t not in init_frames]
        to_correct = init_frames + rng.choice(others, num_correct - num_init, replace=False).tolist()

    plan = ClipPlan(use_points, init_frames, to_correct, box_frames)
    for t in plan.processing_order(num_frames):
        if t in to_correct:
            plan.clicks_from_gt[t] = [
                settings.prob_clicks_from_gt > 0 and bool(rng.random() < settings.prob_clicks_from_gt)
                for _ in range(settings.clicks_per_frame)
            ]
    return plan


def sample_click(
    gt: Tensor, prediction: Optional[Tensor], generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """One click per mask, uniformly at random in the error region: (B, 1, 2) pixels (x, y) and labels (B, 1).

    gt and prediction (B, 1, H, W) bool; prediction None counts as empty (the click lands on the
    object). A click in a missed region is positive (1), in a false alarm negative (0); where the
    prediction is right everywhere, a negative click lands on the background.
    """
    if prediction is None:
        prediction = torch.zeros_like(gt)
    if gt.dtype != torch.bool or prediction.dtype != torch.bool or gt.shape != prediction.shape or gt.dim() != 4:
        raise ValueError("gt and prediction must be (B, 1, H, W) bool masks of one shape")
    batch, _, height, width = gt.shape
    false_alarm = prediction & ~gt
    missed = gt & ~prediction
    all_right = (gt == prediction).flatten(1).all(dim=1)[:, None, None, None]  # (B, 1, 1, 1)
    # Random scores per pixel and per label; the highest allowed one wins.
    scores = torch.rand(batch, 1, height, width, 2, device=gt.device, generator=generator)
    scores[..., 0] *= false_alarm | (all_right & ~gt)
    scores[..., 1] *= missed
    winner = scores.flatten(2).argmax(dim=2)  # (B, 1) over (H, W, 2) in raster order
    labels = (winner % 2).to(torch.int32)
    pixel = winner // 2
    coords = torch.stack([pixel % width, pixel // width], dim=2).float()  # (B, 1, 2) x before y
    return coords, labels


def sample_box(
    gt: Tensor, noise: float = 0.1, max_noise: float = 20.0, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """A noised bounding box of each mask as two corner points: (B, 2, 2) pixels (x, y) and labels (B, 2) = (2, 3).

    Each coordinate moves by up to `noise` times the box's size, at most `max_noise` pixels, and
    stays inside the image. gt (B, 1, H, W) bool.
    """
    batch, _, height, width = gt.shape
    device = gt.device
    xs = torch.arange(width, device=device, dtype=torch.int32).expand(batch, 1, height, width)
    ys = torch.arange(height, device=device, dtype=torch.int32)[:, None].expand(batch, 1, height, width)
    box = torch.stack(
        [
            torch.where(gt, xs, width).flatten(2).amin(dim=-1),
            torch.where(gt, ys, height).flatten(2).amin(dim=-1),
            torch.where(gt, xs, -1).flatten(2).amax(dim=-1),
            torch.where(gt, ys, -1).flatten(2).amax(dim=-1),
        ],
        dim=-1,
    )  # (B, 1, 4) x0, y0, x1, y1; an empty mask gives (W, H, -1, -1), clamped below
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=device).expand(batch, 2)
    if noise > 0:
        bound = torch.tensor(max_noise, device=device)
        max_dx = torch.minimum((box[..., 2] - box[..., 0]) * noise, bound)
        max_dy = torch.minimum((box[..., 3] - box[..., 1]) * noise, bound)
        jitter = 2 * torch.rand(batch, 1, 4, device=device, generator=generator) - 1
        box = box + jitter * torch.stack((max_dx, max_dy, max_dx, max_dy), dim=-1)
        upper = torch.tensor([width, height, width, height], device=device) - 1
        box = torch.minimum(torch.maximum(box, torch.zeros_like(upper)), upper)
    return box.float().reshape(batch, 2, 2), labels.contiguous()  # (B, 1, 4) -> (B, 2, 2)
