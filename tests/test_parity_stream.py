"""StreamTracker against the official video predictor driven as a stream, over a real clip.

The official predictor is driven frame by frame: frame t is propagated alone, then the prompts
scheduled on t land on it; t's expected result is each object's latest output there. Both
correction modes, with the official predictor configured alike. fp32 on CPU, memories in bf16 on
both sides, hole filling off on both sides except in the case that compares the default hole filling
(the official's connected components from OpenCV, in place of its CUDA extension). Beside SAM 2.1
tiny: SAM 2.0 tiny (no occlusion embedding, no temporal encoding of object pointers), another size
(base_plus, at 128 px), and the batched multi-object memory attention that GPUs run (on CPU the
engine splits it into one call per object)."""

from __future__ import annotations

import pytest
import torch
from media import shared_path
from oracle import (
    TRACKING_OBJECT_SCORE_SHIFT,
    install_connected_components_standin,
    oracle_model,
    oracle_video_state,
    our_model,
)
from stream_script import apply_official, apply_ours, assert_result, box_mask, official_latest

import sam2rt
from sam2rt.io.video_file import VideoFileFrames
from sam2rt.model.sam2 import SAM2Model
from sam2rt.tracking.engine import TrackingEngine

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
NUM_FRAMES = 20


# frame -> actions: ("points", obj, points, labels, clear_old_points), ("box", obj, box), ("mask", obj), ("remove", obj)
SCHEDULE = {
    0: [("points", 1, [[640, 360]], [1], True), ("box", 2, [100, 80, 500, 400])],
    4: [("points", 3, [[900, 500], [1000, 200]], [1, 0], True)],
    7: [("points", 1, [[600, 300]], [0], True), ("points", 1, [[700, 400]], [1], False)],
    9: [("mask", 2)],
    12: [("remove", 2)],
    15: [("box", 3, [800, 300, 1100, 650])],
}


@pytest.fixture(scope="module")
def frames():
    video = VideoFileFrames(shared_path("videos/02_cups.mp4"))
    return [video[i] for i in range(NUM_FRAMES)]


def _recording_batches(monkeypatch):
    """Record (objects, padded) of every memory attention call: padded when some object's memory has
    padding slots, masked out of the attention."""
    calls = []
    condition_on_memory = SAM2Model.condition_on_memory

    def recorded(self, embed, memory):
        calls.append((memory.spatial.shape[0], memory.spatial_valid is not None or memory.pointer_valid is not None))
        return condition_on_memory(self, embed, memory)

    monkeypatch.setattr(SAM2Model, "condition_on_memory", recorded)
    return calls


def _counting_filled_pixels(monkeypatch):
    """The oracle's hole filling, its connected components from OpenCV (the CUDA extension's stand-in); the
    returned list gets the number of pixels each call filled."""
    import sam2.sam2_video_predictor as official

    install_connected_components_standin()
    filled = []
    fill = official.fill_holes_in_mask_scores

    def counted(mask, max_area):
        out = fill(mask, max_area)
        filled.append(int((out != mask).sum()))
        return out

    monkeypatch.setattr(official, "fill_holes_in_mask_scores", counted)
    return filled


# (variant, image size, corrections as conditioning frames, memory attention split per object as on CPU, hole
# filling area: 8 is the default of both, 0 compares the masks before filling)
STREAM_CASES = [
    pytest.param(VARIANT, IMAGE_SIZE, True, True, 0, id="corrections-as-cond"),
    pytest.param(VARIANT, IMAGE_SIZE, False, True, 0, id="official-default"),
    pytest.param("sam2_hiera_tiny", IMAGE_SIZE, True, True, 0, id="sam2_hiera_tiny-corrections-as-cond"),
    pytest.param("sam2_hiera_tiny", IMAGE_SIZE, False, True, 0, id="sam2_hiera_tiny-official-default"),
    pytest.param("sam2.1_hiera_base_plus", 128, True, True, 0, id="sam2.1_hiera_base_plus-128px"),
    pytest.param(VARIANT, IMAGE_SIZE, True, False, 0, id="batched-attention"),
    pytest.param(VARIANT, IMAGE_SIZE, True, True, 8, id="hole-filling"),
]


@pytest.mark.parametrize("variant, image_size, correction_as_cond, split_attention, fill_hole_area", STREAM_CASES)
def test_stream_matches_official_driven_as_stream(
    frames, monkeypatch, variant, image_size, correction_as_cond, split_attention, fill_hole_area
):
    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", split_attention)
    batches = _recording_batches(monkeypatch)
    filled = _counting_filled_pixels(monkeypatch) if fill_hole_area else []
    shift = TRACKING_OBJECT_SCORE_SHIFT[variant]
    model = our_model(variant, image_size, object_score_shift=shift)
    tracker = sam2rt.StreamTracker(
        model,
        fill_hole_area=fill_hole_area,
        add_all_frames_to_correct_as_cond=correction_as_cond,
        memory_dtype=torch.bfloat16,
    )
    ref = oracle_model(
        variant,
        image_size,
        video=True,
        object_score_shift=shift,
        fill_hole_area=fill_hole_area,
        add_all_frames_to_correct_as_cond=correction_as_cond,
    )
    state = oracle_video_state(ref, frames, "bilinear-antialias")
    frame_hw = frames[0].shape[:2]
    mask = box_mask(*frame_hw)  # the mask actions'
    present, tracked_present = [], []
    for t, frame in enumerate(frames):
        result = tracker.step(frame)
        if state["obj_ids"]:
            list(ref.propagate_in_video(state, start_frame_idx=t, max_frame_num_to_track=0))
            assert_result(result, official_latest(state, t, frame_hw), f"frame {t}")
            tracked_present.append(bool((result.object_scores > 0).any()))
        for action in SCHEDULE.get(t, []):
            result = apply_ours(tracker, action, mask)
            apply_official(ref, state, t, action, mask)
            assert_result(result, official_latest(state, t, frame_hw), f"frame {t}, after {action[0]} on {action[1]}")
        present += (result.object_scores > 0).tolist()
    assert tracker.object_ids == [1, 3]
    # The weights exercise both the present and the absent paths (oracle.TRACKING_OBJECT_SCORE_SHIFT), and every
    # tracked frame compares a present object's mask, not only the constant masks of absent ones.
    assert any(present) and not all(present)
    assert all(tracked_present), f"tracked frames with every object absent: {tracked_present}"
    if fill_hole_area:
        assert sum(filled) > 0, "the oracle filled no hole: the filling was not compared"
    if split_attention:
        assert all(objects == 1 for objects, _ in batches)  # one memory attention call per object
    else:  # three objects' memories, padded to one size, in one batch
        assert (3, True) in batches, f"no batch of 3 objects with padded memories among {sorted(set(batches))}"


def test_camera_predictor_gives_the_stream_tracker_outputs(frames):
    model = our_model(VARIANT, IMAGE_SIZE)
    tracker = sam2rt.StreamTracker(model)
    camera = sam2rt.CameraPredictor(model)
    frame_hw = frames[0].shape[:2]
    mask = box_mask(*frame_hw)  # the mask actions'
    for t, frame in enumerate(frames[:12]):
        if t == 0:
            camera.load_first_frame(frame)
            result = tracker.step(frame)
        else:
            ids, logits = camera.track(frame)
            result = tracker.step(frame)
            assert ids == result.object_ids and torch.equal(logits[:, 0], result.mask_logits)
        for action in SCHEDULE.get(t, []):
            result = apply_ours(tracker, action, mask)
            kind, obj = action[0], action[1]
            if kind == "points":
                out = camera.add_new_prompt(t, obj, points=action[2], labels=action[3], clear_old_points=action[4])
            elif kind == "box":
                x0, y0, x1, y1 = action[2]
                out = camera.add_new_prompt(t, obj, bbox=[[x0, y0], [x1, y1]])
            elif kind == "mask":
                out = camera.add_new_mask(t, obj, mask)
            else:
                camera.remove_object(obj)
                continue
            assert out[0] == t and out[1] == result.object_ids
            assert torch.equal(out[2][:, 0], result.mask_logits)
