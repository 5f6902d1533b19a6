"""Frames that would poison a tracker are refused before they reach it, and the tracker goes on as if they never came.

The issue this answers: one frame with NaN made every later StreamTracker result NaN, for ever; 0-255
floats were taken as 0-1 and gave other masks without a word.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sam2rt
from sam2rt.processing.images import as_rgb_tensor

IMAGE_SIZE = 64
HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def model():
    """Random weights with objects judged present, so that masks and memories carry information."""
    generator = torch.Generator().manual_seed(3)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=IMAGE_SIZE)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(5.0)
    return model


def _frames(count):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(count)]


def _with_nan() -> np.ndarray:
    frame = _frames(1)[0].astype(np.float32) / 255
    frame[10, 20, 1] = np.nan
    return frame


def _with_inf() -> torch.Tensor:
    frame = torch.from_numpy(_frames(1)[0]).float() / 255
    frame[0, 0, 0] = float("inf")
    return frame


BAD_FRAMES = {
    "nan": (_with_nan, ValueError, "NaN or infinite"),
    "inf": (_with_inf, ValueError, "NaN or infinite"),
    "0-255 floats": (
        lambda: _frames(1)[0].astype(np.float32),
        ValueError,
        r"values in \[0, 1\]; this one holds values from 0 to 255 \(0-255 floats\? pass uint8",
    ),
    "negative floats": (lambda: _frames(1)[0] / 255.0 - 0.5, ValueError, r"from -0\.5 to 0\.5"),
    "16-bit range": (lambda: _frames(1)[0].astype(np.uint16) * 257, ValueError, r"values in 0\.\.255; .* to 65535"),
    "negative int64 tensor": (lambda: torch.from_numpy(_frames(1)[0]).long() - 300, ValueError, "from -300 to"),
    "bool": (lambda: _frames(1)[0] > 128, TypeError, "got an array of bool"),
    "rgba": (lambda: np.zeros((HEIGHT, WIDTH, 4), np.uint8), ValueError, r"shape \(H, W, 3\)"),
    "float image out of range": (
        lambda: Image.fromarray(np.full((HEIGHT, WIDTH), 7.5, np.float32), "F"),
        ValueError,
        r"32-bit floats from 7\.5 to 7\.5; only values in \[0, 1\]",
    ),
    "none": (lambda: None, TypeError, "got NoneType"),
}


def _assert_same(result, expected):
    assert result.frame_idx == expected.frame_idx and result.object_ids == expected.object_ids
    assert torch.equal(result.mask_logits, expected.mask_logits)
    assert torch.equal(result.object_scores, expected.object_scores)


def test_stream_tracker_refuses_bad_frames_and_goes_on_unchanged(model):
    frames = _frames(3)
    reference, tracker = sam2rt.StreamTracker(model), sam2rt.StreamTracker(model)
    expected = [reference.step(frames[0]), reference.add_prompt(1, points=[[20, 20]], labels=[1])]
    expected += [reference.step(frame) for frame in frames[1:]]
    assert torch.isfinite(expected[-1].mask_logits).all() and (expected[-1].mask_logits > 0).any()

    _assert_same(tracker.step(frames[0]), expected[0])
    _assert_same(tracker.add_prompt(1, points=[[20, 20]], labels=[1]), expected[1])
    bad = list(BAD_FRAMES.values())
    for index, frame in enumerate(frames[1:]):
        # Between good frames, refused frames of every kind: pending prompt memory and all.
        for make, error, message in bad[index::2]:
            with pytest.raises(error, match=message):
                tracker.step(make())
        _assert_same(tracker.step(frame), expected[index + 2])


def test_camera_predictor_refuses_bad_frames(model):
    frames = _frames(2)
    reference, camera = sam2rt.CameraPredictor(model), sam2rt.CameraPredictor(model)
    for predictor in (reference, camera):
        predictor.load_first_frame(frames[0])
        predictor.add_new_prompt(0, 1, points=[[20, 20]], labels=[1])
    for make, error, message in BAD_FRAMES.values():
        with pytest.raises(error, match=message):
            camera.track(make())
        with pytest.raises(error, match=message):
            camera.load_first_frame(make())  # refused before the session is reset
    ids, logits = camera.track(frames[1])
    ref_ids, ref_logits = reference.track(frames[1])
    assert ids == ref_ids == [1] and torch.equal(logits, ref_logits)


def test_video_predictor_refuses_a_list_with_a_bad_frame(model):
    frames = _frames(3)
    predictor = sam2rt.VideoPredictor(model)
    for name, (make, error, message) in BAD_FRAMES.items():
        if name == "none":
            continue
        with pytest.raises(error, match=f"frame 1: .*{message}"):
            predictor.init_state([frames[0], make(), frames[2]])
    with pytest.raises(ValueError, match="frame 2 is 32x48 but frame 0 is 64x48: the frames of a video must all"):
        predictor.init_state([frames[0], frames[1], frames[2][:, :32]])

    def session(video):
        state = video.init_state(frames)
        video.add_new_points_or_box(state, 0, 1, points=[[20, 20]], labels=[1])
        return [logits for _, _, logits in video.propagate_in_video(state)]

    fresh = session(sam2rt.VideoPredictor(model))
    after_refusals = session(predictor)
    assert all(torch.equal(a, b) for a, b in zip(after_refusals, fresh)) and len(fresh) == 3


def test_image_predictor_keeps_its_image_when_a_new_one_is_refused(model):
    good = _frames(1)[0]
    predictor = sam2rt.ImagePredictor(model)
    predictor.set_image(good)
    expected = predictor.predict(point_coords=[[20, 20]], point_labels=[1])
    for make, error, message in BAD_FRAMES.values():
        with pytest.raises(error, match=message):
            predictor.set_image(make())
        with pytest.raises(error, match=message):
            predictor.set_image_batch([good, make()])
    masks, ious, low_res = predictor.predict(point_coords=[[20, 20]], point_labels=[1])
    assert np.array_equal(masks, expected[0]) and np.array_equal(ious, expected[1])
    assert np.array_equal(low_res, expected[2])


def _dlpack_shares_read_only_arrays() -> bool:
    """numpy >= 2.1 exports read-only arrays only through DLPack 1.0, which torch must ask for."""
    probe = np.zeros(1)
    probe.flags.writeable = False
    try:
        torch.from_dlpack(probe)
    except BufferError:
        return False
    return True


def test_read_only_frames_are_read_in_place_and_left_as_they_were(model):
    """Decoders often hand out read-only arrays (np.asarray of a PIL image): they are tracked as writable ones
    are, without a copy of each frame, and come back unchanged."""
    frames = _frames(4)
    locked = [np.asarray(Image.fromarray(frame)) for frame in frames]
    assert not locked[0].flags.writeable
    if _dlpack_shares_read_only_arrays():  # else a copy, by design
        assert as_rgb_tensor(locked[0]).data_ptr() == locked[0].ctypes.data
    results = []
    for sequence in (frames, locked):
        tracker = sam2rt.StreamTracker(model)
        tracker.step(sequence[0])
        tracker.add_prompt(1, points=[[20, 20]], labels=[1])
        results.append([tracker.step(frame) for frame in sequence[1:]])
    for got, expected in zip(*results):
        _assert_same(got, expected)
    assert all(np.array_equal(frame, original) for frame, original in zip(locked, frames))
