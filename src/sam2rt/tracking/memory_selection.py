"""SAM 3's temporal disambiguation (Meta's `use_memory_selection`): which earlier frames an object's memory reads.

Each tracked frame gets a score as a memory: its presence rescaled to [0, 1] (0 when judged absent) times the best
predicted IoU of its mask candidates. A frame t then reads the frames before it whose score passes a bar (0.01
officially), nearest first, at most `max_obj_ptrs - 1` of them, and always the frame just before t: the spatial
memories of the nearest `num_maskmem - 1` of that list and the pointers of all but its oldest, each with the
temporal encoding of its rank in the list rather than of its distance. Frames where the object was lost or unsure
are skipped, however far back the good ones lie.

Scores live on the device; the host reads them only when it plans the next frame's memory (`read_scores`: one
copy for every object of a pass), by which time the pass that made them has long been queued before the next
frame's image encoder, so the read does not leave the GPU idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor


@dataclass
class MemoryScore:
    """A tracked frame's score as a memory (Meta's `eff_iou_score`), read on the host once it is needed."""

    value: Tensor  # () on the device that computed it
    factors: Optional[Tensor] = None  # (2,) its presence in [0, 1] and best predicted IoU, for `group_score`
    passes: Optional[bool] = None  # value > threshold, once read


def score_factors(object_score_logits: Tensor, iou_scores: Tensor) -> Tensor:
    """Each object's presence rescaled to [0, 1] (0 when judged absent) and best predicted IoU, (B, 2), from its
    presence logit (B, 1) and its candidates' predicted IoUs (B, M)."""
    presence = torch.where(
        object_score_logits > 0, object_score_logits.sigmoid() * 2 - 1, torch.zeros_like(object_score_logits)
    )  # (B, 1): sigmoid rescaled from [0.5, 1] to [0, 1]
    return torch.cat([presence, iou_scores.max(dim=-1, keepdim=True).values], dim=1)  # (B, 2)


def object_scores(factors: Tensor) -> list[MemoryScore]:
    """One memory score per object from its factors (B, 2): presence times best IoU."""
    values = factors[:, 0] * factors[:, 1]  # (B,)
    return [MemoryScore(values[row], factors[row]) for row in range(factors.shape[0])]


def group_score(scores: Sequence[MemoryScore]) -> MemoryScore:
    """The score Meta's tracker gives a frame of several objects tracked as one batch (one tracker state): the
    mean over the batch of every object's presence times every object's IoU (its broadcast product of shapes
    (G, 1) and (G,)), that is mean presence times mean IoU."""
    factors = torch.stack([score.factors for score in scores])  # (G, 2)
    return MemoryScore((factors[:, :1] * factors[:, 1]).mean())  # (G, 1) * (G,) -> (G, G) -> ()


def read_scores(scores: Sequence[MemoryScore], threshold: float) -> None:
    """Compare unread scores with the bar in one device-to-host copy (the comparison in the scores' dtype, as
    Meta compares a float32 tensor with the bar)."""
    unread = [score for score in scores if score.passes is None]
    if not unread:
        return
    flags = (torch.stack([score.value.reshape(()) for score in unread]) > threshold).tolist()
    for score, flag in zip(unread, flags):
        score.passes = flag


def passes(score: Optional[MemoryScore], threshold: float) -> bool:
    """Whether a frame's memory may be selected: scored, and over the bar (read now if it was not yet)."""
    if score is None:
        return False
    read_scores([score], threshold)
    return score.passes


def memory_frames(
    candidates: Iterable[tuple[int, Optional[MemoryScore]]],
    frame_idx: int,
    reverse: bool,
    num_frames: Optional[int],
    max_pointers: int,
    threshold: float,
) -> list[int]:
    """The earlier frames frame `frame_idx` reads (Meta's `frame_filter`), farthest first, the frame just before it
    (in the tracking direction) always last, whether or not it was tracked.

    candidates: the tracked frames on the side already tracked with their scores, nearest first (at least every
    frame a stored memory of which could be selected). Forward, frame 0 is never a candidate (Meta's scan stops
    before it); `max_pointers` is min(num_frames, max_obj_ptrs), the selection keeps at most one less.
    """
    direction = -1 if reverse else 1
    if (not reverse and frame_idx == 0) or (reverse and num_frames is not None and frame_idx == num_frames - 1):
        return []
    chosen: list[int] = []  # nearest first
    for frame, score in candidates:
        in_range = (num_frames is None or frame < num_frames) if reverse else frame >= 1
        if not in_range or score is None:
            continue
        if passes(score, threshold):
            chosen.append(frame)
        if len(chosen) >= max_pointers - 1:
            break
    chosen.reverse()  # farthest first
    previous = frame_idx - direction
    if previous not in chosen:
        chosen.append(previous)
    return chosen


def retained_frames(
    passing: Mapping[int, bool], newest: int, num_maskmem: int, max_pointers: int
) -> tuple[set[int], set[int]]:
    """Which tracked frames a stream's ring must keep once frame `newest` is written, so that the next frame and a
    correction on `newest` read what they would read with every frame kept: (frames whose pointer is kept, frames
    whose spatial memory is kept), the second within the first.

    passing: the frames held before `newest` (all earlier than it, forward) -> whether their score passes the bar.
    Pointers: `newest`, the frame before it, and the `max_pointers - 1` latest passing frames (at most
    max_pointers + 1 frames). Spatial memories: `newest` and the `num_maskmem - 1` latest among the passing frames
    and the frame before `newest` (at most num_maskmem frames).
    """
    previous = newest - 1
    latest_passing = sorted(t for t, ok in passing.items() if ok and 1 <= t < newest)
    pointers = {newest, previous, *_latest(latest_passing, max_pointers - 1)}
    memories = {newest, *_latest(sorted({*latest_passing, previous}), num_maskmem - 1)}
    return pointers, memories


def _latest(frames: list[int], count: int) -> list[int]:
    """The `count` last of ascending `frames`."""
    return frames[max(len(frames) - count, 0) :]
