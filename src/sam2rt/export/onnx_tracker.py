"""OnnxStreamTracker: StreamTracker's streaming semantics over an export folder, with numpy and onnxruntime
only (no PyTorch at run time).

Frames are (H, W, 3) uint8 RGB arrays (or floats in [0, 1]); prompts (clicks, a box, or a mask) land on the
newest frame. A prompt on an object not tracked on that frame starts it, a prompt on a tracked object corrects
it; either becomes a conditioning frame (the stream default, `add_all_frames_to_correct_as_cond`), its memory
encoded when the next frame arrives. Each step runs one memory-attention, one decoder and one memory-encoder
call for all objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np

from . import manifest as files
from .manifest import ExportManifest
from .numpy_ops import fill_holes, keep_highest_object, mask_input, model_input, resize
from .onnx_memory import ObjectMemory, pack

PROMPT_MASK_LOGIT_CLAMP = 32.0  # previous logits fed back with new clicks, as the engine clamps them
HOLE_FILL_LOGIT = 0.1
BOX_CORNER_LABELS = (2, 3)


class FrameResult(NamedTuple):
    frame_idx: int
    object_ids: list[int]
    mask_logits: np.ndarray  # (N, H, W) float32 at the frame's resolution; > 0 inside the object
    object_scores: np.ndarray  # (N,) presence logits; > 0 when the object is judged visible

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool"""
        return self.mask_logits > 0


class _Output(NamedTuple):
    mask_logits: np.ndarray  # (1, 4h, 4w) low-resolution logits, small holes filled
    pointer: np.ndarray  # (C,)
    object_score: np.ndarray  # (1,)


@dataclass
class _Frame:
    index: int
    size: tuple[int, int]  # (height, width)
    embed: np.ndarray  # (1, C, h, w)
    embed_without_memory: np.ndarray  # (1, C, h, w)
    high_res: tuple[np.ndarray, np.ndarray]  # (1, C/8, 4h, 4w), (1, C/4, 2h, 2w)


@dataclass
class _Object:
    memory: ObjectMemory
    latest: Optional[_Output] = None  # output on the newest frame
    tracked_on_latest: bool = False  # tracked by step() on the newest frame: a prompt is a correction
    pending: Optional[_Output] = None  # a prompt on the newest frame, waiting for its memory
    points: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False)  # clicks on the newest frame


class OnnxStreamTracker:
    """Track objects on a stream with the graphs of `sam2rt export` (an export folder).

    `threads`: onnxruntime's intra-op threads (None: its default, every core). `providers`: onnxruntime's
    execution providers (None: the CPU's).
    """

    def __init__(
        self,
        folder: Union[str, Path],
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        threads: Optional[int] = None,
        providers: Optional[list[str]] = None,
    ) -> None:
        import onnxruntime

        self.folder = Path(folder)
        self.manifest = ExportManifest.read(self.folder)
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        settings = onnxruntime.SessionOptions()
        if threads is not None:
            settings.intra_op_num_threads = threads
        # Each graph has its own thread pool, and a pool's threads spin for work after each run: the next graph's
        # threads would share the cores with them (EdgeTAM at 512 on 2 cores: memory encoder 68 ms a frame, 28 alone).
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers or ["CPUExecutionProvider"]

        def session(name: str) -> onnxruntime.InferenceSession:
            return onnxruntime.InferenceSession(os.fspath(self.folder / name), settings, providers=providers)

        self._image_encoder = session(files.IMAGE_ENCODER)
        self._decoder = session(files.MASK_DECODER)
        self._decoder_single = session(files.MASK_DECODER_SINGLE)
        self._memory_attention = {  # (F, P) -> the graph of that memory capacity
            tuple(capacity): session(self.manifest.memory_attention(*capacity))
            for capacity in self.manifest.memory_capacities
        }
        self._memory_encoder = session(files.MEMORY_ENCODER)
        self._mask_prompt = session(files.MASK_PROMPT)
        self._objects: dict[int, _Object] = {}
        self._frame: Optional[_Frame] = None

    @property
    def frame_idx(self) -> int:
        """Index of the newest frame (-1 before the first)."""
        return -1 if self._frame is None else self._frame.index

    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    def step(self, frame: np.ndarray) -> FrameResult:
        """Add the next frame and track every object on it."""
        rgb = _checked_frame(frame)
        self._commit_pending()
        embed, without_memory, high_res_s4, high_res_s8 = self._image_encoder.run(
            None, {"images": model_input(rgb, self.manifest.image_size)}
        )
        self._frame = _Frame(self.frame_idx + 1, rgb.shape[:2], embed, without_memory, (high_res_s4, high_res_s8))
        if self._objects:
            self._track(list(self._objects.values()))
        return self.result()

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

        points (N, 2) with labels (N,) (1 foreground, 0 background) and/or a box (x0, y0, x1, y1), in pixels of the
        frame (x before y), or fractions of its width and height with normalize_coords=False; or a mask (H, W),
        non-zero on the object, taken as its segmentation.
        """
        if self._frame is None:
            raise RuntimeError("no frame yet: call step(frame) before add_prompt(...)")
        if mask is not None:
            if points is not None or box is not None:
                raise ValueError("give either a mask or points/box for one prompt, not both")
            return self._add_mask(int(obj_id), mask)
        if points is None and box is None:
            raise ValueError("a prompt needs points (with labels), a box, or a mask")
        if box is not None and not clear_old_points:
            raise ValueError("a box must come first: add it with clear_old_points=True")
        obj_id = int(obj_id)
        coords, point_labels = self._clicks(points, labels, box, normalize_coords)
        obj = self._objects.get(obj_id)
        if not clear_old_points and obj is not None and obj.points is not None:
            coords = np.concatenate([obj.points[0], coords], axis=1)
            point_labels = np.concatenate([obj.points[1], point_labels], axis=1)
        obj = obj or self._objects.setdefault(obj_id, _Object(ObjectMemory(self.manifest)))
        frame = self._frame
        if obj.tracked_on_latest:  # a correction: on the object's memory, as tracking saw the frame
            embed = self._conditioned(frame, [obj])
        else:  # a new object, or more clicks on one: the frame without memory
            embed = frame.embed_without_memory
        side = 4 * self.manifest.feature_size
        previous = np.zeros((1, 1, side, side), dtype=np.float32)
        if obj.latest is not None:
            previous = np.clip(obj.latest.mask_logits[None], -PROMPT_MASK_LOGIT_CLAMP, PROMPT_MASK_LOGIT_CLAMP)
        decoder = self._decoder if coords.shape[1] <= 1 else self._decoder_single  # one click is ambiguous
        output = self._decode(decoder, embed, coords, point_labels, previous, obj.latest is not None)[0]
        obj.pending = obj.latest = output
        obj.points = (coords, point_labels)
        return self.result()

    def _add_mask(self, obj_id: int, mask) -> FrameResult:
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0 or mask.dtype.kind not in "biuf":
            raise ValueError(f"mask must be a non-empty 2D array (H, W) of numbers, got {mask.dtype} {mask.shape}")
        frame = self._frame
        feeds = {"embed": frame.embed, "high_res_s4": frame.high_res[0], "high_res_s8": frame.high_res[1]}
        feeds["mask"] = mask_input(mask, self.manifest.image_size)
        obj = self._objects.setdefault(obj_id, _Object(ObjectMemory(self.manifest)))
        obj.pending = obj.latest = self._outputs(*self._mask_prompt.run(None, feeds))[0]
        obj.points = None
        return self.result()

    def remove_object(self, obj_id: int) -> FrameResult:
        """Stop tracking an object; returns the newest frame's result without it."""
        if int(obj_id) not in self._objects:
            raise KeyError(f"no object with id {obj_id}; tracked ids: {self.object_ids}")
        del self._objects[int(obj_id)]
        return self.result()

    def reset(self) -> None:
        """Forget every object and frame."""
        self._objects.clear()
        self._frame = None

    def result(self) -> FrameResult:
        """Every object's output on the newest frame, at the frame's resolution."""
        height, width = self._frame.size
        ids = [obj_id for obj_id, obj in self._objects.items() if obj.latest is not None]
        if not ids:
            return FrameResult(self._frame.index, [], np.zeros((0, height, width), np.float32), np.zeros(0, np.float32))
        outputs = [self._objects[i].latest for i in ids]
        logits = np.stack([out.mask_logits for out in outputs])  # (N, 1, 4h, 4w)
        scores = np.concatenate([out.object_score for out in outputs])  # (N,)
        video = resize(logits, (height, width), antialias=False)[:, 0]  # (N, H, W)
        if self.non_overlap_masks:
            video = keep_highest_object(video)
        return FrameResult(self._frame.index, ids, video.astype(np.float32), scores)

    # The steps

    def _commit_pending(self) -> None:
        """The prompts on the newest frame become conditioning memories: one memory-encoder call for all."""
        pending = [obj for obj in self._objects.values() if obj.pending is not None]
        if not pending:
            return
        masks = np.stack([obj.pending.mask_logits for obj in pending])  # (B, 1, 4h, 4w)
        scores = np.stack([obj.pending.object_score for obj in pending])  # (B, 1)
        binarize = np.ones(len(pending), dtype=bool)  # masks the user shaped: thresholded
        memories = self._encode_memory(masks, scores, binarize)
        for obj, memory in zip(pending, memories):
            obj.memory.write_conditioning(self._frame.index, memory, obj.pending.pointer)
            obj.pending = None

    def _track(self, objects: list[_Object]) -> None:
        frame = self._frame
        conditioned = self._conditioned(frame, objects)
        batch = len(objects)
        no_clicks = np.zeros((batch, 1, 2), dtype=np.float32), np.full((batch, 1), -1, dtype=np.int32)
        side = 4 * self.manifest.feature_size
        no_mask = np.zeros((batch, 1, side, side), dtype=np.float32)
        best_masks, pointers, scores = self._run_decoder(self._decoder, conditioned, *no_clicks, no_mask, False)
        # The memory from the mask as decoded; small holes are filled in the output only, as the engine does.
        memories = self._encode_memory(best_masks, scores, np.zeros(batch, dtype=bool))
        filled = fill_holes(best_masks, self.fill_hole_area, HOLE_FILL_LOGIT)
        for row, obj in enumerate(objects):
            obj.memory.write_tracked(frame.index, memories[row], pointers[row])
            obj.latest = _Output(filled[row], pointers[row], scores[row])
            obj.tracked_on_latest, obj.points = True, None

    def _conditioned(self, frame: _Frame, objects: list[_Object]) -> np.ndarray:
        """The frame's features conditioned on each object's memory: (B, C, h, w)."""
        memory = pack([obj.memory for obj in objects], frame.index, self.manifest)
        graph = self._memory_attention[memory.spatial.shape[1], memory.pointers.shape[1]]
        (conditioned,) = graph.run(None, {"embed": frame.embed, **memory._asdict()})
        return conditioned

    def _decode(
        self, decoder, embed: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray, has_mask: bool
    ) -> list[_Output]:
        return self._outputs(*self._run_decoder(decoder, embed, coords, labels, mask, has_mask))

    def _outputs(self, best_masks: np.ndarray, pointers: np.ndarray, scores: np.ndarray) -> list[_Output]:
        """A prompt's outputs, one per row, small holes filled as the engine fills them."""
        filled = fill_holes(best_masks, self.fill_hole_area, HOLE_FILL_LOGIT)
        return [_Output(filled[row], pointers[row], scores[row]) for row in range(len(filled))]

    def _run_decoder(self, decoder, embed, coords, labels, mask, has_mask: bool) -> list[np.ndarray]:
        high_res_s4, high_res_s8 = self._frame.high_res
        flags = np.full(embed.shape[0], has_mask, dtype=bool)
        return decoder.run(
            None,
            {
                "embed": embed,
                "high_res_s4": high_res_s4,
                "high_res_s8": high_res_s8,
                "coords": coords.astype(np.float32),
                "labels": labels.astype(np.int32),
                "mask_logits": mask.astype(np.float32),
                "has_mask": flags,
            },
        )

    def _encode_memory(self, masks: np.ndarray, scores: np.ndarray, binarize: np.ndarray) -> np.ndarray:
        feeds = {"embed": self._frame.embed, "mask_logits": masks, "object_score_logits": scores, "binarize": binarize}
        (memory,) = self._memory_encoder.run(None, feeds)
        return memory  # (B, N, C_mem)

    def _clicks(self, points, labels, box, normalize_coords: bool) -> tuple[np.ndarray, np.ndarray]:
        """Clicks and box corners (corners first) in model pixels: (1, N, 2) float32 and labels (1, N) int32."""
        coords, point_labels = np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
        if points is not None:
            if labels is None:
                raise ValueError("labels must be given with points")
            coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            point_labels = np.asarray(labels).astype(np.int32).reshape(-1)
            if len(point_labels) != len(coords):
                raise ValueError(f"labels must give one label per point: {len(coords)} points, {len(point_labels)}")
            if not np.isin(point_labels, (0, 1)).all():
                raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {point_labels.tolist()}")
        if box is not None:
            corners = np.asarray(box, dtype=np.float32).reshape(2, 2)
            if (corners[1] < corners[0]).any():
                raise ValueError(f"box must be given as x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {box}")
            coords = np.concatenate([corners, coords])
            point_labels = np.concatenate([np.array(BOX_CORNER_LABELS, np.int32), point_labels])
        if not np.isfinite(coords).all():
            raise ValueError("points and box must be finite numbers")
        height, width = self._frame.size
        extent = np.array([width, height] if normalize_coords else [1.0, 1.0], dtype=np.float32)
        if ((coords < 0) | (coords > extent)).any():
            raise ValueError(f"a point or box corner lies outside the {width}x{height} frame")
        # Each axis over its own extent, then to the model's square input, as processing.prompts does.
        model_pixels = np.stack([coords[:, 0] / extent[0], coords[:, 1] / extent[1]], axis=-1)
        return (model_pixels * self.manifest.image_size).astype(np.float32)[None], point_labels[None]


def _checked_frame(frame) -> np.ndarray:
    rgb = np.asarray(frame)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"a frame is an (H, W, 3) RGB array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8 and not (rgb.dtype.kind == "f" and np.isfinite(rgb).all()):
        raise ValueError(f"a frame is uint8, or float in [0, 1]; got {rgb.dtype}")
    return rgb
