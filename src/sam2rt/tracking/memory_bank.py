"""Per-object memory and the batched gather that feeds the memory attention.

Each object owns its memory: prompted (conditioning) frames, and recent frames' spatial memories
and object pointers. A frame t tracked in direction d sees, for each object:

- the spatial memory of every conditioning frame (or the `max_cond_frames_in_attn` closest),
- the spatial memories of frames t-d, ..., t-6d, each with its own temporal encoding,
- the object pointers of the conditioning frames on its past side and of frames t-d, ..., t-15d.

With SAM 3's memory selection (`memory_threshold`), the recent frames are those whose memory score passed the
bar instead, ranked by recency (tracking/memory_selection.py).

`gather` packs these for a batch of objects, each on its own frame, into fixed-size slots with validity masks, so one
memory-attention call serves all objects however different their histories are.

Two stores implement the view the gather reads: `RingMemory`, fixed-capacity slots for streams (its
size never grows with the frame count), and `OutputArchive`, every frame's output, for the offline
video predictor whose prompts and re-propagations may land on any frame. The ring memories of a pool
are rows of one `MemoryArena`: a batch of them is gathered by slot index in one indexing call per
tensor, whatever the number of objects and slots.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from ..model.sam2 import MemoryTokens
from ..model.variants import ModelConfig
from .memory_selection import MemoryScore, memory_frames, read_scores, retained_frames
from .slot_policy import conditioning_slot


@dataclass
class ObjectOutput:
    """What the tracker keeps of one object on one frame."""

    mask_logits: Optional[Tensor]  # (1, 4h, 4w) low-resolution logits; None where only memory is kept
    pointer: Tensor  # (C,) object pointer
    object_score: Optional[Tensor]  # (1,) presence logit
    memory: Optional[Tensor] = None  # (N, C_mem) spatial memory tokens in storage dtype; None until encoded
    memory_score: Optional[MemoryScore] = None  # a tracked frame's score as a memory (use_memory_selection only)


@dataclass(frozen=True)
class RingSlot:
    """One frame of a RingMemory: where its spatial memory and pointer lie in the arena's row."""

    ring: RingMemory
    memory_slot: Optional[int]  # None: the frame's spatial memory was overwritten, only its pointer is kept
    pointer_slot: int

    @property
    def memory(self) -> Optional[Tensor]:
        return None if self.memory_slot is None else self.ring.arena.memory[self.ring.row, self.memory_slot]

    @property
    def pointer(self) -> Tensor:
        return self.ring.arena.pointers[self.ring.row, self.pointer_slot]


Stored = Union[ObjectOutput, RingSlot]  # a frame's memory and pointer, as a view returns them


class MemoryView(Protocol):
    """The memories of one object, as the gather reads them."""

    def conditioning(self) -> Mapping[int, Stored]: ...

    def tracked(self, frame_idx: int) -> Optional[Stored]: ...


class ScoredView(MemoryView, Protocol):
    """The memories of one object with its tracked frames' memory scores, as memory selection reads them."""

    def scored_frames(self, frame_idx: int, reverse: bool) -> Iterator[tuple[int, Optional[MemoryScore]]]:
        """The tracked frames on the side of `frame_idx` already tracked, with their scores, nearest first."""
        ...

    def unread_scores(self, frame_idx: int, reverse: bool) -> list[MemoryScore]:
        """Scores the plan of `frame_idx` will likely read that the host has not read yet."""
        ...


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


class OutputArchive:
    """Every frame's output of one object, as the offline video predictor needs them."""

    def __init__(self) -> None:
        self.cond: dict[int, ObjectOutput] = {}
        self.non_cond: dict[int, ObjectOutput] = {}

    def conditioning(self) -> Mapping[int, ObjectOutput]:
        return self.cond

    def tracked(self, frame_idx: int) -> Optional[ObjectOutput]:
        return self.non_cond.get(frame_idx)

    def output(self, frame_idx: int) -> Optional[ObjectOutput]:
        return self.cond.get(frame_idx) or self.non_cond.get(frame_idx)

    def clear_tracked_around(self, frame_idx: int, radius: int) -> None:
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            self.non_cond.pop(t, None)

    def scored_frames(self, frame_idx: int, reverse: bool) -> Iterator[tuple[int, Optional[MemoryScore]]]:
        """Tracked frames with their memory scores, nearest first: Meta's scan, frame by frame."""
        if not self.non_cond:
            return
        end = max(self.non_cond) + 1 if reverse else -1
        for t in range(frame_idx + 1, end) if reverse else range(frame_idx - 1, end, -1):
            out = self.non_cond.get(t)
            if out is not None:
                yield t, out.memory_score

    def unread_scores(self, frame_idx: int, reverse: bool) -> list[MemoryScore]:
        """The score of the frame just tracked, when unread (older ones were read when it was planned)."""
        out = self.non_cond.get(frame_idx + (1 if reverse else -1))
        score = None if out is None else out.memory_score
        return [score] if score is not None and score.passes is None else []


class MemoryArena:
    """The memory slots of every RingMemory of a pool: a row holds one object's spatial memories
    (max_cond_frames + num_maskmem slots) and pointers (max_cond_frames + max_obj_ptrs slots).

    Rows are handed out as objects come and taken back when they go; the tensors grow by doubling
    when no row is free (copied once; slots are addressed by (row, slot), never held as views), and
    are freed once every row is back. `placement()` gives the (memory dtype, device) to allocate on,
    read whenever the arena starts from empty (a model moved before any object keeps its defaults).
    Like the pool, it is used from one thread at a time.

    With a `memory_threshold` (SAM 3's memory selection), its rows are ScoredRingMemory's, which keep one pointer
    more (`new_ring` makes the right kind).
    """

    def __init__(
        self,
        config: ModelConfig,
        max_cond_frames: int,
        placement: Callable[[], tuple[torch.dtype, torch.device]],
        memory_threshold: Optional[float] = None,
    ) -> None:
        self.config = config
        self.max_cond_frames = max_cond_frames
        self.placement = placement
        self.memory_threshold = memory_threshold
        self.recent_pointer_slots = config.max_obj_ptrs + (0 if memory_threshold is None else 1)
        self.memory_slots = max_cond_frames + config.num_maskmem
        self.pointer_slots = max_cond_frames + self.recent_pointer_slots
        self._free: list[int] = []
        # Rows of dropped objects, queued by their finalizers, which may run at any allocation (the cycle
        # collector) or on another thread: only appended to there, taken in by `reclaim`.
        self._returned: list[int] = []
        self._allocate_rows(0)

    @property
    def capacity(self) -> int:
        return self.memory.shape[0]

    @property
    def device(self) -> torch.device:
        return self.memory.device

    def take_row(self) -> int:
        """A zeroed row for a new object."""
        self.reclaim()
        if not self._free:
            self._allocate_rows(max(1, 2 * self.capacity))
        row = self._free.pop()
        self.memory[row].zero_()
        self.pointers[row].zero_()
        return row

    def give_back(self, row: int) -> None:
        """Queue a dropped object's row; it is free from the next `reclaim` (or `take_row`) on."""
        self._returned.append(row)

    def reclaim(self) -> None:
        """Free the rows given back; with no row in use, free the memory too."""
        while self._returned:
            self._free.append(self._returned.pop())
        if self.capacity and len(self._free) == self.capacity:
            self._allocate_rows(0)

    def memory_position(self, row: int, slot: int) -> int:
        """Where a row's memory slot lies among all rows' slots, as `gather` takes it."""
        return row * self.memory_slots + slot

    def pointer_position(self, row: int, slot: int) -> int:
        return row * self.pointer_slots + slot

    def gather(self, positions: Tensor, batch: int, frames: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Positions (B*F + B*P,) long: every object's memory slots, then every object's pointer slots ->
        memories (B, F, N, C_mem) and pointers (B, P, C) on `device`, one index_select each (a copy of
        whole slots: faster than indexing by (row, slot) pairs, which goes element by element on CPU)."""
        memory_positions, pointer_positions = positions[: batch * frames], positions[batch * frames :]
        spatial = self.memory.flatten(0, 1).index_select(0, memory_positions)  # (B*F, N, C_mem)
        pointers = self.pointers.flatten(0, 1).index_select(0, pointer_positions)  # (B*P, C)
        spatial = spatial.unflatten(0, (batch, frames))  # (B, F, N, C_mem)
        pointers = pointers.unflatten(0, (batch, -1))  # (B, P, C)
        return spatial.to(device, non_blocking=True), pointers.to(device, non_blocking=True)

    def _allocate_rows(self, capacity: int) -> None:
        kept = self.capacity if capacity else 0
        dtype, device = (self.memory.dtype, self.device) if kept else self.placement()
        tokens, config = self.config.memory_tokens, self.config
        memory = torch.zeros(capacity, self.memory_slots, tokens, config.memory_dim, dtype=dtype, device=device)
        pointers = torch.zeros(capacity, self.pointer_slots, config.hidden_dim, device=device)
        if kept:
            memory[:kept].copy_(self.memory)
            pointers[:kept].copy_(self.pointers)
        self._free = list(range(capacity - 1, kept - 1, -1)) + (self._free if kept else [])  # lowest rows first
        self.memory, self.pointers = memory, pointers


class RingMemory:
    """One object's memory for a stream: a row of the pool's MemoryArena, whose size is fixed.

    Slots: `max_cond_frames` prompted frames (the first prompt is kept, the oldest other is
    evicted), and the spatial memories and pointers of the recent frames, each slot tagged with
    its frame index (-1: empty). The rings hold one frame more than a tracked frame sees, so that
    a correction on the newest frame still sees the frames before it. The row goes back to the
    arena when the object is dropped.
    """

    def __init__(self, arena: MemoryArena) -> None:
        self.arena = arena
        self.row = arena.take_row()
        weakref.finalize(self, arena.give_back, self.row).atexit = False
        cond_slots = arena.max_cond_frames
        self.cond_frame = [-1] * cond_slots  # cond slot s: memory slot s, pointer slot s
        self.recent_memory_frame = [-1] * arena.config.num_maskmem  # memory slots after the cond slots
        self.recent_pointer_frame = [-1] * arena.recent_pointer_slots  # pointer slots after the cond slots

    def tensors(self) -> list[Tensor]:
        return [self.arena.memory[self.row], self.arena.pointers[self.row]]

    def conditioning(self) -> Mapping[int, RingSlot]:
        return {frame: RingSlot(self, slot, slot) for slot, frame in enumerate(self.cond_frame) if frame >= 0}

    def tracked(self, frame_idx: int) -> Optional[RingSlot]:
        pointer_slot = frame_idx % len(self.recent_pointer_frame)
        if frame_idx < 0 or self.recent_pointer_frame[pointer_slot] != frame_idx:
            return None
        memory_slot = frame_idx % len(self.recent_memory_frame)
        kept = self.recent_memory_frame[memory_slot] == frame_idx
        cond_slots = len(self.cond_frame)
        return RingSlot(self, cond_slots + memory_slot if kept else None, cond_slots + pointer_slot)

    def write_tracked(
        self, frame_idx: int, memory: Tensor, pointer: Tensor, score: Optional[MemoryScore] = None
    ) -> None:
        """Store a tracked frame (its memory score is for memory selection only)."""
        memory_slot = frame_idx % len(self.recent_memory_frame)
        pointer_slot = frame_idx % len(self.recent_pointer_frame)
        self._write(len(self.cond_frame) + memory_slot, len(self.cond_frame) + pointer_slot, memory, pointer)
        self.recent_memory_frame[memory_slot] = frame_idx
        self.recent_pointer_frame[pointer_slot] = frame_idx

    def write_conditioning(self, frame_idx: int, memory: Tensor, pointer: Tensor) -> None:
        """Store a prompted frame; it stops being a tracked frame."""
        self.forget_tracked(frame_idx, frame_idx)
        slot = conditioning_slot(self.cond_frame, frame_idx)
        self._write(slot, slot, memory, pointer)
        self.cond_frame[slot] = frame_idx

    def forget_tracked(self, first: int, last: int) -> None:
        """Drop the tracked frames in [first, last]."""
        for frames in (self.recent_memory_frame, self.recent_pointer_frame):
            for slot, t in enumerate(frames):
                if first <= t <= last:
                    frames[slot] = -1

    def _write(self, memory_slot: int, pointer_slot: int, memory: Tensor, pointer: Tensor) -> None:
        self.arena.memory[self.row, memory_slot].copy_(memory)
        self.arena.pointers[self.row, pointer_slot].copy_(pointer)


class ScoredRingMemory(RingMemory):
    """One object's memory for a stream with SAM 3's memory selection: a RingMemory whose recent slots keep the
    frames that selection may still read (tracking/memory_selection.py, `retained_frames`), however far back: the
    newest frame and the one before it, the latest frames whose score passed the bar (max_obj_ptrs - 1 of them for
    their pointers, num_maskmem - 1 of them for their spatial memories). Same fixed size: one pointer slot more.
    """

    def __init__(self, arena: MemoryArena) -> None:
        super().__init__(arena)
        self.recent_score: list[Optional[MemoryScore]] = [None] * len(self.recent_pointer_frame)  # by pointer slot

    def tracked(self, frame_idx: int) -> Optional[RingSlot]:
        if frame_idx < 0 or frame_idx not in self.recent_pointer_frame:
            return None
        pointer_slot = self.recent_pointer_frame.index(frame_idx)
        kept = frame_idx in self.recent_memory_frame
        memory_slot = self.recent_memory_frame.index(frame_idx) if kept else None
        cond_slots = len(self.cond_frame)
        return RingSlot(self, None if memory_slot is None else cond_slots + memory_slot, cond_slots + pointer_slot)

    def scored_frames(self, frame_idx: int, reverse: bool) -> Iterator[tuple[int, Optional[MemoryScore]]]:
        held = [(t, self.recent_score[slot]) for slot, t in enumerate(self.recent_pointer_frame) if t >= 0]
        earlier = [(t, score) for t, score in held if (t > frame_idx if reverse else t < frame_idx)]
        return iter(sorted(earlier, key=lambda item: abs(item[0] - frame_idx)))

    def unread_scores(self, frame_idx: int, reverse: bool) -> list[MemoryScore]:
        return [score for score in self.recent_score if score is not None and score.passes is None]

    def write_tracked(
        self, frame_idx: int, memory: Tensor, pointer: Tensor, score: Optional[MemoryScore] = None
    ) -> None:
        """Store the newest tracked frame (a stream writes frames in order), in a slot of a frame no longer kept."""
        pointer_slot, memory_slot = self._slots_for(frame_idx)
        cond_slots = len(self.cond_frame)
        self._write(cond_slots + memory_slot, cond_slots + pointer_slot, memory, pointer)
        self.recent_pointer_frame[pointer_slot] = frame_idx
        self.recent_memory_frame[memory_slot] = frame_idx
        self.recent_score[pointer_slot] = score

    def forget_tracked(self, first: int, last: int) -> None:
        super().forget_tracked(first, last)
        self.recent_score = [s if t >= 0 else None for s, t in zip(self.recent_score, self.recent_pointer_frame)]

    def _slots_for(self, frame_idx: int) -> tuple[int, int]:
        """(pointer slot, memory slot) for frame `frame_idx`: its own, else a free one, else the oldest frame's
        that is no longer kept; a frame losing its pointer slot loses its spatial memory too."""
        threshold = self.arena.memory_threshold
        read_scores(self.unread_scores(frame_idx, False), threshold)  # read already, unless no plan came between
        held = {t: self.recent_score[slot] for slot, t in enumerate(self.recent_pointer_frame) if 0 <= t != frame_idx}
        keep_pointers, keep_memories = retained_frames(
            {t: score is not None and score.passes for t, score in held.items()},
            frame_idx,
            self.arena.config.num_maskmem,
            self.arena.config.max_obj_ptrs,
        )
        pointer_slot = _slot_to_take(self.recent_pointer_frame, frame_idx, keep_pointers)
        dropped = self.recent_pointer_frame[pointer_slot]
        if dropped not in (-1, frame_idx):
            self.forget_tracked(dropped, dropped)
        memory_slot = _slot_to_take(self.recent_memory_frame, frame_idx, keep_memories)
        return pointer_slot, memory_slot


def _slot_to_take(frames: list[int], frame_idx: int, kept: set[int]) -> int:
    """The slot of `frames` (each slot's frame, -1: empty) that frame `frame_idx` takes: its own, an empty one, or
    that of the oldest frame not `kept`."""
    if frame_idx in frames:
        return frames.index(frame_idx)
    if -1 in frames:
        return frames.index(-1)
    return min((slot for slot, t in enumerate(frames) if t not in kept), key=lambda slot: frames[slot])


def new_ring(arena: MemoryArena) -> RingMemory:
    """A row of `arena` for a new object: a ScoredRingMemory when the arena is for memory selection."""
    return RingMemory(arena) if arena.memory_threshold is None else ScoredRingMemory(arena)
