"""The tracker's options, written once: their names (the official ones), types, defaults and meaning.

Every front-end takes them the same way: `options=TrackerOptions(...)`, or the fields as keywords
(`StreamTracker(model, fill_hole_area=0)`), which change the front-end's defaults. Streams make
corrections conditioning frames by default so that they stick; the offline VideoPredictor keeps the
official defaults (and the official video loader's resize, so that a JPEG folder gives its numbers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..processing.preprocess import Resize, check_resize


@dataclass(frozen=True)
class TrackerOptions:
    fill_hole_area: int = 8  # fill background holes up to this many low-resolution pixels (0: off)
    non_overlap_masks: bool = False  # each pixel goes to the object with the highest logit in the output
    clear_non_cond_mem_around_input: bool = False  # drop tracked memories within num_maskmem frames of a prompt
    add_all_frames_to_correct_as_cond: bool = False  # a correction becomes a conditioning (prompted) frame
    max_cond_frames_in_attn: int = -1  # attend to this many closest prompted frames (-1: all)
    use_prev_mem_frame: bool = True  # a correction on a tracked frame attends to the object's memory (SAM 3: no)
    max_cond_frames: int = 8  # prompted frames a stream keeps per object (the first prompt always); streams only
    memory_dtype: Optional[torch.dtype] = None  # spatial memories: None is bf16 on CUDA, fp32 elsewhere
    offload_state_to_cpu: bool = False  # keep memories and masks in CPU memory
    resize: Resize = "bilinear-antialias"  # how frames become the model's input (processing/preprocess.py)
    # SAM 3's temporal disambiguation: the recent memories are the latest frames whose memory score (presence times
    # predicted IoU) passes mf_threshold, however far back, instead of the frames just before.
    use_memory_selection: bool = False
    mf_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.max_cond_frames < 1:
            raise ValueError("max_cond_frames must be at least 1")
        check_resize(self.resize)

    def changed(self, changes: Mapping[str, Any]) -> TrackerOptions:
        """These options with some fields changed; an unknown name is refused with the list of known ones."""
        known = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(f"unknown tracker option(s) {', '.join(unknown)}; the options are: {', '.join(known)}")
        return dataclasses.replace(self, **changes)


STREAM_OPTIONS = TrackerOptions(add_all_frames_to_correct_as_cond=True)  # StreamTracker, StreamPool, CameraPredictor
VIDEO_OPTIONS = TrackerOptions(resize="pil-bicubic")  # VideoPredictor

# What Meta's SAM 3 tracker (`build_tracker`, Sam3TrackerPredictor) does differently from SAM 2's video predictor,
# as changes of a front-end's options: `StreamTracker(model, **SAM3_TRACKER_CHANGES)`. Corrections are segmented
# without memory (its `use_prev_mem_frame=False`) and become prompted frames; at most 4 prompted frames are
# attended to; no hole filling; memory selection (`apply_temporal_disambiguation`, on in Meta's video model). Meta
# sets clear_non_cond_mem_around_input, but its predictor clears only the per-object copies that its batched
# propagation does not read: the memories it tracks with are kept, as here.
SAM3_TRACKER_CHANGES = {
    "fill_hole_area": 0,
    "add_all_frames_to_correct_as_cond": True,
    "max_cond_frames_in_attn": 4,
    "use_prev_mem_frame": False,
    "use_memory_selection": True,
}


def tracker_options(
    defaults: TrackerOptions, options: Optional[TrackerOptions], changes: Mapping[str, Any]
) -> TrackerOptions:
    """A front-end's options: `options` (else its `defaults`) with the keyword `changes` applied."""
    if options is not None and not isinstance(options, TrackerOptions):
        raise TypeError(f"options must be a TrackerOptions, got {type(options).__name__}")
    return (options or defaults).changed(changes)
