"""Which slot a prompted frame takes in an object's memory: plain Python, shared by the PyTorch engine
(object_memory.RingMemory) and the onnxruntime tracker (export.onnx_memory), which must not import PyTorch."""

from __future__ import annotations

from typing import Sequence


def conditioning_slot(cond_frames: Sequence[int], frame_idx: int) -> int:
    """The slot of `cond_frames` (the frame each slot holds, -1 for an empty one) that frame `frame_idx` takes:
    its own if it is held already, else an empty one, else the oldest prompt but the first, which is always kept."""
    if frame_idx in cond_frames:
        return cond_frames.index(frame_idx)
    if -1 in cond_frames:
        return cond_frames.index(-1)
    if len(cond_frames) == 1:
        return 0
    first = min(cond_frames)
    return min((s for s, t in enumerate(cond_frames) if t != first), key=lambda s: cond_frames[s])
