"""What SAM 3's video model decides each frame for a concept (text or exemplar) prompt, for one stream.

The detector finds every instance of the concept on each frame; the tracker carries the instances found so far
(tracks, Meta's "masklets") from frame to frame. This module holds the rules that join the two, with Meta's
semantics and option names (`Sam3VideoBase` of the `sam3` package), as a pure function of tensors and a small
per-stream state: which detections start new tracks, which tracks are removed, which are re-prompted from a
detection, and which outputs are suppressed or hidden. Running the models is the engine's job.
The rules that only compare this frame's masks (1 to 3 and rule 7's overlap test) are in `concept_matching`;
this module keeps the per-stream state and the rules that read it.

The rules, in the order they are applied on frame t (every threshold is a `ConceptOptions` field):

1. Detections. Queries scoring above `score_threshold_detection` take part. If `det_nms_thresh` > 0, greedy
   non-maximum suppression by mask IoU keeps, from the highest score down, those whose IoU with every kept one
   is at most `det_nms_thresh`.
2. Association, by the IoU of binarised masks (logits > 0); detection and track masks are compared at the
   smaller of their two resolutions (the larger resized, bilinear). A detection matches every track with IoU
   >= `assoc_iou_thresh` (several tracks may match one detection). A track is unmatched when its mask is not
   empty and no detection reaches `trk_assoc_iou_thresh` with it (a stricter bar, so a track can be both
   matched and unmatched); a track with an empty mask is empty. A detection becomes a new track when no track
   matches it and it scores >= `new_det_thresh`; with no track at all, every detection becomes one. A detection
   scoring >= `high_conf_thresh` that matches and whose best IoU is >= `high_iou_thresh` is the recondition
   candidate of its best track (the later detection wins a tie for a track).
3. Optionally (`suppress_det_close_to_boundary`) new detections whose box centre lies within 2.5% of the image
   border are dropped; then, if the tracks would exceed `max_num_objects`, only the best-scoring new ones stay.
   New tracks get consecutive ids after the largest id ever given.
4. Keep-alive: a new track starts at `init_trk_keep_alive`; a matched track gains one (up to
   `max_trk_keep_alive`), an unmatched one loses one (down to `min_trk_keep_alive`), and with
   `decrease_trk_keep_alive_for_empty_masklets` an empty one loses one too.
5. Hotstart: a track younger than `hotstart_delay` frames (first frame > t - delay) is removed once it has been
   unmatched on `hotstart_unmatch_thresh` frames, or once it has shared a detection with an older track (the one
   first seen earliest) on `hotstart_dup_thresh` frames (counted once per shared detection). Without
   `suppress_unmatched_only_within_hotstart`, a track ever unmatched whose keep-alive is <= 0 is hidden on this
   frame (still tracked).
6. Reconditioning: every `recondition_every_nth_frame`-th frame (t divisible by it), each recondition candidate
   whose tracker object score (a logit) is > `high_conf_thresh` is re-prompted with its detection's mask.
7. Occlusion: if `suppress_overlapping_based_on_recent_occlusion_threshold` > 0, of two tracks whose masks
   overlap with IoU >= it, the one occluded more recently (empty or suppressed on a later frame) is suppressed,
   if the other one was ever occluded; a track removed on this frame before the rule saw it counts as occluded
   now. Suppressed masks become -10 logits, for the memory encoder and the output alike.
8. Masklet confirmation (`masklet_confirmation_enable`): a track matched (or new) on
   `masklet_confirmation_consecutive_det_thresh` consecutive frames is confirmed; unconfirmed tracks are hidden.

Outputs of frame t: the tracks' masks after rule 7, the new tracks' detection masks, each with its first
detection score; removed (rule 5) and suppressed (rule 5) tracks are hidden, as are empty masks (the engine
checks those at the output resolution). Meta's video predictor holds outputs back `hotstart_delay` frames so that
tracks removed later are hidden from the frames it still holds (`ConceptPlan.removed_ids` is what such a buffer
needs), and hides a frame's unconfirmed tracks by their status `masklet_confirmation_consecutive_det_thresh` - 1
frames later (`ConceptPlan.unconfirmed_ids` of that frame).

Note that, as in Meta's model, a track is only ever removed during its hotstart window: a track whose object has
left stays, with an empty mask, for the rest of the stream (up to `max_num_objects` tracks, after which new
detections are dropped).

What differs from Meta, and why:

- One stream, one process: Meta's split of tracks over GPUs (ranks, broadcasts, per-GPU id lists) is dropped;
  with one GPU it decides nothing (every track on rank 0, one id list in the order tracks were added).
- Forward only: Meta's `reverse` direction is for offline videos; a stream has none.
- Bounded memory: Meta keeps a list of frame indices per track and per track pair, per-frame dicts of tracker
  scores and suppressed ids, and every removed id, all growing with the stream. The rules read only the lengths of
  those lists, this frame's entries and whether an id was removed: here a counter per live track, a counter per
  live pair that can still trigger a removal (its younger track inside its hotstart window), and nothing for
  removed tracks (ids are never reused, so a removed id never comes back).
- Meta marks a track removed on its first tracked frame as "always occluded" with frame 100000, which a stream
  passes after an hour; here the mark is larger than any frame index.
- Left out (off in the official configuration): Hungarian one-to-one matching (`o2o_matching_masklets_enable`)
  and reconditioning by box-IoU mismatch (`reconstruction_bbox_iou_thresh`). Meta hard-codes the two 0.8 bars of
  rule 2 and 6; they are options here under Hugging Face's names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .concept_matching import (
    NEVER_OCCLUDED,
    Association,
    associate,
    new_detections,
    occlusion_suppression,
    select_detections,
)

ALWAYS_OCCLUDED = 2**62  # a track removed before the occlusion rule saw it: later than any frame
NO_OBJECT_LOGIT = -10.0  # what a suppressed track's mask becomes
UNLIMITED_OBJECTS = 10000  # Meta's stand-in for max_num_objects <= 0


@dataclass(frozen=True)
class ConceptOptions:
    """The options of SAM 3's concept tracking, Meta's names and the official values (`build_sam3_video_model`).

    Hugging Face's `Sam3VideoConfig` has the same names and defaults, except: `max_num_objects` 10000 there (the
    same: Meta turns -1 into 10000); `high_conf_thresh` and `high_iou_thresh` are its names for Meta's hard-coded
    0.8; it has no `suppress_det_close_to_boundary` nor masklet confirmation, and adds `recondition_on_trk_masks`
    (default True: re-prompt with the track's own mask, not Meta's detection mask; not an option here).
    """

    score_threshold_detection: float = 0.5  # detections must score above this to take part at all
    det_nms_thresh: float = 0.1  # mask-IoU bar of the detections' NMS (0: no NMS)
    assoc_iou_thresh: float = 0.1  # a detection matches a track at this mask IoU
    trk_assoc_iou_thresh: float = 0.5  # a non-empty track below this IoU with every detection is unmatched
    new_det_thresh: float = 0.7  # an unmatched detection needs this score to start a track
    hotstart_delay: int = 15  # frames a new track is on probation (0: no hotstart removals)
    hotstart_unmatch_thresh: int = 8  # unmatched frames that remove a track on probation
    hotstart_dup_thresh: int = 8  # frames sharing a detection with an older track that remove one on probation
    suppress_unmatched_only_within_hotstart: bool = True  # False: hide tracks whose keep-alive ran out
    init_trk_keep_alive: int = 30
    max_trk_keep_alive: int = 30
    min_trk_keep_alive: int = -1
    suppress_overlapping_based_on_recent_occlusion_threshold: float = 0.7  # track-track IoU bar (0: off)
    decrease_trk_keep_alive_for_empty_masklets: bool = False
    suppress_det_close_to_boundary: bool = False
    fill_hole_area: int = 16  # the engine's hole filling of track masks, before they reach `plan_frame`
    max_num_objects: int = -1  # tracks at most (-1: no limit)
    recondition_every_nth_frame: int = 16  # 0: never recondition
    masklet_confirmation_enable: bool = False
    masklet_confirmation_consecutive_det_thresh: int = 3
    high_conf_thresh: float = 0.8  # Meta's HIGH_CONF_THRESH: detection score and tracker score logit bar
    high_iou_thresh: float = 0.8  # Meta's HIGH_IOU_THRESH: detection-track IoU bar of a recondition
    # Ours, not Meta's: a track past its hotstart that has been unmatched this many frames in a row is removed
    # (0: never, as Meta, whose tracks past their hotstart live to the end of the video). An endless stream needs
    # it, or tracks of objects long gone pile up (up to max_num_objects), each still tracked every frame.
    retire_unmatched_frames: int = 0

    def __post_init__(self) -> None:
        for name in ("score_threshold_detection", "det_nms_thresh", "assoc_iou_thresh", "trk_assoc_iou_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.suppress_overlapping_based_on_recent_occlusion_threshold <= 1.0:
            raise ValueError("suppress_overlapping_based_on_recent_occlusion_threshold must lie in [0, 1]")
        for name in ("hotstart_delay", "hotstart_unmatch_thresh", "hotstart_dup_thresh", "fill_hole_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if (
            self.hotstart_delay > 0
            and max(self.hotstart_unmatch_thresh, self.hotstart_dup_thresh) > self.hotstart_delay
        ):
            raise ValueError("hotstart_unmatch_thresh and hotstart_dup_thresh must not exceed hotstart_delay")
        if not self.min_trk_keep_alive <= self.max_trk_keep_alive:
            raise ValueError("min_trk_keep_alive must not exceed max_trk_keep_alive")
        if self.retire_unmatched_frames < 0:
            raise ValueError("retire_unmatched_frames must not be negative (0: never)")
        if self.recondition_every_nth_frame < 0:
            raise ValueError("recondition_every_nth_frame must not be negative (0: off)")
        if self.masklet_confirmation_consecutive_det_thresh < 1:
            raise ValueError("masklet_confirmation_consecutive_det_thresh must be at least 1")

    @property
    def object_limit(self) -> int:
        """The most tracks at once (Meta's 10000 when `max_num_objects` is not positive)."""
        return self.max_num_objects if self.max_num_objects > 0 else UNLIMITED_OBJECTS

    def changed(self, **changes) -> ConceptOptions:
        """These options with some fields changed (an unknown name fails)."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrackRecord:
    """What the rules remember about one live track."""

    first_frame: int  # the frame its detection started it
    score: float  # that detection's score: the track's output probability
    keep_alive: int
    unmatched_frames: int = 0  # frames it was unmatched (rule 5 reads only the count)
    unmatched_run: int = 0  # unmatched frames since its last match (retire_unmatched_frames)
    last_occluded: Optional[int] = None  # last frame empty or suppressed; None until rule 7 first saw it
    consecutive_detections: int = 0  # rule 8
    confirmed: bool = False


@dataclass
class ConceptState:
    """One stream's memory between frames: its live tracks (in the order they were added, the order of the
    tracker's masks), the duplicate-pair counters that can still remove a track, the largest id given and the
    index of the next frame."""

    tracks: dict[int, TrackRecord] = field(default_factory=dict)
    duplicate_frames: dict[tuple[int, int], int] = field(default_factory=dict)  # (older id, younger id) -> frames
    max_obj_id: int = -1
    frame_idx: int = 0

    @property
    def track_ids(self) -> list[int]:
        """Ids of the live tracks, in the order `plan_frame` expects their masks."""
        return list(self.tracks)


class ConceptPlan(NamedTuple):
    """One frame's decisions. "Rows" index the detector's queries as given to `plan_frame`; (M,) tensors follow
    the tracks as given (`track_ids`); ids are int64."""

    frame_idx: int
    track_ids: Tensor  # (M,) the tracks the frame started with
    detections: Tensor  # (D,) rows above the score threshold that survived NMS, ascending
    new_ids: Tensor  # (K,) ids of the tracks started on this frame
    new_rows: Tensor  # (K,) the detection row each new track starts from (its mask prompts the tracker)
    removed_ids: Tensor  # (R,) tracks removed on this frame (after their memory is written), ascending
    recondition_ids: Tensor  # (C,) tracks to re-prompt on this frame with a detection's mask
    recondition_rows: Tensor  # (C,) that detection's row
    track_masks: Tensor  # (M, H, W) the tracks' mask logits after rule 7: for the memory encoder and the output
    occlusion_suppressed: Tensor  # (M,) bool: rule 7 set the track's mask to -10
    unmatched_ids: Tensor  # (U,) non-empty tracks that no detection confirmed on this frame
    suppressed_ids: Tensor  # (S,) tracks hidden on this frame for a spent keep-alive (rule 5), still tracked
    unconfirmed_ids: Tensor  # (N,) live tracks not confirmed yet (rule 8; empty when it is off)
    output_ids: Tensor  # (M + K,) every track with an output on this frame, ascending
    output_scores: Tensor  # (M + K,) their first detection's score (Meta's out_probs; -1e4 once removed)
    output_tracker_scores: Tensor  # (M + K,) tracker score (sigmoid) or, for new tracks, detection score
    output_hidden: Tensor  # (M + K,) bool: removed or suppressed on this frame


def _hotstart(
    state: ConceptState,
    options: ConceptOptions,
    frame: int,
    assoc: Association,
    track_ids: list[int],
    new_ids: list[int],
    new_scores: list[float],
) -> tuple[set[int], set[int]]:
    """Rules 4 and 5 on the records of `state` (new tracks are added to it): the ids removed and the ids
    suppressed for a spent keep-alive."""
    tracks = state.tracks
    for obj_id, score in zip(new_ids, new_scores):
        tracks[obj_id] = TrackRecord(first_frame=frame, score=score, keep_alive=options.init_trk_keep_alive)
    matched = {track_ids[t] for positions in assoc.matches for t in positions}
    for obj_id in matched:
        tracks[obj_id].keep_alive = min(options.max_trk_keep_alive, tracks[obj_id].keep_alive + 1)
        tracks[obj_id].unmatched_run = 0
    for position, unmatched in enumerate(assoc.unmatched):
        if unmatched:
            record = tracks[track_ids[position]]
            record.unmatched_frames += 1
            record.unmatched_run += 1
            record.keep_alive = max(options.min_trk_keep_alive, record.keep_alive - 1)
    if options.decrease_trk_keep_alive_for_empty_masklets:
        for position, empty in enumerate(assoc.empty):
            if empty:
                record = tracks[track_ids[position]]
                record.keep_alive = max(options.min_trk_keep_alive, record.keep_alive - 1)

    probation_after = frame - options.hotstart_delay  # a track first seen after this frame is on probation
    removed, suppressed = set(), set()
    for obj_id in track_ids:
        record = tracks[obj_id]
        if record.unmatched_frames == 0:
            continue  # Meta looks only at tracks that were ever unmatched
        if record.unmatched_frames >= options.hotstart_unmatch_thresh and record.first_frame > probation_after:
            removed.add(obj_id)
        elif 0 < options.retire_unmatched_frames <= record.unmatched_run:
            removed.add(obj_id)
        elif record.keep_alive <= 0 and not options.suppress_unmatched_only_within_hotstart:
            suppressed.add(obj_id)

    for positions in assoc.matches:
        if len(positions) < 2:
            continue
        ids = [track_ids[t] for t in positions]
        oldest = min(ids, key=lambda obj_id: tracks[obj_id].first_frame)  # the first listed on a tie
        for obj_id in ids:
            if obj_id != oldest:
                pair = (oldest, obj_id)
                state.duplicate_frames[pair] = state.duplicate_frames.get(pair, 0) + 1
    for (_, obj_id), count in state.duplicate_frames.items():
        if obj_id in tracks and tracks[obj_id].first_frame > probation_after and count >= options.hotstart_dup_thresh:
            removed.add(obj_id)
    return removed, suppressed


def _ids(values) -> Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


def plan_frame(
    state: ConceptState,
    options: ConceptOptions,
    det_scores: Tensor,
    det_masks: Tensor,
    det_boxes: Tensor,
    track_masks: Tensor,
    track_scores: Tensor,
) -> ConceptPlan:
    """Decide frame `state.frame_idx` and update `state` (then at the next frame).

    det_scores (Q,) detection probabilities, det_masks (Q, Hd, Wd) mask logits and det_boxes (Q, 4) normalised
    x0, y0, x1, y1: the detector's queries for this frame (no detections: Q = 0). track_masks (M, H, W) mask logits
    (after the engine's hole filling) and track_scores (M,) object score logits: the tracker's propagation of the
    tracks `state.track_ids`, in that order, to this frame. Returns the frame's `ConceptPlan`.
    """
    frame = state.frame_idx
    track_ids = state.track_ids
    if track_masks.shape[0] != len(track_ids) or track_scores.shape[0] != len(track_ids):
        raise ValueError(f"expected {len(track_ids)} track masks and scores, got {track_masks.shape[0]}")
    rows = select_detections(det_scores, det_masks, options)
    scores, masks = det_scores[rows], det_masks[rows]  # (D,), (D, Hd, Wd)
    assoc = associate(masks, scores, track_masks, options)

    new_positions = new_detections(assoc, scores, det_boxes[rows], len(track_ids), options)
    new_ids = list(range(state.max_obj_id + 1, state.max_obj_id + 1 + len(new_positions)))
    new_scores = scores[new_positions].tolist()
    removed, suppressed_ids = _hotstart(state, options, frame, assoc, track_ids, new_ids, new_scores)

    recondition = {}  # track id -> detection position
    nth = options.recondition_every_nth_frame
    if nth > 0 and frame % nth == 0 and assoc.recondition:
        confident = (track_scores > options.high_conf_thresh).tolist()
        recondition = {track_ids[t]: d for t, d in assoc.recondition.items() if confident[t]}

    suppressed = torch.zeros(len(track_ids), dtype=torch.bool, device=track_masks.device)  # rule 7
    threshold = options.suppress_overlapping_based_on_recent_occlusion_threshold
    if threshold > 0 and track_ids:
        last = [state.tracks[i].last_occluded for i in track_ids]
        last = [
            (ALWAYS_OCCLUDED if i in removed else NEVER_OCCLUDED) if frame_seen is None else frame_seen
            for i, frame_seen in zip(track_ids, last)
        ]
        last = torch.tensor(last, dtype=torch.int64, device=track_masks.device)
        suppressed = occlusion_suppression(track_masks, last, threshold)
        occluded = ~(track_masks > 0).flatten(1).any(1) | suppressed
        last = torch.where(occluded, frame, last).tolist()
        for obj_id, frame_seen in zip(track_ids, last):
            state.tracks[obj_id].last_occluded = frame_seen
        track_masks = torch.where(suppressed[:, None, None], NO_OBJECT_LOGIT, track_masks)

    unconfirmed = []  # rule 8
    if options.masklet_confirmation_enable:
        confirmed_now = set(new_ids) | {track_ids[t] for positions in assoc.matches for t in positions}
        for obj_id, record in state.tracks.items():
            if obj_id in removed:
                continue
            record.consecutive_detections = record.consecutive_detections + 1 if obj_id in confirmed_now else 0
            record.confirmed |= record.consecutive_detections >= options.masklet_confirmation_consecutive_det_thresh
        unconfirmed = [i for i, record in state.tracks.items() if not record.confirmed and i not in removed]

    output = _outputs(state, track_ids, track_scores, new_ids, new_scores, removed, suppressed_ids)
    for obj_id in removed:
        del state.tracks[obj_id]
    state.duplicate_frames = {
        pair: count
        for pair, count in state.duplicate_frames.items()
        if pair[0] in state.tracks
        and pair[1] in state.tracks
        and state.tracks[pair[1]].first_frame > frame + 1 - options.hotstart_delay  # can still remove it
    }
    if new_ids:
        state.max_obj_id = new_ids[-1]
    state.frame_idx = frame + 1

    def det_rows(positions) -> Tensor:
        return rows[list(positions)].cpu()

    return ConceptPlan(
        frame_idx=frame,
        track_ids=_ids(track_ids),
        detections=rows.cpu(),
        new_ids=_ids(new_ids),
        new_rows=det_rows(new_positions),
        removed_ids=_ids(sorted(removed)),
        recondition_ids=_ids(recondition),
        recondition_rows=det_rows(recondition.values()),
        track_masks=track_masks,
        occlusion_suppressed=suppressed,
        unmatched_ids=_ids(i for i, unmatched in zip(track_ids, assoc.unmatched) if unmatched),
        suppressed_ids=_ids(sorted(suppressed_ids)),
        unconfirmed_ids=_ids(unconfirmed),
        **output,
    )


def _outputs(
    state: ConceptState,
    track_ids: list[int],
    track_scores: Tensor,
    new_ids: list[int],
    new_scores: list[float],
    removed: set[int],
    suppressed: set[int],
) -> dict[str, Tensor]:
    """The output fields of the plan: every track of the frame by ascending id, before removed ones are dropped."""
    tracker_score = dict(zip(track_ids, track_scores.float().sigmoid().tolist()))
    tracker_score.update(zip(new_ids, new_scores))
    ids = sorted(tracker_score)
    return {
        "output_ids": _ids(ids),
        "output_scores": torch.tensor([-1e4 if i in removed else state.tracks[i].score for i in ids]),
        "output_tracker_scores": torch.tensor([tracker_score[i] for i in ids], dtype=torch.float32),
        "output_hidden": torch.tensor([i in removed or i in suppressed for i in ids], dtype=torch.bool),
    }
