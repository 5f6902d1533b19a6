"""VideoPredictor: the official SAM2VideoPredictor's methods and semantics, on the batched engine.

The whole video is known up front: prompts may land on any frame and propagation runs forward
or in reverse from any start. Frames are decoded on demand. Unlike a stream, an offline session
keeps every frame's output (as the official predictor does): they are the product, and a later
propagation may start from any frame. `offload_state_to_cpu` keeps them in CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor

from ..io.sources import FrameSequence, open_frames
from ..model.sam2 import NO_OBJECT_SCORE, SAM2Model
from ..processing.images import as_rgb_tensor
from ..processing.prompts import frame_index, mask_to_model_frame, object_clicks, object_id
from .engine import EncodedFrame, TrackingEngine
from .lookahead import default_lookahead
from .object_memory import ObjectOutput, OutputArchive
from .options import VIDEO_OPTIONS, TrackerOptions, tracker_options


@dataclass
class _VideoObject:
    obj_id: int
    archive: OutputArchive = field(default_factory=OutputArchive)
    points: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # frame -> (1, N, 2), (1, N)
    masks: dict[int, Tensor] = field(default_factory=dict)  # frame -> (1, 1, S, S)
    pending: dict[bool, dict[int, ObjectOutput]] = field(default_factory=lambda: {True: {}, False: {}})  # by is_cond
    tracked_frames: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse

    def latest(self, frame_idx: int, is_cond: bool) -> Optional[ObjectOutput]:
        """The output to show on a frame: a pending prompt of the same kind, else the stored output."""
        return self.pending[is_cond].get(frame_idx) or self.archive.output(frame_idx)


class InferenceState:
    """One video session: its frames, objects and outputs."""

    _COMPATIBLE_KEYS = ("num_frames", "video_height", "video_width", "obj_ids")

    def __init__(self, frames: FrameSequence, engine: TrackingEngine) -> None:
        self.frames = frames
        self.engine = engine
        self.num_frames = len(frames)
        self.video_height, self.video_width = frames.size
        self.objects: dict[int, _VideoObject] = {}

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def __getitem__(self, key: str):
        """Read access to the official state's basic keys, for code written against the official predictor."""
        if key not in self._COMPATIBLE_KEYS:
            raise KeyError(f"{key!r}: this state exposes {', '.join(self._COMPATIBLE_KEYS)}")
        return getattr(self, key)

    def encode_ahead(self, frame_indices: Sequence[int]) -> None:
        """Encode these frames in one image-encoder call (VideoPredictor's lookahead), unless one is cached."""
        self.engine.encode_into_cache(
            [(index, lambda index=index: as_rgb_tensor(self.frames[index])) for index in frame_indices]
        )

    def frame(self, frame_idx: int) -> EncodedFrame:
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"frame {frame_idx} is outside the video's {self.num_frames} frames")
        return self.engine.encode(frame_idx, lambda: as_rgb_tensor(self.frames[frame_idx]))


class VideoPredictor:
    """Segment and track objects through a video known up front.

    Options (tracking/options.py): `options`, else the official defaults (corrections are not conditioning
    frames unless `add_all_frames_to_correct_as_cond`; the official video loader's resize, so that a JPEG folder
    gives the official numbers), changed by keywords of their names. `lookahead`: frames encoded in one
    image-encoder call while propagating (tracking/lookahead.py; None: 4 on CUDA, 1 elsewhere).
    """

    def __init__(
        self,
        model: SAM2Model,
        options: Optional[TrackerOptions] = None,
        *,
        lookahead: Optional[int] = None,
        **changes: Any,
    ) -> None:
        if lookahead is not None and lookahead < 1:
            raise ValueError(f"lookahead must be at least 1, got {lookahead}")
        if "max_cond_frames" in changes:
            raise TypeError("VideoPredictor keeps every prompted frame of the video: max_cond_frames is for streams")
        self.model = model
        self.lookahead = default_lookahead(model.device) if lookahead is None else lookahead
        self.options = tracker_options(VIDEO_OPTIONS, options, changes)

    @torch.inference_mode()
    def init_state(
        self,
        video_path,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
    ) -> InferenceState:
        """Open a video: an mp4 (or any video file), a folder of JPEG frames, or a list of H x W x 3 frames.

        A list is checked whole here (shapes, types, value ranges): a bad frame is refused before
        the session exists. Files are decoded on demand (`offload_video_to_cpu` and `async_loading_frames` are
        accepted for compatibility: nothing is loaded up front).
        """
        options = self.options
        if offload_state_to_cpu:
            options = options.changed({"offload_state_to_cpu": True})
        engine = TrackingEngine(self.model, options, cached_frames=self.lookahead)
        state = InferenceState(open_frames(video_path), engine)
        state.frame(0)  # decode and encode the first frame, where prompts usually go
        return state

    # Prompts

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        points=None,
        labels=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box=None,
    ) -> tuple[int, list[int], Tensor]:
        """Add clicks and/or a box for an object on a frame; returns (frame_idx, obj_ids, masks (N, 1, H, W))."""
        state, frame_idx, obj_id = inference_state, frame_index(frame_idx), object_id(obj_id)
        frame = state.frame(frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        coords, point_labels = self._clicks(state, points, labels, box, clear_old_points, normalize_coords)
        obj = self._object(state, obj_id)
        if not clear_old_points and frame_idx in obj.points:
            old_coords, old_labels = obj.points[frame_idx]
            coords, point_labels = torch.cat([old_coords, coords], 1), torch.cat([old_labels, point_labels], 1)
        obj.points[frame_idx] = (coords, point_labels)
        obj.masks.pop(frame_idx, None)

        is_init = frame_idx not in obj.tracked_frames
        reverse = False if is_init else obj.tracked_frames[frame_idx]
        is_cond = is_init or self.options.add_all_frames_to_correct_as_cond
        previous = obj.latest(frame_idx, is_cond)
        previous_logits = previous.mask_logits[None] if previous is not None else None
        memory = None if is_init or not self.options.use_prev_mem_frame else obj.archive
        output = state.engine.prompt_points(
            frame, coords, point_labels, memory, previous_logits, reverse, state.num_frames
        )
        obj.pending[is_cond][frame_idx] = output
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    add_new_points = add_new_points_or_box

    @torch.inference_mode()
    def add_new_mask(
        self, inference_state: InferenceState, frame_idx: int, obj_id: int, mask
    ) -> tuple[int, list[int], Tensor]:
        """Give an object's mask (H, W) on a frame; returns (frame_idx, obj_ids, masks (N, 1, H, W))."""
        state, frame_idx, obj_id = inference_state, frame_index(frame_idx), object_id(obj_id)
        frame = state.frame(frame_idx)
        mask_input = mask_to_model_frame(mask, self.model.config.image_size, state.engine.device)
        obj = self._object(state, obj_id)
        obj.masks[frame_idx] = mask_input
        obj.points.pop(frame_idx, None)
        is_init = frame_idx not in obj.tracked_frames
        is_cond = is_init or self.options.add_all_frames_to_correct_as_cond
        obj.pending[is_cond][frame_idx] = state.engine.prompt_mask(frame, mask_input)
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: InferenceState, frame_idx: int, obj_id: int, need_output: bool = True
    ):
        """Remove an object's prompts on a frame; a prompted frame it had there becomes a tracked frame."""
        state, frame_idx, obj_id = inference_state, frame_index(frame_idx), object_id(obj_id)
        obj = self._existing(state, obj_id)
        self._clear_prompts(obj, frame_idx)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.pending[True] for o in state.objects.values())
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    @torch.inference_mode()
    def remove_object(
        self, inference_state: InferenceState, obj_id: int, strict: bool = False, need_output: bool = True
    ):
        """Remove an object; returns (obj_ids, [(frame_idx, masks)]) for the frames where it had prompts."""
        state, obj_id = inference_state, object_id(obj_id)
        if obj_id not in state.objects:
            if strict:
                raise RuntimeError(
                    f"Cannot remove object id {obj_id} as it doesn't exist. All existing object ids: {state.obj_ids}."
                )
            return state.obj_ids, []
        if len(state.objects) == 1:
            self.reset_state(state)
            return state.obj_ids, []
        obj = state.objects.pop(obj_id)
        prompted_frames = sorted(set(obj.points) | set(obj.masks))
        updated = []
        if need_output:
            for frame_idx in prompted_frames:
                is_cond = any(frame_idx in o.pending[True] for o in state.objects.values())
                updated.append((frame_idx, self._consolidated(state, frame_idx, is_cond)))
        return state.obj_ids, updated

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Remove every object, prompt and result."""
        inference_state.objects.clear()

    # Propagation

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: InferenceState) -> None:
        """Encode the memories of new prompts and make them part of each object's memory."""
        state = inference_state
        if not state.objects:
            raise RuntimeError("No input points or masks are provided for any object; please add inputs first.")
        radius = self.model.config.num_maskmem
        for is_cond in (False, True):
            by_frame: dict[int, list[ObjectOutput]] = {}
            for obj in state.objects.values():
                for frame_idx, output in obj.pending[is_cond].items():
                    if output.memory is None:
                        by_frame.setdefault(frame_idx, []).append(output)
            for frame_idx, outputs in by_frame.items():
                state.engine.encode_prompted([state.frame(frame_idx)], outputs)
            for obj in state.objects.values():
                store = obj.archive.cond if is_cond else obj.archive.non_cond
                for frame_idx, output in obj.pending[is_cond].items():
                    store[frame_idx] = output
                    if self.options.clear_non_cond_mem_around_input:
                        obj.archive.clear_tracked_around(frame_idx, radius)
                obj.pending[is_cond].clear()
        for obj in state.objects.values():
            if not obj.archive.cond:
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj.obj_id}; please add inputs first."
                )
            for frame_idx in obj.archive.cond:
                obj.archive.non_cond.pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], Tensor]]:
        """Track every object frame by frame; yields (frame_idx, obj_ids, masks (N, 1, H, W)).

        Starts at `start_frame_idx` (default: the earliest prompted frame) and goes forward, or
        backward with `reverse`, for at most `max_frame_num_to_track` frames after the start.
        """
        state = inference_state
        self.propagate_in_video_preflight(state)
        objects = list(state.objects.values())
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in objects for t in obj.archive.cond)
        start_frame_idx = frame_index(start_frame_idx)
        if not 0 <= start_frame_idx < state.num_frames:
            raise IndexError(f"start_frame_idx {start_frame_idx} is outside the video's {state.num_frames} frames")
        if max_frame_num_to_track is None:
            max_frame_num_to_track = state.num_frames
        max_frame_num_to_track = frame_index(max_frame_num_to_track)
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, state.num_frames - 1)
            order = range(start_frame_idx, end + 1)
        radius = self.model.config.num_maskmem
        for position, frame_idx in enumerate(order):
            to_track = [obj for obj in objects if frame_idx not in obj.archive.cond]
            if to_track:
                if self.lookahead > 1 and position + self.lookahead <= len(order):
                    # this frame and the next ones in one call, unless one of them is cached already
                    state.encode_ahead(order[position : position + self.lookahead])
                outputs = state.engine.track(
                    [state.frame(frame_idx)], [obj.archive for obj in to_track], reverse, state.num_frames
                )
                for obj, output in zip(to_track, outputs):
                    obj.archive.non_cond[frame_idx] = output
            for obj in objects:
                if frame_idx in obj.archive.cond and self.options.clear_non_cond_mem_around_input:
                    obj.archive.clear_tracked_around(frame_idx, radius)
                obj.tracked_frames[frame_idx] = reverse
            logits = torch.stack([obj.archive.output(frame_idx).mask_logits.to(state.engine.device) for obj in objects])
            size = (state.video_height, state.video_width)
            yield frame_idx, [obj.obj_id for obj in objects], state.engine.to_video_resolution(logits, size)

    # Internals

    def _object(self, state: InferenceState, obj_id: int) -> _VideoObject:
        if obj_id not in state.objects:
            state.objects[obj_id] = _VideoObject(obj_id)
        return state.objects[obj_id]

    def _existing(self, state: InferenceState, obj_id: int) -> _VideoObject:
        if obj_id not in state.objects:
            raise KeyError(f"no object with id {obj_id}; existing ids: {state.obj_ids}")
        return state.objects[obj_id]

    def _clicks(self, state, points, labels, box, clear_old_points: bool, normalize_coords: bool):
        """Clicks (1, N, 2) in model pixels and labels (1, N), box corners first."""
        if box is not None and not clear_old_points:
            raise ValueError(
                "cannot add box without clearing old points, since box prompt must be provided before any "
                "point prompt (please use clear_old_points=True instead)"
            )
        frame_hw = (state.video_height, state.video_width)
        return object_clicks(points, labels, box, frame_hw, self.model.config.image_size, normalize_coords)

    def _clear_prompts(self, obj: _VideoObject, frame_idx: int) -> None:
        obj.points.pop(frame_idx, None)
        obj.masks.pop(frame_idx, None)
        obj.pending[True].pop(frame_idx, None)
        obj.pending[False].pop(frame_idx, None)
        output = obj.archive.cond.pop(frame_idx, None)
        if output is not None:
            obj.archive.non_cond[frame_idx] = output  # no longer prompted: it stays as a tracked frame
            obj.tracked_frames.pop(frame_idx, None)

    def _consolidated(self, state: InferenceState, frame_idx: int, is_cond: bool) -> Tensor:
        """Every object's mask on a frame at video resolution, (N, 1, H, W); objects without one get
        the no-object score. As in the official predictor, only pending prompts of the same kind count."""
        engine = state.engine
        side = self.model.config.low_res_mask_size
        logits = torch.full((len(state.objects), 1, side, side), NO_OBJECT_SCORE, device=engine.device)
        for row, obj in enumerate(state.objects.values()):
            output = obj.latest(frame_idx, is_cond)
            if output is not None:
                logits[row] = output.mask_logits.to(engine.device)
        return engine.to_video_resolution(logits, (state.video_height, state.video_width))
