"""One object's memory for the ONNX runner, in numpy: the bookkeeping of `tracking.object_memory`'s RingMemory
and `gather`, for one stream, without PyTorch.

Slots: `max_cond_frames` prompted frames (the first prompt kept, the oldest other evicted), the spatial
memories of the last num_maskmem frames and the pointers of the last max_obj_ptrs frames, each tagged with its
frame index (-1: empty). A frame t sees every prompted frame's memory (temporal index num_maskmem - 1), the
memories of frames t-1 ... t-(num_maskmem-1) (index distance - 1), the pointers of prompted frames up to t and
of frames t-1 ... t-(max_obj_ptrs-1). `pack` lays them into the graph's fixed slots with validity masks.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..tracking.slot_policy import conditioning_slot
from .manifest import ExportManifest


class PackedMemory(NamedTuple):
    """A memory attention graph's memory inputs for B objects: F and P slots, one of the manifest's capacities."""

    spatial: np.ndarray  # (B, F, N, C_mem) float32
    spatial_tpos: np.ndarray  # (B, F) int64
    spatial_valid: np.ndarray  # (B, F) bool
    pointers: np.ndarray  # (B, P, C) float32
    pointer_positions: np.ndarray  # (B, P) float32: frame distance over max_obj_ptrs - 1
    pointer_valid: np.ndarray  # (B, P) bool


class ObjectMemory:
    def __init__(self, manifest: ExportManifest) -> None:
        self.manifest = manifest
        cond, recent_memories, recent_pointers = manifest.max_cond_frames, manifest.num_maskmem, manifest.max_obj_ptrs
        tokens = manifest.memory_tokens
        self.memory = np.zeros((cond + recent_memories, tokens, manifest.memory_dim), dtype=np.float32)
        self.pointers = np.zeros((cond + recent_pointers, manifest.hidden_dim), dtype=np.float32)
        self.cond_frame = [-1] * cond  # cond slot s: memory slot s, pointer slot s
        self.recent_memory_frame = [-1] * recent_memories  # memory slots after the cond slots
        self.recent_pointer_frame = [-1] * recent_pointers  # pointer slots after the cond slots

    # Writing

    def write_tracked(self, frame_idx: int, memory: np.ndarray, pointer: np.ndarray) -> None:
        memory_slot = frame_idx % len(self.recent_memory_frame)
        pointer_slot = frame_idx % len(self.recent_pointer_frame)
        cond = len(self.cond_frame)
        self.memory[cond + memory_slot], self.pointers[cond + pointer_slot] = memory, pointer
        self.recent_memory_frame[memory_slot] = frame_idx
        self.recent_pointer_frame[pointer_slot] = frame_idx

    def write_conditioning(self, frame_idx: int, memory: np.ndarray, pointer: np.ndarray) -> None:
        """Store a prompted frame; it stops being a tracked frame."""
        for frames in (self.recent_memory_frame, self.recent_pointer_frame):
            for slot, t in enumerate(frames):
                if t == frame_idx:
                    frames[slot] = -1
        slot = conditioning_slot(self.cond_frame, frame_idx)
        self.memory[slot], self.pointers[slot] = memory, pointer
        self.cond_frame[slot] = frame_idx

    # Reading

    def _tracked(self, frame_idx: int) -> Optional[tuple[Optional[int], int]]:
        """(memory slot or None where only the pointer is kept, pointer slot) of a tracked frame, or None."""
        pointer_slot = frame_idx % len(self.recent_pointer_frame)
        if frame_idx < 0 or self.recent_pointer_frame[pointer_slot] != frame_idx:
            return None
        memory_slot = frame_idx % len(self.recent_memory_frame)
        cond = len(self.cond_frame)
        kept = self.recent_memory_frame[memory_slot] == frame_idx
        return (cond + memory_slot if kept else None), cond + pointer_slot

    def plan(self, frame_idx: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """What frame `frame_idx` sees: [(memory slot, temporal index)] and [(pointer slot, frame distance)]."""
        conditioning = [(t, slot) for slot, t in enumerate(self.cond_frame) if t >= 0]
        if not conditioning:
            raise RuntimeError("an object without any prompted frame cannot be tracked")
        spatial = [(slot, self.manifest.num_maskmem - 1) for _, slot in conditioning]
        for distance in range(1, self.manifest.num_maskmem):
            tracked = self._tracked(frame_idx - distance)
            if tracked is not None and tracked[0] is not None:
                spatial.append((tracked[0], distance - 1))
        pointers = [(slot, frame_idx - t) for t, slot in conditioning if t <= frame_idx]
        for distance in range(1, self.manifest.max_obj_ptrs):
            if frame_idx - distance < 0:
                break
            tracked = self._tracked(frame_idx - distance)
            if tracked is not None:
                pointers.append((tracked[1], distance))
        return spatial, pointers


def pack(memories: Sequence[ObjectMemory], frame_idx: int, manifest: ExportManifest) -> PackedMemory:
    """The memory each object sees on frame `frame_idx`, in the F and P slots of the smallest of the manifest's
    capacities that holds every object's (empty slots masked), seen slots first."""
    plans = [memory.plan(frame_idx) for memory in memories]
    needed = max(len(spatial) for spatial, _ in plans), max(len(pointers) for _, pointers in plans)
    frames, slots = next((f, p) for f, p in manifest.memory_capacities if f >= needed[0] and p >= needed[1])
    batch, tokens = len(memories), manifest.memory_tokens
    spatial = np.zeros((batch, frames, tokens, manifest.memory_dim), dtype=np.float32)
    tpos = np.zeros((batch, frames), dtype=np.int64)
    spatial_valid = np.zeros((batch, frames), dtype=bool)
    pointers = np.zeros((batch, slots, manifest.hidden_dim), dtype=np.float32)
    distances = np.zeros((batch, slots), dtype=np.float32)
    pointer_valid = np.zeros((batch, slots), dtype=bool)
    for row, (memory, (seen, seen_pointers)) in enumerate(zip(memories, plans)):
        for column, (slot, temporal) in enumerate(seen):
            spatial[row, column], tpos[row, column], spatial_valid[row, column] = memory.memory[slot], temporal, True
        for column, (slot, distance) in enumerate(seen_pointers):
            pointers[row, column], distances[row, column] = memory.pointers[slot], distance
            pointer_valid[row, column] = True
    positions = distances / max(manifest.max_obj_ptrs - 1, 1)
    return PackedMemory(spatial, tpos, spatial_valid, pointers, positions.astype(np.float32), pointer_valid)
