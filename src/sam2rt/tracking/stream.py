"""StreamTracker: frames in, masks out, for streams that never end.

A StreamTracker is a pool of one: a PooledStream with a StreamPool of its own, so that one
stream and many streams run the same code. Prompts land on the newest frame; see
`pooled_stream` for the semantics.
"""

from __future__ import annotations

from typing import Any, Optional

from ..model.sam2 import SAM2Model
from .options import STREAM_OPTIONS, TrackerOptions, tracker_options
from .pool import StreamPool
from .pooled_stream import FrameResult, PooledStream

__all__ = ["FrameResult", "StreamTracker"]


class StreamTracker(PooledStream):
    """Track objects on a stream of frames (H x W x 3 uint8 RGB arrays or tensors).

    Options (tracking/options.py) have the official names: `options`, else the stream defaults, changed by
    keywords of their names. Corrections become conditioning frames by default
    (`add_all_frames_to_correct_as_cond=True`) so that they stick. A refused frame (wrong type, range, NaN)
    raises before anything changes: the tracker goes on as if it had never been given.
    """

    def __init__(self, model: SAM2Model, options: Optional[TrackerOptions] = None, **changes: Any) -> None:
        super().__init__(StreamPool(model, tracker_options(STREAM_OPTIONS, options, changes)))
        self.model = model
