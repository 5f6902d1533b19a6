"""The pool's MemoryArena: ring memories as rows, gathered by slot index exactly as slot-by-slot stacking."""

from __future__ import annotations

import gc
import sys

import numpy as np
import torch

import sam2rt
from sam2rt.model.variants import ModelConfig, get_variant
from sam2rt.tracking.memory_arena import MemoryArena
from sam2rt.tracking.memory_gather import gather
from sam2rt.tracking.object_memory import RingMemory

CONFIG = ModelConfig(get_variant("sam2.1_hiera_tiny"), 64)
TOKENS = CONFIG.feature_size**2


def _arena(max_cond_frames=3):
    return MemoryArena(CONFIG, max_cond_frames, lambda: (torch.float32, torch.device("cpu")))


def _fill(ring: RingMemory, cond: list[int], tracked: list[int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)

    def memory():
        return torch.randn(TOKENS, CONFIG.memory_dim, generator=generator)

    def pointer():
        return torch.randn(CONFIG.hidden_dim, generator=generator)

    for t in cond:
        ring.write_conditioning(t, memory(), pointer())
    for t in tracked:
        ring.write_tracked(t, memory(), pointer())


class Unpooled:
    """The same memories, seen without their arena: the gather stacks them slot by slot."""

    def __init__(self, ring: RingMemory) -> None:
        self.ring = ring

    def conditioning(self):
        return self.ring.conditioning()

    def tracked(self, frame_idx):
        return self.ring.tracked(frame_idx)


def test_a_gather_by_index_equals_stacking_slot_by_slot():
    arena = _arena()
    long_history, short_history, evicting = RingMemory(arena), RingMemory(arena), RingMemory(arena)
    _fill(long_history, cond=[0, 9], tracked=list(range(1, 9)) + list(range(10, 30)), seed=1)
    _fill(short_history, cond=[27], tracked=[28, 29], seed=2)  # fewer slots: padded
    _fill(evicting, cond=[0, 3, 6, 12], tracked=[13, 14], seed=3)  # 4 prompts in 3 slots: one evicted
    rings = [long_history, short_history, evicting]
    for reverse, frames, limit in ((False, [30, 30, 15], -1), (False, [30, 30, 15], 2), (True, [5, 26, 2], -1)):
        got = gather(rings, frames, reverse, CONFIG, torch.device("cpu"), limit)
        expected = gather([Unpooled(r) for r in rings], frames, reverse, CONFIG, torch.device("cpu"), limit)
        assert got.spatial.shape == expected.spatial.shape and got.pointers.shape == expected.pointers.shape
        for name in ("spatial_tpos", "pointer_positions", "spatial_valid", "pointer_valid"):
            a, b = getattr(got, name), getattr(expected, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert got.spatial_valid is not None and got.pointer_valid is not None  # padding was exercised
        # Padded slots hold zeros when stacked and another slot's memory when indexed: both are masked out.
        assert torch.equal(got.spatial[got.spatial_valid], expected.spatial[expected.spatial_valid])
        assert torch.equal(got.pointers[got.pointer_valid], expected.pointers[expected.pointer_valid])


def test_rows_are_reused_grow_by_doubling_keep_their_memory_and_are_freed_with_the_last_object():
    arena = _arena()
    rings = [RingMemory(arena) for _ in range(4)]
    assert arena.capacity == 4 and sorted(r.row for r in rings) == [0, 1, 2, 3]
    for index, ring in enumerate(rings):
        _fill(ring, cond=[0], tracked=[1, 2], seed=index)
    before = [[t.clone() for t in ring.tensors()] for ring in rings]
    rings.append(RingMemory(arena))  # a fifth object: the arena doubles, the others' memories move with it
    assert arena.capacity == 8
    for ring, saved in zip(rings, before):
        assert all(torch.equal(t, s) for t, s in zip(ring.tensors(), saved))
    assert not any(t.any() for t in rings[4].tensors())  # a new row starts empty
    freed = rings.pop(1).row
    again = RingMemory(arena)
    assert again.row == freed and not any(t.any() for t in again.tensors())  # reused, and zeroed
    rings.clear()
    del again, ring  # the loop above left its last ring bound
    assert arena.capacity == 8  # rows come back when the arena reclaims them (the pool does it on removals)
    arena.reclaim()
    assert arena.capacity == 0 and arena.memory.numel() == 0  # no object left: no memory held


def test_rings_collected_while_the_arena_grows_come_back_later():
    """The cycle collector may finalize dropped rings at any allocation, growth included: their rows are
    queued, never put back in the middle of a growth."""
    arena = _arena()
    rings = [RingMemory(arena) for _ in range(4)]
    for ring in rings:
        ring.cycle = ring  # unreachable only for the cycle collector
    del rings, ring

    def collect(frame, event, arg):
        gc.collect()
        return collect

    def collect_on_every_line(frame, event, arg):
        return collect if frame.f_code is MemoryArena._allocate_rows.__code__ else None

    sys.settrace(collect_on_every_line)
    try:
        grown = RingMemory(arena)  # no free row: the arena grows, and the 4 dropped rings are collected meanwhile
    finally:
        sys.settrace(None)
    assert arena.capacity == 8 and grown.row == 4
    arena.reclaim()
    assert sorted(arena._free) == [0, 1, 2, 3, 5, 6, 7]
    del grown
    arena.reclaim()
    assert arena.capacity == 0


def test_an_emptied_arena_starts_again_where_the_model_now_is():
    placement = [(torch.float32, torch.device("cpu"))]
    arena = MemoryArena(CONFIG, 2, lambda: placement[0])
    ring = RingMemory(arena)
    assert arena.memory.dtype == torch.float32
    placement[0] = (torch.bfloat16, torch.device("cpu"))
    RingMemory(arena)  # grows next to a live row: keeps its dtype
    assert arena.memory.dtype == torch.float32
    del ring
    gc.collect()
    arena.reclaim()
    assert arena.capacity == 0
    RingMemory(arena)
    assert arena.memory.dtype == torch.bfloat16


def test_a_pool_gives_its_memory_back_when_its_streams_close():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    pool = sam2rt.StreamPool(model)
    streams = [pool.open_stream() for _ in range(3)]
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    pool.step({stream: frame for stream in streams})
    for index, stream in enumerate(streams):
        for obj in range(2):
            stream.add_prompt(obj, points=[[10 + 10 * obj, 20 + index]], labels=[1])
    pool.step({stream: frame for stream in streams})
    assert pool.arena.capacity == 8  # 6 objects
    streams[0].remove_object(1)
    pool.close_stream(streams[1])
    assert pool.arena.capacity == 8
    for stream in (streams[0], streams[2]):
        pool.close_stream(stream)
    assert pool.arena.capacity == 0
