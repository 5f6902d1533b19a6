"""numpy values where the official predictors take them: object ids as np.unique of a label mask gives them,
frame indices, and integer images holding 0..255 (np.asarray of a list of pixel values is int64).

Each front-end runs one session with Python ints and one with numpy values: the same masks, and the ids it
hands back are Python ints. Values that are no integer, or pixels outside 0..255, are refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from visible import assert_nontrivial, visible_model

import sam2rt

IMAGE_SIZE = 64
NUMPY_INTEGERS = [np.int32, np.int64, np.uint8]


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(count)]


def _block() -> np.ndarray:
    mask = np.zeros((48, 64), bool)
    mask[10:40, 30:60] = True
    return mask


def _assert_same_session(got: list, expected: list) -> None:
    """Sessions as lists of (object ids, mask logits): equal ids of type int, equal non-trivial masks."""
    assert len(got) == len(expected)
    for (ids, logits), (expected_ids, expected_logits) in zip(got, expected):
        assert ids == expected_ids and all(type(obj_id) is int for obj_id in ids), ids
        assert_nontrivial(expected_logits)
        assert torch.equal(logits, expected_logits)


def _stream_session(tracker, as_id) -> list:
    frames = _frames(3)
    tracker.step(frames[0])
    results = [tracker.add_prompt(as_id(4), points=[[20, 20]], labels=[1])]
    results.append(tracker.add_prompt(as_id(9), box=[30, 10, 60, 40]))
    results += [tracker.step(frame) for frame in frames[1:]]
    results.append(tracker.remove_object(as_id(9)))
    return [(r.object_ids, r.mask_logits) for r in results]


@pytest.mark.parametrize("integer", NUMPY_INTEGERS, ids=lambda t: t.__name__)
def test_stream_tracker_takes_numpy_object_ids(model, integer):
    expected = _stream_session(sam2rt.StreamTracker(model), int)
    _assert_same_session(_stream_session(sam2rt.StreamTracker(model), integer), expected)


@pytest.mark.parametrize("integer", NUMPY_INTEGERS, ids=lambda t: t.__name__)
def test_pool_streams_take_numpy_object_ids(model, integer):
    def session(as_id):
        pool = sam2rt.StreamPool(model)
        first, second = pool.open_stream(), pool.open_stream()
        frames = _frames(3)
        pool.step({first: frames[0], second: frames[1]})
        results = [first.add_prompt(as_id(4), points=[[20, 20]], labels=[1])]
        results.append(second.add_prompt(as_id(2), box=[30, 10, 60, 40]))
        stepped = pool.step({first: frames[1], second: frames[2]})
        results += [stepped[first], stepped[second]]
        return [(r.object_ids, r.mask_logits) for r in results]

    _assert_same_session(session(integer), session(int))


@pytest.mark.parametrize("integer", NUMPY_INTEGERS, ids=lambda t: t.__name__)
def test_camera_predictor_takes_numpy_frame_indices_and_ids(model, integer):
    def session(as_int):
        camera = sam2rt.CameraPredictor(model)
        frames = _frames(3)
        camera.load_first_frame(frames[0])
        results = [camera.add_new_prompt(as_int(0), as_int(3), points=[[20, 20]], labels=[1])[1:]]
        results.append(camera.track(frames[1]))
        results.append(camera.add_new_mask(as_int(1), as_int(5), _block())[1:])
        results.append(camera.track(frames[2]))
        return [(ids, logits[:, 0]) for ids, logits in results]  # (N, 1, H, W) -> (N, H, W)

    _assert_same_session(session(integer), session(int))


@pytest.mark.parametrize("integer", NUMPY_INTEGERS, ids=lambda t: t.__name__)
def test_video_predictor_takes_numpy_frame_indices_and_ids(model, integer):
    frames = _frames(4)

    def session(as_int):
        video = sam2rt.VideoPredictor(model)
        state = video.init_state(frames)
        results = []
        frame_idx, ids, logits = video.add_new_points_or_box(state, as_int(1), as_int(3), points=[[20, 20]], labels=[1])
        assert type(frame_idx) is int and frame_idx == 1
        results.append((ids, logits[:, 0]))  # (N, 1, H, W) -> (N, H, W)
        _, ids, logits = video.add_new_mask(state, as_int(1), as_int(6), _block())
        results.append((ids, logits[:, 0]))
        ids, updated = video.remove_object(state, as_int(6))
        results += [(ids, logits) for _, logits in updated]
        video.add_new_mask(state, as_int(1), as_int(6), _block())
        tracked = video.propagate_in_video(state, start_frame_idx=as_int(1), max_frame_num_to_track=as_int(2))
        for frame_idx, ids, logits in tracked:
            assert type(frame_idx) is int
            results.append((ids, logits[:, 0]))
        return results

    expected = session(int)
    assert len(expected) == 2 + 1 + 3  # two prompts, one removal redrawn on frame 1, frames 1 to 3 tracked
    _assert_same_session(session(integer), expected)


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, np.float32(2), "2", None], ids=repr)
def test_values_that_are_no_integer_are_refused(model, value):
    frames = _frames(2)
    tracker = sam2rt.StreamTracker(model)
    tracker.step(frames[0])
    with pytest.raises(TypeError, match=r"^object ids are integers, got "):
        tracker.add_prompt(value, points=[[20, 20]], labels=[1])
    assert tracker.object_ids == []
    video = sam2rt.VideoPredictor(model)
    state = video.init_state(frames)
    with pytest.raises(TypeError, match=r"^frame indices are integers, got "):
        video.add_new_points_or_box(state, value, 1, points=[[20, 20]], labels=[1])
    with pytest.raises(TypeError, match=r"^object ids are integers, got "):
        video.add_new_points_or_box(state, 0, value, points=[[20, 20]], labels=[1])
    assert state.obj_ids == []
    camera = sam2rt.CameraPredictor(model)
    camera.load_first_frame(frames[0])
    with pytest.raises(TypeError, match=r"^frame indices are integers, got "):
        camera.add_new_prompt(value, 1, points=[[20, 20]], labels=[1])


# Integer images


@pytest.mark.parametrize(
    "to_integers",
    [
        lambda rgb: np.asarray(rgb.tolist()),  # a list of pixel values, as np.asarray gives it: int64
        lambda rgb: rgb.astype(np.int32),
        lambda rgb: rgb.astype(np.uint16),
        lambda rgb: torch.from_numpy(rgb).long(),
        lambda rgb: torch.from_numpy(rgb).to(torch.int16),
    ],
    ids=["list-int64", "int32", "uint16", "tensor-int64", "tensor-int16"],
)
def test_integer_images_in_0_to_255_are_taken_as_their_uint8_copy(model, to_integers):
    rgb = _frames(1)[0]
    expected_image, got_image = sam2rt.ImagePredictor(model), sam2rt.ImagePredictor(model)
    expected_image.set_image(rgb)
    got_image.set_image(to_integers(rgb))
    prompt = dict(point_coords=[[20, 20]], point_labels=[1], return_logits=True)
    expected_masks = expected_image.predict(**prompt)[0]
    assert_nontrivial(expected_masks)
    np.testing.assert_array_equal(got_image.predict(**prompt)[0], expected_masks)

    expected_stream, got_stream = sam2rt.StreamTracker(model), sam2rt.StreamTracker(model)
    for tracker, frame in ((expected_stream, rgb), (got_stream, to_integers(rgb))):
        tracker.step(frame)
        tracker.add_prompt(1, points=[[20, 20]], labels=[1])
    expected_step, got_step = expected_stream.step(rgb), got_stream.step(to_integers(rgb))
    assert_nontrivial(expected_step.mask_logits)
    assert torch.equal(got_step.mask_logits, expected_step.mask_logits)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.full((48, 64, 3), 256, np.int64), "from 256 to 256"),
        (np.arange(48 * 64 * 3, dtype=np.int64).reshape(48, 64, 3) - 1, "from -1 to 9214"),
        (np.full((48, 64, 3), 65535, np.uint16), "from 65535 to 65535"),
        (torch.full((48, 64, 3), -3, dtype=torch.int32), "from -3 to -3"),
    ],
    ids=["256", "negative", "uint16-full-range", "tensor-negative"],
)
def test_integer_images_outside_0_to_255_are_refused_in_one_line(model, image, message):
    for take in (sam2rt.ImagePredictor(model).set_image, sam2rt.StreamTracker(model).step):
        with pytest.raises(ValueError, match=r"^integer images must hold values in 0\.\.255; .*" + message) as error:
            take(image)
        assert "\n" not in str(error.value)
