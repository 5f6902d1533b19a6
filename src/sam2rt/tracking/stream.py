"""StreamTracker: frames in, masks out, for streams that never end.

Prompts land on the newest frame. A prompt on an object not tracked on that frame starts it (a
conditioning frame); a prompt on a tracked object corrects it. Each prompt's memory is encoded
when the next frame arrives, so that several clicks on one frame cost one memory. Memory is held
in fixed-capacity buffers per object: the stored state stops growing after a few frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..frames import ImageLike, as_rgb_tensor
from ..model.sam2 import SAM2Model
from ..preprocess import Resize, check_resize
from ..prompts import mask_to_model_frame, object_clicks
from .engine import EncodedFrame, TrackerOptions, TrackingEngine
from .memory_bank import FrameOutput, RingMemory


class FrameResult(NamedTuple):
    frame_idx: int
    object_ids: list[int]
    mask_logits: Tensor  # (N, H, W) at the frame's resolution; > 0 inside the object
    object_scores: Tensor  # (N,) presence logits; > 0 when the object is judged visible

    @property
    def masks(self) -> Tensor:
        """(N, H, W) bool"""
        return self.mask_logits > 0


@dataclass
class _Pending:
    output: FrameOutput
    is_cond: bool


@dataclass
class _StreamObject:
    obj_id: int
    memory: RingMemory
    latest: Optional[FrameOutput] = None  # output on the newest frame
    tracked_on_latest: bool = False  # tracked by step() on the newest frame: a prompt is a correction
    pending: Optional[_Pending] = None  # a prompt on the newest frame, waiting for its memory
    points: Optional[tuple[Tensor, Tensor]] = field(default=None, repr=False)  # clicks on the newest frame


class StreamTracker:
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
        if max_cond_frames < 1:
            raise ValueError("max_cond_frames must be at least 1")
        options = TrackerOptions(
            fill_hole_area=fill_hole_area,
            non_overlap_masks=non_overlap_masks,
            clear_non_cond_mem_around_input=clear_non_cond_mem_around_input,
            add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
            max_cond_frames_in_attn=max_cond_frames_in_attn,
            memory_dtype=memory_dtype,
            offload_state_to_cpu=offload_state_to_cpu,
            resize=check_resize(resize),
        )
        self.model = model
        self.engine = TrackingEngine(model, options, cached_frames=1)
        self.max_cond_frames = max_cond_frames
        self._objects: dict[int, _StreamObject] = {}
        self._frame: Optional[EncodedFrame] = None

    @property
    def frame_idx(self) -> int:
        """Index of the newest frame (-1 before the first)."""
        return -1 if self._frame is None else self._frame.index

    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    @torch.inference_mode()
    def step(self, frame: ImageLike) -> FrameResult:
        """Add the next frame and track every object on it."""
        rgb = as_rgb_tensor(frame)
        self._encode_pending()
        index = self.frame_idx + 1
        self._frame = self.engine.encode(index, lambda: rgb)
        objects = list(self._objects.values())
        if objects:
            outputs = self.engine.track(self._frame, [o.memory for o in objects], reverse=False, num_frames=None)
            for obj, output in zip(objects, outputs):
                obj.memory.write_tracked(index, output.memory, output.pointer)
                obj.latest, obj.tracked_on_latest, obj.points = output, True, None
        return self._result()

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
        frame = self._require_frame("add_prompt")
        if mask is not None and (points is not None or box is not None):
            raise ValueError("give either a mask or points/box for one prompt, not both")
        if mask is None and points is None and box is None:
            raise ValueError("a prompt needs points (with labels), a box, or a mask")
        obj = self._objects.get(obj_id)
        if obj is None and (isinstance(obj_id, bool) or not isinstance(obj_id, int)):
            raise TypeError(f"object ids are integers, got {obj_id!r}")
        # Validate the prompt before anything changes: a refused prompt leaves the tracker as it was.
        if mask is not None:
            mask_input = mask_to_model_frame(mask, self.model.config.image_size, self.engine.device)
        else:
            coords, point_labels = self._points(obj, points, labels, box, clear_old_points, normalize_coords)
        obj = obj or self._new_object(obj_id)
        is_init = not obj.tracked_on_latest
        is_cond = is_init or self.engine.options.add_all_frames_to_correct_as_cond
        if mask is not None:
            output = self.engine.prompt_mask(frame, mask_input)
            obj.points = None
        else:
            previous = obj.latest.mask_logits[None] if obj.latest is not None else None  # (1, 1, 4h, 4w)
            memory = None if is_init else obj.memory
            output = self.engine.prompt_points(frame, coords, point_labels, memory, previous, False, None)
            obj.points = (coords, point_labels)
        obj.pending = _Pending(output, is_cond)
        obj.latest = output
        return self._result()

    @torch.inference_mode()
    def remove_object(self, obj_id: int) -> FrameResult:
        """Stop tracking an object; returns the newest frame's result without it."""
        if obj_id not in self._objects:
            raise KeyError(f"no object with id {obj_id}; tracked ids: {self.object_ids}")
        del self._objects[obj_id]
        return self._result()

    def reset(self) -> None:
        """Forget every object and frame."""
        self._objects.clear()
        self._frame = None
        self.engine.clear_cache()

    def state_tensors(self) -> list[Tensor]:
        """Every tensor the tracker holds between frames (memories, outputs, cached features)."""
        held = self.engine.cached_tensors()
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

    # Internals

    def _require_frame(self, method: str) -> EncodedFrame:
        if self._frame is None:
            raise RuntimeError(f"no frame yet: call step(frame) before {method}(...)")
        return self._frame

    def _new_object(self, obj_id: int) -> _StreamObject:
        memory = RingMemory(
            self.model.config, self.max_cond_frames, self.engine.memory_dtype, self.engine.storage_device
        )
        obj = _StreamObject(obj_id, memory)
        self._objects[obj_id] = obj
        return obj

    def _points(
        self, obj: Optional[_StreamObject], points, labels, box, clear_old_points: bool, normalize_coords: bool
    ):
        """The object's clicks on this frame in model pixels: (1, N, 2) and (1, N), box corners first."""
        if box is not None and not clear_old_points:
            raise ValueError("a box must come first: add it with clear_old_points=True")
        coords, point_labels = object_clicks(
            points, labels, box, self._frame.size, self.model.config.image_size, normalize_coords
        )
        if not clear_old_points and obj is not None and obj.points is not None:
            coords = torch.cat([obj.points[0], coords], dim=1)
            point_labels = torch.cat([obj.points[1], point_labels], dim=1)
        return coords, point_labels

    def _encode_pending(self) -> None:
        """Encode the prompts of the newest frame into memory, before the next frame is tracked."""
        pending = [obj for obj in self._objects.values() if obj.pending is not None]
        if not pending:
            return
        self.engine.encode_prompted(self._frame, [obj.pending.output for obj in pending])
        radius = self.model.config.num_maskmem
        for obj in pending:
            output, index = obj.pending.output, self._frame.index
            if obj.pending.is_cond:
                obj.memory.write_conditioning(index, output.memory, output.pointer)
            else:
                obj.memory.write_tracked(index, output.memory, output.pointer)
            if self.engine.options.clear_non_cond_mem_around_input:
                obj.memory.forget_tracked(index - radius, index + radius)
            obj.pending = None

    def _result(self) -> FrameResult:
        frame = self._frame
        ids = [obj_id for obj_id, obj in self._objects.items() if obj.latest is not None]
        height, width = frame.size
        if not ids:
            empty = torch.zeros(0, height, width, device=self.engine.device)
            return FrameResult(frame.index, [], empty, torch.zeros(0, device=self.engine.device))
        outputs = [self._objects[i].latest for i in ids]
        logits = torch.stack([out.mask_logits.to(self.engine.device) for out in outputs])  # (N, 1, 4h, 4w)
        scores = torch.cat([out.object_score.to(self.engine.device) for out in outputs])  # (N,)
        video = self.engine.to_video_resolution(logits, frame.size)[:, 0]  # (N, H, W)
        return FrameResult(frame.index, ids, video, scores)
