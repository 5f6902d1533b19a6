"""Per-object memory and the batched gather that feeds the memory attention.

Each object owns its memory: prompted (conditioning) frames, and recent frames' spatial memories
and object pointers. A frame t tracked in direction d sees, for each object:

- the spatial memory of every conditioning frame (or the `max_cond_frames_in_attn` closest),
- the spatial memories of frames t-d, ..., t-6d, each with its own temporal encoding,
- the object pointers of the conditioning frames on its past side and of frames t-d, ..., t-15d.

`gather` packs these for a batch of objects, each on its own frame, into fixed-size slots with validity masks, so one
memory-attention call serves all objects however different their histories are.

Two stores implement the view the gather reads: `RingMemory`, fixed-capacity buffers for streams
(its size never grows with the frame count), and `FrameArchive`, every frame's output, for the
offline video predictor whose prompts and re-propagations may land on any frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ..model.sam2 import MemoryTokens
from ..variants import ModelConfig


@dataclass
class FrameOutput:
    """What the tracker keeps of one object on one frame."""

    mask_logits: Optional[Tensor]  # (1, 4h, 4w) low-resolution logits; None where only memory is kept
    pointer: Tensor  # (C,) object pointer
    object_score: Optional[Tensor]  # (1,) presence logit
    memory: Optional[Tensor] = None  # (h*w, C_mem) spatial memory in storage dtype; None until encoded


class MemoryView(Protocol):
    """The memories of one object, as the gather reads them."""

    def conditioning(self) -> Mapping[int, FrameOutput]: ...

    def tracked(self, frame_idx: int) -> Optional[FrameOutput]: ...


def select_conditioning(
    frame_idx: int, conditioning: Mapping[int, FrameOutput], limit: int
) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
    """Split conditioning frames into those attended to and the rest.

    With a limit (-1: none), keep the closest frame before `frame_idx`, the closest at or after
    it, and then the temporally closest others.
    """
    if limit == -1 or len(conditioning) <= limit:
        return dict(conditioning), {}
    if limit < 2:
        raise ValueError("max_cond_frames_in_attn must be -1 or at least 2")
    before = max((t for t in conditioning if t < frame_idx), default=None)
    after = min((t for t in conditioning if t >= frame_idx), default=None)
    chosen = [t for t in (before, after) if t is not None]
    others = sorted((t for t in conditioning if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen += others[: limit - len(chosen)]
    selected = {t: conditioning[t] for t in chosen}
    return selected, {t: out for t, out in conditioning.items() if t not in selected}


@dataclass
class _ObjectMemoryPlan:
    spatial: list[tuple[Tensor, int]]  # (memory (h*w, C_mem), temporal index)
    pointers: list[tuple[int, Tensor]]  # (signed frame distance, pointer (C,))


def _plan(
    view: MemoryView,
    frame_idx: int,
    reverse: bool,
    config: ModelConfig,
    max_cond_in_attn: int,
    num_frames: Optional[int],
) -> _ObjectMemoryPlan:
    conditioning = view.conditioning()
    if not conditioning:
        raise RuntimeError("an object without any prompted frame cannot be tracked")
    selected, unselected = select_conditioning(frame_idx, conditioning, max_cond_in_attn)
    direction = -1 if reverse else 1
    recent_slots = config.num_maskmem - 1

    def earlier(distance: int) -> Optional[FrameOutput]:
        t = frame_idx - direction * distance
        return view.tracked(t) or unselected.get(t)

    spatial = [(out.memory, config.num_maskmem - 1) for out in selected.values()]
    for distance in range(1, recent_slots + 1):
        out = earlier(distance)
        if out is not None:
            spatial.append((out.memory, distance - 1))

    # Pointers of prompted frames on the past side only, then of the frames just before.
    pointers = [
        ((frame_idx - t) * direction, out.pointer)
        for t, out in selected.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    max_pointers = min(num_frames, config.max_obj_ptrs) if num_frames else config.max_obj_ptrs
    for distance in range(1, max_pointers):
        t = frame_idx - direction * distance
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = earlier(distance)
        if out is not None:
            pointers.append((distance, out.pointer))
    return _ObjectMemoryPlan(spatial, pointers)


def gather(
    views: list[MemoryView],
    frame_indices: Sequence[int],
    reverse: bool,
    config: ModelConfig,
    device: torch.device,
    max_cond_in_attn: int = -1,
    num_frames: Optional[int] = None,
) -> MemoryTokens:
    """Pack the memories each object sees on its frame (`frame_indices`, one per view) into fixed-size slots:
    (B, F, ...) and (B, P, ...)."""
    plans = [
        _plan(view, frame_idx, reverse, config, max_cond_in_attn, num_frames)
        for view, frame_idx in zip(views, frame_indices, strict=True)
    ]
    frames = max(len(plan.spatial) for plan in plans)
    num_pointers = max(len(plan.pointers) for plan in plans)
    tokens = config.feature_size**2
    empty_memory = torch.zeros(tokens, config.memory_dim, dtype=plans[0].spatial[0][0].dtype, device=device)
    empty_pointer = torch.zeros(config.hidden_dim, device=device)

    spatial, pointers, layout = [], [], []  # layout: per row, (tpos..., valid..., offsets..., pointer valid...)
    for plan in plans:
        padding = frames - len(plan.spatial)
        spatial += [memory.to(device, non_blocking=True) for memory, _ in plan.spatial] + [empty_memory] * padding
        layout += [tpos for _, tpos in plan.spatial] + [0] * padding
        layout += [1] * len(plan.spatial) + [0] * padding
        missing = num_pointers - len(plan.pointers)
        pointers += [pointer.to(device, torch.float32, non_blocking=True) for _, pointer in plan.pointers]
        pointers += [empty_pointer] * missing
        layout += [offset for offset, _ in plan.pointers] + [0] * missing
        layout += [1] * len(plan.pointers) + [0] * missing
    # The small index tensors travel in one pinned, asynchronous copy: no stall of the GPU queue.
    layout_tensor = torch.tensor(layout, dtype=torch.long)
    if device.type == "cuda":
        layout_tensor = layout_tensor.pin_memory()
    layout_tensor = layout_tensor.to(device, non_blocking=True).reshape(len(plans), -1)  # (B, 2F + 2P)
    tpos, spatial_valid, offsets, pointer_valid = layout_tensor.split([frames, frames, num_pointers, num_pointers], 1)
    batch = len(plans)
    spatial_padding = any(len(plan.spatial) < frames for plan in plans)
    pointer_padding = any(len(plan.pointers) < num_pointers for plan in plans)
    max_pointers = min(num_frames, config.max_obj_ptrs) if num_frames else config.max_obj_ptrs
    return MemoryTokens(
        spatial=torch.stack(spatial).reshape(batch, frames, tokens, config.memory_dim),
        spatial_tpos=tpos,
        spatial_valid=spatial_valid.bool() if spatial_padding else None,
        pointers=torch.stack(pointers).reshape(batch, num_pointers, config.hidden_dim)
        if num_pointers
        else empty_pointer.new_zeros(batch, 0, config.hidden_dim),
        pointer_positions=offsets / max(max_pointers - 1, 1),
        pointer_valid=pointer_valid.bool() if pointer_padding else None,
    )


class FrameArchive:
    """Every frame's output of one object, as the offline video predictor needs them."""

    def __init__(self) -> None:
        self.cond: dict[int, FrameOutput] = {}
        self.non_cond: dict[int, FrameOutput] = {}

    def conditioning(self) -> Mapping[int, FrameOutput]:
        return self.cond

    def tracked(self, frame_idx: int) -> Optional[FrameOutput]:
        return self.non_cond.get(frame_idx)

    def output(self, frame_idx: int) -> Optional[FrameOutput]:
        return self.cond.get(frame_idx) or self.non_cond.get(frame_idx)

    def clear_tracked_around(self, frame_idx: int, radius: int) -> None:
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            self.non_cond.pop(t, None)


class RingMemory:
    """One object's memory for a stream, in buffers whose size is fixed when the object is created.

    Slots: `max_cond_frames` prompted frames (the first prompt is kept, the oldest other is
    evicted), and the spatial memories and pointers of the recent frames, each slot tagged with
    its frame index (-1: empty). The rings hold one frame more than a tracked frame sees, so that
    a correction on the newest frame still sees the frames before it.
    """

    def __init__(self, config: ModelConfig, max_cond_frames: int, dtype: torch.dtype, device: torch.device) -> None:
        if max_cond_frames < 1:
            raise ValueError("max_cond_frames must be at least 1")
        tokens, mem_dim, dim = config.feature_size**2, config.memory_dim, config.hidden_dim
        self.recent_slots = config.num_maskmem
        self.pointer_slots = config.max_obj_ptrs
        self.cond_memory = torch.zeros(max_cond_frames, tokens, mem_dim, dtype=dtype, device=device)
        self.cond_pointer = torch.zeros(max_cond_frames, dim, device=device)
        self.cond_frame = [-1] * max_cond_frames
        self.recent_memory = torch.zeros(self.recent_slots, tokens, mem_dim, dtype=dtype, device=device)
        self.recent_memory_frame = [-1] * self.recent_slots
        self.recent_pointer = torch.zeros(self.pointer_slots, dim, device=device)
        self.recent_pointer_frame = [-1] * self.pointer_slots

    def tensors(self) -> list[Tensor]:
        return [self.cond_memory, self.cond_pointer, self.recent_memory, self.recent_pointer]

    def conditioning(self) -> Mapping[int, FrameOutput]:
        return {
            frame: FrameOutput(None, self.cond_pointer[slot], None, self.cond_memory[slot])
            for slot, frame in enumerate(self.cond_frame)
            if frame >= 0
        }

    def tracked(self, frame_idx: int) -> Optional[FrameOutput]:
        pointer_slot = frame_idx % self.pointer_slots
        if frame_idx < 0 or self.recent_pointer_frame[pointer_slot] != frame_idx:
            return None
        memory_slot = frame_idx % self.recent_slots
        memory = self.recent_memory[memory_slot] if self.recent_memory_frame[memory_slot] == frame_idx else None
        return FrameOutput(None, self.recent_pointer[pointer_slot], None, memory)

    def write_tracked(self, frame_idx: int, memory: Tensor, pointer: Tensor) -> None:
        memory_slot, pointer_slot = frame_idx % self.recent_slots, frame_idx % self.pointer_slots
        self.recent_memory[memory_slot].copy_(memory)
        self.recent_memory_frame[memory_slot] = frame_idx
        self.recent_pointer[pointer_slot].copy_(pointer)
        self.recent_pointer_frame[pointer_slot] = frame_idx

    def write_conditioning(self, frame_idx: int, memory: Tensor, pointer: Tensor) -> None:
        """Store a prompted frame; it stops being a tracked frame."""
        self.forget_tracked(frame_idx, frame_idx)
        if frame_idx in self.cond_frame:
            slot = self.cond_frame.index(frame_idx)
        elif -1 in self.cond_frame:
            slot = self.cond_frame.index(-1)
        elif len(self.cond_frame) == 1:
            slot = 0
        else:  # full: keep the first prompt, replace the oldest of the others
            first = min(self.cond_frame)
            slot = min((s for s, t in enumerate(self.cond_frame) if t != first), key=lambda s: self.cond_frame[s])
        self.cond_memory[slot].copy_(memory)
        self.cond_pointer[slot].copy_(pointer)
        self.cond_frame[slot] = frame_idx

    def forget_tracked(self, first: int, last: int) -> None:
        """Drop the tracked frames in [first, last]."""
        for frames in (self.recent_memory_frame, self.recent_pointer_frame):
            for slot, t in enumerate(frames):
                if first <= t <= last:
                    frames[slot] = -1
