"""The batched gather that feeds the memory attention: which memories each object sees on its frame, packed.

A frame t tracked in direction d sees, for each object:

- the spatial memory of every conditioning frame (or the `max_cond_frames_in_attn` closest),
- the spatial memories of frames t-d, ..., t-6d, each with its own temporal encoding,
- the object pointers of the conditioning frames on its past side and of frames t-d, ..., t-15d.

With SAM 3's memory selection (`memory_threshold`), the recent frames are those whose memory score passed the
bar instead, ranked by recency (tracking/memory_selection.py).

`gather` packs these for a batch of objects, each on its own frame, into fixed-size slots with validity masks, so one
memory-attention call serves all objects however different their histories are. It reads the objects through
their views (tracking/object_memory.py); ring memories that share a `MemoryArena` are gathered by slot position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..model.sam2 import MemoryTokens
from ..model.variants import ModelConfig
from .memory_arena import MemoryArena
from .memory_selection import memory_frames, read_scores
from .object_memory import MemoryView, ScoredView, Stored


def select_conditioning(
    frame_idx: int, conditioning: Mapping[int, Stored], limit: int
) -> tuple[dict[int, Stored], dict[int, Stored]]:
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
    spatial: list[tuple[Stored, int]]  # (frame whose spatial memory is seen, temporal index)
    pointers: list[tuple[int, Stored]]  # (signed frame distance, frame whose pointer is seen)


def _plan(
    view: MemoryView,
    frame_idx: int,
    reverse: bool,
    config: ModelConfig,
    max_cond_in_attn: int,
    num_frames: Optional[int],
    memory_threshold: Optional[float] = None,
) -> _ObjectMemoryPlan:
    conditioning = view.conditioning()
    if not conditioning:
        raise RuntimeError("an object without any prompted frame cannot be tracked")
    selected, unselected = select_conditioning(frame_idx, conditioning, max_cond_in_attn)
    direction = -1 if reverse else 1
    recent_slots = config.num_maskmem - 1

    def earlier(distance: int) -> Optional[Stored]:
        t = frame_idx - direction * distance
        return view.tracked(t) or unselected.get(t)

    spatial = [(out, config.num_maskmem - 1) for out in selected.values()]
    # Pointers of prompted frames on the past side only, then of the frames just before.
    pointers = [
        ((frame_idx - t) * direction, out)
        for t, out in selected.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    max_pointers = min(num_frames, config.max_obj_ptrs) if num_frames else config.max_obj_ptrs
    if memory_threshold is not None:
        _add_selected_frames(
            view,
            frame_idx,
            reverse,
            num_frames,
            max_pointers,
            memory_threshold,
            unselected,
            spatial,
            pointers,
            recent_slots,
        )
        return _ObjectMemoryPlan(spatial, pointers)

    for distance in range(1, recent_slots + 1):
        out = earlier(distance)
        if out is not None:
            spatial.append((out, distance - 1))
    for distance in range(1, max_pointers):
        t = frame_idx - direction * distance
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = earlier(distance)
        if out is not None:
            pointers.append((distance, out))
    return _ObjectMemoryPlan(spatial, pointers)


def _add_selected_frames(
    view: ScoredView,
    frame_idx: int,
    reverse: bool,
    num_frames: Optional[int],
    max_pointers: int,
    threshold: float,
    unselected: Mapping[int, Stored],
    spatial: list[tuple[Stored, int]],
    pointers: list[tuple[int, Stored]],
    recent_slots: int,
) -> None:
    """Add the recent memories memory selection picks to a plan: the frames of `memory_frames` by rank (1: the
    nearest), the spatial memories of ranks 1 to `recent_slots` (temporal index rank - 1), the pointers of every
    rank but the farthest (position: the rank). A rank whose frame holds no memory stays empty."""
    chosen = memory_frames(
        view.scored_frames(frame_idx, reverse), frame_idx, reverse, num_frames, max_pointers, threshold
    )
    by_rank = [view.tracked(t) or unselected.get(t) for t in reversed(chosen)]  # rank 1 first
    spatial += [(out, rank - 1) for rank, out in enumerate(by_rank[:recent_slots], 1) if out is not None]
    pointers += [(rank, out) for rank, out in enumerate(by_rank[: len(by_rank) - 1], 1) if out is not None]


def gather(
    views: list[MemoryView],
    frame_indices: Sequence[int],
    reverse: bool,
    config: ModelConfig,
    device: torch.device,
    max_cond_in_attn: int = -1,
    num_frames: Optional[int] = None,
    slots: Optional[tuple[int, int]] = None,
    memory_threshold: Optional[float] = None,
) -> MemoryTokens:
    """Pack the memories each object sees on its frame (`frame_indices`, one per view) into fixed-size slots:
    (B, F, ...) and (B, P, ...). With `slots` (F, P), at least that many: one shape whatever the objects' ages
    (a CUDA graph per shape, not per mix of ages). Validity masks only where a slot is empty: full memories
    keep the attention's unmasked, faster kernels. With `memory_threshold`, the recent frames are chosen by memory
    selection: the scores still unread are read first, in one copy for all objects."""
    if memory_threshold is not None:
        unread = [s for view, t in zip(views, frame_indices, strict=True) for s in view.unread_scores(t, reverse)]
        read_scores(unread, memory_threshold)
    plans = [
        _plan(view, frame_idx, reverse, config, max_cond_in_attn, num_frames, memory_threshold)
        for view, frame_idx in zip(views, frame_indices, strict=True)
    ]
    batch = len(plans)
    least_frames, least_pointers = slots or (0, 0)
    frames = max(least_frames, *(len(plan.spatial) for plan in plans))
    num_pointers = max(least_pointers, *(len(plan.pointers) for plan in plans))
    arena = _shared_arena(views)

    # Per row: tpos..., valid..., offsets..., pointer valid...; then, from an arena, every row's memory
    # positions and every row's pointer positions (padded slots read slot 0: the validity masks keep
    # them out of the attention).
    layout, memory_positions, pointer_positions = [], [], []
    for view, plan in zip(views, plans):
        padding, missing = frames - len(plan.spatial), num_pointers - len(plan.pointers)
        layout += [tpos for _, tpos in plan.spatial] + [0] * padding
        layout += [1] * len(plan.spatial) + [0] * padding
        layout += [offset for offset, _ in plan.pointers] + [0] * missing
        layout += [1] * len(plan.pointers) + [0] * missing
        if arena is not None:
            memory_slots = [stored.memory_slot for stored, _ in plan.spatial] + [0] * padding
            pointer_slots = [stored.pointer_slot for _, stored in plan.pointers] + [0] * missing
            memory_positions += [arena.memory_position(view.row, slot) for slot in memory_slots]
            pointer_positions += [arena.pointer_position(view.row, slot) for slot in pointer_slots]
    layout += memory_positions + pointer_positions
    # The small index tensors travel in one pinned, asynchronous copy: no stall of the GPU queue.
    host_layout = torch.tensor(layout, dtype=torch.long)
    layout_tensor = (host_layout.pin_memory() if device.type == "cuda" else host_layout).to(device, non_blocking=True)
    width = 2 * frames + 2 * num_pointers
    per_object = layout_tensor[: batch * width].reshape(batch, width)  # (B, 2F + 2P)
    tpos, spatial_valid, offsets, pointer_valid = per_object.split([frames, frames, num_pointers, num_pointers], 1)
    if arena is None:
        spatial, pointers = _stacked(plans, frames, num_pointers, config, device)
    else:  # memory kept off the device (offload_state_to_cpu) is indexed where it lies
        positions = (layout_tensor if arena.device == device else host_layout.to(arena.device))[batch * width :]
        spatial, pointers = arena.gather(positions, batch, frames, device)
    max_pointers = min(num_frames, config.max_obj_ptrs) if num_frames else config.max_obj_ptrs
    return MemoryTokens(
        spatial=spatial,
        spatial_tpos=tpos,
        spatial_valid=spatial_valid.bool() if any(len(plan.spatial) < frames for plan in plans) else None,
        pointers=pointers,
        pointer_positions=offsets / max(max_pointers - 1, 1),
        pointer_valid=pointer_valid.bool() if any(len(plan.pointers) < num_pointers for plan in plans) else None,
    )


def _stacked(
    plans: list[_ObjectMemoryPlan], frames: int, num_pointers: int, config: ModelConfig, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The planned memories (B, F, N, C_mem) and pointers (B, P, C), stacked slot by slot; zeros in padded slots."""
    tokens = config.memory_tokens
    first = plans[0].spatial[0][0].memory
    empty_memory = torch.zeros(tokens, config.memory_dim, dtype=first.dtype, device=device)
    empty_pointer = torch.zeros(config.hidden_dim, device=device)
    spatial, pointers = [], []
    for plan in plans:
        spatial += [stored.memory.to(device, non_blocking=True) for stored, _ in plan.spatial]
        spatial += [empty_memory] * (frames - len(plan.spatial))
        pointers += [stored.pointer.to(device, torch.float32, non_blocking=True) for _, stored in plan.pointers]
        pointers += [empty_pointer] * (num_pointers - len(plan.pointers))
    batch = len(plans)
    stacked_pointers = torch.stack(pointers) if pointers else empty_pointer.new_zeros(0, config.hidden_dim)
    return (
        torch.stack(spatial).reshape(batch, frames, tokens, -1),  # (B, F, N, C_mem)
        stacked_pointers.reshape(batch, num_pointers, config.hidden_dim),  # (B, P, C)
    )


def _shared_arena(views: Sequence[MemoryView]) -> Optional[MemoryArena]:
    """The arena every view is a row of, if there is one."""
    arena = getattr(views[0], "arena", None)
    if arena is None or any(getattr(view, "arena", None) is not arena for view in views):
        return None
    return arena
