"""Per-object memory: what the tracker keeps of an object's frames, and the views `memory_gather` reads it through.

Each object owns its memory: prompted (conditioning) frames, and recent frames' spatial memories and object
pointers. Two stores implement the view the gather reads: `RingMemory`, fixed-capacity slots for streams (its
size never grows with the frame count), each a row of the pool's `memory_arena.MemoryArena`, and
`OutputArchive`, every frame's output, for the offline video predictor whose prompts and re-propagations may
land on any frame. With SAM 3's memory selection, `ScoredRingMemory` also keeps the frames' memory scores.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Protocol, Union

from torch import Tensor

from .memory_arena import MemoryArena
from .memory_selection import MemoryScore, read_scores, retained_frames
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
