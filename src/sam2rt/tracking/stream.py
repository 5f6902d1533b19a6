"""StreamTracker: frames in, masks out, for streams that never end.

A StreamTracker is a pool of one: a PooledStream with a StreamPool of its own, so that one
stream and many streams run the same code. Prompts land on the newest frame; see
`pooled_stream` for the semantics.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model.sam2 import SAM2Model
from ..processing.preprocess import Resize
from .pool import StreamPool
from .pooled_stream import FrameResult, PooledStream

__all__ = ["FrameResult", "StreamTracker"]


class StreamTracker(PooledStream):
    """Track objects on a stream of frames (H x W x 3 uint8 RGB arrays or tensors).

    Options have the official names. Corrections become conditioning frames by default
    (`add_all_frames_to_correct_as_cond=True`) so that they stick. `max_cond_frames` caps the
    prompted frames kept per object (the first prompt is always kept). `resize` names how frames
    become the model's input (preprocess.py). A refused frame (wrong type, range, NaN) raises
    before anything changes: the tracker goes on as if it had never been given.
    """

    def __init__(
        self,
        model: SAM2Model,
        *,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = True,
        max_cond_frames_in_attn: int = -1,
        max_cond_frames: int = 8,
        memory_dtype: Optional[torch.dtype] = None,
        offload_state_to_cpu: bool = False,
        resize: Resize = "bilinear-antialias",
    ) -> None:
        pool = StreamPool(
            model,
            fill_hole_area=fill_hole_area,
            non_overlap_masks=non_overlap_masks,
            clear_non_cond_mem_around_input=clear_non_cond_mem_around_input,
            add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
            max_cond_frames_in_attn=max_cond_frames_in_attn,
            max_cond_frames=max_cond_frames,
            memory_dtype=memory_dtype,
            offload_state_to_cpu=offload_state_to_cpu,
            resize=resize,
        )
        super().__init__(pool)
        self.model = model
        self.max_cond_frames = max_cond_frames
