"""The preallocated memory slots of a pool's stream objects: one `MemoryArena` row per object.

A row holds one object's spatial memories and pointers in fixed slots; `object_memory.RingMemory` decides which
frame each slot holds, and `memory_gather.gather` reads a batch of rows by slot position in one indexing call per
tensor, whatever the number of objects and slots.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..model.variants import ModelConfig


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
