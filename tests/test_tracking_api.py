"""StreamTracker, VideoPredictor and CameraPredictor through the public API: semantics and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from visible import assert_nontrivial, visible_model

import sam2rt

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)


def _frames(count, height=48, width=64):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


# StreamTracker


def test_stream_prompts_need_a_frame(model):
    with pytest.raises(RuntimeError, match="call step"):
        sam2rt.StreamTracker(model).add_prompt(1, points=[[1, 1]], labels=[1])


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(points=[[70, 10]], labels=[1]), ValueError, r"\(x=70, y=10\) lies outside the 64x48 image"),
        (dict(box=[10, 10, 5, 40]), ValueError, "x0 <= x1"),
        (dict(points=[[1, 1]], labels=[1], mask=np.ones((48, 64), bool)), ValueError, "either a mask or points"),
        (dict(), ValueError, "a prompt needs"),
        (dict(points=[[1, 1]]), ValueError, "labels must be given"),
        (dict(points=[[1, 1], [2, 2]], labels=[1]), ValueError, "one label per point"),
        (dict(box=[1, 1, 5, 5], clear_old_points=False), ValueError, "box must come first"),
        (dict(mask=np.ones((2, 3, 4))), ValueError, "2D array"),
    ],
)
def test_stream_bad_prompts(model, kwargs, error, message):
    tracker = sam2rt.StreamTracker(model)
    tracker.step(_frames(1)[0])
    with pytest.raises(error, match=message):
        tracker.add_prompt(1, **kwargs)
    assert tracker.object_ids == []  # a refused prompt changes nothing
    assert tracker.step(_frames(1)[0]).object_ids == []


def test_stream_other_errors(model):
    tracker = sam2rt.StreamTracker(model)
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        tracker.step(np.zeros((4, 4, 4), np.uint8))
    tracker.step(_frames(1)[0])
    with pytest.raises(KeyError, match="no object with id 3"):
        tracker.remove_object(3)
    with pytest.raises(TypeError, match="integers"):
        tracker.add_prompt("car", points=[[1, 1]], labels=[1])
    with pytest.raises(ValueError, match="max_cond_frames"):
        sam2rt.StreamTracker(model, max_cond_frames=0)


def test_stream_objects_come_and_go(model):
    tracker = sam2rt.StreamTracker(model)
    frames = _frames(6)
    assert tracker.step(frames[0]).object_ids == []
    assert tracker.add_prompt(7, points=[[10, 10]], labels=[1]).object_ids == [7]
    tracker.step(frames[1])
    result = tracker.add_prompt(3, box=[20, 5, 60, 40])
    assert result.object_ids == [7, 3] and result.mask_logits.shape == (2, 48, 64)
    assert result.object_scores.shape == (2,) and result.masks.dtype == torch.bool
    assert tracker.remove_object(7).object_ids == [3]
    result = tracker.step(frames[2])
    assert result.frame_idx == 2 and result.object_ids == [3]
    tracker.reset()
    assert tracker.frame_idx == -1 and tracker.object_ids == []
    assert tracker.step(frames[3]).frame_idx == 0


def test_stream_frames_may_change_size(model):
    tracker = sam2rt.StreamTracker(model)
    tracker.step(_frames(1)[0])
    tracker.add_prompt(1, points=[[10, 10]], labels=[1])
    result = tracker.step(_frames(1, height=30, width=40)[0])
    assert result.mask_logits.shape == (1, 30, 40)


@pytest.mark.parametrize("as_cond", [True, False])
def test_corrections_stick_as_conditioning_frames_when_asked(model, as_cond):
    tracker = sam2rt.StreamTracker(model, add_all_frames_to_correct_as_cond=as_cond)
    frames = _frames(5)
    tracker.step(frames[0])
    tracker.add_prompt(1, points=[[10, 10]], labels=[1])
    tracker.step(frames[1])
    tracker.add_prompt(1, points=[[30, 20]], labels=[0])  # a correction of a tracked object
    tracker.step(frames[2])
    cond_frames = sorted(f for f in tracker._objects[1].memory.cond_frame if f >= 0)
    assert cond_frames == ([0, 1] if as_cond else [0])


# CameraPredictor


def test_camera_predictor_errors_and_box_formats(model):
    camera = sam2rt.CameraPredictor(model)
    frames = _frames(3)
    with pytest.raises(RuntimeError, match="load_first_frame"):
        camera.track(frames[0])
    with pytest.raises(RuntimeError, match="load_first_frame"):
        camera.add_new_prompt(0, 1, points=[[1, 1]], labels=[1])
    camera.load_first_frame(frames[0])
    _, _, pairs = camera.add_new_prompt(0, 1, bbox=[[5, 5], [40, 30]])
    other = sam2rt.CameraPredictor(model)  # the same box again on `camera` would be a correction of its mask
    other.load_first_frame(frames[0])
    _, _, flat = other.add_new_prompt(0, 1, bbox=[5, 5, 40, 30])
    assert_nontrivial(pairs, "the box's mask")
    assert torch.equal(pairs, flat) and flat.shape == (1, 1, 48, 64)
    ids, logits = camera.track(frames[1])
    assert ids == [1] and logits.shape == (1, 1, 48, 64) and camera.frame_idx == 1
    with pytest.raises(ValueError, match="newest frame"):
        camera.add_new_prompt(0, 2, points=[[1, 1]], labels=[1])


# VideoPredictor


@pytest.fixture()
def video(model):
    predictor = sam2rt.VideoPredictor(model)
    return predictor, predictor.init_state(_frames(8))


def test_video_state_compatibility_keys(video):
    _, state = video
    assert (state["num_frames"], state["video_height"], state["video_width"], state["obj_ids"]) == (8, 48, 64, [])
    with pytest.raises(KeyError, match="exposes"):
        state["images"]


def test_video_errors(video):
    predictor, state = video
    with pytest.raises(RuntimeError, match="No input points or masks"):
        list(predictor.propagate_in_video(state))
    with pytest.raises(IndexError, match="outside the video's 8 frames"):
        predictor.add_new_points_or_box(state, 8, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(ValueError, match="provided together"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 1]])
    with pytest.raises(ValueError, match="at least one of points or box"):
        predictor.add_new_points_or_box(state, 0, 1)
    with pytest.raises(ValueError, match="cannot add box without clearing old points"):
        predictor.add_new_points_or_box(state, 0, 1, box=[1, 1, 5, 5], clear_old_points=False)
    with pytest.raises(KeyError, match="no object with id 5"):
        predictor.clear_all_prompts_in_frame(state, 0, 5)
    with pytest.raises(RuntimeError, match="Cannot remove object id 5"):
        predictor.remove_object(state, 5, strict=True)
    assert predictor.remove_object(state, 5) == ([], [])
    predictor.add_new_points_or_box(state, 2, 1, points=[[10, 10]], labels=[1])
    with pytest.raises(IndexError, match="start_frame_idx 9"):
        list(predictor.propagate_in_video(state, start_frame_idx=9))
    with pytest.raises(FileNotFoundError, match="no such video file"):
        predictor.init_state("/no/such/video.mp4")


def test_video_propagation_order_and_shapes(video):
    predictor, state = video
    predictor.add_new_points_or_box(state, 3, 1, points=[[10, 10]], labels=[1])
    predictor.add_new_mask(state, 5, 2, np.ones((48, 64), bool))
    forward = list(predictor.propagate_in_video(state))
    assert [f for f, _, _ in forward] == [3, 4, 5, 6, 7]
    assert all(ids == [1, 2] and masks.shape == (2, 1, 48, 64) for _, ids, masks in forward)
    backward = list(predictor.propagate_in_video(state, start_frame_idx=4, reverse=True, max_frame_num_to_track=2))
    assert [f for f, _, _ in backward] == [4, 3, 2]
    ids, updated = predictor.remove_object(state, 1)
    assert ids == [2] and [f for f, _ in updated] == [3]
    predictor.reset_state(state)
    assert state.obj_ids == []


def test_video_sources_agree(model, tmp_path):
    """A list of frames, a folder of PNGs and its path as a string give the same first result, a mask with area
    and background: frames read upside down or as BGR would change it."""
    frames = _frames(3)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.png")
    predictor = sam2rt.VideoPredictor(model)
    results = []
    for source in (frames, tmp_path, str(tmp_path)):
        state = predictor.init_state(source)
        results.append(predictor.add_new_points_or_box(state, 1, 1, points=[[20, 20]], labels=[1])[2])
    assert_nontrivial(results[0], "the mask from a list of frames")
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])
