"""One live stream of a StreamPool: its objects, prompts and newest frame.

Prompts land on the newest frame. A prompt on an object not tracked on that frame starts it (a
conditioning frame); a prompt on a tracked object corrects it. Each prompt's memory is encoded
when the stream's next frame arrives, so that several clicks on one frame cost one memory. Memory
is held in fixed-capacity buffers per object: the stored state stops growing after a few frames.

The pool runs the model; a stream keeps its state and says what the pool must compute for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ..processing.images import ImageLike, as_rgb_tensor
from ..processing.prompts import mask_to_model_frame, object_clicks, object_id
from .engine import EncodedFrame, TrackingEngine
from .memory_arena import MemoryArena
from .object_memory import ObjectOutput, RingMemory, new_ring


class FrameResult(NamedTuple):
    frame_idx: int
    object_ids: list[int]
    mask_logits: Tensor  # (N, H, W) at the frame's resolution; > 0 inside the object
    object_scores: Tensor  # (N,) presence logits; > 0 when the object is judged visible

    @property
    def masks(self) -> Tensor:
        """(N, H, W) bool"""
        return self.mask_logits > 0


class StreamOwner(Protocol):
    """What a stream needs of the pool that made it (StreamPool), which owns its life: `close` hands the
    stream back to it, `step` asks it to step this stream alone."""

    engine: TrackingEngine
    arena: MemoryArena

    def step(self, frames: Mapping[PooledStream, ImageLike]) -> dict[PooledStream, FrameResult]: ...

    def close_stream(self, stream: PooledStream) -> None: ...


@dataclass
class _Pending:
    output: ObjectOutput
    is_cond: bool


@dataclass
class _StreamObject:
    obj_id: int
    memory: RingMemory
    latest: Optional[ObjectOutput] = None  # output on the newest frame
    tracked_on_latest: bool = False  # tracked by step() on the newest frame: a prompt is a correction
    pending: Optional[_Pending] = None  # a prompt on the newest frame, waiting for its memory
    points: Optional[tuple[Tensor, Tensor]] = field(default=None, repr=False)  # clicks on the newest frame


class PooledStream:
    """A stream of frames (H x W x 3 uint8 RGB arrays or tensors) tracked by a StreamPool.

    StreamTracker's methods; `step(frame)` steps this stream alone, `pool.step({...})` steps several
    in one batched pass. Streams are made by `StreamPool.open_stream()`.
    """

    def __init__(self, pool: StreamOwner) -> None:
        self._pool: Optional[StreamOwner] = pool
        self._objects: dict[int, _StreamObject] = {}
        self._frame: Optional[EncodedFrame] = None
        self._ahead: deque[tuple[ImageLike, EncodedFrame]] = deque()  # (frame given, its features), in order

    @property
    def pool(self) -> StreamOwner:
        self._check_open()
        return self._pool

    @property
    def engine(self) -> TrackingEngine:
        return self.pool.engine

    @property
    def closed(self) -> bool:
        return self._pool is None

    @property
    def frame(self) -> Optional[EncodedFrame]:
        """The newest frame's features (None before the first)."""
        return self._frame

    @property
    def frame_idx(self) -> int:
        """Index of the newest frame (-1 before the first)."""
        return -1 if self._frame is None else self._frame.index

    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    def step(self, frame: ImageLike) -> FrameResult:
        """Add the next frame and track every object on it."""
        return self.pool.step({self: frame})[self]

    @torch.inference_mode()
    def encode_ahead(self, frames: Sequence[ImageLike], skip_refused: bool = False) -> bool:
        """Encode upcoming frames in one batched image-encoder call, before they are stepped.

        For a video known ahead (a file, a folder): a batch of 4 frames encodes at 1.5 ms a frame
        against 2.2 for one (tiny, H200). `step` then takes the features of the very frame objects
        given here, in this order; a step with any other frame object drops them all. Frames are
        matched by identity, not content: a frame changed in place after this call is tracked on its
        features from before. Features do not depend on prompts: prompting in between is fine. The
        frames of one call share one batch of features in memory until the last of them is released.

        A frame `step` would refuse raises here, before anything is encoded; with `skip_refused`, nothing
        is encoded and False is returned instead (`step` then refuses that frame in its turn).
        """
        self._check_open()
        try:
            rgbs = [self.to_rgb(frame) for frame in frames]  # every frame checked before any is encoded
        except (TypeError, ValueError):
            if skip_refused:
                return False
            raise
        encoded = self.engine.encode_batch([(-1, rgb) for rgb in rgbs])  # indices are set when stepped
        self._ahead.extend(zip(frames, encoded))
        return True

    @torch.inference_mode()
    def add_prompt(
        self,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> FrameResult:
        """Prompt an object on the newest frame: a new object, or a correction of a tracked one.

        points (N, 2) with labels (N,) (1 foreground, 0 background), box (x0, y0, x1, y1), and/or
        mask (H, W) of the frame; coordinates are pixels of the frame, x before y. Returns the
        frame's result for all objects.
        """
        engine = self.engine
        frame = self._require_frame("add_prompt")
        if mask is not None and (points is not None or box is not None):
            raise ValueError("give either a mask or points/box for one prompt, not both")
        if mask is None and points is None and box is None:
            raise ValueError("a prompt needs points (with labels), a box, or a mask")
        obj_id = object_id(obj_id)
        obj = self._objects.get(obj_id)
        # Validate the prompt before anything changes: a refused prompt leaves the stream as it was.
        if mask is not None:
            mask_input = mask_to_model_frame(mask, engine.config.image_size, engine.device)
        else:
            coords, point_labels = self._points(obj, points, labels, box, clear_old_points, normalize_coords)
        obj = obj or self._new_object(obj_id)
        is_init = not obj.tracked_on_latest
        is_cond = is_init or engine.options.add_all_frames_to_correct_as_cond
        if mask is not None:
            output = engine.prompt_mask(frame, mask_input)
            obj.points = None
        else:
            previous = obj.latest.mask_logits[None] if obj.latest is not None else None  # (1, 1, 4h, 4w)
            memory = None if is_init or not engine.options.use_prev_mem_frame else obj.memory
            output = engine.prompt_points(frame, coords, point_labels, memory, previous, False, None)
            obj.points = (coords, point_labels)
        obj.pending = _Pending(output, is_cond)
        obj.latest = output
        return self.result()

    @torch.inference_mode()
    def remove_object(self, obj_id: int) -> FrameResult:
        """Stop tracking an object; returns the newest frame's result without it."""
        self._check_open()
        obj_id = object_id(obj_id)
        if obj_id not in self._objects:
            raise KeyError(f"no object with id {obj_id}; tracked ids: {self.object_ids}")
        del self._objects[obj_id]
        self.pool.arena.reclaim()
        return self.result()

    def reset(self) -> None:
        """Forget every object and frame (frames encoded ahead included)."""
        self._check_open()
        self._objects.clear()
        self.pool.arena.reclaim()
        self._ahead.clear()
        self._frame = None

    def close(self) -> None:
        """Leave the pool and free this stream's memory; any later call raises an error."""
        self.pool.close_stream(self)

    def state_tensors(self) -> list[Tensor]:
        """Every tensor the stream holds between frames (memories, outputs, the features of the newest frame and of
        frames encoded ahead)."""
        held = []
        for frame in [self._frame, *(encoded for _, encoded in self._ahead)]:
            if frame is not None:
                held += [frame.features.embed, *frame.features.high_res]
        for obj in self._objects.values():
            held += obj.memory.tensors()
            for output in (obj.latest, obj.pending.output if obj.pending else None):
                if output is not None:
                    held += [
                        t
                        for t in (output.mask_logits, output.pointer, output.object_score, output.memory)
                        if t is not None
                    ]
            if obj.points is not None:
                held += list(obj.points)
        return held

    # What the pool calls

    def encoded_ahead(self, frame: ImageLike) -> Optional[EncodedFrame]:
        """The features `encode_ahead` made of this frame object if it is the next one there, else None."""
        if self._ahead and self._ahead[0][0] is frame:
            return self._ahead[0][1]
        return None

    def to_rgb(self, frame: ImageLike) -> Tensor:
        """A frame as the (3, H, W) tensor the pool encodes; raises on a bad frame before anything changes."""
        return as_rgb_tensor(frame)

    def pending_objects(self) -> list[_StreamObject]:
        return [obj for obj in self._objects.values() if obj.pending is not None]

    def commit_pending(self) -> None:
        """Store the prompts' memories (encoded by the pool) before the next frame is tracked."""
        radius = self.engine.config.num_maskmem
        index = self.frame_idx
        for obj in self.pending_objects():
            output = obj.pending.output
            if obj.pending.is_cond:
                obj.memory.write_conditioning(index, output.memory, output.pointer)
            else:
                obj.memory.write_tracked(index, output.memory, output.pointer)
            if self.engine.options.clear_non_cond_mem_around_input:
                obj.memory.forget_tracked(index - radius, index + radius)
            obj.pending = None

    def tracked_objects(self) -> list[_StreamObject]:
        return list(self._objects.values())

    def take_frame(self, frame: EncodedFrame) -> None:
        """The next frame, encoded (by the pool now, or ahead): the stream's newest from here on."""
        if self._ahead and self._ahead[0][1] is frame:
            self._ahead.popleft()
        else:
            self._ahead.clear()  # stepped with another frame: the frames encoded ahead will not come in order
        self._frame = frame._replace(index=self.frame_idx + 1)

    def take_tracked(self, obj: _StreamObject, output: ObjectOutput) -> None:
        obj.memory.write_tracked(self.frame_idx, output.memory, output.pointer, output.memory_score)
        obj.latest, obj.tracked_on_latest, obj.points = output, True, None

    def result(self) -> FrameResult:
        """Every object's output on the newest frame, at the frame's resolution."""
        frame, engine = self._frame, self.engine
        ids = [obj_id for obj_id, obj in self._objects.items() if obj.latest is not None]
        height, width = frame.size
        if not ids:
            empty = torch.zeros(0, height, width, device=engine.device)
            return FrameResult(frame.index, [], empty, torch.zeros(0, device=engine.device))
        outputs = [self._objects[i].latest for i in ids]
        logits = torch.stack([out.mask_logits.to(engine.device) for out in outputs])  # (N, 1, 4h, 4w)
        scores = torch.cat([out.object_score.to(engine.device) for out in outputs])  # (N,)
        video = engine.to_video_resolution(logits, frame.size)[:, 0]  # (N, H, W)
        return FrameResult(frame.index, ids, video, scores)

    def detach(self) -> None:
        """Drop all state and the pool: the stream is closed."""
        self._objects.clear()
        self._pool.arena.reclaim()
        self._ahead.clear()
        self._frame = None
        self._pool = None

    # Internals

    def _check_open(self) -> None:
        if self._pool is None:
            raise RuntimeError("this stream was closed: open a new one with pool.open_stream()")

    def _require_frame(self, method: str) -> EncodedFrame:
        self._check_open()
        if self._frame is None:
            raise RuntimeError(f"no frame yet: call step(frame) before {method}(...)")
        return self._frame

    def _new_object(self, obj_id: int) -> _StreamObject:
        obj = _StreamObject(obj_id, new_ring(self.pool.arena))
        self._objects[obj_id] = obj
        return obj

    def _points(
        self, obj: Optional[_StreamObject], points, labels, box, clear_old_points: bool, normalize_coords: bool
    ):
        """The object's clicks on this frame in model pixels: (1, N, 2) and (1, N), box corners first."""
        if box is not None and not clear_old_points:
            raise ValueError("a box must come first: add it with clear_old_points=True")
        coords, point_labels = object_clicks(
            points, labels, box, self._frame.size, self.engine.config.image_size, normalize_coords
        )
        if not clear_old_points and obj is not None and obj.points is not None:
            coords = torch.cat([obj.points[0], coords], dim=1)
            point_labels = torch.cat([obj.points[1], point_labels], dim=1)
        return coords, point_labels
