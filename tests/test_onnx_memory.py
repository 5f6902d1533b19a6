"""The ONNX runner's memory packing: each object's seen memory in the smallest graph capacity that holds all of
them, seen slots first, the rest masked (numpy only, no export needed)."""

from __future__ import annotations

import numpy as np

from sam2rt.export.manifest import ExportManifest
from sam2rt.export.onnx_memory import ObjectMemory, pack

NUM_MASKMEM, MAX_OBJ_PTRS, MAX_COND = 7, 16, 4
FULL = [MAX_COND + NUM_MASKMEM - 1, MAX_COND + MAX_OBJ_PTRS - 1]
MANIFEST = ExportManifest(
    variant="sam2.1_hiera_tiny",
    image_size=64,
    feature_size=4,
    memory_tokens=16,
    hidden_dim=8,
    memory_dim=4,
    num_maskmem=NUM_MASKMEM,
    max_obj_ptrs=MAX_OBJ_PTRS,
    max_cond_frames=MAX_COND,
    memory_frames=FULL[0],
    pointer_slots=FULL[1],
    memory_capacities=[[NUM_MASKMEM, MAX_OBJ_PTRS], FULL],
    opset=18,
)


def _tracked(prompted_frames: list[int], last_frame: int) -> ObjectMemory:
    """An object prompted on `prompted_frames` and tracked on every other frame up to `last_frame`; each memory
    filled with its frame index."""
    memory = ObjectMemory(MANIFEST)
    spatial = (MANIFEST.memory_tokens, MANIFEST.memory_dim)
    for frame in range(last_frame + 1):
        if frame in prompted_frames:
            memory.write_conditioning(frame, np.full(spatial, frame, np.float32), np.full(8, frame, np.float32))
        elif frame > min(prompted_frames):
            memory.write_tracked(frame, np.full(spatial, frame, np.float32), np.full(8, frame, np.float32))
    return memory


def test_objects_prompted_once_fill_the_smaller_graph_exactly():
    packed = pack([_tracked([0], 30), _tracked([5], 30)], 31, MANIFEST)
    assert packed.spatial.shape[1] == NUM_MASKMEM and packed.pointers.shape[1] == MAX_OBJ_PTRS
    assert packed.spatial_valid.all() and packed.pointer_valid.all()  # a full memory: no slot to spare
    assert packed.spatial[0, :, 0, 0].tolist() == [0, 30, 29, 28, 27, 26, 25]  # the prompt, then the newest first
    assert packed.spatial_tpos[0].tolist() == [NUM_MASKMEM - 1, 0, 1, 2, 3, 4, 5]


def test_one_object_prompted_twice_takes_the_whole_batch_to_the_full_graph():
    once, twice = _tracked([0], 30), _tracked([0, 12], 30)
    packed = pack([once, twice], 31, MANIFEST)
    assert [packed.spatial.shape[1], packed.pointers.shape[1]] == FULL
    assert packed.spatial_valid.sum(axis=1).tolist() == [NUM_MASKMEM, NUM_MASKMEM + 1]
    assert packed.pointer_valid.sum(axis=1).tolist() == [MAX_OBJ_PTRS, MAX_OBJ_PTRS + 1]
    assert packed.spatial[1, :2, 0, 0].tolist() == [0, 12]  # both prompted frames, then the recent ones
    assert not packed.spatial_valid[0, NUM_MASKMEM:].any() and not packed.spatial[0, NUM_MASKMEM:].any()


def test_a_young_memory_is_masked_in_the_smaller_graph():
    packed = pack([_tracked([0], 2)], 3, MANIFEST)
    assert packed.spatial.shape[1] == NUM_MASKMEM
    assert packed.spatial_valid[0].tolist() == [True] * 3 + [False] * (NUM_MASKMEM - 3)
    assert packed.pointer_valid[0].sum() == 3
