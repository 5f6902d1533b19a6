"""A batch of objects through the engine's passes: padded to a fixed-shape bucket, run a chunk at a time.

Under CUDA graphs a pass is captured once per input shape, so a batch of B objects is padded (its last row
repeated) to `bucket(B)`: the next of 1, 2, 3, 4, 6, 8, 12, ..., then whole chunks. Streams of any number of
objects then share a few shapes instead of capturing a graph for each new count; the padding rows' outputs are
dropped. A pass runs its objects `chunk` at a time, since memory attention's activations grow with the batch
while a larger batch gains no speed. One frame's features shared by all objects stay batch 1 through both (the
pass broadcasts them). `track_on_memory` is the tracking pass itself, the unit the engine replays as one graph;
`propagate_on_memory` the same without writing memory (SAM 3's concept tracking).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..model.sam2 import MemoryTokens, SAM2Model
from ..processing.masks import fill_holes
from .memory_selection import score_factors

HOLE_FILL_LOGIT = 0.1


class TrackedBatch(NamedTuple):
    masks: Tensor  # (B, 1, 4h, 4w) logits for output: the best mask, its small holes filled
    pointers: Tensor  # (B, C) object pointers
    object_scores: Tensor  # (B, 1) presence logits
    memories: Tensor  # (B, N, C_mem) spatial memories in the memory dtype
    memory_scores: Tensor  # (B, 2) the factors of each frame's score as a memory (memory selection)


def track_on_memory(
    model: SAM2Model,
    fill_hole_area: int,
    memory_dtype: torch.dtype,
    chunk: Optional[int],
    embed: Tensor,
    high_res: tuple[Tensor, ...],
    memory: MemoryTokens,
) -> TrackedBatch:
    """A tracking pass from the gathered memory, `chunk` objects at a time (None: all): the unit that replays as
    one CUDA graph, in which each chunk's activations reuse the memory of the chunk before."""

    def track(embed: Tensor, high_res: tuple[Tensor, ...], memory: MemoryTokens) -> TrackedBatch:
        conditioned = model.condition_on_memory(embed, memory)
        return track_conditioned(model, fill_hole_area, memory_dtype, embed, high_res, conditioned)

    return in_chunks(track, memory.spatial.shape[0], chunk, embed, high_res, memory)


class PropagatedBatch(NamedTuple):
    masks: Tensor  # (B, 1, 4h, 4w) raw logits of the best mask (no hole filling)
    pointers: Tensor  # (B, C) object pointers
    object_scores: Tensor  # (B, 1) presence logits
    memory_scores: Tensor  # (B, 2) the factors of each frame's score as a memory (memory selection)


def propagate_on_memory(
    model: SAM2Model, chunk: Optional[int], embed: Tensor, high_res: tuple[Tensor, ...], memory: MemoryTokens
) -> PropagatedBatch:
    """A tracking pass that writes no memory (SAM 3's video model encodes it later, from the masks it decides on),
    `chunk` objects at a time: like `track_on_memory`, the unit the engine replays as one CUDA graph."""

    def propagate(embed: Tensor, high_res: tuple[Tensor, ...], memory: MemoryTokens) -> PropagatedBatch:
        return propagate_conditioned(model, high_res, model.condition_on_memory(embed, memory))

    return in_chunks(propagate, memory.spatial.shape[0], chunk, embed, high_res, memory)


def propagate_conditioned(model: SAM2Model, high_res: tuple[Tensor, ...], conditioned: Tensor) -> PropagatedBatch:
    """Segment each object from its frame's features conditioned on its memory (B, C, h, w); `high_res` one
    frame's (batch 1) or each object's own (batch B)."""
    batch = conditioned.shape[0]
    high_res = tuple(h.expand(batch, -1, -1, -1) for h in high_res)  # (1 or B, C, H, W) -> (B, C, H, W), a view
    prediction = model.segment(conditioned, high_res, None, None, None, multimask=True)
    factors = score_factors(prediction.object_score_logits, prediction.iou_scores)
    return PropagatedBatch(prediction.best_mask, prediction.obj_ptr, prediction.object_score_logits, factors)


def in_chunks(run, batch: int, chunk: Optional[int], *inputs):
    """`run(*inputs)` over `chunk` of `batch` objects at a time (None: all at once). Inputs are per-object tensors
    (batch, ...), tensors shared by all objects (batch 1) or None, or (named) tuples of these; the output is a
    tensor or a NamedTuple of tensors, the chunks' concatenated."""
    if chunk is None or batch <= chunk:
        return run(*inputs)
    parts = [
        run(*(each_tensor(partial(object_rows, rows=rows), value) for value in inputs)) for rows in chunks(batch, chunk)
    ]
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)  # (batch, ...)
    return type(parts[0])(*(torch.cat(fields) for fields in zip(*parts)))  # each field (batch, ...)


def padded_in_chunks(run, count: int, chunk: Optional[int], padded: bool, *inputs):
    """`run(*inputs)` for `count` objects as the tracking pass runs them: under shape buckets (`padded`) their
    inputs padded to `bucket(count, chunk)` rows (a few graphs, not one per count), `chunk` rows at a time; the
    outputs' first `count` rows. Inputs and output as `in_chunks`'."""
    rows = bucket(count, chunk) if padded else count
    inputs = tuple(each_tensor(partial(padded_objects, rows=rows), value) for value in inputs)
    return each_tensor(lambda value: value[:count], in_chunks(run, rows, chunk, *inputs))


def each_tensor(apply, value):
    """`apply` to a tensor or None, or to each of a (named) tuple's, its type kept."""
    if not isinstance(value, tuple):
        return apply(value)
    fields = (each_tensor(apply, field) for field in value)
    return type(value)(*fields) if hasattr(value, "_fields") else tuple(fields)


def track_conditioned(
    model: SAM2Model,
    fill_hole_area: int,
    memory_dtype: torch.dtype,
    embed: Tensor,
    high_res: tuple[Tensor, ...],
    conditioned: Tensor,
) -> TrackedBatch:
    """Segment each object from its frame's features conditioned on its memory (B, C, h, w), and encode its
    new memory from the unfilled mask (as the official does: holes are filled in the output only).

    `embed` and `high_res` are one frame's (batch 1) or each object's own (batch B): a graph of the pass
    then holds one frame's decoder skips as its static input, not B expanded copies."""
    tracked = propagate_conditioned(model, high_res, conditioned)
    binarize = torch.zeros(conditioned.shape[0], dtype=torch.bool, device=conditioned.device)  # not binarised
    memories = model.encode_memory(embed, tracked.masks, tracked.object_scores, binarize)
    return TrackedBatch(
        filled(tracked.masks, fill_hole_area),
        tracked.pointers,
        tracked.object_scores,
        stored_memory(memories, memory_dtype),
        tracked.memory_scores,
    )


def chunks(count: int, chunk: Optional[int]) -> list[slice]:
    """Consecutive slices of `count` rows, `chunk` rows each (None: one slice of all)."""
    step = chunk or count
    return [slice(start, start + step) for start in range(0, count, step)]


def object_rows(value: Optional[Tensor], rows: slice) -> Optional[Tensor]:
    """The `rows` of a per-object `value` (B, ...); one frame's features shared by all (batch 1) as they are."""
    if value is None or value.shape[0] == 1:
        return value
    return value[rows]


def bucket(count: int, chunk: Optional[int] = None) -> int:
    """The batch a pass of `count` rows is padded to: the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two
    and the halfway sizes 3 * 2^k), and past `chunk` rows (run a chunk at a time) the next multiple of `chunk`: 40
    objects in chunks of 16 run as 48. Paced cameras tick in mixed counts (3.2 sessions a tick on average with 8 at
    30/s on an H100): powers of two alone padded 3 to 4 and 5 to 8, a quarter of a tick's frames and objects on
    average encoded and tracked for nothing; the halfway sizes waste at most a third and average under a tenth."""
    if chunk and count > chunk:
        return -(-count // chunk) * chunk
    power = 1 << max(count - 1, 0).bit_length()  # the next power of two
    halfway = power // 4 * 3  # 3 * 2^k, between power / 2 and power (from power 4 on)
    return halfway if power >= 4 and count <= halfway else power


def padded_rows(value: Optional[Tensor], rows: int) -> Optional[Tensor]:
    """`value` (B, ...) with its last row repeated up to `rows` rows."""
    if value is None or value.shape[0] >= rows:
        return value
    return torch.cat([value, value[-1:].expand(rows - value.shape[0], *value.shape[1:])])  # (rows, ...)


def padded_objects(value: Optional[Tensor], rows: int) -> Optional[Tensor]:
    """A per-object `value` (B, ...) padded to `rows` rows as `padded_rows` does; one frame's features shared by
    all (batch 1) as they are. (A batch of one object is never padded: its bucket is 1.)"""
    if value is None or value.shape[0] == 1:
        return value
    return padded_rows(value, rows)


def filled(mask_logits: Tensor, fill_hole_area: int) -> Tensor:
    """Output logits (B, 1, 4h, 4w) with background holes of up to `fill_hole_area` pixels filled (0: none)."""
    if fill_hole_area <= 0:
        return mask_logits
    return fill_holes(mask_logits, fill_hole_area, fill_value=HOLE_FILL_LOGIT)


def stored_memory(memories: Tensor, dtype: torch.dtype) -> Tensor:
    """Memory tokens (B, N, C_mem), contiguous, in `dtype`."""
    return memories.to(dtype).contiguous()
