"""ConceptTracker: every instance of a text phrase, found and followed on a stream of frames (SAM 3's video model).

    tracker = ConceptTracker(detector, tracker_model, tokenizer, "person")
    for frame in frames:
        found = tracker.step(frame)       # ConceptFrame: ids, masks at the frame's size, scores, which are visible

    # several phrases over the same models: one backbone pass a frame, each phrase with its own tracks
    for frame in frames:
        encoded = trackers[0].encode(frame)
        found = [tracker.step_encoded(encoded) for tracker in trackers]

    # trackers of several streams, one frame each (of any sizes), in one backbone pass: each on its own frame's part
    encoded = trackers[0].encode_batch(stream_frames)
    found = [tracker.step_encoded(own) for tracker, own in zip(trackers, encoded)]

Each frame, in Meta's order (`Sam3VideoBase._det_track_one_frame`):

1. One backbone pass: the trunk runs once and gives both pyramids, the detector's and the tracker's (the tracker's
   image encoder is the detector's vision backbone: one module, one copy of its weights). Several phrases on one
   stream share it: `encode` the frame once, then `step_encoded` each phrase's tracker on it. Trackers of several
   streams share it too: `encode_batch` runs the trunk once over their frames and splits the result by frame.
2. Detection: the phrase's queries on this frame (scores, boxes, 288 x 288 mask logits at 1008 px).
3. Propagation: every track's mask and object score on this frame from its memory, no memory written yet; masks
   tidied (holes and sprinkles up to `fill_hole_area` pixels).
4. Planning (`concept_plan.plan_frame`): new tracks, removals, reconditioning, occlusion suppression.
5. Reconditioning: a track re-prompted by a detection's mask takes that mask's object pointer, and the frame
   becomes a conditioning frame of every track found on the same frame as it (Meta's tracker state of that frame).
6. Memory of the tracks propagated: their (suppressed) masks at the memory encoder's size, pixel-wise overlaps
   resolved, masks that shrink below 30% of their area by it cleared, object scores +-10 by mask area.
7. New tracks: each detection's mask as a mask prompt (a conditioning frame), its memory from the mask as Meta's
   tracker consolidates it (at the frame's size, then 288, then the input size, overlaps resolved, binarised).
8. Removals; outputs: the tracks' masks and the new tracks' detection masks at the frame's size.

What differs from Meta's video predictor, and why:

- A stream has no future: Meta holds outputs back `hotstart_delay` frames so that tracks removed later are hidden on
  the frames it still holds; here a frame's result comes at once, and `ConceptFrame.removed_ids` says which tracks
  were removed on it (a caller that can wait hides them on its held frames). Unconfirmed tracks (masklet
  confirmation, off officially) are hidden by this frame's status, not by the status two frames later.
- Memory is bounded: each track keeps `max_cond_frames` conditioning frames (the first, then the newest) and the
  recent ring; Meta keeps every frame's memory and attends to the 4 conditioning frames closest in time, which
  on a forward stream are the newest (the first one aside).
- Meta stores frames as float16 after normalising them; here they stay float32.
- Temporal disambiguation (memory selection, on officially): Meta scores a frame once per tracker state, over the
  tracks found on one frame together (`group_score`), as here; but when a track of such a group is removed, Meta
  scores the group's past frames again without it, which may let frames pass the bar (or fail it) afterwards. Here
  the scores stay as they were when the frame was tracked, and a ring keeps only frames that passed: after such a
  removal the two may read different memories. Tracks found alone on their frame are not affected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.neck import BackboneFeatures
from ..model.sam2 import ImageFeatures as TrackerFeatures
from ..model.sam2 import SAM2Model
from ..model.sam3.detector import ImageFeatures as DetectorFeatures
from ..model.sam3.detector import Sam3Detector
from ..model.sam3.tracker_backbone import TRACKER_LEVELS
from ..processing.images import ImageLike, as_rgb_tensor
from ..processing.masks import keep_highest_object, non_overlapping
from ..processing.text import TextTokenizer
from .concept_masks import suppress_shrunk_masks, tidy_masks
from .concept_plan import ConceptOptions, ConceptPlan, ConceptState, plan_frame
from .engine import EncodedFrame, TrackingEngine
from .memory_arena import MemoryArena
from .memory_selection import MemoryScore, group_score
from .object_memory import RingMemory, new_ring
from .options import SAM3_TRACKER_CHANGES, STREAM_OPTIONS, TrackerOptions, tracker_options

PROMPT_MASK_LOGIT = 1024.0  # Meta's NO_OBJ_SCORE, negated: a mask prompt's logits at the frame's size
PRESENT_LOGIT = 10.0  # object score of a mask with any pixel (and its negation for an empty one)
SCORE_EPS = 1e-3  # Meta's detector scores pass through inverse_sigmoid with this eps: probabilities clamped to it


class EncodedConceptFrame(NamedTuple):
    """A frame after its backbone pass, as every phrase's tracker over the same models reads it (only reads it)."""

    tracker: EncodedFrame  # the tracker's features and the frame's size (index -1: each tracker numbers its frames)
    detector: DetectorFeatures  # the detector's pyramid, its coarsest level dropped (Meta's scalp=1)


class ConceptFrame(NamedTuple):
    """One frame's tracks, every track with an output on it, by ascending id."""

    frame_idx: int
    object_ids: list[int]  # (N,)
    masks: Tensor  # (N, H, W) bool at the frame's size; visible ones without overlaps (the likelier track wins)
    scores: Tensor  # (N,) each track's first detection score (Meta's out_probs)
    tracker_scores: Tensor  # (N,) tracker presence probability (a new track: its detection score)
    visible: Tensor  # (N,) bool: not removed, suppressed nor unconfirmed, and a non-empty mask
    removed_ids: list[int]  # tracks removed on this frame (their last output is this one, hidden)
    plan: ConceptPlan  # the frame's decisions

    def visible_masks(self) -> tuple[list[int], Tensor]:
        """What Meta's predictor outputs: the visible tracks' ids and masks (K, H, W) bool."""
        rows = torch.nonzero(self.visible).flatten().tolist()
        return [self.object_ids[r] for r in rows], self.masks[rows]


@dataclass
class _Track:
    memory: RingMemory
    group: int  # the frame the track was found on: Meta keeps the tracks of one frame in one tracker state


class ConceptTracker:
    """Find and track every instance of `phrase` on a stream of frames (H x W x 3 uint8 RGB arrays or tensors).

    `detector` (Sam3Detector) and `tracker_model` (SAM2Model of SAM 3's tracker variant) come from the same
    sam3.pt; the detector's vision backbone is replaced by the tracker's image encoder, which has both pyramids and
    the same weights, so that one trunk pass per frame serves both. `options` are the concept rules
    (`ConceptOptions`, Meta's official values); `tracker` the engine's options (StreamTracker's with SAM 3's
    tracker changes), changed by keywords of their names.

    The phrase's text is encoded once, here. Its tracks, ids, memory and association state are its own: trackers of
    several phrases may share the models and each frame's encoding (`encode`, `step_encoded`), nothing else.
    """

    def __init__(
        self,
        detector: Sam3Detector,
        tracker_model: SAM2Model,
        tokenizer: TextTokenizer,
        phrase: str,
        options: ConceptOptions = ConceptOptions(),
        tracker: Optional[TrackerOptions] = None,
        **changes: Any,
    ) -> None:
        if not tracker_model.config.variant.is_sam3:
            raise ValueError("ConceptTracker needs SAM 3's tracker (a SAM2Model of a sam3 variant)")
        vision = tracker_model.image_encoder
        if getattr(vision, "sam2_convs", None) is None:
            raise ValueError("the tracker's image encoder must have the tracker pyramid (sam2_convs)")
        detector.backbone.vision_backbone = vision  # one module for both: the same sam3.pt weights
        self.detector = detector
        self.model = tracker_model
        self.options = options
        self.phrase = phrase
        engine_options = tracker_options(STREAM_OPTIONS.changed(SAM3_TRACKER_CHANGES), tracker, changes)
        self.engine = TrackingEngine(tracker_model, engine_options, cached_frames=0)
        engine = self.engine
        placement = lambda: (engine.memory_dtype, engine.storage_device)  # noqa: E731 - read when slots are made
        threshold = engine_options.mf_threshold if engine_options.use_memory_selection else None
        self.arena = MemoryArena(tracker_model.config, engine_options.max_cond_frames, placement, threshold)
        with torch.inference_mode():
            ids = tokenizer([phrase], detector.spec.text.context_length).to(engine.device)
            self._text = detector.encode_text(ids)
        self.state = ConceptState()
        self._tracks: dict[int, _Track] = {}

    @property
    def object_ids(self) -> list[int]:
        """The live tracks, in the order they were found."""
        return list(self._tracks)

    def reset(self) -> None:
        """Forget every track and frame."""
        self._tracks.clear()
        self.arena.reclaim()
        self.state = ConceptState()

    def state_tensors(self) -> list[Tensor]:
        """Every tensor held between frames (the tracks' memory rows)."""
        return [t for track in self._tracks.values() for t in track.memory.tensors()]

    def encodes_like(self, other: ConceptTracker) -> bool:
        """Whether a frame `other` encodes is the one this tracker would encode: the same model, the same resizing."""
        return other.model is self.model and other.engine.options.resize == self.engine.options.resize

    @torch.inference_mode()
    def step(self, frame: ImageLike) -> ConceptFrame:
        """Detect and track on the next frame; returns its ConceptFrame."""
        return self.step_encoded(self.encode(frame))  # a frame that is not an image is refused before any change

    @torch.inference_mode()
    def encode(self, frame: ImageLike) -> EncodedConceptFrame:
        """One backbone pass over a frame: the trunk runs once and gives both pyramids, the tracker's features and
        the detector's. Any tracker that `encodes_like` this one can step on the result (`step_encoded`)."""
        return self.encode_batch([frame])[0]

    @torch.inference_mode()
    def encode_batch(self, frames: Sequence[ImageLike]) -> list[EncodedConceptFrame]:
        """One backbone pass over several frames (other streams' too, of any sizes: each is resized to the model's
        input), one trunk call of batch len(frames): each frame's EncodedConceptFrame, as `encode` makes it, in
        order. A frame that is not an image is refused before the trunk runs."""
        if not frames:
            return []
        rgbs = [as_rgb_tensor(frame) for frame in frames]  # each (3, H_i, W_i)
        model = self.model
        images = torch.cat([self.engine.model_input(rgb) for rgb in rgbs]).to(model.dtype)  # (B, 3, S, S)
        vision = model.image_encoder(images)
        backbone = BackboneFeatures(vision.sam2_levels[:TRACKER_LEVELS], model.image_encoder.pos_grid)
        # embed (B, C, h, w), high_res (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w), pos (1, C, h, w)
        tracked = model.features_from_backbone(backbone)
        detected = DetectorFeatures(vision.levels[:-1], vision.pos[:-1])  # levels and pos (B, C, H_i, W_i) each
        encoded = []
        for row, rgb in enumerate(rgbs):
            frame_features = EncodedFrame(-1, _tracker_row(tracked, row), (rgb.shape[1], rgb.shape[2]))
            encoded.append(EncodedConceptFrame(frame_features, _detector_row(detected, row)))
        return encoded

    @torch.inference_mode()
    def step_encoded(self, frame: EncodedConceptFrame) -> ConceptFrame:
        """Detect and track on the next frame, already encoded by `encode` (or `encode_batch`) of this tracker or of
        one that `encodes_like` it (several phrases, one backbone pass); returns its ConceptFrame. `frame` is only
        read."""
        frame_idx = self.state.frame_idx
        encoded = frame.tracker._replace(index=frame_idx)
        size = encoded.size
        scores, det_masks, det_boxes = self._detect(frame.detector)

        track_ids = self.state.track_ids
        views = [self._tracks[i].memory for i in track_ids]
        propagated = self.engine.propagate([encoded], views) if views else []
        track_masks, track_scores = _stacked_outputs(propagated, det_masks)
        track_masks = tidy_masks(track_masks, self.options.fill_hole_area)
        plan = plan_frame(self.state, self.options, scores, det_masks, det_boxes, track_masks, track_scores)

        pointers = [out.pointer for out in propagated]
        conditioning_groups = set()
        for obj_id, row in zip(plan.recondition_ids.tolist(), plan.recondition_rows.tolist()):
            position = track_ids.index(obj_id)
            pointers[position] = self._mask_prompts(encoded, det_masks[row : row + 1]).obj_ptr[0]
            conditioning_groups.add(self._tracks[obj_id].group)
        scores = self._group_scores(track_ids, [out.memory_score for out in propagated])
        self._write_tracked_memories(encoded, track_ids, plan.track_masks, pointers, scores, conditioning_groups)
        self._add_tracks(encoded, plan.new_ids.tolist(), det_masks[plan.new_rows], size)
        for obj_id in plan.removed_ids.tolist():
            del self._tracks[obj_id]
        self.arena.reclaim()
        return self._result(plan, det_masks, size)

    # The steps

    def _detect(self, image: DetectorFeatures) -> tuple[Tensor, Tensor, Tensor]:
        """The phrase's queries on an encoded frame: scores (Q,) as Meta's video model rounds them, mask logits
        (Q, h, w), boxes (Q, 4) normalised x0, y0, x1, y1."""
        found = self.detector.detect(image, self._text)
        scores = found.scores[0].float()  # (Q,)
        # Meta's video detector keeps its scores as logits of (score clamped by its inverse_sigmoid's eps)
        low, high = scores.clamp(min=SCORE_EPS), (1 - scores).clamp(min=SCORE_EPS)
        scores = low / (low + high)
        cx, cy, w, h = found.boxes[0].float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)  # (Q, 4)
        return scores, found.mask_logits[0].float(), boxes

    def _mask_prompts(self, frame: EncodedFrame, mask_logits: Tensor):
        """Detections' mask logits (K, h, w) as the tracker's mask prompts: binarised at the memory encoder's size
        (Meta's input_mask_size, 1152 at 1008 px); the decoder makes their pointers. Returns the MaskPrediction."""
        side = self.model.config.memory_mask_size
        binary = _resized(mask_logits, (side, side)) > 0  # (K, M, M)
        return self.engine.masks_as_outputs(frame, binary[:, None])

    def _group_scores(self, track_ids: list[int], scores: list[Optional[MemoryScore]]) -> list[Optional[MemoryScore]]:
        """Each propagated track's memory score as Meta's tracker scores its frame: one score per group of tracks
        found together (one tracker state there). None each without memory selection."""
        if not scores or scores[0] is None:
            return scores
        groups: dict[int, list[int]] = {}
        for row, obj_id in enumerate(track_ids):
            groups.setdefault(self._tracks[obj_id].group, []).append(row)
        by_row: list[Optional[MemoryScore]] = [None] * len(track_ids)
        for rows in groups.values():
            shared = group_score([scores[row] for row in rows])
            for row in rows:
                by_row[row] = shared
        return by_row

    def _write_tracked_memories(
        self,
        frame: EncodedFrame,
        track_ids: list[int],
        track_masks: Tensor,
        pointers: list[Tensor],
        scores: list[Optional[MemoryScore]],
        conditioning_groups: set[int],
    ) -> None:
        """The propagated tracks' memories from their planned masks (M, h, w), as Meta's video model encodes them."""
        if not track_ids:
            return
        side = self.model.config.memory_mask_size
        masks = _resized(track_masks, (side, side))[:, None]  # (M, 1, M', M')
        masks = suppress_shrunk_masks(masks)
        present = (masks > 0).flatten(1).any(1, keepdim=True)  # (M, 1)
        object_scores = torch.where(present, PRESENT_LOGIT, -PRESENT_LOGIT)
        memories = self.engine.encode_masks([frame], masks, object_scores, binarize=False)
        for row, obj_id in enumerate(track_ids):
            track = self._tracks[obj_id]
            if track.group in conditioning_groups:
                track.memory.write_conditioning(frame.index, memories[row], pointers[row])
            else:
                track.memory.write_tracked(frame.index, memories[row], pointers[row], scores[row])

    def _add_tracks(self, frame: EncodedFrame, new_ids: list[int], det_masks: Tensor, size: tuple[int, int]) -> None:
        """Start tracks from detections' mask logits (K, h, w): a conditioning frame each, its memory from the
        prompt mask as Meta's tracker consolidates it (the frame's size, then low resolution, then the input size)."""
        if not new_ids:
            return
        prediction = self._mask_prompts(frame, det_masks)
        side = self.model.config.memory_mask_size
        binary = (_resized(det_masks, (side, side)) > 0).float()  # (K, M, M)
        at_frame = F.interpolate(binary[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)
        logits = torch.where(at_frame > 0.5, PROMPT_MASK_LOGIT, -PROMPT_MASK_LOGIT)  # (K, 1, H, W)
        low = self.model.config.low_res_mask_size
        logits = F.interpolate(logits, size=(low, low), mode="bilinear", align_corners=False, antialias=True)
        image_size = self.model.config.image_size
        logits = F.interpolate(logits, size=(image_size, image_size), mode="bilinear", align_corners=False)
        logits = keep_highest_object(logits)  # the tracks found together do not overlap in memory
        memories = self.engine.encode_masks([frame], logits, prediction.object_score_logits, binarize=True)
        for row, obj_id in enumerate(new_ids):
            track = _Track(new_ring(self.arena), group=frame.index)
            track.memory.write_conditioning(frame.index, memories[row], prediction.obj_ptr[row])
            self._tracks[obj_id] = track

    def _result(self, plan: ConceptPlan, det_masks: Tensor, size: tuple[int, int]) -> ConceptFrame:
        """The frame's outputs: tracks' planned masks and new tracks' tidied detection masks, at the frame's size."""
        new_masks = tidy_masks(det_masks[plan.new_rows], self.options.fill_hole_area)
        by_id = dict(zip(plan.track_ids.tolist(), plan.track_masks))
        by_id.update(zip(plan.new_ids.tolist(), new_masks))
        ids = plan.output_ids.tolist()
        if not ids:
            empty = torch.zeros(0, *size, dtype=torch.bool, device=det_masks.device)
            none = torch.zeros(0)
            return ConceptFrame(plan.frame_idx, [], empty, none, none, none.bool(), [], plan)
        logits = torch.stack([by_id[i] for i in ids])  # (N, h, w)
        masks = _resized(logits, size) > 0  # (N, H, W)
        hidden = plan.output_hidden.clone()
        if plan.unconfirmed_ids.numel():
            hidden |= torch.isin(plan.output_ids, plan.unconfirmed_ids)
        visible = masks.flatten(1).any(1).cpu() & ~hidden
        rows = torch.nonzero(visible).flatten()
        if rows.numel() > 1:
            masks[rows] = non_overlapping(masks[rows], plan.output_tracker_scores[rows].to(masks.device))
        return ConceptFrame(
            plan.frame_idx,
            ids,
            masks,
            plan.output_scores,
            plan.output_tracker_scores,
            visible,
            plan.removed_ids.tolist(),
            plan,
        )


def _tracker_row(features: TrackerFeatures, row: int) -> TrackerFeatures:
    """One frame of a batch's tracker features: (B, ...) -> (1, ...) views; the position grid is every frame's."""
    one = slice(row, row + 1)
    return TrackerFeatures(features.embed[one], tuple(level[one] for level in features.high_res), features.pos)


def _detector_row(features: DetectorFeatures, row: int) -> DetectorFeatures:
    """One frame of a batch's detector pyramid: levels and position encodings (B, C, H_i, W_i) -> (1, C, H_i, W_i)
    views (the encodings are views of one grid, so every row's is the same)."""
    one = slice(row, row + 1)
    return DetectorFeatures([level[one] for level in features.levels], [pos[one] for pos in features.pos])


def _stacked_outputs(outputs, like: Tensor) -> tuple[Tensor, Tensor]:
    """Propagated outputs -> mask logits (M, h, w) float32 and object score logits (M,)."""
    if not outputs:
        side = like.shape[-1]
        return like.new_zeros(0, side, side), like.new_zeros(0)
    masks = torch.stack([out.mask_logits for out in outputs]).to(like.device).float()[:, 0]  # (M, 1, h, w) -> (M, h, w)
    scores = torch.stack([out.object_score for out in outputs]).to(like.device).float()[:, 0]  # (M, 1) -> (M,)
    return masks, scores


def _resized(masks: Tensor, size) -> Tensor:
    """Mask logits (N, h, w) -> (N, H, W), bilinear."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
