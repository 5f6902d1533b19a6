"""SAM 3's concept-tracking decisions (sam2rt.tracking.concept_plan) against Meta's own `Sam3VideoBase`.

Meta's per-frame step `_det_track_one_frame` runs unchanged on a model-less `Sam3VideoBase`: the detector's and
the tracker's outputs come from a scripted world (objects enter, leave, cross and hide each other; the detector
misses some, sees some twice, and imagines others; the tracker drifts, loses objects and latches onto the wrong
one), and the few methods that would run the models record what they are asked to do. Every frame, our plan and
state must equal Meta's decisions and metadata. Meta's NMS runs its own CPU path (`generic_nms_cpu`); its hole
filling is the engine's business (track masks reach the planner filled), so Meta's `fill_hole_area` is set to 0.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from oracle_sam3 import sam3_modules

from sam2rt.tracking.concept_matching import mask_iou, near_boundary, select_detections
from sam2rt.tracking.concept_plan import ConceptOptions, ConceptState, plan_frame

TRACK_SIZE = 32
EMPTY_LOGIT = -6.0
META_OPTIONS = (
    "score_threshold_detection", "det_nms_thresh", "assoc_iou_thresh", "trk_assoc_iou_thresh", "new_det_thresh",
    "hotstart_delay", "hotstart_unmatch_thresh", "hotstart_dup_thresh", "suppress_unmatched_only_within_hotstart",
    "init_trk_keep_alive", "max_trk_keep_alive", "min_trk_keep_alive",
    "suppress_overlapping_based_on_recent_occlusion_threshold", "decrease_trk_keep_alive_for_empty_masklets",
    "suppress_det_close_to_boundary", "fill_hole_area", "max_num_objects", "recondition_every_nth_frame",
    "masklet_confirmation_enable", "masklet_confirmation_consecutive_det_thresh",
)  # fmt: skip

# Shorter windows and every optional rule on, so that short videos reach them all
BUSY = ConceptOptions(
    hotstart_delay=6, hotstart_unmatch_thresh=3, hotstart_dup_thresh=2, suppress_unmatched_only_within_hotstart=False,
    init_trk_keep_alive=2, max_trk_keep_alive=4, min_trk_keep_alive=-2, decrease_trk_keep_alive_for_empty_masklets=True,
    suppress_det_close_to_boundary=True, max_num_objects=7, recondition_every_nth_frame=3,
    masklet_confirmation_enable=True, masklet_confirmation_consecutive_det_thresh=2,
)  # fmt: skip
PLAIN = ConceptOptions(det_nms_thresh=0.0, suppress_overlapping_based_on_recent_occlusion_threshold=0.0)


# ---------------------------------------------------------------------------------------------------------------
# The scripted world


def disc(cx: float, cy: float, radius: float, size: int) -> torch.Tensor:
    """Mask logits (size, size) of a disc, centre and radius in units of the image (0..1): soft at the rim."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    return (radius - ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()) * size


def box_of(mask_logits: torch.Tensor) -> torch.Tensor:
    """Normalised x0, y0, x1, y1 of a mask's pixels (zeros if empty)."""
    ys, xs = torch.nonzero(mask_logits > 0, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4)
    size = mask_logits.shape[-1]
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) / size


@dataclass
class WorldObject:
    start: tuple[float, float]
    velocity: tuple[float, float]
    radius: float
    appear: int
    leave: int
    depth: float  # the nearer (larger) hides the farther where they overlap
    detect_prob: float
    score_range: tuple[float, float]
    ghost: bool = False  # imagined by the detector once, then followed by the tracker

    def centre(self, frame: int) -> tuple[float, float]:
        return self.start[0] + self.velocity[0] * frame, self.start[1] + self.velocity[1] * frame


@dataclass
class SimTrack:
    target: int  # the world object it follows
    offset: tuple[float, float]
    score_logit: float
    latches: bool  # follows the occluder once its object has been hidden for two frames
    hidden_frames: int = 0
    dropouts: set = field(default_factory=set)


class World:
    """Objects moving over the frames, a detector that sees them imperfectly and a tracker that follows them."""

    def __init__(self, seed: int, frames: int, det_size: int):
        self.rng = random.Random(seed)
        self.det_size = det_size
        self.objects: list[WorldObject] = []
        for index in range(self.rng.randint(3, 5)):
            self.objects.append(self._random_object(frames, index))
        # two that cross: the farther one is hidden while they overlap
        self.objects.append(WorldObject((0.2, 0.5), (0.012, 0.0), 0.13, 0, frames, 1.0, 0.9, (0.75, 0.97)))
        self.objects.append(WorldObject((0.8, 0.52), (-0.012, 0.0), 0.12, 2, frames, 0.5, 0.9, (0.7, 0.95)))
        self.tracks: dict[int, SimTrack] = {}

    def _random_object(self, frames: int, index: int) -> WorldObject:
        rng = self.rng
        start = (rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0))
        velocity = (rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02))
        appear = rng.choice([0, 0, rng.randint(1, frames // 2)])
        leave = rng.choice([frames, rng.randint(appear + 3, frames)])
        low = rng.uniform(0.5, 0.9)
        return WorldObject(
            start, velocity, rng.uniform(0.08, 0.18), appear, leave, rng.random(), rng.uniform(0.5, 1.0),
            (low, min(1.0, low + 0.1)),
        )  # fmt: skip

    def visible(self, index: int, frame: int) -> bool:
        obj = self.objects[index]
        if not obj.appear <= frame < obj.leave:
            return False
        return self.occluder(index, frame) is None

    def occluder(self, index: int, frame: int):
        obj = self.objects[index]
        cx, cy = obj.centre(frame)
        for other_index, other in enumerate(self.objects):
            if other_index == index or other.ghost or not other.appear <= frame < other.leave:
                continue
            ox, oy = other.centre(frame)
            if other.depth > obj.depth and math.hypot(cx - ox, cy - oy) < 0.8 * max(obj.radius, other.radius):
                return other_index
        return None

    def detections(self, frame: int, queries: int = 16):
        """The detector's queries: scores (Q,), mask logits (Q, S, S), boxes (Q, 4), and each row's object."""
        rng, size = self.rng, self.det_size
        rows = []
        for index, obj in enumerate(self.objects):
            if obj.ghost or not self.visible(index, frame) or rng.random() > obj.detect_prob:
                continue
            cx, cy = obj.centre(frame)
            if not (0.05 < cx < 0.95 and 0.05 < cy < 0.95):
                continue  # the detector misses what is mostly out of the picture
            score = rng.uniform(*obj.score_range)
            rows.append((score, disc(cx + rng.gauss(0, 0.005), cy + rng.gauss(0, 0.005), obj.radius, size), index))
            if rng.random() < 0.3:  # the same object twice
                jitter = rng.uniform(0.01, 0.04)
                twin = disc(cx + jitter, cy - jitter, obj.radius * 0.95, size)
                rows.append((score * rng.uniform(0.6, 1.0), twin, index))
        if rng.random() < 0.25:  # something that is not there, followed by the tracker afterwards
            ghost = WorldObject(
                (rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95)), (0.0, 0.0), rng.uniform(0.06, 0.12), frame,
                10**9, 0.2, 0.0, (0.0, 0.0), ghost=True,
            )  # fmt: skip
            self.objects.append(ghost)
            rows.append((rng.uniform(0.72, 0.95), disc(*ghost.start, ghost.radius, size), len(self.objects) - 1))
        if rng.random() < 0.2:  # a confident sliver at the border of the picture
            cx, cy = rng.choice([(-0.04, rng.random()), (rng.random(), 1.04)])
            rows.append((rng.uniform(0.75, 0.95), disc(cx, cy, 0.07, size), None))
        if rng.random() < 0.3:  # a weak detection somewhere: above the threshold, below the bar of new tracks
            rows.append((rng.uniform(0.5, 0.7), disc(rng.random(), rng.random(), 0.1, size), None))
        while len(rows) < queries:
            rows.append((rng.uniform(0.0, 0.45), disc(rng.random(), rng.random(), rng.uniform(0.05, 0.2), size), None))
        rng.shuffle(rows)
        scores = torch.tensor([row[0] for row in rows], dtype=torch.float32)
        masks = torch.stack([row[1] for row in rows])
        boxes = torch.stack([box_of(mask) for mask in masks])
        return scores, masks, boxes, [row[2] for row in rows]

    def start_track(self, obj_id: int, target: int) -> None:
        rng = self.rng
        track = SimTrack(
            target, (rng.gauss(0, 0.01), rng.gauss(0, 0.01)), rng.choice([0.5, 2.0, 3.0]), rng.random() < 0.5
        )
        for _ in range(2):
            if rng.random() < 0.4:  # the tracker loses the object for a while
                begin = rng.randint(1, 20)
                track.dropouts |= set(range(begin, begin + rng.randint(1, 9)))
        self.tracks[obj_id] = track

    def track_outputs(self, ids: list[int], frame: int):
        """The tracker's masks (M, 32, 32) and object score logits (M,) for the tracks `ids` at `frame`."""
        masks, scores = [], []
        for obj_id in ids:
            track = self.tracks[obj_id]
            if track.latches and not self.objects[track.target].ghost:
                occluder = self.occluder(track.target, frame)
                track.hidden_frames = track.hidden_frames + 1 if occluder is not None else 0
                if track.hidden_frames > 2:
                    track.target = occluder  # an identity switch: two tracks now follow one object
            obj = self.objects[track.target]
            age = frame - obj.appear if obj.ghost else frame
            seen = obj.appear <= frame < obj.leave and (obj.ghost or self.visible(track.target, frame))
            if seen and age not in track.dropouts:
                cx, cy = obj.centre(frame)
                masks.append(disc(cx + track.offset[0], cy + track.offset[1], obj.radius, TRACK_SIZE))
                scores.append(track.score_logit)
            else:
                masks.append(torch.full((TRACK_SIZE, TRACK_SIZE), EMPTY_LOGIT))
                scores.append(-3.0)
        if not masks:
            return torch.zeros(0, TRACK_SIZE, TRACK_SIZE), torch.zeros(0)
        return torch.stack(masks), torch.tensor(scores)


# ---------------------------------------------------------------------------------------------------------------
# Meta's per-frame step without its models


class RecordingTracker:
    """Stands in for Meta's tracker where `_recondition_masklets` calls it: records each re-prompt."""

    input_mask_size = 24

    def __init__(self):
        self.reprompts = []

    def add_new_mask(self, inference_state, frame_idx, obj_id, mask):
        self.reprompts.append((int(obj_id), mask.clone()))

    def propagate_in_video_preflight(self, inference_state, run_mem_encoder=True):
        pass


class MetaStep:
    """Meta's `Sam3VideoBase._det_track_one_frame` with the model calls replaced by this frame's inputs."""

    def __init__(self, options: ConceptOptions):
        sam3_modules()
        from sam3.model.sam3_video_base import Sam3VideoBase

        self.model = Sam3VideoBase(detector=None, tracker=None, **{k: getattr(options, k) for k in META_OPTIONS})
        self.model.fill_hole_area = 0  # hole filling is the engine's (track masks arrive filled)
        self.model.tracker = self.tracker = RecordingTracker()
        self.model.run_backbone_and_detection = lambda **kwargs: self.det_out
        self.model.run_tracker_propagation = lambda **kwargs: (self.track_masks.clone(), self.track_scores)
        self.model._tracker_update_memories = self._record_memory
        self.model.run_tracker_update_execution_phase = self._record_execution
        self.metadata: dict = {}
        self.states = [{"obj_ids": []}]

    def _record_memory(self, states, frame_idx, tracker_metadata, low_res_masks):
        self.memory_masks = low_res_masks.clone()

    def _record_execution(self, tracker_states_local, tracker_update_plan, **kwargs):
        self.update_plan = tracker_update_plan
        ids = self.states[0]["obj_ids"] + [int(i) for i in tracker_update_plan["new_det_obj_ids"]]
        self.states[0]["obj_ids"] = [i for i in ids if i not in tracker_update_plan["obj_ids_newly_removed"]]
        return self.states

    def step(self, frame, det_out, track_masks, track_scores):
        self.det_out, self.track_masks, self.track_scores = det_out, track_masks, track_scores
        self.memory_masks, self.tracker.reprompts = None, []
        id_to_mask, _, _, metadata, _, _ = self.model._det_track_one_frame(
            frame_idx=frame, num_frames=10**6, reverse=False, input_batch=None, geometric_prompt=None,
            tracker_states_local=self.states, tracker_metadata_prev=self.metadata, feature_cache={},
            orig_vid_height=TRACK_SIZE, orig_vid_width=TRACK_SIZE,
        )  # fmt: skip
        self.metadata = metadata
        return id_to_mask, metadata


def meta_detections(scores, masks, options: ConceptOptions) -> torch.Tensor:
    """The rows Meta's detector keeps: its `nms_masks` (CPU path) and then the score threshold."""
    from sam3.perflib.nms import nms_masks

    keep = torch.ones_like(scores, dtype=torch.bool)
    if options.det_nms_thresh > 0:
        keep = nms_masks(scores, masks, options.score_threshold_detection, options.det_nms_thresh)
    return torch.nonzero(keep & (scores > options.score_threshold_detection)).flatten()


# ---------------------------------------------------------------------------------------------------------------
# Comparison


def compare_frame(frame, plan, state, meta: MetaStep, id_to_mask, metadata, det_masks, options, counts):
    """Assert that our plan and state equal Meta's decisions and metadata on this frame."""
    rank0 = metadata["rank0_metadata"]
    update = meta.update_plan
    meta_rows = plan.detections  # checked equal to Meta's by the caller
    assert plan.new_ids.tolist() == [int(i) for i in update["new_det_obj_ids"]], f"frame {frame}: new ids"
    assert plan.new_rows.tolist() == meta_rows[torch.as_tensor(update["new_det_fa_inds"], dtype=torch.long)].tolist()
    assert plan.removed_ids.tolist() == sorted(int(i) for i in update["obj_ids_newly_removed"]), f"frame {frame}"
    assert plan.unmatched_ids.tolist() == [int(i) for i in update["unmatched_trk_obj_ids"]], f"frame {frame}"
    # reconditions: the same tracks in the same order, each with its detection's mask
    assert plan.recondition_ids.tolist() == [obj_id for obj_id, _ in meta.tracker.reprompts], f"frame {frame}"
    for row, (_, meta_mask) in zip(plan.recondition_rows.tolist(), meta.tracker.reprompts):
        size = RecordingTracker.input_mask_size
        ours = F.interpolate(det_masks[row][None, None], size=(size, size), mode="bilinear", align_corners=False)
        assert torch.equal(ours[0, 0] > 0, meta_mask)
    # the masks the memory encoder and the outputs read, after occlusion suppression
    if len(plan.track_ids):
        assert torch.equal(plan.track_masks, meta.memory_masks), f"frame {frame}: suppressed masks"
    assert sorted(int(i) for i in id_to_mask) == plan.output_ids.tolist()
    for position, obj_id in enumerate(plan.track_ids.tolist()):
        assert torch.equal(id_to_mask[obj_id][0], plan.track_masks[position] > 0)
    # outputs: scores, tracker scores, hidden
    scores = metadata["obj_id_to_score"]
    tracker_scores = metadata["obj_id_to_tracker_score_frame_wise"][frame]
    hidden = set(rank0["suppressed_obj_ids"][frame]) | set(rank0["removed_obj_ids"])
    for position, obj_id in enumerate(plan.output_ids.tolist()):
        assert plan.output_scores[position].item() == torch.tensor(float(scores[obj_id])).item()
        assert plan.output_tracker_scores[position].item() == torch.tensor(float(tracker_scores[obj_id])).item()
        assert plan.output_hidden[position].item() == (obj_id in hidden), f"frame {frame}: hidden {obj_id}"
    assert plan.suppressed_ids.tolist() == sorted(int(i) for i in rank0["suppressed_obj_ids"][frame])
    # state
    assert state.track_ids == [int(i) for i in metadata["obj_ids_all_gpu"]], f"frame {frame}: track ids"
    assert state.max_obj_id == metadata["max_obj_id"]
    for obj_id, record in state.tracks.items():
        assert record.first_frame == rank0["obj_first_frame_idx"][obj_id]
        assert record.keep_alive == rank0["trk_keep_alive"].get(obj_id), f"frame {frame}: keep-alive of {obj_id}"
        assert record.unmatched_frames == len(rank0["unmatched_frame_inds"].get(obj_id, []))
        assert record.score == float(scores[obj_id])
        last = metadata["obj_id_to_last_occluded"].get(obj_id)
        if options.suppress_overlapping_based_on_recent_occlusion_threshold > 0:
            assert record.last_occluded == (None if last is None else last.item()), f"frame {frame}: occluded"
    pairs = rank0["overlap_pair_to_frame_inds"]
    for pair, count in state.duplicate_frames.items():
        assert count == len(pairs[pair])
    for (older, younger), frames in pairs.items():
        if (older, younger) not in state.duplicate_frames:  # dropped: it can never remove a track again
            alive = older in state.tracks and younger in state.tracks
            assert not alive or state.tracks[younger].first_frame <= frame + 1 - options.hotstart_delay
    if options.masklet_confirmation_enable:
        confirmation = rank0["masklet_confirmation"]
        assert [r.consecutive_detections for r in state.tracks.values()] == confirmation["consecutive_det_num"].tolist()
        assert [2 if r.confirmed else 1 for r in state.tracks.values()] == confirmation["status"].tolist()
        unconfirmed = metadata["obj_ids_all_gpu"][confirmation["status"] == 1].tolist()
        assert plan.unconfirmed_ids.tolist() == unconfirmed
        counts["unconfirmed"] += len(unconfirmed)
        counts["confirmed"] += sum(r.confirmed for r in state.tracks.values())
    counts["new"] += len(plan.new_ids)
    counts["removed"] += len(plan.removed_ids)
    counts["reconditioned"] += len(plan.recondition_ids)
    counts["occlusion_suppressed"] += int(plan.occlusion_suppressed.sum())
    counts["keep_alive_suppressed"] += len(plan.suppressed_ids)
    counts["unmatched"] += len(plan.unmatched_ids)
    counts["dropped_for_limit"] += update["num_obj_dropped_due_to_limit"]
    counts["duplicate_pairs"] += sum(len(frames) > 0 for frames in pairs.values())


def run_both(options: ConceptOptions, seed: int, frames: int, det_size: int, counts) -> None:
    """Drive Meta's step and our planner over one scripted video; compare every frame."""
    world = World(seed, frames, det_size)
    meta = MetaStep(options)
    state = ConceptState()
    for frame in range(frames):
        scores, masks, boxes, sources = world.detections(frame)
        track_masks, track_scores = world.track_outputs(state.track_ids, frame)
        plan = plan_frame(state, options, scores, masks, boxes, track_masks, track_scores)

        rows = meta_detections(scores, masks, options)
        assert plan.detections.tolist() == rows.tolist(), f"frame {frame}: detections after NMS"
        counts["nms_dropped"] += int((scores > options.score_threshold_detection).sum()) - len(rows)
        det_out = {"bbox": boxes[rows], "mask": masks[rows], "scores": scores[rows]}
        id_to_mask, metadata = meta.step(frame, det_out, track_masks, track_scores)
        compare_frame(frame, plan, state, meta, id_to_mask, metadata, masks, options, counts)
        if options.suppress_det_close_to_boundary:
            counts["near_boundary"] += int(near_boundary(boxes[rows]).sum())

        for obj_id, row in zip(plan.new_ids.tolist(), plan.new_rows.tolist()):
            target = sources[row]
            if target is None:  # a weak detection became a track: follow a still ghost there
                cx, cy = ((boxes[row, 0] + boxes[row, 2]) / 2).item(), ((boxes[row, 1] + boxes[row, 3]) / 2).item()
                world.objects.append(WorldObject((cx, cy), (0, 0), 0.1, frame, 10**9, 0.2, 0.0, (0, 0), ghost=True))
                target = len(world.objects) - 1
            world.start_track(obj_id, target)
        for obj_id in plan.removed_ids.tolist():
            del world.tracks[obj_id]


def new_counts():
    return {
        key: 0
        for key in (
            "new", "removed", "reconditioned", "occlusion_suppressed", "keep_alive_suppressed", "unmatched",
            "dropped_for_limit", "nms_dropped", "duplicate_pairs", "unconfirmed", "confirmed", "near_boundary",
        )
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Tests


def test_official_options_match_meta_every_frame():
    """The official options over videos long enough for two recondition frames (16, 32) and the hotstart."""
    counts = new_counts()
    for seed in range(4):
        run_both(ConceptOptions(), seed, frames=40, det_size=TRACK_SIZE, counts=counts)
    # every rule of the official configuration took a decision somewhere
    for key in ("new", "removed", "reconditioned", "occlusion_suppressed", "unmatched", "nms_dropped"):
        assert counts[key] > 0, f"no {key} in the scripted videos: {counts}"
    assert counts["duplicate_pairs"] > 0, counts


def test_every_optional_rule_matches_meta():
    """Keep-alive suppression, empty-mask keep-alive, boundary, object limit, confirmation, frequent reconditions;
    detections at another resolution than the tracks (association resizes the larger)."""
    counts = new_counts()
    for seed in range(4):
        run_both(BUSY, seed, frames=30, det_size=40, counts=counts)
    for key in (
        "new", "removed", "reconditioned", "occlusion_suppressed", "keep_alive_suppressed", "dropped_for_limit",
        "unconfirmed", "confirmed", "near_boundary",
    ):  # fmt: skip
        assert counts[key] > 0, f"no {key} in the scripted videos: {counts}"


def test_without_nms_and_occlusion_rule_matches_meta():
    """Both switched off (0), detections smaller than the tracks (the tracks are resized)."""
    counts = new_counts()
    for seed in range(3):
        run_both(PLAIN, seed, frames=30, det_size=24, counts=counts)
    assert counts["new"] > 0 and counts["removed"] > 0, counts
    assert counts["occlusion_suppressed"] == 0 and counts["nms_dropped"] == 0


def test_mask_iou_and_nms_match_meta():
    """Our IoU and NMS on random masks, more of them than numpy's small-array sort."""
    sam3_modules()
    from sam3.perflib.masks_ops import mask_iou as meta_mask_iou

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 1, 6, 6, generator=generator)
    masks = F.interpolate(base, size=(20, 20), mode="bilinear")[:, 0].repeat(5, 1, 1)
    masks = masks + 0.3 * torch.randn(masks.shape, generator=generator)  # 30 masks, many near-duplicates
    scores = torch.rand(30, generator=generator)
    binary = masks > 0
    assert torch.equal(mask_iou(binary, binary[:7]), meta_mask_iou(binary, binary[:7]))
    for threshold in (0.1, 0.3, 0.5):
        options = ConceptOptions(det_nms_thresh=threshold, score_threshold_detection=0.2)
        rows = select_detections(scores, masks, options)
        assert rows.tolist() == meta_detections(scores, masks, options).tolist()
        assert 0 < len(rows) < int((scores > 0.2).sum())  # NMS dropped some and kept some


def test_memory_stays_bounded_on_a_long_stream():
    """Hundreds of frames of churn: the state holds live tracks and pairs that can still remove one, only."""
    world = World(seed=7, frames=300, det_size=TRACK_SIZE)
    options = ConceptOptions(hotstart_delay=6, hotstart_unmatch_thresh=3, hotstart_dup_thresh=2)
    state = ConceptState()
    largest_pairs, ids_given = 0, 0
    for frame in range(300):
        if frame % 30 == 0:  # new objects keep arriving
            world.objects.append(world._random_object(300, 0))
            world.objects[-1].appear = frame
        scores, masks, boxes, sources = world.detections(frame)
        track_masks, track_scores = world.track_outputs(state.track_ids, frame)
        plan = plan_frame(state, options, scores, masks, boxes, track_masks, track_scores)
        for obj_id, row in zip(plan.new_ids.tolist(), plan.new_rows.tolist()):
            target = sources[row] if sources[row] is not None else 0
            world.start_track(obj_id, target)
        for obj_id in plan.removed_ids.tolist():
            del world.tracks[obj_id]
        ids_given += len(plan.new_ids)
        largest_pairs = max(largest_pairs, len(state.duplicate_frames))
        assert set(state.tracks) == set(world.tracks)
        for older, younger in state.duplicate_frames:
            assert state.tracks[younger].first_frame > frame + 1 - options.hotstart_delay
    assert ids_given > 2 * len(state.tracks)  # many tracks came and went
    assert state.frame_idx == 300


def test_options_are_validated():
    assert ConceptOptions().object_limit == 10000
    with pytest.raises(ValueError):
        ConceptOptions(hotstart_delay=5, hotstart_unmatch_thresh=6)
    with pytest.raises(ValueError):
        ConceptOptions(min_trk_keep_alive=3, max_trk_keep_alive=2)
    with pytest.raises(ValueError):
        ConceptOptions(assoc_iou_thresh=1.5)
    with pytest.raises(TypeError):
        ConceptOptions().changed(no_such_option=1)
    with pytest.raises(ValueError):  # the track masks must follow the state's tracks
        plan_frame(ConceptState(), ConceptOptions(), torch.zeros(0), torch.zeros(0, 8, 8), torch.zeros(0, 4),
                   torch.zeros(1, 8, 8), torch.zeros(1))  # fmt: skip


def test_official_defaults_equal_meta_builder():
    """The defaults are `build_sam3_video_model`'s values (and Meta's class defaults where it sets none)."""
    sam3_modules()
    import inspect

    from sam3.model.sam3_video_base import Sam3VideoBase

    source = inspect.getsource(__import__("sam3.model_builder", fromlist=["x"]).build_sam3_video_model)
    official = source.split("if apply_temporal_disambiguation:")[1].split("else:")[0]
    class_defaults = inspect.signature(Sam3VideoBase.__init__).parameters
    options = ConceptOptions()
    for name in META_OPTIONS:
        if f"{name}=" in official:
            value = official.split(f"{name}=")[1].split(",")[0]
            assert getattr(options, name) == eval(value), name
        else:
            assert getattr(options, name) == class_defaults[name].default, name


def test_streams_can_retire_tracks_of_objects_long_gone():
    """Meta removes a track only in its hotstart window; with retire_unmatched_frames a track unmatched that many
    frames in a row is removed later too, and a match resets the count."""
    size = TRACK_SIZE
    present = disc(0.4, 0.4, 0.15, size)[None]  # (1, H, W) logits
    empty = torch.zeros(0, size, size)

    def run(options: ConceptOptions, seen_until: int, frames: int) -> list[int]:
        state, removed_on = ConceptState(), []
        for frame in range(frames):
            seen = frame < seen_until or frame == seen_until + 3  # detected, then gone (seen once more, then gone)
            scores = torch.tensor([0.9]) if seen else torch.zeros(0)
            masks = present if seen else empty
            boxes = box_of(present[0])[None] if seen else torch.zeros(0, 4)
            # the tracker keeps its (stale) mask: the track is unmatched, not empty
            track_masks = present.expand(len(state.track_ids), -1, -1)
            track_scores = torch.full((len(state.track_ids),), 5.0)
            plan = plan_frame(state, options, scores, masks, boxes, track_masks, track_scores)
            removed_on += [frame] * len(plan.removed_ids)
        return removed_on

    official = ConceptOptions()
    assert run(official, seen_until=20, frames=60) == []  # past its hotstart: never removed, as Meta
    retiring = official.changed(retire_unmatched_frames=10)
    assert run(retiring, seen_until=20, frames=60) == [33]  # 10 unmatched in a row after the match on frame 23
    with pytest.raises(ValueError):
        official.changed(retire_unmatched_frames=-1)
